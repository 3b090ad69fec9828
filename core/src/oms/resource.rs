//! The resource manager: namespaces and queues.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::error::{OmsError, Result};

/// How long and how much a queue keeps. Whole segments are dropped, oldest first, once they are
/// entirely older than `max_age` or the partition is larger than `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Drop messages older than this.
    #[serde(default, with = "opt_secs")]
    pub max_age: Option<Duration>,
    /// Keep at most about this many bytes per partition.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// How to create a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// The number of partitions (at least 1).
    pub partitions: u32,
    /// What the queue keeps.
    #[serde(default)]
    pub retention: RetentionPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention: RetentionPolicy::default(),
        }
    }
}

impl QueueConfig {
    /// A queue with `partitions` partitions and unlimited retention.
    pub fn with_partitions(partitions: u32) -> Self {
        Self {
            partitions,
            ..Self::default()
        }
    }

    /// Checks the values; the error says what to change.
    pub fn validate(&self) -> Result<()> {
        if self.partitions == 0 || self.partitions > 4096 {
            return Err(OmsError::bad_parameter(format!(
                "a queue needs 1 to 4096 partitions, not {}",
                self.partitions
            )));
        }
        if self.retention.max_bytes == Some(0) {
            return Err(OmsError::bad_parameter(
                "retention max_bytes must be above 0 (omit it to keep everything)",
            ));
        }
        if self.retention.max_age == Some(Duration::ZERO) {
            return Err(OmsError::bad_parameter(
                "retention max_age must be above 0 (omit it to keep everything)",
            ));
        }
        Ok(())
    }
}

/// What one partition holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDescription {
    /// The partition id.
    pub partition: i32,
    /// The first retained offset.
    pub start_offset: i64,
    /// The offset the next message gets.
    pub end_offset: i64,
    /// Bytes on disk (or as reported by the broker).
    pub bytes: u64,
}

/// What a queue is and holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDescription {
    /// The queue name.
    pub name: String,
    /// Its configuration.
    pub config: QueueConfig,
    /// Its partitions.
    pub partitions: Vec<PartitionDescription>,
}

impl QueueDescription {
    /// Messages retained across all partitions.
    pub fn message_count(&self) -> i64 {
        self.partitions
            .iter()
            .map(|p| p.end_offset - p.start_offset)
            .sum()
    }
}

/// Creates, lists, describes and deletes namespaces and queues.
///
/// A queue name is `name` (in the default namespace) or `namespace://name`, as the spec writes it.
#[async_trait]
pub trait ResourceManager: Send + Sync + fmt::Debug {
    /// Creates a namespace.
    async fn create_namespace(&self, namespace: &str) -> Result<()>;
    /// Deletes a namespace and every queue in it.
    async fn delete_namespace(&self, namespace: &str) -> Result<()>;
    /// The namespaces.
    async fn list_namespaces(&self) -> Result<Vec<String>>;
    /// Creates a queue.
    async fn create_queue(&self, queue: &str, config: QueueConfig) -> Result<()>;
    /// Deletes a queue and all it holds.
    async fn delete_queue(&self, queue: &str) -> Result<()>;
    /// The queues of a namespace (of all namespaces with `None`), as full names.
    async fn list_queues(&self, namespace: Option<&str>) -> Result<Vec<String>>;
    /// Describes a queue.
    async fn describe_queue(&self, queue: &str) -> Result<QueueDescription>;

    /// Creates a queue unless it exists; true when it was created. An existing queue is kept
    /// as it is, whatever `config` says.
    async fn ensure_queue(&self, queue: &str, config: QueueConfig) -> Result<bool> {
        match self.create_queue(queue, config).await {
            Ok(()) => Ok(true),
            Err(e) if e.status() == super::error::OmsStatus::DESTINATION_ALREADY_EXISTS => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_what_to_change() {
        assert!(QueueConfig::with_partitions(4).validate().is_ok());
        let err = QueueConfig::with_partitions(0).validate().unwrap_err();
        assert!(
            err.to_string().contains("1 to 4096 partitions, not 0"),
            "{err}"
        );
        let mut c = QueueConfig::default();
        c.retention.max_bytes = Some(0);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_bytes must be above 0"));
        c.retention = RetentionPolicy {
            max_age: Some(Duration::ZERO),
            max_bytes: None,
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_age must be above 0"));
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = QueueConfig {
            partitions: 3,
            retention: RetentionPolicy {
                max_age: Some(Duration::from_secs(60)),
                max_bytes: Some(1 << 20),
            },
        };
        let back: QueueConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
