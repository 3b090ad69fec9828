//! Merging runs: what keeps a key's lookup at a handful of runs as checkpoints accumulate.
//!
//! Only runs at or below the floor (the oldest retained checkpoint) are merged: no retained
//! checkpoint tells them apart, so of each key only the newest entry is kept, tagged with the
//! newest epoch among them. Runs above the floor are left alone, since restoring a retained
//! checkpoint needs the state as of its own epoch.
//!
//! The policy is size-tiered, per state and key group: starting from the newest run at or
//! below the floor, older runs join the merge while each is at most twice the size of the
//! runs gathered so far, and the merge happens once [`MIN_MERGE`] runs have gathered. So a
//! small change is merged with other small changes, not rewritten into the whole state every
//! checkpoint, and a job that changes every key between checkpoints rewrites its state once
//! every [`MIN_MERGE`] checkpoints, not every time; past [`MAX_RUNS_AT_FLOOR`] runs, all of
//! them are merged. A merge that reaches the group's oldest run also drops deletions (nothing older is
//! left for them to hide).
//!
//! The writer merges in batches ([`merge_some`]): the groups with the most runs first, each
//! group's new run appended to one run file, fsynced once, then listed in the manifest, and
//! only then are the runs they replace removed: after a crash in between, both are there,
//! with the same content.

use std::ops::Range;

use super::error::StateError;
use super::run::{RunKey, RunMeta};
use super::store::{read, write, Shared, Visibility};

/// Fewest runs of similar sizes that are merged.
pub(crate) const MIN_MERGE: usize = 4;
/// Most runs at or below the floor before all of them are merged, whatever their sizes.
pub(crate) const MAX_RUNS_AT_FLOOR: usize = 8;

/// Which runs (positions in `runs`, newest first) to merge, if any.
pub(crate) fn plan(runs: &[RunMeta], visibility: &Visibility) -> Option<Range<usize>> {
    if runs.iter().any(|r| visibility.is_aborted(r.key.epoch)) {
        // Aborted runs are dropped when the next run begins; leave the group until then.
        return None;
    }
    let start = runs.iter().position(|r| r.key.epoch <= visibility.floor)?;
    let at_floor = &runs[start..];
    if at_floor.len() < MIN_MERGE {
        return None;
    }
    let count = if at_floor.len() > MAX_RUNS_AT_FLOOR {
        at_floor.len()
    } else {
        let mut gathered = at_floor[0].bytes;
        let mut count = 1;
        while count < at_floor.len() && at_floor[count].bytes <= gathered.saturating_mul(2) {
            gathered += at_floor[count].bytes;
            count += 1;
        }
        count
    };
    (count >= MIN_MERGE).then_some(start..start + count)
}

/// Input bytes one batch of merges reads at most (at least one group is merged): a batch
/// writes one run file with one fsync, and holds the writer from the next snapshot job for
/// as long as it takes.
const BATCH_INPUT_BYTES: u64 = 16 << 20;

/// Merges the runs of the groups that need it most (most runs first), as many as fit in
/// [`BATCH_INPUT_BYTES`], into one run file. Returns the bytes it wrote and removed, `None`
/// when no group needs a merge.
///
/// One file and one fsync per batch rather than per group: a checkpoint of every key adds a
/// run to each of the 128 key groups, and an fsync per merged group (two, with the
/// directory's) could not keep up with checkpoints that follow each other closely.
pub(crate) fn merge_some(shared: &Shared) -> Result<Option<u64>, StateError> {
    let _merging = shared.merging.lock().unwrap_or_else(|p| p.into_inner());
    let visibility = read(&shared.visibility).clone();
    // Of the groups that need a merge, those with the most runs first: merging in key group
    // order starved the last groups, which piled up runs while the first were merged again
    // and again (every checkpoint adds a run to every group it changed).
    let mut planned: Vec<Planned> = read(&shared.manifest)
        .iter()
        .filter_map(|(&group, runs)| {
            plan(runs, &visibility).map(|window| Planned {
                group,
                runs_in_group: runs.len(),
                reaches_oldest: window.end == runs.len(),
                window: runs[window].to_vec(),
            })
        })
        .collect();
    if planned.is_empty() {
        return Ok(None);
    }
    planned.sort_by_key(|p| (std::cmp::Reverse(p.runs_in_group), p.group));
    let (mut batch, mut input) = (0, 0);
    for p in &planned {
        input += p.window.iter().map(|r| r.bytes).sum::<u64>();
        if batch > 0 && input > BATCH_INPUT_BYTES {
            break;
        }
        batch += 1;
    }
    planned.truncate(batch);

    let mut out = None;
    let mut replacements = Vec::with_capacity(planned.len());
    let mut merged = Vec::new();
    for p in &planned {
        let inputs: Vec<&RunMeta> = p.window.iter().collect();
        merged.clear();
        shared.merged_entries(&inputs, p.reaches_oldest, &mut merged)?;
        if merged.is_empty() {
            replacements.push(None);
            continue;
        }
        let (state, key_group) = p.group;
        let key = RunKey {
            state,
            key_group,
            epoch: p.window[0].key.epoch,
            seq: shared.next_seq(),
        };
        if out.is_none() {
            out = Some(shared.files.create()?);
        }
        let file = out.as_mut().expect("created above");
        let run = shared.write_run(key, merged.iter().map(|(k, v)| (&k[..], &v[..])), file)?;
        replacements.push(Some(run));
    }
    let written: u64 = replacements.iter().flatten().map(|r| r.bytes).sum();
    if let Some(out) = out {
        let file = out.id;
        // Durable before it is listed: the removals of the runs it replaces may reach disk
        // with sled's next write, whatever flushes the store.
        shared.files.finish(out, true)?;
        for run in replacements.iter().flatten() {
            shared.record_run(run)?;
        }
        shared
            .files
            .add_refs(file, replacements.iter().flatten().count());
    }

    let mut manifest = write(&shared.manifest);
    let mut removed = 0;
    for (p, replacement) in planned.iter().zip(replacements) {
        let runs = manifest
            .get_mut(&p.group)
            .expect("only merges change a group's older runs");
        let at = runs
            .iter()
            .position(|r| r.key == p.window[0].key)
            .expect("the merged runs are still listed");
        runs.splice(at..at + p.window.len(), replacement);
        if runs.is_empty() {
            manifest.remove(&p.group);
        }
        for run in &p.window {
            shared.remove_run(run, &manifest)?;
            removed += run.bytes;
        }
    }
    Ok(Some(written + removed))
}

/// A merge [`merge_some`] may do: the runs of `window` in `group`, newest first.
struct Planned {
    group: (u32, u16),
    runs_in_group: usize,
    reaches_oldest: bool,
    window: Vec<RunMeta>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(epoch: u64, bytes: u64) -> RunMeta {
        RunMeta {
            key: RunKey {
                state: 0,
                key_group: 0,
                epoch,
                seq: epoch as u32,
            },
            entries: 1,
            bytes,
            file: 0,
            place: super::super::run::Place::Chunks(Default::default()),
        }
    }

    fn visibility(floor: u64) -> Visibility {
        Visibility {
            aborted: Vec::new(),
            floor,
        }
    }

    #[test]
    fn only_runs_at_or_below_the_floor_are_merged() {
        let runs = [
            run(9, 10),
            run(8, 10),
            run(7, 10),
            run(6, 10),
            run(5, 10),
            run(4, 10),
        ];
        assert_eq!(plan(&runs, &visibility(6)), None, "3 runs at the floor");
        assert_eq!(plan(&runs, &visibility(7)), Some(2..6));
        assert_eq!(plan(&runs, &visibility(9)), Some(0..6));
    }

    #[test]
    fn small_changes_merge_with_each_other_not_into_a_large_run() {
        // A large base and one small change: nothing to do.
        assert_eq!(plan(&[run(5, 10), run(4, 1000)], &visibility(9)), None);
        // Small changes merge with each other, the base stays.
        let small = [run(8, 10), run(7, 10), run(6, 10), run(5, 10), run(4, 1000)];
        assert_eq!(plan(&small, &visibility(9)), Some(0..4));
        // Gathered changes as large as half the base take the base in.
        let large = [run(7, 300), run(6, 100), run(5, 100), run(4, 1000)];
        assert_eq!(plan(&large, &visibility(9)), Some(0..4));
    }

    #[test]
    fn too_many_runs_are_all_merged_and_aborted_groups_wait() {
        let runs: Vec<RunMeta> = (0..=MAX_RUNS_AT_FLOOR as u64)
            .rev()
            .map(|e| run(e + 1, 1 << (3 * e)))
            .collect();
        assert_eq!(plan(&runs, &visibility(100)), Some(0..runs.len()));
        let aborted = Visibility {
            aborted: vec![(2, 2)],
            floor: 100,
        };
        assert_eq!(plan(&runs, &aborted), None);
    }
}
