//! The checkpoint record: what a complete checkpoint consists of, written once all of its
//! participants have acknowledged it.

use serde::{Deserialize, Serialize};

/// One source partition's position in a checkpoint: the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOffset {
    /// The source operator.
    pub operator: String,
    /// The queue read.
    pub queue: String,
    /// The partition.
    pub partition: i32,
    /// The next offset to read after a restore.
    pub offset: i64,
}

/// One node of a job graph, as a checkpoint remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFingerprint {
    /// The node's name (unique in the job).
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub kind: String,
    /// The names of the nodes it reads, in order.
    pub inputs: Vec<String>,
}

/// The shape of a job graph: its nodes in the order they were added. Parallelism is not part
/// of it: a job may be restored at another parallelism.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFingerprint {
    /// The nodes.
    pub nodes: Vec<NodeFingerprint>,
}

impl JobFingerprint {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeFingerprint> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A complete checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    /// The checkpoint's epoch: state as of this epoch, sources at these offsets.
    pub epoch: u64,
    /// The job's name.
    pub job: String,
    /// The job graph it was taken of.
    pub fingerprint: JobFingerprint,
    /// When the barrier was triggered (milliseconds since the Unix epoch).
    pub triggered_at: i64,
    /// How long from trigger to the record (milliseconds).
    pub duration_ms: u64,
    /// The longest barrier alignment of any subtask (milliseconds).
    pub alignment_ms: u64,
    /// State entries written by this checkpoint (what changed since the previous one).
    pub state_entries: u64,
    /// State bytes written by this checkpoint.
    pub state_bytes: u64,
    /// The size of the whole state store on disk when it completed.
    pub store_bytes: u64,
    /// Every source partition's next offset.
    pub sources: Vec<SourceOffset>,
    /// Taken when every input had ended (the job's last checkpoint).
    pub is_final: bool,
}

impl CheckpointRecord {
    /// The positions of source operator `operator`, as `(queue, partition, next offset)`.
    pub fn positions_of(&self, operator: &str) -> Vec<(String, i32, i64)> {
        self.sources
            .iter()
            .filter(|s| s.operator == operator)
            .map(|s| (s.queue.clone(), s.partition, s.offset))
            .collect()
    }
}
