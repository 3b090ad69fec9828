//! Dead letters: what a source does with a message it cannot decode.
//!
//! A dead letter keeps the original body, key and user properties, and adds the properties
//! below, so that a person (or a repair job) can see why and where from, fix, and resend.

use std::sync::Arc;

use crate::oms::Message;

/// Property of a dead letter: why the message could not be decoded (the decoder's error).
pub const DLQ_REASON: &str = "omstream.dlq.reason";
/// Property of a dead letter: the queue the message was read from.
pub const DLQ_QUEUE: &str = "omstream.dlq.queue";
/// Property of a dead letter: the partition it was read from.
pub const DLQ_PARTITION: &str = "omstream.dlq.partition";
/// Property of a dead letter: its offset in that partition.
pub const DLQ_OFFSET: &str = "omstream.dlq.offset";
/// Property of a dead letter: the source operator (node name in the job) that read it.
pub const DLQ_OPERATOR: &str = "omstream.dlq.operator";

/// What a source does with a message its decoder refuses. Either way the job goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetter {
    /// Count it ([`SourceMetrics::skipped`](super::SourceMetrics::skipped)), log a warning,
    /// and go on (the default).
    #[default]
    Skip,
    /// Send it to this queue (which must exist) with the reason in its properties
    /// ([`DLQ_REASON`] and its siblings), then go on. The dead letters of a batch are stored
    /// before the batch's records are emitted; if that send fails, the job fails, so a message
    /// is never dropped silently. A send interrupted by the runtime is repeated, so a dead
    /// letter can be stored twice (at-least-once).
    Queue(String),
}

/// Where a message read from `queue` came from, for its dead letter.
#[derive(Debug, Clone)]
pub(crate) struct Origin<'a> {
    pub(crate) queue: &'a str,
    pub(crate) partition: i32,
    pub(crate) operator: &'a str,
}

/// The dead letter of `message` for `dead_letter_queue`.
pub(crate) fn dead_letter(
    dead_letter_queue: &Arc<str>,
    message: Message,
    reason: &str,
    origin: &Origin<'_>,
) -> Message {
    let offset = message.offset();
    let mut letter = Message::new("", message.data);
    letter.header.destination = dead_letter_queue.clone();
    letter.extension_header.message_key = message.extension_header.message_key;
    letter.properties = message.properties;
    letter
        .properties
        .put(DLQ_REASON, reason)
        .put(DLQ_QUEUE, origin.queue)
        .put(DLQ_PARTITION, origin.partition)
        .put(DLQ_OPERATOR, origin.operator);
    if let Some(offset) = offset {
        letter.properties.put(DLQ_OFFSET, offset);
    }
    letter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_body_key_and_properties_and_says_why_and_where_from() {
        let mut message = Message::new("orders", "{oops")
            .with_key("user-1")
            .with_property("trace", "t-9");
        message.extension_header.partition = Some(3);
        message.extension_header.offset = Some(41);
        let dlq: Arc<str> = Arc::from("orders.dlq");
        let origin = Origin {
            queue: "orders",
            partition: 3,
            operator: "orders-in",
        };
        let letter = dead_letter(&dlq, message, "invalid JSON: eof", &origin);
        assert_eq!(letter.destination(), "orders.dlq");
        assert_eq!(&letter.data[..], b"{oops");
        assert_eq!(letter.key(), Some("user-1"));
        assert_eq!(
            letter.partition(),
            None,
            "the dead-letter queue picks its partition"
        );
        let props = &letter.properties;
        assert_eq!(props.get_str("trace"), Some("t-9"));
        assert_eq!(props.get_str(DLQ_REASON), Some("invalid JSON: eof"));
        assert_eq!(props.get_str(DLQ_QUEUE), Some("orders"));
        assert_eq!(props.get_str(DLQ_PARTITION), Some("3"));
        assert_eq!(props.get_str(DLQ_OFFSET), Some("41"));
        assert_eq!(props.get_str(DLQ_OPERATOR), Some("orders-in"));
    }
}
