//! `KeyValue`: the string-keyed attribute map of the spec, and its standard keys.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{OmsError, Result};

/// The driver implementation to load, overriding the URL's driver type.
pub const DRIVER_IMPL: &str = "DRIVER_IMPL";
/// The hosts of the access point (filled in from the URL).
pub const ACCESS_POINTS: &str = "ACCESS_POINTS";
/// The account id (filled in from the URL).
pub const ACCOUNT_ID: &str = "ACCOUNT_ID";
/// The account's secret key.
pub const ACCOUNT_KEY: &str = "ACCOUNT_KEY";
/// The region (filled in from the URL).
pub const REGION: &str = "REGION";
/// The producer id (producer group on brokers that have one).
pub const PRODUCER_ID: &str = "PRODUCER_ID";
/// The consumer id: the consumer group whose offsets a consumer reads and commits.
pub const CONSUMER_ID: &str = "CONSUMER_ID";
/// The timeout of almost every call, in milliseconds.
pub const OPERATION_TIMEOUT: &str = "OPERATION_TIMEOUT";

/// String-keyed attributes, as the spec's `KeyValue`: values are stored as strings and read back
/// typed. Also used for a message's user properties.
///
/// ```
/// use omstream_core::oms::KeyValue;
/// let kv = KeyValue::new().with("retries", 3).with("name", "orders");
/// assert_eq!(kv.get_i64("retries").unwrap(), Some(3));
/// assert_eq!(kv.get_str("name"), Some("orders"));
/// assert_eq!(kv.get_i64_or("missing", 7).unwrap(), 7);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyValue(BTreeMap<String, String>);

impl KeyValue {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `key = value` and returns the map (chainable).
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.put(key, value);
        self
    }

    /// Puts `key = value`, replacing an earlier value.
    pub fn put(&mut self, key: impl Into<String>, value: impl ToString) -> &mut Self {
        self.0.insert(key.into(), value.to_string());
        self
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// The value of `key` as a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The entries, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key` parsed as `T`; an error names the key and the bad value.
    pub fn get_parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        match self.0.get(key) {
            None => Ok(None),
            Some(raw) => raw.trim().parse::<T>().map(Some).map_err(|e| {
                OmsError::bad_parameter(format!(
                    "attribute {key}='{raw}' is not a valid {}: {e}",
                    std::any::type_name::<T>()
                ))
            }),
        }
    }

    /// The value of `key` as an `i64`.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.get_parsed(key)
    }

    /// The value of `key` as an `i64`, or `default` when absent.
    pub fn get_i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.get_i64(key)?.unwrap_or(default))
    }

    /// The value of `key` as an `i32`.
    pub fn get_i32(&self, key: &str) -> Result<Option<i32>> {
        self.get_parsed(key)
    }

    /// The value of `key` as an `f64`.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get_parsed(key)
    }

    /// The value of `key` as a `bool` (`true`/`false`).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_parsed(key)
    }

    /// The value of `key` as a `bool`, or `default` when absent.
    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool> {
        Ok(self.get_bool(key)?.unwrap_or(default))
    }

    /// Adds every entry of `other` that this map lacks.
    pub fn merge_missing(&mut self, other: &KeyValue) {
        for (k, v) in &other.0 {
            self.0.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KeyValue {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads_and_errors() {
        let kv = KeyValue::new()
            .with("n", "12")
            .with("b", true)
            .with("bad", "x1");
        assert_eq!(kv.get_i32("n").unwrap(), Some(12));
        assert_eq!(kv.get_bool("b").unwrap(), Some(true));
        assert_eq!(kv.get_i64("none").unwrap(), None);
        let err = kv.get_i64("bad").unwrap_err();
        assert!(err.to_string().contains("bad='x1'"), "{err}");
    }

    #[test]
    fn merge_keeps_existing_values() {
        let mut a = KeyValue::new().with("x", 1);
        a.merge_missing(&KeyValue::new().with("x", 2).with("y", 3));
        assert_eq!(a.get_str("x"), Some("1"));
        assert_eq!(a.get_str("y"), Some("3"));
    }

    #[test]
    fn serde_is_a_plain_object() {
        let kv = KeyValue::new().with("a", "b");
        assert_eq!(serde_json::to_string(&kv).unwrap(), r#"{"a":"b"}"#);
    }
}
