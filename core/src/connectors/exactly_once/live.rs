//! The check listener of writing producers on drivers that check back open transactions
//! while the job runs ([`TransactionChecks::WhileRunning`](crate::oms::TransactionChecks),
//! RocketMQ): the broker asks a live producer of the sink's own producer group, again and
//! again, until the transaction is decided.
//!
//! Every writer decides, for its job and sink:
//! - a transaction of an **earlier run** (epoch below this run's first): by the recovery
//!   rule, committed when its epoch is part of the restored lineage, rolled back otherwise;
//! - a transaction of **this run**: committed once its epoch's checkpoint completed more than
//!   [`COMMIT_GRACE`] ago (the subtask that prepared it committed it then: if the broker still
//!   asks, that commit was lost, say to a broker restart); until then `Unknown`, so that a
//!   check racing with the subtask's own commit never commits it twice;
//! - anything else (another job's or sink's): `Unknown`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{own_epoch, recovery_decision};
use crate::oms::{Message, TransactionState, TransactionStateCheckListener};
use crate::runtime::SubtaskInfo;

/// How long after its checkpoint completed a transaction of this run is taken as committed
/// and its commit as lost. Well above the time a subtask takes to send its commits, and the
/// time a broker takes to record them (RocketMQ: `transactionOpBatchInterval`, 3 s).
pub(crate) const COMMIT_GRACE: Duration = Duration::from_secs(10);

/// The listener of a sink subtask's writing producer on a driver that checks back while the
/// job runs.
pub(crate) struct LiveRule {
    job: String,
    sink: String,
    lineage: SubtaskInfo,
    /// Checkpoints of this run that completed, and when.
    completed: Mutex<BTreeMap<u64, Instant>>,
}

impl LiveRule {
    pub(crate) fn new(job: String, sink: String, lineage: SubtaskInfo) -> Self {
        LiveRule {
            job,
            sink,
            lineage,
            completed: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes that checkpoint `epoch` completed now.
    pub(crate) fn completed(&self, epoch: u64) {
        self.completed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(epoch)
            .or_insert_with(Instant::now);
    }

    /// The decision about a transaction of this job and sink prepared in `epoch`.
    fn decide(&self, epoch: u64, now: Instant) -> TransactionState {
        if epoch < self.lineage.first_epoch {
            return recovery_decision(&self.lineage, epoch);
        }
        // The first checkpoint at or after the epoch committed it.
        let completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        match completed.range(epoch..).next() {
            Some((_, &at)) if now.saturating_duration_since(at) >= COMMIT_GRACE => {
                TransactionState::Commit
            }
            _ => TransactionState::Unknown,
        }
    }
}

impl TransactionStateCheckListener for LiveRule {
    fn check(&self, message: &Message) -> TransactionState {
        tracing::debug!(
            job = %self.job,
            sink = %self.sink,
            transaction = message.extension_header.transaction_id.as_deref().unwrap_or(""),
            properties = ?message.properties,
            "the broker checks back a transaction"
        );
        let Some(epoch) = own_epoch(message, &self.job, &self.sink) else {
            return TransactionState::Unknown;
        };
        let decision = self.decide(epoch, Instant::now());
        if decision != TransactionState::Unknown {
            tracing::info!(
                job = %self.job,
                sink = %self.sink,
                epoch,
                first_epoch = self.lineage.first_epoch,
                restored_epoch = ?self.lineage.restored_epoch,
                transaction = message.extension_header.transaction_id.as_deref().unwrap_or(""),
                ?decision,
                "decided a transaction the broker checked back"
            );
        }
        decision
    }
}

/// The producer group of a sink's writing producers: one per job and sink, so that the
/// broker asks only producers that know the sink's epochs. RocketMQ allows letters, digits,
/// `-`, `_`, `%` and `|`, up to 120 characters.
pub(crate) fn producer_group(job: &str, sink: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let group = format!("omstream_eo_{}_{}", clean(job), clean(sink));
    if group.len() <= 120 {
        return group;
    }
    // Too long: a prefix, and a hash of the whole names so that groups stay distinct.
    let hash = crc32fast::hash(format!("{job}\u{0}{sink}").as_bytes());
    format!("{}_{hash:08x}", &group[..111])
}

#[cfg(test)]
mod tests {
    use super::super::{TXN_EPOCH, TXN_JOB, TXN_SINK};
    use super::*;

    fn prepared(job: &str, sink: &str, epoch: &str) -> Message {
        Message::new("q", "x")
            .with_property(TXN_JOB, job)
            .with_property(TXN_SINK, sink)
            .with_property(TXN_EPOCH, epoch)
    }

    fn rule() -> LiveRule {
        let mut lineage = SubtaskInfo::new("s", 0, 1);
        lineage.restored_epoch = Some(5);
        lineage.aborted_epochs = vec![(2, 3)];
        lineage.first_epoch = 8;
        LiveRule::new("j".into(), "s".into(), lineage)
    }

    #[test]
    fn earlier_runs_are_decided_by_the_recovery_rule_and_others_left_open() {
        // The rule itself is tested with `EpochRule`; here, that it applies below the run's
        // first epoch, and that what is not this sink's stays open.
        let rule = rule();
        let check = |job, sink, epoch| rule.check(&prepared(job, sink, epoch));
        assert_eq!(check("j", "s", "5"), TransactionState::Commit);
        assert_eq!(check("j", "s", "3"), TransactionState::Rollback);
        assert_eq!(check("j", "s", "7"), TransactionState::Rollback);
        assert_eq!(check("other", "s", "1"), TransactionState::Unknown);
        assert_eq!(check("j", "s", "x"), TransactionState::Unknown);
    }

    #[test]
    fn this_run_s_epochs_are_committed_only_well_after_their_checkpoint() {
        let rule = rule();
        let start = Instant::now();
        assert_eq!(rule.decide(8, start), TransactionState::Unknown);
        rule.completed(9);
        let at = rule.completed.lock().unwrap()[&9];
        // Epochs 8 and 9 were committed by checkpoint 9; 10 not yet.
        assert_eq!(rule.decide(8, at), TransactionState::Unknown);
        assert_eq!(rule.decide(9, at + COMMIT_GRACE), TransactionState::Commit);
        assert_eq!(rule.decide(8, at + COMMIT_GRACE), TransactionState::Commit);
        assert_eq!(
            rule.decide(10, at + COMMIT_GRACE),
            TransactionState::Unknown
        );
    }

    #[test]
    fn producer_groups_are_valid_rocketmq_group_names() {
        assert_eq!(
            producer_group("shop totals", "out.sink"),
            "omstream_eo_shop_totals_out_sink"
        );
        let long = producer_group(&"j".repeat(200), "s");
        assert_eq!(long.len(), 120);
        assert_ne!(long, producer_group(&"j".repeat(201), "s"));
    }
}
