//! OMS messages to RocketMQ messages and back: queue names to topics, the spec's headers and
//! the user's properties to message properties, so that a message comes back as it was sent.

use std::sync::Arc;
use std::time::Duration;

use rocketmq_model::common::message::message_client_id_setter::MessageClientIDSetter;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_model::common::message::{MessageTrait, STRING_HASH_SET};

use crate::oms::{KeyValue, Message, MessageReceipt, OmsError, OmsStatus, Qos, Result};

/// Property: the producer's `bornTimestamp` (RocketMQ's own is the client's send time).
pub const BORN_TIMESTAMP: &str = "OMS_BORN_TIMESTAMP";
/// Property: the producer's `bornHost`.
pub const BORN_HOST: &str = "OMS_BORN_HOST";
/// Property: `qos` (0, 1 or 2).
pub const QOS: &str = "OMS_QOS";
/// Property: `compression`.
pub const COMPRESSION: &str = "OMS_COMPRESSION";
/// Property: `correlationId`.
pub const CORRELATION_ID: &str = "OMS_CORRELATION_ID";
/// Property: `traceId`.
pub const TRACE_ID: &str = "OMS_TRACE_ID";
/// Property: `expireTime` (ms since the epoch); readers skip the message after it.
pub const EXPIRE_TIME: &str = "OMS_EXPIRE_TIME";
/// Property: `priority`.
pub const PRIORITY: &str = "OMS_PRIORITY";
/// Property: `delayTime` as asked (RocketMQ delays by levels; see [`delay_level`]).
pub const DELAY_TIME: &str = "OMS_DELAY_TIME";
/// Prefix of a user property whose name RocketMQ reserves or that starts with `OMS_`.
pub const ESCAPED_PROPERTY: &str = "OMS_P_";
/// Property: the message id the driver gave the message at send.
pub const MESSAGE_ID: &str = "OMS_MESSAGE_ID";
/// The property RocketMQ keeps the producer's unique message id in.
const UNIQ_KEY: &str = "UNIQ_KEY";
/// Where RocketMQ keeps a transactional message's id.
const TRANSACTION_ID: &str = "__transactionId__";
/// Properties the consumer side of the client adds on its own.
const CLIENT_ADDED: &[&str] = &["MIN_OFFSET", "MAX_OFFSET"];

/// RocketMQ's delay levels (broker default `messageDelayLevel`), level `i + 1` at index `i`.
const DELAY_LEVELS: [Duration; 18] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(3 * 60),
    Duration::from_secs(4 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(6 * 60),
    Duration::from_secs(7 * 60),
    Duration::from_secs(8 * 60),
    Duration::from_secs(9 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
];

/// The delay level that delivers no sooner than `delay`: the smallest level at least as long
/// (RocketMQ's brokers delay by fixed levels, 1 s to 2 h). `None` for a zero delay.
pub fn delay_level(delay: Duration) -> Result<Option<i32>> {
    if delay.is_zero() {
        return Ok(None);
    }
    match DELAY_LEVELS.iter().position(|level| *level >= delay) {
        Some(index) => Ok(Some(index as i32 + 1)),
        None => Err(OmsError::bad_parameter(format!(
            "a delay of {} ms is longer than RocketMQ's longest delay level (2 h); send it later instead",
            delay.as_millis()
        ))),
    }
}

/// The topic of OMS queue `queue`: `name` as is, `namespace://name` as `namespace%name`.
pub fn topic_of(queue: &str) -> Result<String> {
    let topic = match queue.split_once("://") {
        Some((namespace, name)) => format!("{namespace}%{name}"),
        None => queue.to_string(),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '%' | '|');
    if topic.is_empty() || topic.len() > 127 || !topic.chars().all(valid) {
        return Err(OmsError::bad_parameter(format!(
            "queue '{queue}' cannot be a RocketMQ topic: topic names are 1 to 127 letters, digits, '-' and '_' \
             (no '.'); rename the queue"
        )));
    }
    Ok(topic)
}

/// The OMS queue of `topic` (the reverse of [`topic_of`]).
pub fn queue_of(topic: &str) -> String {
    match topic.split_once('%') {
        Some((namespace, name)) if !namespace.is_empty() => format!("{namespace}://{name}"),
        _ => topic.to_string(),
    }
}

fn check_value(name: &str, value: &str) -> Result<()> {
    if value.contains(['\u{1}', '\u{2}']) {
        return Err(OmsError::message_format(
            OmsStatus::BAD_REQUEST,
            format!(
                "property '{name}' holds a \\u0001 or \\u0002 character, which RocketMQ's property encoding \
                 cannot carry; encode the value (base64, say)"
            ),
        ));
    }
    Ok(())
}

/// The RocketMQ message for `message`, sent to `topic`.
pub fn to_rocketmq(message: &Message, topic: &str) -> Result<RmqMessage> {
    if message.data.is_empty() {
        return Err(OmsError::message_format(
            OmsStatus::MESSAGE_BODY_REQUIRED,
            "RocketMQ does not store messages with an empty body; send at least one byte",
        ));
    }
    let header = &message.header;
    let ext = &message.extension_header;
    let mut properties: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: String| properties.push((name.to_string(), value));
    if let Some(t) = header.born_timestamp {
        put(BORN_TIMESTAMP, t.to_string());
    }
    if let Some(h) = &header.born_host {
        put(BORN_HOST, h.clone());
    }
    if let Some(q) = header.qos {
        put(QOS, (q as u8).to_string());
    }
    if let Some(c) = &header.compression {
        put(COMPRESSION, c.clone());
    }
    if let Some(c) = &ext.correlation_id {
        put(CORRELATION_ID, c.clone());
    }
    if let Some(t) = &ext.trace_id {
        put(TRACE_ID, t.clone());
    }
    if let Some(t) = ext.expire_time {
        put(EXPIRE_TIME, t.to_string());
    }
    if let Some(p) = ext.priority {
        put(PRIORITY, p.to_string());
    }
    if let Some(d) = ext.delay_time {
        put(DELAY_TIME, d.as_millis().to_string());
    }
    for (name, value) in message.properties.iter() {
        let reserved = STRING_HASH_SET.contains(name)
            || name.starts_with("OMS_")
            || name == TRANSACTION_ID
            || CLIENT_ADDED.contains(&name);
        if reserved {
            put(&format!("{ESCAPED_PROPERTY}{name}"), value.to_string());
        } else {
            put(name, value.to_string());
        }
    }
    let mut builder = RmqMessage::builder()
        .topic(topic)
        .body(message.data.clone());
    if let Some(key) = &ext.message_key {
        check_value("messageKey", key)?;
        builder = builder.key(key.as_str());
    }
    if let Some(level) = ext.delay_time.map(delay_level).transpose()?.flatten() {
        builder = builder.delay_level(level);
    }
    for (name, value) in properties {
        check_value(&name, &value)?;
        builder = builder
            .raw_property(name.as_str(), value.as_str())
            .map_err(|e| {
                OmsError::message_format(
                    OmsStatus::BAD_REQUEST,
                    format!("property '{name}' cannot be set on a RocketMQ message: {e}"),
                )
            })?;
    }
    builder.build().map_err(|e| {
        OmsError::message_format(
            OmsStatus::BAD_REQUEST,
            format!("cannot build a RocketMQ message for topic '{topic}': {e}"),
        )
    })
}

/// Gives `message` a new unique id and returns it. RocketMQ's own (`UNIQ_KEY`) is set by the
/// client at send, and a batch's members all come back with the batch's, so the driver sets
/// the id itself, in `UNIQ_KEY` and in [`MESSAGE_ID`], which receipt prefers.
pub fn assign_id(message: &mut RmqMessage) -> String {
    let id = MessageClientIDSetter::create_uniq_id();
    message.put_property(UNIQ_KEY.into(), id.as_str().into());
    message.put_property(MESSAGE_ID.into(), id.as_str().into());
    id
}

/// The OMS message for a RocketMQ message read from `queue` (the queue's name, shared).
pub fn from_rocketmq(ext: &MessageExt, queue: &Arc<str>, store_host: &Arc<str>) -> Message {
    let mut message = Message::new(queue.as_ref(), ext.message.body().unwrap_or_default());
    message.header.destination = queue.clone();
    let mut properties = KeyValue::new();
    let mut transaction_id = None;
    for (name, value) in ext.properties() {
        let (name, value) = (name.as_str(), value.as_str());
        match name {
            BORN_TIMESTAMP => message.header.born_timestamp = value.parse().ok(),
            BORN_HOST => message.header.born_host = Some(value.to_string()),
            QOS => {
                message.header.qos = value.parse::<u8>().ok().and_then(|q| Qos::try_from(q).ok())
            }
            COMPRESSION => message.header.compression = Some(value.to_string()),
            CORRELATION_ID => message.extension_header.correlation_id = Some(value.to_string()),
            TRACE_ID => message.extension_header.trace_id = Some(value.to_string()),
            EXPIRE_TIME => message.extension_header.expire_time = value.parse().ok(),
            PRIORITY => message.extension_header.priority = value.parse().ok(),
            DELAY_TIME => {
                message.extension_header.delay_time = value.parse().ok().map(Duration::from_millis)
            }
            MESSAGE_ID => message.header.message_id = Some(value.to_string()),
            UNIQ_KEY => {
                if message.header.message_id.is_none() {
                    message.header.message_id = Some(value.to_string());
                }
            }
            TRANSACTION_ID => transaction_id = Some(value.to_string()),
            "KEYS" => message.extension_header.message_key = Some(value.to_string()),
            _ => {
                if let Some(user) = name.strip_prefix(ESCAPED_PROPERTY) {
                    properties.put(user, value);
                } else if !STRING_HASH_SET.contains(name) && !CLIENT_ADDED.contains(&name) {
                    properties.put(name, value);
                }
            }
        }
    }
    message.properties = properties;
    if message.header.message_id.is_none() {
        message.header.message_id = Some(ext.msg_id.as_str().to_string());
    }
    let ext_header = &mut message.extension_header;
    ext_header.partition = Some(ext.queue_id);
    ext_header.offset = Some(ext.queue_offset);
    ext_header.store_timestamp = Some(ext.store_timestamp);
    ext_header.store_host = Some(store_host.clone());
    ext_header.delivery_count = ext.reconsume_times.max(0) as u32 + 1;
    ext_header.transaction_id = transaction_id.or_else(|| {
        ext.message
            .transaction_id()
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    });
    message.receipt = Some(MessageReceipt {
        queue: queue.to_string(),
        partition: ext.queue_id,
        offset: ext.queue_offset,
    });
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_and_topics_map_both_ways() {
        assert_eq!(topic_of("orders").unwrap(), "orders");
        assert_eq!(topic_of("shop://orders").unwrap(), "shop%orders");
        assert_eq!(queue_of("shop%orders"), "shop://orders");
        assert_eq!(queue_of("orders"), "orders");
        let err = topic_of("orders.v2").unwrap_err();
        assert!(err.to_string().contains("no '.'"), "{err}");
    }

    #[test]
    fn delays_round_up_to_a_level() {
        assert_eq!(delay_level(Duration::ZERO).unwrap(), None);
        assert_eq!(delay_level(Duration::from_millis(300)).unwrap(), Some(1));
        assert_eq!(delay_level(Duration::from_secs(5)).unwrap(), Some(2));
        assert_eq!(delay_level(Duration::from_secs(6)).unwrap(), Some(3));
        assert_eq!(delay_level(Duration::from_secs(7200)).unwrap(), Some(18));
        assert!(delay_level(Duration::from_secs(7201)).is_err());
    }

    #[test]
    fn headers_and_properties_are_carried_as_properties() {
        let mut message = Message::new("orders", "body")
            .with_key("customer-1")
            .with_property("color", "blue")
            .with_property("KEYS", "a user property named like a reserved one")
            .with_property("OMS_X", "ours");
        message.header.born_timestamp = Some(42);
        message.header.born_host = Some("host:1".into());
        message.extension_header.trace_id = Some("trace".into());
        let rmq = to_rocketmq(&message, "orders").unwrap();
        let props = rmq.properties().as_map();
        let get = |k: &str| props.get(k).map(|v| v.as_str().to_string());
        assert_eq!(get(BORN_TIMESTAMP).as_deref(), Some("42"));
        assert_eq!(get(BORN_HOST).as_deref(), Some("host:1"));
        assert_eq!(get(TRACE_ID).as_deref(), Some("trace"));
        assert_eq!(get("color").as_deref(), Some("blue"));
        assert_eq!(get("KEYS").as_deref(), Some("customer-1"));
        assert_eq!(
            get("OMS_P_KEYS").as_deref(),
            Some("a user property named like a reserved one")
        );
        assert_eq!(get("OMS_P_OMS_X").as_deref(), Some("ours"));
    }

    #[test]
    fn what_rocketmq_cannot_carry_is_refused_with_the_fix() {
        let empty = Message::new("orders", "");
        let err = to_rocketmq(&empty, "orders").unwrap_err();
        assert_eq!(err.status(), OmsStatus::MESSAGE_BODY_REQUIRED);
        let control = Message::new("orders", "x").with_property("p", "a\u{1}b");
        let err = to_rocketmq(&control, "orders").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
