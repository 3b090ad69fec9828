//! `consume --from`: where reading starts in each partition.

use std::str::FromStr;

const FORMS: &str =
    "use beginning, end, offset:N, time:RFC3339 (e.g. time:2024-05-01T12:00:00Z) or committed";

/// Where `consume` starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartFrom {
    /// The oldest retained message.
    Beginning,
    /// After the newest message: only messages stored from now on.
    End,
    /// The message at this offset (clamped into the retained range).
    Offset(i64),
    /// The first message stored at or after this instant (ms since the epoch).
    Time(i64),
    /// The consumer group's committed offset, else the beginning.
    Committed,
}

impl FromStr for StartFrom {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let text = raw.trim();
        match text.to_ascii_lowercase().as_str() {
            "beginning" | "earliest" => return Ok(Self::Beginning),
            "end" | "latest" => return Ok(Self::End),
            "committed" => return Ok(Self::Committed),
            _ => {}
        }
        if let Some(n) = text.strip_prefix("offset:") {
            return match n.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Ok(Self::Offset(n)),
                _ => Err(format!(
                    "'{raw}': the offset must be a whole number, 0 or more; {FORMS}"
                )),
            };
        }
        if let Some(t) = text.strip_prefix("time:") {
            return chrono::DateTime::parse_from_rfc3339(t.trim())
                .map(|t| Self::Time(t.timestamp_millis()))
                .map_err(|e| format!("'{raw}': the time is not RFC 3339 ({e}); {FORMS}"));
        }
        Err(format!("'{raw}' is not a start position; {FORMS}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("beginning".parse(), Ok(StartFrom::Beginning));
        assert_eq!("END".parse(), Ok(StartFrom::End));
        assert_eq!("committed".parse(), Ok(StartFrom::Committed));
        assert_eq!("offset:42".parse(), Ok(StartFrom::Offset(42)));
        assert_eq!(
            "time:1970-01-01T00:00:01.5Z".parse(),
            Ok(StartFrom::Time(1500))
        );
        assert_eq!(
            "time:2024-05-01T14:00:00+02:00".parse(),
            Ok(StartFrom::Time(1_714_564_800_000))
        );
    }

    #[test]
    fn errors_list_the_forms() {
        for bad in ["sideways", "offset:-1", "offset:x", "time:yesterday", ""] {
            let err = bad.parse::<StartFrom>().unwrap_err();
            assert!(err.contains("offset:N, time:RFC3339"), "{bad}: {err}");
        }
    }
}
