//! Connecting to the access point named by the global options.

use std::sync::Arc;

use omstream::oms::{self, embedded::EMBEDDED_DIR, KeyValue, MessagingAccessPoint};

use super::args::AccessArgs;

/// The access point attributes: `--data-dir` as `EMBEDDED_DIR`, then every `--attr`, so that an
/// explicit attribute wins.
pub(crate) fn attributes(args: &AccessArgs) -> KeyValue {
    let mut attrs = KeyValue::new();
    if let Some(dir) = &args.data_dir {
        attrs.put(EMBEDDED_DIR, dir.display());
    }
    for (key, value) in &args.attrs {
        attrs.put(key.clone(), value);
    }
    attrs
}

/// Connects with the built-in drivers. OMS errors already name their status and what to do, so
/// they are passed on unchanged.
pub(crate) async fn connect(args: &AccessArgs) -> anyhow::Result<Arc<dyn MessagingAccessPoint>> {
    Ok(oms::connect(&args.url, attributes(args)).await?)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn attr_wins_over_data_dir() {
        let args = AccessArgs {
            url: super::super::args::DEFAULT_URL.into(),
            data_dir: Some(PathBuf::from("/data")),
            attrs: vec![("EMBEDDED_FSYNC".into(), "always".into())],
        };
        let attrs = attributes(&args);
        assert_eq!(attrs.get_str(EMBEDDED_DIR), Some("/data"));
        assert_eq!(attrs.get_str("EMBEDDED_FSYNC"), Some("always"));
        let args = AccessArgs {
            attrs: vec![(EMBEDDED_DIR.into(), "/other".into())],
            ..args
        };
        assert_eq!(attributes(&args).get_str(EMBEDDED_DIR), Some("/other"));
    }
}
