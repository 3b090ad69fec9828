//! `KEY=VALUE` arguments: access point attributes (`--attr`) and message properties (`--property`).

/// Splits `KEY=VALUE` at the first `=`: the value may hold more `=` and may be empty, the key
/// may not be empty or contain whitespace (a likely quoting mistake).
pub(crate) fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    let Some((key, value)) = raw.split_once('=') else {
        return Err(format!(
            "'{raw}' is not KEY=VALUE (e.g. EMBEDDED_FSYNC=always)"
        ));
    };
    if key.is_empty() {
        return Err(format!(
            "'{raw}' has an empty key; the form is KEY=VALUE (e.g. EMBEDDED_FSYNC=always)"
        ));
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!("the key '{key}' contains whitespace; the form is KEY=VALUE (e.g. EMBEDDED_FSYNC=always)"));
    }
    Ok((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_equals_sign() {
        assert_eq!(parse_key_value("A=1").unwrap(), ("A".into(), "1".into()));
        assert_eq!(
            parse_key_value("url=a=b").unwrap(),
            ("url".into(), "a=b".into())
        );
        assert_eq!(
            parse_key_value("empty=").unwrap(),
            ("empty".into(), String::new())
        );
    }

    #[test]
    fn malformed_pairs_say_the_form() {
        for bad in ["novalue", "=1", "a b=1", ""] {
            let err = parse_key_value(bad).unwrap_err();
            assert!(err.contains("KEY=VALUE"), "{bad}: {err}");
        }
    }
}
