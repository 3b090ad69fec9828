//! The OMS message: standard header, extension header, user properties and a byte body.
//!
//! Field names and their JSON spelling follow the 1.0.0-alpha spec (`header` + `extensionHeader`;
//! `deliveryCount` and `priority` live in the extension header, as the spec puts them).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::keyvalue::KeyValue;

/// The spec version a message is written in.
pub const MESSAGE_VERSION: &str = "1.0.0";

/// The delivery guarantee a producer asks for (`qos` in the spec's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Qos {
    /// 0: at least once (the default).
    AtLeastOnce,
    /// 1: at most once.
    AtMostOnce,
    /// 2: exactly once.
    ExactlyOnce,
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        match q {
            Qos::AtLeastOnce => 0,
            Qos::AtMostOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Qos::AtLeastOnce),
            1 => Ok(Qos::AtMostOnce),
            2 => Ok(Qos::ExactlyOnce),
            other => Err(format!(
                "qos {other} is not one of 0 (at least once), 1 (at most once), 2 (exactly once)"
            )),
        }
    }
}

/// The spec's standard header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    /// The queue the message is sent to, or resides in when received. Shared, because every
    /// message received from one partition names the same queue.
    pub destination: Arc<str>,
    /// The provider-assigned id; ignored on send, set when send returns and on receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// When the client sent the message (ms since the epoch); the producer fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_timestamp: Option<i64>,
    /// The sending client's host; the producer fills it in. Shared, because every message of
    /// one producer names the same host (a reader hands out one string, not one per message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_host: Option<Arc<str>>,
    /// The requested delivery guarantee.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// The body's compression algorithm; the body is stored as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// The spec's extension header: optional, partly server-assigned fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionHeader {
    /// The partition: a target on send (else chosen from the key), the partition on receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// The offset in the partition; set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// When the server stored the message (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_timestamp: Option<i64>,
    /// The host of the storing server (shared by the messages of one store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_host: Option<Arc<str>>,
    /// The message group; messages with one key go to one partition, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_key: Option<String>,
    /// Links a response to its request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The transaction the message was sent in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_id: Option<String>,
    /// Deliver no sooner than this long after `bornTimestamp`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_millis")]
    pub delay_time: Option<Duration>,
    /// Discard the message once this instant (ms since the epoch) has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_time: Option<i64>,
    /// The global trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// How many times the message was delivered to this consumer group (1 on first delivery).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delivery_count: u32,
    /// 1 (low) to 10 (high); best effort; out-of-range values are ignored, as the spec says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Where a received message came from, so that its consumer can acknowledge it.
///
/// Unlike the spec's empty marker interface, the receipt names the queue, partition and offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageReceipt {
    /// The queue.
    pub queue: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset in the partition.
    pub offset: i64,
}

/// A message: header, extension header, user properties and an opaque body.
///
/// ```
/// use omstream_core::oms::Message;
/// let msg = Message::new("orders", "hello").with_key("customer-7").with_property("source", "web");
/// let json = serde_json::to_string(&msg).unwrap();
/// assert_eq!(
///     json,
///     r#"{"version":"1.0.0","header":{"destination":"orders"},"extensionHeader":{"messageKey":"customer-7"},"properties":{"source":"web"},"data":"hello"}"#
/// );
/// let back: Message = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, msg);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The spec version the message is written in.
    #[serde(default = "default_version")]
    pub version: Cow<'static, str>,
    /// The standard header.
    pub header: Header,
    /// The extension header.
    #[serde(default)]
    pub extension_header: ExtensionHeader,
    /// User properties.
    #[serde(default)]
    pub properties: KeyValue,
    /// The body. In JSON: a string for UTF-8 text, `{"base64": "..."}` for other bytes; on input any
    /// other JSON value is taken as its compact JSON text.
    #[serde(default, serialize_with = "ser_data", deserialize_with = "de_data")]
    pub data: Bytes,
    /// Set on received messages: what to pass to `ack`.
    #[serde(skip)]
    pub receipt: Option<MessageReceipt>,
}

fn default_version() -> Cow<'static, str> {
    Cow::Borrowed(MESSAGE_VERSION)
}

fn ser_data<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    use serde::ser::SerializeMap;
    match std::str::from_utf8(data) {
        Ok(text) => s.serialize_str(text),
        Err(_) => {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry(
                "base64",
                &base64::engine::general_purpose::STANDARD.encode(data),
            )?;
            map.end()
        }
    }
}

fn de_data<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    use base64::Engine as _;
    let value = serde_json::Value::deserialize(d)?;
    match value {
        serde_json::Value::String(s) => Ok(Bytes::from(s)),
        serde_json::Value::Null => Ok(Bytes::new()),
        serde_json::Value::Object(ref map)
            if map.len() == 1 && map.get("base64").is_some_and(|v| v.is_string()) =>
        {
            let text = map["base64"].as_str().unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Bytes::from)
                .map_err(|e| {
                    serde::de::Error::custom(format!("data.base64 is not valid base64: {e}"))
                })
        }
        other => Ok(Bytes::from(other.to_string())),
    }
}

impl Message {
    /// A message for `destination` with `data` as its body.
    pub fn new(destination: impl AsRef<str>, data: impl Into<Bytes>) -> Self {
        Self {
            version: default_version(),
            header: Header {
                destination: Arc::from(destination.as_ref()),
                ..Header::default()
            },
            extension_header: ExtensionHeader::default(),
            properties: KeyValue::new(),
            data: data.into(),
            receipt: None,
        }
    }

    /// A message for a queue whose name the caller already holds shared (as readers do, for
    /// every message of a partition), with the body `data`.
    pub fn for_shared_queue(destination: Arc<str>, data: impl Into<Bytes>) -> Self {
        Self {
            version: default_version(),
            header: Header {
                destination,
                ..Header::default()
            },
            extension_header: ExtensionHeader::default(),
            properties: KeyValue::new(),
            data: data.into(),
            receipt: None,
        }
    }

    /// Sets the message key (the message group that picks the partition).
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.extension_header.message_key = Some(key.into());
        self
    }

    /// Sends to `partition` instead of the key's.
    #[must_use]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.extension_header.partition = Some(partition);
        self
    }

    /// Adds a user property.
    #[must_use]
    pub fn with_property(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.properties.put(key, value);
        self
    }

    /// Delays delivery by `delay` from the born timestamp.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.extension_header.delay_time = Some(delay);
        self
    }

    /// Discards the message after `expire_at_ms` (ms since the epoch).
    #[must_use]
    pub fn with_expire_time(mut self, expire_at_ms: i64) -> Self {
        self.extension_header.expire_time = Some(expire_at_ms);
        self
    }

    /// The queue.
    pub fn destination(&self) -> &str {
        &self.header.destination
    }

    /// The message key, if any.
    pub fn key(&self) -> Option<&str> {
        self.extension_header.message_key.as_deref()
    }

    /// The message id, once sent or received.
    pub fn message_id(&self) -> Option<&str> {
        self.header.message_id.as_deref()
    }

    /// The offset in the partition, on received messages.
    pub fn offset(&self) -> Option<i64> {
        self.extension_header.offset
    }

    /// The partition, on received messages.
    pub fn partition(&self) -> Option<i32> {
        self.extension_header.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_round_trips() {
        let json = r#"{"version":"1.0.0",
          "header": {"messageId":"7F00000100002873000000000004F49C","destination":"orderQueue",
             "bornTimestamp":1533780827824,"bornHost":"172.24.0.101:10035","compression":"gzip","qos":2},
          "extensionHeader": {"storeTimestamp":1533780827825,"storeHost":"172.24.0.102:52511",
             "messageKey":"orderId-103368921567","correlationId":"7F00000100002873000000000004F2B4",
             "delayTime":30000,"transactionId":"1E0578887D3F18B4AAC22B64D2B40A62",
             "expireTime":1533780830000,"traceId":"1E0578887D3F18B4AAC22B64D2B00A5E","priority":1,"partition":1},
          "properties": {"service":"helloService"}, "data": {"amount": 3}}"#;
        let msg: Message = serde_json::from_str(json).unwrap();
        assert_eq!(msg.header.qos, Some(Qos::ExactlyOnce));
        assert_eq!(
            msg.extension_header.delay_time,
            Some(Duration::from_secs(30))
        );
        assert_eq!(msg.extension_header.partition, Some(1));
        assert_eq!(msg.properties.get_str("service"), Some("helloService"));
        assert_eq!(&msg.data[..], br#"{"amount":3}"#);
        let again: Message = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(again, msg);
    }

    #[test]
    fn binary_bodies_use_base64() {
        let msg = Message::new("q", vec![0xff_u8, 0x00, 0x10]);
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(json["data"]["base64"], "/wAQ");
        let back: Message = serde_json::from_value(json).unwrap();
        assert_eq!(back.data, msg.data);
    }

    #[test]
    fn unknown_header_fields_and_bad_qos_are_errors() {
        let err = serde_json::from_str::<Message>(r#"{"header":{"destination":"q","nope":1}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `nope`"), "{err}");
        let err = serde_json::from_str::<Message>(r#"{"header":{"destination":"q","qos":7}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("qos 7"), "{err}");
    }
}
