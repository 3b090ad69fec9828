//! What can go wrong in an OMS source or sink while a job runs, in words that say what to do.

use std::fmt;

use crate::oms::{OmsError, OmsStatus};
use crate::runtime::BoxError;

/// The part a queue plays in a job, so that an error names which queue is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueRole {
    /// The queue a source reads.
    Source,
    /// The queue a sink writes.
    Sink,
    /// The queue a source sends undecodable messages to.
    DeadLetter,
}

impl fmt::Display for QueueRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueRole::Source => "read by an OMS source",
            QueueRole::Sink => "written by an OMS sink",
            QueueRole::DeadLetter => "the dead-letter queue of an OMS source",
        })
    }
}

/// Why an OMS source or sink failed. The runtime wraps it with the failing subtask's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The queue does not exist.
    #[error(
        "queue '{queue}' ({role}) does not exist; create it first with \
         `omstream queue create {queue} --partitions <n>` (or ResourceManager::create_queue)"
    )]
    QueueNotFound {
        /// The queue.
        queue: String,
        /// What the job wanted it for.
        role: QueueRole,
    },
    /// A call to the messaging service failed.
    #[error("cannot {action} queue '{queue}': {source}")]
    Oms {
        /// The queue the call was about.
        queue: String,
        /// What was being done, such as `read partition 3 of`.
        action: String,
        /// The OMS error.
        #[source]
        source: OmsError,
    },
    /// Sending undecodable messages to the dead-letter queue failed. The job stops rather than
    /// drop them: the source's positions do not move past messages that went nowhere.
    #[error(
        "cannot send {count} undecodable message(s) to the dead-letter queue '{queue}'; \
         the job stops so that none is lost: {source}"
    )]
    DeadLetter {
        /// The dead-letter queue.
        queue: String,
        /// How many messages were to be sent.
        count: usize,
        /// The OMS error.
        #[source]
        source: OmsError,
    },
    /// A record could not be encoded for the sink's queue.
    #[error("cannot encode a record for queue '{queue}': {source}")]
    Encode {
        /// The sink's queue.
        queue: String,
        /// What the encoder said.
        #[source]
        source: BoxError,
    },
}

impl ConnectorError {
    /// Wraps an OMS error of `action` on `queue`; a missing queue becomes
    /// [`ConnectorError::QueueNotFound`].
    pub(crate) fn oms(
        queue: &str,
        role: QueueRole,
        action: impl Into<String>,
    ) -> impl FnOnce(OmsError) -> ConnectorError {
        let queue = queue.to_string();
        let action = action.into();
        move |source| {
            if source.status() == OmsStatus::DESTINATION_NOT_FOUND {
                ConnectorError::QueueNotFound { queue, role }
            } else {
                ConnectorError::Oms {
                    queue,
                    action,
                    source,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_queue_names_the_queue_its_role_and_the_command_that_creates_it() {
        let err = ConnectorError::oms("orders", QueueRole::Source, "list the partitions of")(
            OmsError::destination_not_found("orders"),
        );
        let text = err.to_string();
        assert!(
            text.contains("queue 'orders' (read by an OMS source)"),
            "{text}"
        );
        assert!(text.contains("omstream queue create orders"), "{text}");
        let other = ConnectorError::oms("orders", QueueRole::Sink, "write to")(OmsError::storage(
            "disk gone",
        ));
        assert!(
            other
                .to_string()
                .starts_with("cannot write to queue 'orders'"),
            "{other}"
        );
    }
}
