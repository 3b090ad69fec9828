//! How message bodies become records ([`Decoder`]) and records become bodies ([`Encoder`]).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::oms::Message;
use crate::runtime::BoxError;

type DecodeFn<T> = dyn Fn(&Message) -> Result<T, BoxError> + Send + Sync;
type EncodeFn<T> = dyn Fn(&T) -> Result<Bytes, BoxError> + Send + Sync;

/// Turns a received message into a record. An error is not fatal: the source sends the message
/// to its dead-letter queue (or counts and skips it) with the error's text as the reason.
///
/// ```
/// use omstream_core::connectors::Decoder;
/// use omstream_core::oms::Message;
///
/// let json: Decoder<Vec<u32>> = Decoder::json();
/// assert_eq!(json.decode(&Message::new("q", "[1,2]")).unwrap(), vec![1, 2]);
/// let err = json.decode(&Message::new("q", "[1,")).unwrap_err();
/// assert!(err.to_string().starts_with("invalid JSON"), "{err}");
///
/// let upper = Decoder::new(|m: &Message| Ok(String::from_utf8(m.data.to_vec())?.to_uppercase()));
/// assert_eq!(upper.decode(&Message::new("q", "hi")).unwrap(), "HI");
/// ```
pub struct Decoder<T> {
    decode: Arc<DecodeFn<T>>,
    name: &'static str,
}

impl<T> Clone for Decoder<T> {
    fn clone(&self) -> Self {
        Decoder {
            decode: self.decode.clone(),
            name: self.name,
        }
    }
}

impl<T> fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Decoder").field(&self.name).finish()
    }
}

impl<T: DeserializeOwned + 'static> Decoder<T> {
    /// The body is JSON (serde_json straight from the body's bytes).
    pub fn json() -> Self {
        Decoder {
            decode: Arc::new(|message: &Message| {
                serde_json::from_slice(&message.data)
                    .map_err(|e| format!("invalid JSON: {e}").into())
            }),
            name: "json",
        }
    }
}

impl Decoder<Message> {
    /// The record is the whole message: headers, properties and body.
    pub fn message() -> Self {
        Decoder {
            decode: Arc::new(|message: &Message| Ok(message.clone())),
            name: "message",
        }
    }
}

impl Decoder<Bytes> {
    /// The record is the body's bytes (shared, not copied).
    pub fn bytes() -> Self {
        Decoder {
            decode: Arc::new(|message: &Message| Ok(message.data.clone())),
            name: "bytes",
        }
    }
}

impl Decoder<String> {
    /// The body is UTF-8 text.
    pub fn utf8() -> Self {
        Decoder {
            decode: Arc::new(|message: &Message| {
                std::str::from_utf8(&message.data)
                    .map(str::to_string)
                    .map_err(|e| format!("invalid UTF-8: {e}").into())
            }),
            name: "utf8",
        }
    }
}

impl<T> Decoder<T> {
    /// A decoder of your own; its error's text becomes the dead letter's reason.
    pub fn new(decode: impl Fn(&Message) -> Result<T, BoxError> + Send + Sync + 'static) -> Self {
        Decoder {
            decode: Arc::new(decode),
            name: "custom",
        }
    }

    /// Decodes one message.
    #[inline]
    pub fn decode(&self, message: &Message) -> Result<T, BoxError> {
        (self.decode)(message)
    }
}

/// Turns a record into a message body. An error fails the job: a record the job itself made
/// that cannot be written is a bug to fix, not bad input to skip.
///
/// ```
/// use omstream_core::connectors::Encoder;
///
/// let json: Encoder<(u8, &str)> = Encoder::json();
/// assert_eq!(&json.encode(&(1, "a")).unwrap()[..], br#"[1,"a"]"#);
/// ```
pub struct Encoder<T> {
    encode: Arc<EncodeFn<T>>,
    name: &'static str,
}

impl<T> Clone for Encoder<T> {
    fn clone(&self) -> Self {
        Encoder {
            encode: self.encode.clone(),
            name: self.name,
        }
    }
}

impl<T> fmt::Debug for Encoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Encoder").field(&self.name).finish()
    }
}

impl<T: Serialize + 'static> Encoder<T> {
    /// The body is the record as compact JSON.
    pub fn json() -> Self {
        Encoder {
            encode: Arc::new(|value: &T| Ok(Bytes::from(serde_json::to_vec(value)?))),
            name: "json",
        }
    }
}

impl Encoder<Bytes> {
    /// The record is the body.
    pub fn bytes() -> Self {
        Encoder {
            encode: Arc::new(|value: &Bytes| Ok(value.clone())),
            name: "bytes",
        }
    }
}

impl Encoder<String> {
    /// The record is the body, as UTF-8 text.
    pub fn utf8() -> Self {
        Encoder {
            encode: Arc::new(|value: &String| Ok(Bytes::copy_from_slice(value.as_bytes()))),
            name: "utf8",
        }
    }
}

impl<T> Encoder<T> {
    /// An encoder of your own.
    pub fn new(encode: impl Fn(&T) -> Result<Bytes, BoxError> + Send + Sync + 'static) -> Self {
        Encoder {
            encode: Arc::new(encode),
            name: "custom",
        }
    }

    /// Encodes one record.
    #[inline]
    pub fn encode(&self, value: &T) -> Result<Bytes, BoxError> {
        (self.encode)(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_decoders_share_the_body_and_utf8_reports_bad_bytes() {
        let message = Message::new("q", vec![0xff_u8, 0x41]);
        assert_eq!(Decoder::bytes().decode(&message).unwrap(), message.data);
        assert_eq!(Decoder::message().decode(&message).unwrap(), message);
        let err = Decoder::utf8().decode(&message).unwrap_err();
        assert!(err.to_string().starts_with("invalid UTF-8"), "{err}");
    }

    #[test]
    fn encoders_round_trip_through_decoders() {
        let values = vec![(1u32, "a".to_string()), (2, "b".to_string())];
        let body = Encoder::json().encode(&values).unwrap();
        let back: Vec<(u32, String)> = Decoder::json().decode(&Message::new("q", body)).unwrap();
        assert_eq!(back, values);
        assert_eq!(&Encoder::utf8().encode(&"x".to_string()).unwrap()[..], b"x");
    }
}
