//! Durations (`90s`, `7d`) and byte sizes (`500MB`, `1GiB`): parsing for flags, formatting for
//! tables.

use std::time::Duration;

const DURATION_FORMS: &str =
    "a duration is a whole number and a unit: ms, s, m, h, d or w (e.g. 90s, 30m, 12h, 7d)";
const SIZE_FORMS: &str = "a size is a whole number of bytes, optionally with a unit: \
     B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 500MB, 1GiB, 1048576";

/// Splits `12h` into `(12, "h")`; `None` when there are no leading digits.
fn split_number(raw: &str) -> Option<(u64, &str)> {
    let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    if digits == 0 {
        return None;
    }
    // Digits only, so the one way to fail is overflow; treat it like any other bad number.
    let n = raw[..digits].parse().ok()?;
    Some((n, raw[digits..].trim_start()))
}

/// Parses a duration such as `90s`, `30m`, `12h`, `7d`, `2w` or `500ms`. A unit is required:
/// a bare number could mean seconds or milliseconds, and retention is too costly to guess.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    let (n, unit) =
        split_number(text).ok_or_else(|| format!("'{raw}' is not a duration; {DURATION_FORMS}"))?;
    let millis_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "" => return Err(format!("'{raw}' has no unit; {DURATION_FORMS}")),
        _ => {
            return Err(format!(
                "'{raw}' has an unknown unit '{unit}'; {DURATION_FORMS}"
            ))
        }
    };
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("'{raw}' is too long a duration"))?;
    Ok(Duration::from_millis(millis))
}

/// Parses a byte size such as `1048576`, `500MB`, `1GiB` or `64 KiB` (units are
/// case-insensitive; `K`, `M`, `G`, `T` alone are binary, as `ls -h` prints them).
pub(crate) fn parse_size(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let (n, unit) =
        split_number(text).ok_or_else(|| format!("'{raw}' is not a size; {SIZE_FORMS}"))?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "'{raw}' has an unknown unit '{unit}'; {SIZE_FORMS}"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{raw}' is too large a size"))
}

/// Formats a duration in the largest unit that divides it, so that `7d` prints as it was given.
pub(crate) fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    for (unit, size) in [
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Formats bytes in binary units with one decimal (`1.5 MiB`); plain bytes below 1 KiB.
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert_eq!(
            parse_duration(" 250ms ").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("1H").unwrap(), Duration::from_secs(3600));
        for (bad, why) in [
            ("7", "has no unit"),
            ("7y", "unknown unit 'y'"),
            ("d", "is not a duration"),
            ("-1s", "is not a duration"),
            ("1.5h", "unknown unit '.5h'"),
            ("99999999999999999999s", "is not a duration"),
            ("18446744073709551615w", "too long"),
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(
                err.contains("90s, 30m, 12h, 7d") || err.contains("too long"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("1048576").unwrap(), 1_048_576);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64 kib").unwrap(), 64 << 10);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("10B").unwrap(), 10);
        assert_eq!(parse_size("3TB").unwrap(), 3_000_000_000_000);
        for (bad, why) in [
            ("MB", "is not a size"),
            ("5PB", "unknown unit 'PB'"),
            ("1.5GiB", "unknown unit '.5GiB'"),
            ("20000000TiB", "too large"),
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(parse_size("x")
            .unwrap_err()
            .contains("500MB, 1GiB, 1048576"));
    }

    #[test]
    fn formatting_reads_back() {
        assert_eq!(format_duration(Duration::from_secs(7 * 86400)), "1w");
        assert_eq!(format_duration(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        for d in ["12h", "30m", "90s", "250ms", "2w"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1 << 30), "1.0 GiB");
    }
}
