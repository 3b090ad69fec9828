//! Built-in sources and sinks that need no broker: in-memory partitions in, collected records
//! or a callback out. Tests, examples and embedders use them.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::element::{Batch, Record};
use super::error::BoxError;
use super::graph::{Data, Stream, StreamEnv};
use super::operator::SubtaskInfo;
use super::sink::Sink;
use super::source::{Source, SourceContext, SourceOutput};
use super::watermark::{PartitionWatermarks, WatermarkStrategy, WatermarkUpdate};

/// A bounded source over in-memory partitions of timestamped records. Partition `p` is read by
/// subtask `p % parallelism`; watermarks follow the strategy per partition, exactly as an OMS
/// source would generate them, so tests see realistic out-of-order behaviour.
pub struct MemorySource<T> {
    partitions: Vec<VecDeque<Record<T>>>,
    watermarks: PartitionWatermarks,
    batch_size: usize,
    next_partition: usize,
    watermark_pending: bool,
}

impl<T> fmt::Debug for MemorySource<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySource")
            .field("partitions", &self.partitions.len())
            .finish()
    }
}

impl<T: Data> MemorySource<T> {
    /// A source for subtask `subtask` over its share of `partitions`.
    pub fn new(
        partitions: &[Vec<Record<T>>],
        strategy: WatermarkStrategy,
        batch_size: usize,
        subtask: &SubtaskInfo,
    ) -> Self {
        let mine: Vec<VecDeque<Record<T>>> = partitions
            .iter()
            .enumerate()
            .filter(|(p, _)| p % subtask.parallelism == subtask.index)
            .map(|(_, records)| records.iter().cloned().collect())
            .collect();
        MemorySource {
            watermarks: PartitionWatermarks::new(strategy, mine.len(), 0),
            partitions: mine,
            batch_size: batch_size.max(1),
            next_partition: 0,
            watermark_pending: false,
        }
    }
}

#[async_trait]
impl<T: Data> Source<T> for MemorySource<T> {
    async fn poll(&mut self, ctx: &SourceContext) -> Result<SourceOutput<T>, BoxError> {
        let now = ctx.clock.now();
        if self.watermark_pending {
            self.watermark_pending = false;
            if let WatermarkUpdate::Advanced(w) = self.watermarks.current(now) {
                return Ok(SourceOutput::Watermark(w));
            }
        }
        let count = self.partitions.len();
        for step in 0..count {
            let partition = (self.next_partition + step) % count;
            let queue = &mut self.partitions[partition];
            if queue.is_empty() {
                continue;
            }
            let take = queue.len().min(self.batch_size);
            let batch: Batch<T> = queue.drain(..take).collect();
            for record in &batch {
                self.watermarks.observe(partition, record.timestamp, now);
            }
            self.next_partition = (partition + 1) % count;
            self.watermark_pending = true;
            return Ok(SourceOutput::Data(batch));
        }
        Ok(SourceOutput::Finished)
    }
}

/// Records a job collected, readable once (or while) it runs.
#[derive(Debug)]
pub struct CollectedRecords<T> {
    records: Arc<Mutex<Vec<Record<T>>>>,
}

impl<T> Clone for CollectedRecords<T> {
    fn clone(&self) -> Self {
        CollectedRecords {
            records: self.records.clone(),
        }
    }
}

impl<T: Clone> CollectedRecords<T> {
    /// The records so far, in arrival order (per subtask; interleaved across subtasks).
    pub fn records(&self) -> Vec<Record<T>> {
        self.records.lock().expect("collected records lock").clone()
    }

    /// The values so far, in arrival order.
    pub fn values(&self) -> Vec<T> {
        self.records
            .lock()
            .expect("collected records lock")
            .iter()
            .map(|r| r.value.clone())
            .collect()
    }

    /// How many records arrived.
    pub fn len(&self) -> usize {
        self.records.lock().expect("collected records lock").len()
    }

    /// Whether none arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct CollectSink<T> {
    records: Arc<Mutex<Vec<Record<T>>>>,
}

#[async_trait]
impl<T: Data> Sink<T> for CollectSink<T> {
    async fn write_batch(&mut self, mut batch: Batch<T>) -> Result<(), BoxError> {
        self.records
            .lock()
            .map_err(|_| "collected records lock poisoned")?
            .append(&mut batch);
        Ok(())
    }
}

struct ForEachSink<F> {
    f: F,
}

#[async_trait]
impl<T: Data, F: FnMut(Record<T>) + Send + 'static> Sink<T> for ForEachSink<F> {
    async fn write_batch(&mut self, batch: Batch<T>) -> Result<(), BoxError> {
        batch.into_iter().for_each(&mut self.f);
        Ok(())
    }
}

impl StreamEnv {
    /// A bounded source of in-memory partitions of timestamped records (see [`MemorySource`]).
    pub fn from_partitions<T: Data + Sync>(
        &self,
        name: &str,
        partitions: Vec<Vec<Record<T>>>,
        strategy: WatermarkStrategy,
    ) -> Stream<T> {
        let partitions = Arc::new(partitions);
        let batch_size = self.config().batch_size;
        self.add_source(name, move |subtask| {
            Box::new(MemorySource::new(
                &partitions,
                strategy,
                batch_size,
                subtask,
            )) as Box<dyn Source<T>>
        })
    }

    /// A bounded source of timestamped records in one partition.
    pub fn from_records<T: Data + Sync>(
        &self,
        name: &str,
        records: Vec<Record<T>>,
        strategy: WatermarkStrategy,
    ) -> Stream<T> {
        self.from_partitions(name, vec![records], strategy)
    }

    /// A bounded source of values without event time (all at time 0), in one partition.
    pub fn from_iter<T: Data + Sync>(
        &self,
        name: &str,
        values: impl IntoIterator<Item = T>,
    ) -> Stream<T> {
        let records = values.into_iter().map(|v| Record::new(0, v)).collect();
        self.from_records(name, records, WatermarkStrategy::default())
    }
}

impl<T: Data> Stream<T> {
    /// Collects every record into memory (for tests and small results).
    pub fn collect(&self) -> CollectedRecords<T> {
        let records = Arc::new(Mutex::new(Vec::new()));
        let shared = records.clone();
        self.sink("collect", move |_| {
            Box::new(CollectSink {
                records: shared.clone(),
            }) as Box<dyn Sink<T>>
        });
        CollectedRecords { records }
    }

    /// Calls `f` on every record, in each subtask (the function is cloned per subtask).
    pub fn for_each<F: FnMut(Record<T>) + Clone + Send + 'static>(&self, f: F) {
        self.sink("for_each", move |_| {
            Box::new(ForEachSink { f: f.clone() }) as Box<dyn Sink<T>>
        })
    }
}
