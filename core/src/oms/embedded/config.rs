//! The embedded driver's settings, read once from the access point's attributes.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::oms::{keyvalue, KeyValue, OmsError, Result};

/// The data root; the store of a region lives in `<root>/<region>`.
pub const EMBEDDED_DIR: &str = "EMBEDDED_DIR";
/// When to fsync: `never` (the default: data survives a killed process, not a machine crash) or
/// `always` (after every batch, group commit and metadata change).
pub const EMBEDDED_FSYNC: &str = "EMBEDDED_FSYNC";
/// The largest body accepted, in bytes (default 4 MiB); larger bodies fail with status 1413.
pub const EMBEDDED_MAX_MESSAGE_BYTES: &str = "EMBEDDED_MAX_MESSAGE_BYTES";
/// The size at which a partition starts a new segment file, in bytes (default 64 MiB).
pub const EMBEDDED_SEGMENT_BYTES: &str = "EMBEDDED_SEGMENT_BYTES";
/// How often a reader at the end of a partition looks for messages written by other processes,
/// in ms (default 5). Writers in the same process wake readers at once.
pub const EMBEDDED_POLL_INTERVAL_MS: &str = "EMBEDDED_POLL_INTERVAL_MS";
/// How long a pull consumer waits for an ack before it redelivers, in ms (default 30000).
pub const EMBEDDED_ACK_TIMEOUT_MS: &str = "EMBEDDED_ACK_TIMEOUT_MS";
/// Where a consumer group without committed offsets starts: `beginning` (default) or `end`.
pub const EMBEDDED_CONSUME_FROM: &str = "EMBEDDED_CONSUME_FROM";
/// The environment variable that sets the data root when `EMBEDDED_DIR` is not given.
pub const DATA_DIR_ENV: &str = "OMSTREAM_DATA_DIR";

const KNOWN: &[&str] = &[
    EMBEDDED_DIR,
    EMBEDDED_FSYNC,
    EMBEDDED_MAX_MESSAGE_BYTES,
    EMBEDDED_SEGMENT_BYTES,
    EMBEDDED_POLL_INTERVAL_MS,
    EMBEDDED_ACK_TIMEOUT_MS,
    EMBEDDED_CONSUME_FROM,
];

/// When the embedded store calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: written data is in the OS page cache when a send returns, so it survives the
    /// process being killed, but not a power loss.
    Never,
    /// After every batch: a send returns once its data is on disk.
    Always,
}

impl FromStr for FsyncPolicy {
    type Err = OmsError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "never" => Ok(Self::Never),
            "always" | "batch" => Ok(Self::Always),
            other => Err(OmsError::bad_parameter(format!(
                "{EMBEDDED_FSYNC}='{other}' is not a fsync policy; use 'never' or 'always'"
            ))),
        }
    }
}

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// The oldest retained message.
    Beginning,
    /// Only messages stored from now on.
    End,
}

/// The embedded store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// The store directory (`<data root>/<region>`).
    pub dir: PathBuf,
    /// When to fsync.
    pub fsync: FsyncPolicy,
    /// The largest body accepted.
    pub max_message_bytes: usize,
    /// The size at which a segment is rolled.
    pub segment_bytes: u64,
    /// How often readers at the end look for other processes' writes.
    pub poll_interval: Duration,
    /// How long a pull consumer waits for an ack.
    pub ack_timeout: Duration,
    /// Where a new consumer group starts.
    pub consume_from: ConsumeFrom,
}

/// The data root used when neither `EMBEDDED_DIR` nor `OMSTREAM_DATA_DIR` is set:
/// `$XDG_DATA_HOME/omstream`, else `$HOME/.local/share/omstream`, else `./omstream-data`.
pub fn default_data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("omstream");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/omstream");
    }
    PathBuf::from("omstream-data")
}

fn positive(attrs: &KeyValue, key: &str, default: u64, min: u64) -> Result<u64> {
    let v = attrs.get_parsed::<u64>(key)?.unwrap_or(default);
    if v < min {
        return Err(OmsError::bad_parameter(format!(
            "{key}={v} is too small; use at least {min}"
        )));
    }
    Ok(v)
}

impl EmbeddedConfig {
    /// Reads the settings from `attrs`; an unknown `EMBEDDED_*` key or a bad value is an error
    /// that names it.
    pub fn from_attributes(attrs: &KeyValue) -> Result<Self> {
        for key in attrs.keys() {
            if key.starts_with("EMBEDDED_") && !KNOWN.contains(&key) {
                return Err(OmsError::bad_parameter(format!(
                    "unknown attribute {key} for the embedded driver; known: {}",
                    KNOWN.join(", ")
                )));
            }
        }
        let region = attrs.get_str(keyvalue::REGION).unwrap_or("default");
        if region.is_empty()
            || region.starts_with('.')
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(OmsError::bad_parameter(format!(
                "region '{region}' cannot name an embedded store; use letters, digits, '-', '_' and '.'"
            )));
        }
        let root = attrs
            .get_str(EMBEDDED_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(default_data_root);
        let consume_from = match attrs
            .get_str(EMBEDDED_CONSUME_FROM)
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => ConsumeFrom::Beginning,
            Some(s) if s == "beginning" => ConsumeFrom::Beginning,
            Some(s) if s == "end" => ConsumeFrom::End,
            Some(other) => {
                return Err(OmsError::bad_parameter(format!(
                    "{EMBEDDED_CONSUME_FROM}='{other}' is not a start; use 'beginning' or 'end'"
                )))
            }
        };
        Ok(Self {
            dir: root.join(region),
            fsync: attrs
                .get_parsed::<FsyncPolicy>(EMBEDDED_FSYNC)?
                .unwrap_or(FsyncPolicy::Never),
            max_message_bytes: positive(attrs, EMBEDDED_MAX_MESSAGE_BYTES, 4 << 20, 1)?.min(1 << 30)
                as usize,
            segment_bytes: positive(attrs, EMBEDDED_SEGMENT_BYTES, 64 << 20, 4096)?,
            poll_interval: Duration::from_millis(positive(attrs, EMBEDDED_POLL_INTERVAL_MS, 5, 1)?),
            ack_timeout: Duration::from_millis(positive(
                attrs,
                EMBEDDED_ACK_TIMEOUT_MS,
                30_000,
                1,
            )?),
            consume_from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let attrs = KeyValue::new()
            .with(EMBEDDED_DIR, "/tmp/x")
            .with(keyvalue::REGION, "eu");
        let c = EmbeddedConfig::from_attributes(&attrs).unwrap();
        assert_eq!(c.dir, PathBuf::from("/tmp/x/eu"));
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.max_message_bytes, 4 << 20);
        let c =
            EmbeddedConfig::from_attributes(&attrs.clone().with(EMBEDDED_FSYNC, "always")).unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn bad_values_name_the_key() {
        let base = KeyValue::new().with(EMBEDDED_DIR, "/tmp/x");
        for (attrs, needle) in [
            (
                base.clone().with("EMBEDDED_FSINC", "never"),
                "unknown attribute EMBEDDED_FSINC",
            ),
            (
                base.clone().with(EMBEDDED_FSYNC, "sometimes"),
                "'sometimes' is not a fsync policy",
            ),
            (
                base.clone().with(EMBEDDED_SEGMENT_BYTES, "10"),
                "EMBEDDED_SEGMENT_BYTES=10 is too small",
            ),
            (
                base.clone().with(EMBEDDED_MAX_MESSAGE_BYTES, "lots"),
                "EMBEDDED_MAX_MESSAGE_BYTES='lots'",
            ),
            (
                base.clone().with(keyvalue::REGION, "../etc"),
                "region '../etc'",
            ),
            (
                base.clone().with(EMBEDDED_CONSUME_FROM, "middle"),
                "'middle' is not a start",
            ),
        ] {
            let err = EmbeddedConfig::from_attributes(&attrs).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
