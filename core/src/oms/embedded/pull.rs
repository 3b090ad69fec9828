//! The embedded driver's pull consumer: a consumer group's competing consumption, with acks and
//! redelivery.
//!
//! Each partition of a bound queue is owned by one consumer of the group at a time (an `flock`
//! on `<group>/<queue>/<p>.owner`), in this process or another; a consumer claims what is free
//! and looks again every second, so partitions of a consumer that died move to the living ones.
//! The group's committed offset of a partition is its lowest unacknowledged offset, so after a
//! restart nothing unacknowledged is skipped (delivery is at least once).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::config::ConsumeFrom;
use super::groups::GroupOffsets;
use super::log::{LogReader, PartitionLog};
use super::streaming::release_due_throttled;
use super::Shared;
use crate::oms::{
    LifecycleCell, Message, MessageReceipt, OmsError, OmsStatus, PullConsumer, Result,
    SeekPosition, ServiceLifeState, ServiceLifecycle,
};

const CLAIM_INTERVAL: Duration = Duration::from_secs(1);
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Unacknowledged messages a partition may have out before the consumer stops reading it.
const MAX_IN_FLIGHT: usize = 10_000;

#[derive(Debug)]
struct InFlight {
    message: Message,
    deadline: Instant,
    deliveries: u32,
}

#[derive(Debug)]
struct Claim {
    queue: Arc<str>,
    log: Arc<PartitionLog>,
    offsets: GroupOffsets,
    /// Holds the ownership lock.
    _owner: File,
    reader: LogReader,
    in_flight: BTreeMap<i64, InFlight>,
    committed: i64,
    dirty: bool,
    last_commit: Instant,
    last_release: Option<Instant>,
}

impl Claim {
    fn low_water(&self) -> i64 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.reader.position())
    }

    fn flush(&mut self, force: bool) -> Result<()> {
        if self.dirty && (force || self.last_commit.elapsed() >= COMMIT_INTERVAL) {
            self.offsets.commit(self.log.partition, self.committed)?;
            self.dirty = false;
            self.last_commit = Instant::now();
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct PullState {
    bound: Vec<String>,
    claims: Vec<Claim>,
    next_claim: Option<Instant>,
    round_robin: usize,
}

/// The embedded pull consumer.
#[derive(Debug)]
pub(crate) struct EmbeddedPullConsumer {
    shared: Arc<Shared>,
    group: String,
    state: LifecycleCell,
    // A std mutex: it is never held across an await, and every section under it is short.
    inner: Mutex<PullState>,
}

impl EmbeddedPullConsumer {
    pub(crate) fn new(shared: Arc<Shared>, group: String) -> Self {
        Self {
            shared,
            group,
            state: LifecycleCell::new(ServiceLifeState::Initialized),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PullState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claim_free_partitions(&self, st: &mut PullState) -> Result<()> {
        for name in st.bound.clone() {
            let queue = self.shared.store.queue(&name)?;
            for log in &queue.partitions {
                if st
                    .claims
                    .iter()
                    .any(|c| *c.queue == *queue.name && c.log.partition == log.partition)
                {
                    continue;
                }
                let offsets =
                    GroupOffsets::new(&self.shared.store, &self.group, &name, self.shared.fsync())?;
                let Some(owner) = offsets.try_claim(log.partition)? else {
                    continue;
                };
                let committed = offsets.committed(log.partition)?;
                let position = match (committed, self.shared.config.consume_from) {
                    (Some(o), _) => SeekPosition::Offset(o),
                    (None, ConsumeFrom::Beginning) => SeekPosition::Beginning,
                    (None, ConsumeFrom::End) => SeekPosition::End,
                };
                let reader = log.reader(position)?;
                tracing::debug!(group = %self.group, queue = %queue.name, partition = log.partition, at = reader.position(), "claimed partition");
                st.claims.push(Claim {
                    queue: queue.name.as_str().into(),
                    log: Arc::clone(log),
                    offsets,
                    _owner: owner,
                    committed: reader.position(),
                    reader,
                    in_flight: BTreeMap::new(),
                    dirty: committed.is_none(),
                    last_commit: Instant::now(),
                    last_release: None,
                });
            }
        }
        Ok(())
    }

    fn take_available(&self, st: &mut PullState, max: usize) -> Result<Vec<Message>> {
        let now = Instant::now();
        if st.next_claim.is_none_or(|t| now >= t) {
            self.claim_free_partitions(st)?;
            st.next_claim = Some(now + CLAIM_INTERVAL);
        }
        let ack_timeout = self.shared.config.ack_timeout;
        let mut out = Vec::new();
        // Redeliveries first: they are the oldest messages.
        for claim in &mut st.claims {
            for flight in claim.in_flight.values_mut() {
                if out.len() >= max {
                    break;
                }
                if flight.deadline <= now {
                    flight.deliveries += 1;
                    flight.deadline = now + ack_timeout;
                    let mut m = flight.message.clone();
                    m.extension_header.delivery_count = flight.deliveries;
                    out.push(m);
                }
            }
        }
        let n = st.claims.len();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let claim = &mut st.claims[(st.round_robin + i) % n];
            if claim.in_flight.len() >= MAX_IN_FLIGHT {
                continue;
            }
            release_due_throttled(&self.shared, &claim.log, &mut claim.last_release);
            let room = (max - out.len()).min(MAX_IN_FLIGHT - claim.in_flight.len());
            let mut fresh = Vec::new();
            claim.reader.read_available(room, &mut fresh)?;
            for mut m in fresh {
                m.extension_header.delivery_count = 1;
                let offset = m.offset().unwrap_or_default();
                m.receipt = Some(MessageReceipt {
                    queue: claim.queue.clone(),
                    partition: claim.log.partition,
                    offset,
                });
                claim.in_flight.insert(
                    offset,
                    InFlight {
                        message: m.clone(),
                        deadline: now + ack_timeout,
                        deliveries: 1,
                    },
                );
                out.push(m);
            }
        }
        st.round_robin = st.round_robin.wrapping_add(1);
        for claim in &mut st.claims {
            claim.flush(false)?;
        }
        Ok(out)
    }

    fn release(&self, st: &mut PullState, keep: impl Fn(&Claim) -> bool) -> Result<()> {
        let mut first_err = None;
        for claim in &mut st.claims {
            if !keep(claim) {
                if let Err(e) = claim.flush(true) {
                    first_err.get_or_insert(e);
                }
            }
        }
        st.claims.retain(keep);
        first_err.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl ServiceLifecycle for EmbeddedPullConsumer {
    async fn start(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Stopping);
        let res = {
            let mut st = self.lock();
            st.next_claim = None;
            self.release(&mut st, |_| false)
        };
        self.state.set(ServiceLifeState::Stopped);
        res
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

#[async_trait]
impl PullConsumer for EmbeddedPullConsumer {
    async fn bind_queues(&self, queues: &[String]) -> Result<()> {
        // Bound as canonical names (`q`, not `default://q`), as claims and receipts name them.
        let mut names = Vec::with_capacity(queues.len());
        for q in queues {
            names.push(self.shared.store.queue(q)?.name.clone());
        }
        let mut st = self.lock();
        for name in names {
            if !st.bound.contains(&name) {
                st.bound.push(name);
            }
        }
        st.next_claim = None;
        Ok(())
    }

    async fn unbind_queues(&self, queues: &[String]) -> Result<()> {
        let mut names = Vec::with_capacity(queues.len());
        for q in queues {
            names.push(self.shared.store.queue(q)?.name.clone());
        }
        let mut st = self.lock();
        st.bound.retain(|q| !names.contains(q));
        let bound = st.bound.clone();
        self.release(&mut st, |c| bound.iter().any(|b| **b == *c.queue))
    }

    fn bound_queues(&self) -> Vec<String> {
        self.lock().bound.clone()
    }

    async fn receive(&self, timeout: Duration) -> Result<Option<Message>> {
        Ok(self.batch_receive(1, timeout).await?.pop())
    }

    async fn batch_receive(&self, max: usize, timeout: Duration) -> Result<Vec<Message>> {
        self.state.ensure_started("the pull consumer")?;
        let deadline = Instant::now() + timeout;
        loop {
            let batch = {
                let mut st = self.lock();
                self.take_available(&mut st, max.max(1))?
            };
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            tokio::time::sleep(self.shared.config.poll_interval.min(deadline - now)).await;
        }
    }

    async fn ack(&self, receipt: &MessageReceipt) -> Result<()> {
        let mut st = self.lock();
        let claim = st
            .claims
            .iter_mut()
            .find(|c| *c.queue == *receipt.queue && c.log.partition == receipt.partition)
            .ok_or_else(|| {
                OmsError::new(
                    crate::oms::OmsErrorKind::Runtime,
                    OmsStatus::BAD_REQUEST,
                    format!(
                        "this consumer does not own partition {} of queue '{}' (any more); the message will be redelivered",
                        receipt.partition, receipt.queue
                    ),
                )
            })?;
        claim.in_flight.remove(&receipt.offset);
        let low = claim.low_water();
        if low > claim.committed {
            claim.committed = low;
            claim.dirty = true;
        }
        claim.flush(false)
    }
}
