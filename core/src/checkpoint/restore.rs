//! Starting a run of a job with checkpoints: open its state directory, choose the checkpoint
//! to restore, check that it fits the job graph, and prepare the state store.

use std::sync::Arc;

use super::{
    CheckpointConfig, CheckpointError, CheckpointRecord, CheckpointStore, JobFingerprint,
    RestoreMode,
};
use crate::state::{DurableBackend, StateStore};

/// What a run of a checkpointed job starts from.
#[derive(Debug)]
pub(crate) struct PreparedRun {
    pub(crate) checkpoints: CheckpointStore,
    pub(crate) state: Arc<StateStore>,
    /// The checkpoint restored; `None` for a fresh start.
    pub(crate) restored: Option<CheckpointRecord>,
    /// The run's first epoch.
    pub(crate) first_epoch: u64,
    pub(crate) backend: DurableBackend,
}

/// Opens the state directory of job `job` and restores what `config` asks for.
pub(crate) fn prepare_run(
    config: &CheckpointConfig,
    job: &str,
    fingerprint: &JobFingerprint,
) -> Result<PreparedRun, CheckpointError> {
    config.validate()?;
    let checkpoints = CheckpointStore::open(&config.dir, job)?;
    if config.restore == RestoreMode::Fresh {
        checkpoints.clear()?;
    }
    let pinned = checkpoints.pinned()?;
    let restored = match (config.restore, pinned) {
        (RestoreMode::Latest, Some(epoch)) => Some(checkpoints.get(epoch)?),
        (RestoreMode::Latest, None) => checkpoints.latest()?,
        (RestoreMode::Epoch(epoch), _) => Some(checkpoints.get(epoch)?),
        (RestoreMode::Fresh, _) => None,
    };
    let state = Arc::new(StateStore::open(&config.dir)?);
    if let Some(record) = &restored {
        check_fits(record, fingerprint, &state)?;
    }
    let first_epoch = state.begin_run(restored.as_ref().map_or(0, |r| r.epoch))?;
    if let Some(record) = &restored {
        // Later checkpoints are superseded: their state is now hidden, so they must never be
        // restored.
        checkpoints.remove_after(record.epoch)?;
    }
    checkpoints.unpin()?;
    match &restored {
        Some(record) => tracing::info!(
            job,
            epoch = record.epoch,
            partitions = record.sources.len(),
            "restoring checkpoint"
        ),
        None => {
            tracing::info!(job, dir = %config.dir.display(), "no checkpoint to restore; starting fresh")
        }
    }
    let backend = DurableBackend::new(state.clone(), first_epoch, config.cache_capacity);
    Ok(PreparedRun {
        checkpoints,
        state,
        restored,
        first_epoch,
        backend,
    })
}

/// A checkpoint fits a job when every source with offsets in it, and every operator with
/// state, is still in the job under the same name, of the same kind, reading the same inputs.
fn check_fits(
    record: &CheckpointRecord,
    job: &JobFingerprint,
    state: &StateStore,
) -> Result<(), CheckpointError> {
    let refuse = |problem: String| CheckpointError::GraphChanged {
        epoch: record.epoch,
        problem,
    };
    let mut sources: Vec<&str> = record.sources.iter().map(|s| s.operator.as_str()).collect();
    sources.dedup();
    for source in sources {
        match job.node(source) {
            Some(node) if node.kind == "source" => {}
            Some(node) => {
                return Err(refuse(format!(
                    "'{source}' was a source and is now a {}",
                    node.kind
                )))
            }
            None => {
                return Err(refuse(format!(
                    "source '{source}' has offsets in the checkpoint but is not in the job"
                )))
            }
        }
    }
    let mut stateful: Vec<String> = state.state_names()?.into_iter().map(|(op, _)| op).collect();
    stateful.sort();
    stateful.dedup();
    for operator in stateful {
        let Some(then) = record.fingerprint.node(&operator) else {
            continue; // state of an operator the checkpoint's job did not have
        };
        match job.node(&operator) {
            None => {
                return Err(refuse(format!(
                    "operator '{operator}' has state in the checkpoint but is not in the job"
                )))
            }
            Some(now) if now.inputs != then.inputs || now.kind != then.kind => {
                return Err(refuse(format!(
                    "operator '{operator}' read {:?} when the checkpoint was taken and now reads {:?}",
                    then.inputs, now.inputs
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}
