//! `omstream checkpoints`: what a job's state directory holds, and which checkpoint its next
//! start restores.

use anyhow::Context;
use chrono::{TimeZone, Utc};
use omstream_core::checkpoint::{CheckpointRecord, CheckpointStore};

use super::args::CheckpointsCommand;
use super::output::{print, table};
use super::units::format_bytes;

pub(crate) fn run(command: CheckpointsCommand) -> anyhow::Result<()> {
    match command {
        CheckpointsCommand::List { state_dir, json } => {
            let (store, job) = CheckpointStore::open_existing(&state_dir)?;
            let (records, damaged) = store.list()?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&records)?))?;
            } else {
                let mut text = format!("job '{job}' in {}\n", state_dir.display());
                text.push_str(&list_table(&records));
                if records.is_empty() {
                    text.push_str("(no complete checkpoint)\n");
                }
                if let Some(pinned) = store.pinned()? {
                    text.push_str(&format!("the next start restores checkpoint {pinned}\n"));
                }
                print(&text)?;
            }
            for bad in damaged {
                eprintln!(
                    "warning: {} is damaged and will not be restored: {}",
                    bad.path.display(),
                    bad.problem
                );
            }
            Ok(())
        }
        CheckpointsCommand::Show { state_dir, epoch } => {
            let (store, _) = CheckpointStore::open_existing(&state_dir)?;
            let record = store.get(epoch)?;
            print(&show(&record))?;
            Ok(())
        }
        CheckpointsCommand::Use { state_dir, epoch } => {
            let (store, job) = CheckpointStore::open_existing(&state_dir)?;
            store
                .pin(epoch)
                .with_context(|| format!("cannot choose checkpoint {epoch}"))?;
            print(&format!(
                "the next start of job '{job}' restores checkpoint {epoch} (later checkpoints are then superseded)\n"
            ))?;
            Ok(())
        }
    }
}

fn time(millis: i64) -> String {
    Utc.timestamp_millis_opt(millis).single().map_or_else(
        || millis.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

fn list_table(records: &[CheckpointRecord]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.epoch.to_string(),
                time(r.triggered_at),
                format!("{} ms", r.duration_ms),
                format!("{} ms", r.alignment_ms),
                r.state_entries.to_string(),
                format_bytes(r.state_bytes),
                format_bytes(r.store_bytes),
                r.sources.len().to_string(),
                r.sources.iter().map(|s| s.offset).sum::<i64>().to_string(),
                if r.is_final { "final" } else { "" }.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "EPOCH",
            "TRIGGERED (UTC)",
            "DURATION",
            "ALIGNMENT",
            "CHANGED",
            "WRITTEN",
            "STATE SIZE",
            "PARTITIONS",
            "OFFSETS (SUM)",
            "",
        ],
        &rows,
    )
}

fn show(record: &CheckpointRecord) -> String {
    let mut text = format!(
        "checkpoint {} of job '{}'{}\ntriggered {} UTC, complete after {} ms (alignment {} ms)\nstate: {} entries changed, {} written, {} on disk\n",
        record.epoch,
        record.job,
        if record.is_final { " (final)" } else { "" },
        time(record.triggered_at),
        record.duration_ms,
        record.alignment_ms,
        record.state_entries,
        format_bytes(record.state_bytes),
        format_bytes(record.store_bytes),
    );
    let rows: Vec<Vec<String>> = record
        .sources
        .iter()
        .map(|s| {
            vec![
                s.operator.clone(),
                s.queue.clone(),
                s.partition.to_string(),
                s.offset.to_string(),
            ]
        })
        .collect();
    text.push_str(&table(
        &["SOURCE", "QUEUE", "PARTITION", "NEXT OFFSET"],
        &rows,
    ));
    text.push_str(&format!(
        "job graph: {}\n",
        record
            .fingerprint
            .nodes
            .iter()
            .map(|n| format!("{} ({})", n.name, n.kind))
            .collect::<Vec<_>>()
            .join(" -> ")
    ));
    text
}
