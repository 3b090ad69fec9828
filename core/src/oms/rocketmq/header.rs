//! OMS messages to RocketMQ messages and back: queue names to topics, the spec's headers and
//! the user's properties to message properties, so that a message comes back as it was sent.
//!
//! The born headers are RocketMQ's own: the client stamps every message with the time it sends
//! it and the address it sends from, and the broker stores both, so a reader gets
//! `bornTimestamp` and `bornHost` from there (`bornTimestamp` a few ms after the producer's
//! stamp; `bornHost` as `ip:port`). Only a `bornHost` the sender set itself travels as a
//! property. This keeps each message 100 bytes smaller than carrying them as properties, and
//! other RocketMQ clients see the same values.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cheetah_string::CheetahString;
use rocketmq_model::common::message::message_client_id_setter::MessageClientIDSetter;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message as RmqMessage;
use rocketmq_model::common::message::STRING_HASH_SET;

use crate::oms::{KeyValue, Message, MessageReceipt, OmsError, OmsStatus, Qos, Result};

/// Property: `bornTimestamp`, in messages stored by omstream 0.1's first driver (now the born
/// timestamp RocketMQ records is used; read only).
pub const BORN_TIMESTAMP: &str = "OMS_BORN_TIMESTAMP";
/// Property: a `bornHost` set by the sender (without one, RocketMQ's born host is used).
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
/// Property: the message id, in messages stored by omstream's drivers before 2026-11-28 (which
/// sent batches through the client's `send_batch`: the broker stored every member with the
/// batch's `UNIQ_KEY`, so the member's own id needed a property of its own). Read only; it
/// wins over `UNIQ_KEY` where present.
pub const MESSAGE_ID: &str = "OMS_MESSAGE_ID";
/// The property RocketMQ keeps the producer's unique message id in.
const UNIQ_KEY: &str = "UNIQ_KEY";
/// Where RocketMQ keeps a transactional message's id.
const TRANSACTION_ID: &str = "__transactionId__";
/// Properties the consumer side of the client adds on its own.
const CLIENT_ADDED: &[&str] = &["MIN_OFFSET", "MAX_OFFSET"];
/// Properties the client or the broker sets on every message, none of them a header: skipped on
/// read without the lookup in RocketMQ's reserved set.
const ALWAYS_SET: &[&str] = &["WAIT", "CLUSTER", "MSG_REGION", "TRACE_ON"];

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

/// The RocketMQ message for `message`, sent to `topic`, with a new unique id (returned with
/// it) in `UNIQ_KEY`, RocketMQ's own id property. The client would set one at send; setting
/// it here gives the send results their ids without parsing the client's, and the producer
/// sends batches without an id of their own, so a member keeps its id in the store.
pub fn to_rocketmq(message: &Message, topic: &CheetahString) -> Result<(RmqMessage, String)> {
    if message.data.is_empty() {
        return Err(OmsError::message_format(
            OmsStatus::MESSAGE_BODY_REQUIRED,
            "RocketMQ does not store messages with an empty body; send at least one byte",
        ));
    }
    let header = &message.header;
    let ext = &message.extension_header;
    let mut builder = RmqMessage::builder()
        .topic(topic.clone())
        .body(message.data.clone());
    if let Some(key) = &ext.message_key {
        check_value("messageKey", key)?;
        builder = builder.key(key.as_str());
    }
    if let Some(level) = ext.delay_time.map(delay_level).transpose()?.flatten() {
        builder = builder.delay_level(level);
    }
    let mut rmq = builder.build().map_err(|e| {
        OmsError::message_format(
            OmsStatus::BAD_REQUEST,
            format!("cannot build a RocketMQ message for topic '{topic}': {e}"),
        )
    })?;
    // Straight into the property map: the names are ours (headers) or escaped (user
    // properties), so none is one RocketMQ reserves, and the builder's check per property
    // would cost more than the rest of the mapping.
    let properties = rmq.properties_mut().as_map_mut();
    let mut put = |name: CheetahString, value: CheetahString| -> Result<()> {
        check_value(name.as_str(), value.as_str())?;
        properties.insert(name, value);
        Ok(())
    };
    let ours = CheetahString::from_static_str;
    if let Some(h) = &header.born_host {
        put(ours(BORN_HOST), h.as_ref().into())?;
    }
    if let Some(q) = header.qos {
        put(ours(QOS), (q as u8).to_string().into())?;
    }
    if let Some(c) = &header.compression {
        put(ours(COMPRESSION), c.as_str().into())?;
    }
    if let Some(c) = &ext.correlation_id {
        put(ours(CORRELATION_ID), c.as_str().into())?;
    }
    if let Some(t) = &ext.trace_id {
        put(ours(TRACE_ID), t.as_str().into())?;
    }
    if let Some(t) = ext.expire_time {
        put(ours(EXPIRE_TIME), t.to_string().into())?;
    }
    if let Some(p) = ext.priority {
        put(ours(PRIORITY), p.to_string().into())?;
    }
    if let Some(d) = ext.delay_time {
        put(ours(DELAY_TIME), d.as_millis().to_string().into())?;
    }
    for (name, value) in message.properties.iter() {
        let reserved = STRING_HASH_SET.contains(name)
            || name.starts_with("OMS_")
            || name == TRANSACTION_ID
            || CLIENT_ADDED.contains(&name);
        let name = if reserved {
            format!("{ESCAPED_PROPERTY}{name}").into()
        } else {
            name.into()
        };
        put(name, value.into())?;
    }
    let id = MessageClientIDSetter::create_uniq_id();
    properties.insert(ours(UNIQ_KEY), CheetahString::from(id.as_str()));
    Ok((rmq, id))
}

/// The OMS message for a RocketMQ message read from `queue` (the queue's name, shared), stored
/// by `store_host`.
pub fn from_rocketmq(ext: &MessageExt, queue: &Arc<str>, store_host: &Arc<str>) -> Message {
    Decoder::default().message(ext, queue, store_host)
}

/// Turns the RocketMQ messages of a read into OMS messages, remembering what repeats from one
/// message to the next (the producer's address, written out once).
#[derive(Debug, Default)]
pub struct Decoder {
    born_host: Option<(SocketAddr, Arc<str>)>,
}

impl Decoder {
    /// The OMS message for a RocketMQ message read from `queue` (the queue's name, shared),
    /// stored by `store_host`.
    pub fn message(
        &mut self,
        ext: &MessageExt,
        queue: &Arc<str>,
        store_host: &Arc<str>,
    ) -> Message {
        let mut message = decode(ext, queue, store_host);
        if message.header.born_host.is_none() {
            let host = match &self.born_host {
                Some((address, host)) if *address == ext.born_host => host.clone(),
                _ => {
                    let host: Arc<str> = ext.born_host.to_string().into();
                    self.born_host = Some((ext.born_host, host.clone()));
                    host
                }
            };
            message.header.born_host = Some(host);
        }
        message
    }
}

fn decode(ext: &MessageExt, queue: &Arc<str>, store_host: &Arc<str>) -> Message {
    let mut message =
        Message::for_shared_queue(queue.clone(), ext.message.body().unwrap_or_default());
    let mut properties = KeyValue::new();
    let mut transaction_id = None;
    let mut unique_id = None;
    for (name, value) in ext.properties() {
        let (name, value) = (name.as_str(), value.as_str());
        match name {
            BORN_TIMESTAMP => message.header.born_timestamp = value.parse().ok(),
            BORN_HOST => message.header.born_host = Some(value.into()),
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
            // Taken below, when there is no `MESSAGE_ID` (one string made, not two).
            UNIQ_KEY => unique_id = Some(value),
            TRANSACTION_ID => transaction_id = Some(value.to_string()),
            "KEYS" => message.extension_header.message_key = Some(value.to_string()),
            _ if ALWAYS_SET.contains(&name) => {}
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
        let id = unique_id.unwrap_or(ext.msg_id.as_str());
        message.header.message_id = Some(id.to_string());
    }
    if message.header.born_timestamp.is_none() {
        message.header.born_timestamp = Some(ext.born_timestamp);
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
        queue: queue.clone(),
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
        let (rmq, id) = to_rocketmq(&message, &"orders".into()).unwrap();
        let props = rmq.properties().as_map();
        let get = |k: &str| props.get(k).map(|v| v.as_str().to_string());
        // RocketMQ records the born timestamp itself; a bornHost set by the sender travels.
        assert_eq!(get(BORN_TIMESTAMP), None);
        assert_eq!(get(BORN_HOST).as_deref(), Some("host:1"));
        assert_eq!(get(UNIQ_KEY).as_ref(), Some(&id));
        // One id property: `UNIQ_KEY`, RocketMQ's own.
        assert_eq!(get(MESSAGE_ID), None);
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
    fn born_headers_come_from_the_broker_s_record_unless_the_sender_set_the_host() {
        let stored = |host: &str, properties: &[(&'static str, &str)]| {
            let mut ext = MessageExt {
                message: RmqMessage::builder()
                    .topic("orders")
                    .body("x")
                    .build()
                    .unwrap(),
                born_timestamp: 1_700_000_000_000,
                born_host: host.parse().unwrap(),
                ..MessageExt::default()
            };
            for (name, value) in properties {
                ext.message
                    .properties_mut()
                    .as_map_mut()
                    .insert(CheetahString::from_static_str(name), (*value).into());
            }
            ext
        };
        let queue: Arc<str> = "orders".into();
        let store: Arc<str> = "broker-a".into();
        let mut decoder = Decoder::default();
        let first = decoder.message(&stored("10.0.0.1:4000", &[]), &queue, &store);
        assert_eq!(first.header.born_timestamp, Some(1_700_000_000_000));
        assert_eq!(first.header.born_host.as_deref(), Some("10.0.0.1:4000"));
        // The decoder remembers the last address; a new one is written out anew.
        let second = decoder.message(&stored("10.0.0.2:4001", &[]), &queue, &store);
        assert_eq!(second.header.born_host.as_deref(), Some("10.0.0.2:4001"));
        let own = decoder.message(
            &stored("10.0.0.2:4001", &[(BORN_HOST, "edge-7:42")]),
            &queue,
            &store,
        );
        assert_eq!(own.header.born_host.as_deref(), Some("edge-7:42"));
        // Messages stored by the first driver carried the born timestamp as a property.
        let old = from_rocketmq(
            &stored("10.0.0.1:4000", &[(BORN_TIMESTAMP, "42")]),
            &queue,
            &store,
        );
        assert_eq!(old.header.born_timestamp, Some(42));
        assert!(old.properties.is_empty());
        // A batch member stored by an earlier driver: `UNIQ_KEY` is the batch's, its own id
        // is in `OMS_MESSAGE_ID`; today's members carry only their own `UNIQ_KEY`.
        let member =
            |properties| from_rocketmq(&stored("10.0.0.1:4000", properties), &queue, &store);
        let earlier = member(&[(UNIQ_KEY, "BATCH"), (MESSAGE_ID, "OWN")]);
        assert_eq!(earlier.message_id(), Some("OWN"));
        assert_eq!(member(&[(UNIQ_KEY, "OWN")]).message_id(), Some("OWN"));
    }

    #[test]
    fn what_rocketmq_cannot_carry_is_refused_with_the_fix() {
        let empty = Message::new("orders", "");
        let err = to_rocketmq(&empty, &"orders".into()).unwrap_err();
        assert_eq!(err.status(), OmsStatus::MESSAGE_BODY_REQUIRED);
        let control = Message::new("orders", "x").with_property("p", "a\u{1}b");
        let err = to_rocketmq(&control, &"orders".into()).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }
}
