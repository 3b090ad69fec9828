//! What travels on every edge of a job: records in batches, and the in-band control elements
//! (watermarks, idleness, checkpoint barriers, end of input) that move with them.

/// Event time: milliseconds since the Unix epoch. Processing time uses the same unit.
pub type EventTime = i64;

/// The watermark before any has been seen: every timestamp is at or after it.
pub const MIN_WATERMARK: EventTime = i64::MIN;

/// The watermark a bounded input sends when it ends: every window and timer fires.
pub const MAX_WATERMARK: EventTime = i64::MAX;

/// One record and its event time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record<T> {
    /// Event time of the record, in milliseconds since the epoch.
    pub timestamp: EventTime,
    /// The record itself.
    pub value: T,
}

impl<T> Record<T> {
    /// A record with its event time.
    pub fn new(timestamp: EventTime, value: T) -> Self {
        Record { timestamp, value }
    }

    /// The same event time with another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Record<U> {
        Record {
            timestamp: self.timestamp,
            value: f(self.value),
        }
    }
}

/// Records move in batches, never one channel send per record.
pub type Batch<T> = Vec<Record<T>>;

/// The marker of checkpoint `epoch`, injected by the sources and aligned by multi-input
/// operators (the checkpoint issue drives it; the runtime already carries and aligns it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointBarrier {
    /// The checkpoint's number, increasing from 1.
    pub epoch: u64,
    /// When the coordinator triggered it, in milliseconds since the epoch.
    pub triggered_at: i64,
}

/// The one element type on every edge.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamElement<T> {
    /// A batch of records, never empty.
    Data(Batch<T>),
    /// No record with a timestamp at or below this time will follow on this edge.
    Watermark(EventTime),
    /// The sender has no data for now (every partition it reads is idle): leave it out of the
    /// watermark minimum until it sends data or a watermark again.
    Idle,
    /// A checkpoint barrier: everything before it belongs to the epoch's snapshot.
    Barrier(CheckpointBarrier),
    /// The sender's input is finished; nothing follows.
    End,
}
