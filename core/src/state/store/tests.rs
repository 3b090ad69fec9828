use super::*;
use std::ops::Range;

use crate::state::compaction::MIN_MERGE;
use crate::state::run::{put, Place, PACKED_RUN_BYTES};
use crate::state::store::write as write_lock;

/// Regression: a job run again in the same process right after the first ended could find
/// the database still locked by sled's I/O threads, and failed to start.
#[test]
fn an_open_database_is_waited_for_then_reported_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let first = StateStore::open(dir.path()).unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(first);
    });
    let second = StateStore::open(dir.path()).expect("opened once the first let go");
    releaser.join().unwrap();

    let started = std::time::Instant::now();
    let Err(error) = StateStore::open(dir.path()) else {
        panic!("opened while `second` holds it");
    };
    assert!(started.elapsed() >= StateStore::LOCK_WAIT);
    assert!(matches!(error, StateError::InUse { .. }), "{error:?}");
    assert!(error.to_string().contains("in use by another running job"));
    drop(second);
}

const GROUP: u16 = 3;

/// Writes `entries` of state 0, key group 3, as one snapshot of `epoch`, through the writer.
fn write(store: &StateStore, epoch: u64, entries: &[(&[u8], &[u8])]) {
    let mut groups: Vec<GroupChanges> = (0..=GROUP).map(|_| GroupChanges::default()).collect();
    for (key, value) in entries {
        groups[GROUP as usize]
            .push::<()>(put(key), put(value))
            .unwrap();
    }
    store.submit(Box::new(move |shared| {
        shared.write_changes(0, epoch, groups)
    }));
}

fn get(store: &StateStore, key: &[u8]) -> Option<Vec<u8>> {
    store.read(0, GROUP, key).unwrap().map(|v| v.to_vec())
}

#[test]
fn reads_see_the_newest_entry_and_skip_aborted_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.begin_run(0).unwrap(), 2);
    write(&store, 2, &[(b"a", b"one")]);
    write(&store, 3, &[(b"a", b"two"), (b"ab", b"other key")]);
    assert_eq!(get(&store, b"a").as_deref(), Some(&b"two"[..]));
    store.set_last_triggered_epoch(3).unwrap();
    // Crash; checkpoint 2 is the latest complete one.
    store.flush().unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let first = store.begin_run(2).unwrap();
    assert!(first > 4);
    assert_eq!(get(&store, b"a").as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&store, b"ab"), None, "written only in an aborted epoch");
    assert_eq!(store.runs(0, GROUP).len(), 1, "the aborted run is dropped");
    write(&store, first, &[(b"a", b"three")]);
    assert_eq!(get(&store, b"a").as_deref(), Some(&b"three"[..]));
    let keys = store.scan(0, 0..=127).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].0, b"a");
}

#[test]
fn a_run_spans_many_chunks_and_every_key_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.begin_run(0).unwrap();
    let keys: Vec<[u8; 4]> = (0u32..20_000).map(|i| (i * 2).to_be_bytes()).collect();
    let value = [7u8; 40];
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &value[..])).collect();
    write(&store, 2, &entries);
    store.wait_applied().unwrap();
    let runs = store.runs(0, GROUP);
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].bytes > 10 * super::super::run::CHUNK_BYTES as u64,
        "{runs:?}"
    );
    for i in (0u32..40_000).step_by(7) {
        let found = get(&store, &i.to_be_bytes());
        assert_eq!(found.is_some(), i % 2 == 0, "key {i}");
    }
    assert_eq!(store.scan(0, 0..=127).unwrap().len(), 20_000);
    assert_eq!(store.take_written_bytes(), runs[0].bytes);
}

#[test]
fn runs_at_or_below_the_floor_are_merged_and_deletions_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.begin_run(0).unwrap();
    for epoch in 2..10u64 {
        let value = format!("v{epoch}");
        write(&store, epoch, &[(b"k", value.as_bytes()), (b"gone", b"x")]);
    }
    write(&store, 10, &[(b"gone", b"")]);
    store.settle().unwrap();
    assert_eq!(
        store.runs(0, GROUP).len(),
        9,
        "nothing merged while the floor is 0"
    );
    store.set_floor(7).unwrap();
    store.settle().unwrap();
    let runs = store.runs(0, GROUP);
    // Epochs 10, 9, 8 above the floor; 2..=7 merged into one run of epoch 7.
    let epochs: Vec<u64> = runs.iter().map(|r| r.key.epoch).collect();
    assert_eq!(epochs, vec![10, 9, 8, 7]);
    assert_eq!(get(&store, b"k").as_deref(), Some(&b"v9"[..]));
    store.set_floor(10).unwrap();
    store.settle().unwrap();
    let runs = store.runs(0, GROUP);
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].entries, 1,
        "the deletion reached the oldest run and went"
    );
    assert_eq!(get(&store, b"gone"), None);
    assert_eq!(get(&store, b"k").as_deref(), Some(&b"v9"[..]));
    // A reopened store finds the merged runs (the manifest is durable).
    store.flush().unwrap();
    assert_eq!(
        store.shared.files.count(),
        1,
        "the files of merged runs are deleted"
    );
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.runs(0, GROUP).len(), 1);
    assert_eq!(get(&store, b"k").as_deref(), Some(&b"v9"[..]));
}

/// Writes `keys` entries of 100 bytes into each of 128 key groups of state 0 as one snapshot
/// of `epoch`, keys `key_group | index`, values all `epoch`.
fn write_every_group(store: &StateStore, epoch: u64, keys: Range<u32>) {
    let mut groups: Vec<GroupChanges> = (0..128).map(|_| GroupChanges::default()).collect();
    for (group, changes) in groups.iter_mut().enumerate() {
        for index in keys.clone() {
            let key = [(group as u32).to_be_bytes(), index.to_be_bytes()].concat();
            changes
                .push::<()>(put(&key), put(&[epoch as u8; 100]))
                .unwrap();
        }
    }
    store.submit(Box::new(move |shared| {
        shared.write_changes(0, epoch, groups)
    }));
}

fn read_key(store: &StateStore, group: u16, index: u32) -> Option<Vec<u8>> {
    let key = [u32::from(group).to_be_bytes(), index.to_be_bytes()].concat();
    store.read(0, group, &key).unwrap().map(|v| v.to_vec())
}

/// Packs in the manifest (entries under a run id with the packs' key group).
fn packs(store: &StateStore) -> usize {
    store
        .shared
        .manifest_tree
        .iter()
        .keys()
        .filter(|id| RunKey::from_id(id.as_ref().unwrap()).key_group == PACK_GROUP)
        .count()
}

/// A snapshot's small runs (one per key group) go into a few packs instead of one sled
/// entry each; reads, merges, aborted epochs and a reopened store find them as before.
#[test]
fn small_runs_of_many_key_groups_share_packs() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.begin_run(0).unwrap();
    // Every group: 1,000 entries (about 100 KB, runs of their own), then 20 (2.4 KB).
    write_every_group(&store, 2, 0..1000);
    write_every_group(&store, 3, 0..20);
    store.set_last_triggered_epoch(3).unwrap();
    store.flush().unwrap();
    let runs = store.runs(0, 5);
    assert!(matches!(runs[0].place, Place::Packed { .. }), "{runs:?}");
    assert!(matches!(runs[1].place, Place::Chunks(_)), "{runs:?}");
    // 128 runs of 2.4 KB in packs of about 32 KB.
    assert!((9..=12).contains(&packs(&store)), "{} packs", packs(&store));
    assert_eq!(store.shared.manifest_tree.len(), 128 + packs(&store));
    assert_eq!(read_key(&store, 5, 10), Some(vec![3; 100]));
    assert_eq!(read_key(&store, 127, 19), Some(vec![3; 100]));
    assert_eq!(read_key(&store, 5, 500), Some(vec![2; 100]));
    assert_eq!(read_key(&store, 5, 1000), None);
    let scanned = store.scan(0, 0..=127).unwrap();
    assert_eq!(scanned.len(), 128 * 1000);
    // An aborted epoch's packs go; a reopened store reads both kinds of run.
    write_every_group(&store, 4, 0..20);
    store.set_last_triggered_epoch(4).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    let first = store.begin_run(3).unwrap();
    assert_eq!(store.runs(0, 5).len(), 2, "epoch 4's run is dropped");
    assert!(
        (9..=12).contains(&packs(&store)),
        "epoch 4's packs are removed"
    );
    assert_eq!(read_key(&store, 5, 10), Some(vec![3; 100]));
    // Merged (4 small runs, not the large one: see `compaction`), the packed runs of each
    // group end in one run of its own, and every pack goes.
    for epoch in first..first + 3 {
        write_every_group(&store, epoch, 0..20);
    }
    store.set_floor(first + 2).unwrap();
    store.settle().unwrap();
    for group in [0, 5, 127] {
        let runs = store.runs(0, group);
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0].entries, 20);
        assert!(matches!(runs[0].place, Place::Chunks(_)), "{runs:?}");
    }
    assert_eq!(packs(&store), 0);
    assert_eq!(store.shared.manifest_tree.len(), 2 * 128);
    assert_eq!(read_key(&store, 5, 10), Some(vec![first as u8 + 2; 100]));
    assert_eq!(read_key(&store, 5, 999), Some(vec![2; 100]));
}

/// Removing one member of a pack rewrites the pack's manifest entry: after a reopen, the
/// removed run stays gone and the others are still read from the pack.
#[test]
fn a_pack_outlives_its_removed_members() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.begin_run(0).unwrap();
    write_every_group(&store, 2, 0..20);
    store.wait_applied().unwrap();
    let member = store.runs(0, 5)[0].clone();
    let pack = member.pack().expect("packed");
    {
        let mut manifest = write_lock(&store.shared.manifest);
        manifest.remove(&(0, 5));
        store.shared.remove_run(&member, &manifest).unwrap();
    }
    store.flush().unwrap();
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.runs(0, 5).is_empty());
    assert_eq!(read_key(&store, 5, 3), None);
    let sharing: Vec<u16> = (0..128)
        .filter(|&group| store.runs(0, group).first().and_then(RunMeta::pack) == Some(pack))
        .collect();
    assert!(sharing.len() > 1 && !sharing.contains(&5), "{sharing:?}");
    for group in sharing {
        assert_eq!(read_key(&store, group, 3), Some(vec![2; 100]));
    }
}

#[test]
fn a_damaged_chunk_is_reported_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.begin_run(0).unwrap();
    // A run of its own (more than a pack takes), and a small run in a pack.
    let large = vec![7u8; PACKED_RUN_BYTES];
    write(&store, 2, &[(b"large", &large)]);
    write(&store, 3, &[(b"k", b"value")]);
    store.wait_applied().unwrap();
    let runs = store.runs(0, GROUP);
    let (Place::Packed { offset, .. }, Place::Chunks(_)) = (&runs[0].place, &runs[1].place) else {
        panic!("a packed run and one of its own: {runs:?}");
    };
    assert_eq!(get(&store, b"large"), Some(large));
    let (packed, own) = (
        store.shared.files.path(runs[0].file),
        store.shared.files.path(runs[1].file),
    );
    let offset = *offset;
    store.flush().unwrap();
    drop(store);
    // The packed chunk's header claims more entries than it has room for; the other run's
    // file lost its end.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(packed)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0u8, 0, 0, 5], offset).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&own).unwrap();
    file.set_len(std::fs::metadata(&own).unwrap().len() / 2)
        .unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    for key in [&b"k"[..], b"large"] {
        let error = store.read(0, GROUP, key).unwrap_err();
        assert!(matches!(error, StateError::Corrupt { .. }), "{error:?}");
        assert!(
            error.to_string().contains("restore an older checkpoint"),
            "{error}"
        );
    }
}

#[test]
fn state_written_by_the_older_layout_is_refused_clearly() {
    for legacy in LEGACY_TREES {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("state.sled")).unwrap();
            db.open_tree(legacy).unwrap().insert(b"k", b"v").unwrap();
            db.flush().unwrap();
        }
        let error = StateStore::open(dir.path()).unwrap_err();
        assert!(
            error.to_string().contains("older omstream"),
            "{legacy}: {error}"
        );
    }
}

#[test]
fn state_ids_are_stable_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let store = StateStore::open(dir.path()).unwrap();
        let a = store.state_id("window", "accumulators").unwrap();
        let b = store.state_id("join", "left").unwrap();
        store.flush().unwrap();
        (a, b)
    };
    assert_ne!(a, b);
    let store = StateStore::open(dir.path()).unwrap();
    assert_eq!(store.state_id("join", "left").unwrap(), b);
    assert_eq!(store.state_id("window", "accumulators").unwrap(), a);
    assert_eq!(store.state_names().unwrap().len(), 2);
}

#[test]
fn ranges_merge() {
    let mut r = vec![(5, 6), (1, 2), (3, 4), (9, 10)];
    merge_ranges(&mut r);
    assert_eq!(r, vec![(1, 6), (9, 10)]);
}

/// Regression: the writer merged only when a job woke it while no flush was awaited, which
/// in a running job never happens (each snapshot's write sets the flag its flush clears), so
/// runs piled up. Driven as the coordinator drives it, without `settle()`.
#[test]
fn runs_are_merged_in_the_background_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let first = store.begin_run(0).unwrap();
    for epoch in first..first + 8 {
        store.set_last_triggered_epoch(epoch).unwrap();
        let value = format!("v{epoch}");
        write(&store, epoch, &[(b"k", value.as_bytes())]);
        store.flush().unwrap();
        // Retaining 3 checkpoints.
        store.set_floor(epoch.saturating_sub(2)).unwrap();
    }
    // Unmerged, the 8 runs stay. The floor ends at the 6th; depending on when the writer got
    // to merge (the floor rose by one per checkpoint), the 6 runs at or below it end as one
    // merged run plus up to 2 newer ones too few to merge again: 3 to 5 runs in all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.runs(0, GROUP).len() > 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "runs were not merged: {} runs",
            store.runs(0, GROUP).len()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let last = format!("v{}", first + 7);
    assert_eq!(get(&store, b"k").as_deref(), Some(last.as_bytes()));
}

/// Regression: merging waited for every checkpoint's flush, so with checkpoints back to back
/// (a new one triggered before the writer was idle) runs piled up without end.
#[test]
fn runs_are_merged_even_when_checkpoints_follow_each_other_without_pause() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let first = store.begin_run(0).unwrap();
    for epoch in first..first + 40 {
        // The next checkpoint is triggered before the writer gets an idle moment with
        // nothing unflushed: merging may only happen as backpressure.
        store.set_last_triggered_epoch(epoch).unwrap();
        let value = format!("v{epoch}");
        write(&store, epoch, &[(b"k", value.as_bytes())]);
        store.set_last_triggered_epoch(epoch + 1).unwrap();
        store.wait_applied().unwrap();
        store.set_floor(epoch.saturating_sub(2)).unwrap();
    }
    // The writer merges when it has no job waiting: give it the moment (a hang guard).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.runs(0, GROUP).len() > PILE_UP_RUNS {
        assert!(
            std::time::Instant::now() < deadline,
            "{} runs piled up",
            store.runs(0, GROUP).len()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let last = format!("v{}", first + 39);
    assert_eq!(get(&store, b"k").as_deref(), Some(last.as_bytes()));
}

/// Regression: back-to-back checkpoints of every key of every key group. Merging one group
/// at a time, the first groups in order, with an fsync per merge, fell behind: runs and run
/// files grew with every checkpoint (40 checkpoints of 2.3 MB left 90 MB of files). The run
/// files emptied by merges must be deleted and what is on disk level off.
#[test]
fn run_files_level_off_when_checkpoints_of_every_key_follow_each_other() {
    const GROUPS: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let first = store.begin_run(0).unwrap();
    let mut on_disk = Vec::new();
    let mut per_checkpoint = 0;
    for epoch in first..first + 40 {
        store.set_last_triggered_epoch(epoch).unwrap();
        let mut groups: Vec<GroupChanges> = (0..GROUPS).map(|_| GroupChanges::default()).collect();
        for (g, changes) in groups.iter_mut().enumerate() {
            for k in 0..400u32 {
                let key = format!("{g}-{k:05}");
                changes
                    .push::<()>(put(key.as_bytes()), put(&[epoch as u8; 24]))
                    .unwrap();
            }
        }
        store.submit(Box::new(move |shared| {
            shared.write_changes(0, epoch, groups)
        }));
        store.flush().unwrap();
        per_checkpoint = store.take_written_bytes();
        // Three checkpoints retained, as by default.
        store.set_floor(epoch.saturating_sub(2)).unwrap();
        on_disk.push(store.shared.files.size().unwrap());
    }
    // Merging may fall behind a busy machine until runs pile up, no further.
    let most = *on_disk.iter().max().unwrap();
    let bound = (PILE_UP_RUNS as u64 + 4) * per_checkpoint;
    assert!(
        most <= bound,
        "{most} bytes of run files for checkpoints of {per_checkpoint} bytes: {on_disk:?}"
    );
    // Given a moment, it catches up.
    store.settle().unwrap();
    store.flush().unwrap();
    let settled = store.shared.files.size().unwrap();
    assert!(
        settled <= 8 * per_checkpoint,
        "{settled} bytes of run files once merged, for checkpoints of {per_checkpoint} bytes"
    );
    let runs = (0..GROUPS as u16)
        .map(|g| store.runs(0, g).len())
        .max()
        .unwrap();
    assert!(runs < MIN_MERGE + 3, "{runs} runs in a group once merged");
    let value = store.read(0, 7, b"7-00123").unwrap().unwrap();
    assert_eq!(&value[..], &[(first + 39) as u8; 24][..]);
}
