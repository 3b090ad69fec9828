//! The messaging access point and the driver registry that picks a driver from a URL.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::consumer::{PullConsumer, PushConsumer};
use super::error::{OmsError, OmsErrorKind, OmsStatus, Result};
use super::keyvalue::{self, KeyValue};
use super::lifecycle::ServiceLifecycle;
use super::producer::{Producer, TransactionChecks, TransactionStateCheckListener};
use super::resource::ResourceManager;
use super::streaming::StreamingConsumer;
use super::uri::AccessPointUri;

/// The spec version (major.minor) this API implements; drivers must match it.
pub const SPEC_VERSION: &str = "1.0";

/// One connection to a messaging service: the factory of producers, consumers and the resource
/// manager.
#[async_trait]
pub trait MessagingAccessPoint: ServiceLifecycle + fmt::Debug {
    /// The spec version the driver implements, such as `1.0.0`.
    fn version(&self) -> &str;
    /// The attributes it was created with, the URL's parts included.
    fn attributes(&self) -> &KeyValue;
    /// A producer; `attrs` add to or override the access point's attributes.
    async fn create_producer(&self, attrs: KeyValue) -> Result<Producer>;
    /// A producer that can prepare transactions, with the listener that resolves transactions
    /// left open by a producer that went away.
    async fn create_transactional_producer(
        &self,
        attrs: KeyValue,
        listener: Arc<dyn TransactionStateCheckListener>,
    ) -> Result<Producer>;
    /// When the driver asks check listeners about open transactions (default:
    /// [`TransactionChecks::OnProducerStart`]).
    fn transaction_checks(&self) -> TransactionChecks {
        TransactionChecks::OnProducerStart
    }
    /// A pull consumer; its group is the `CONSUMER_ID` attribute.
    async fn create_pull_consumer(&self, attrs: KeyValue) -> Result<Arc<dyn PullConsumer>>;
    /// A push consumer; its group is the `CONSUMER_ID` attribute.
    async fn create_push_consumer(&self, attrs: KeyValue) -> Result<PushConsumer> {
        let pull = self.create_pull_consumer(attrs).await?;
        Ok(PushConsumer::new(pull, 256))
    }
    /// A streaming consumer; its group (for committed offsets) is the `CONSUMER_ID` attribute.
    async fn create_streaming_consumer(
        &self,
        attrs: KeyValue,
    ) -> Result<Arc<dyn StreamingConsumer>>;
    /// The resource manager.
    async fn resource_manager(&self) -> Result<Arc<dyn ResourceManager>>;
}

/// A driver: connects to one kind of messaging service.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The name in URLs, such as `embedded`.
    fn driver_type(&self) -> &str;
    /// The spec version it implements (`major.minor[.patch]`).
    fn spec_version(&self) -> &str {
        "1.0.0"
    }
    /// Connects; `attrs` hold the URL's parts under the standard keys.
    async fn connect(
        &self,
        uri: &AccessPointUri,
        attrs: KeyValue,
    ) -> Result<Arc<dyn MessagingAccessPoint>>;
}

/// The drivers an application can connect with, by type. This replaces the spec's reflective
/// class loading: a driver is registered as a value.
///
/// ```
/// # tokio_test_block(async {
/// use omstream_core::oms::{DriverRegistry, KeyValue};
/// let dir = tempfile_dir();
/// let attrs = KeyValue::new().with("EMBEDDED_DIR", &dir);
/// let ap = DriverRegistry::with_builtin().connect("oms:embedded://localhost/demo", attrs).await.unwrap();
/// assert_eq!(ap.attributes().get_str("REGION"), Some("demo"));
/// # });
/// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f)
/// # }
/// # fn tempfile_dir() -> String {
/// #     let d = std::env::temp_dir().join(format!("omstream-doc-{}", std::process::id()));
/// #     d.display().to_string()
/// # }
/// ```
#[derive(Clone, Default)]
pub struct DriverRegistry {
    drivers: BTreeMap<String, Arc<dyn Driver>>,
}

impl fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverRegistry")
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.split('-').next()?.parse().ok()?;
    Some((major, minor))
}

impl DriverRegistry {
    /// A registry with no drivers.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the drivers built into this crate: `embedded`, and `rocketmq` with the
    /// `rocketmq` feature.
    pub fn with_builtin() -> Self {
        let mut registry = Self::empty();
        registry.register(Arc::new(super::embedded::EmbeddedDriver));
        #[cfg(feature = "rocketmq")]
        registry.register(Arc::new(super::rocketmq::RocketMqDriver));
        registry
    }

    /// Adds (or replaces) a driver under its type.
    pub fn register(&mut self, driver: Arc<dyn Driver>) -> &mut Self {
        self.drivers
            .insert(driver.driver_type().to_ascii_lowercase(), driver);
        self
    }

    /// The registered driver types.
    pub fn driver_types(&self) -> Vec<String> {
        self.drivers.keys().cloned().collect()
    }

    /// Parses `url`, fills the standard attributes (`ACCESS_POINTS`, `DRIVER_IMPL`, `REGION`,
    /// `ACCOUNT_ID`), picks the driver (the `DRIVER_IMPL` attribute wins over the URL's type),
    /// checks its spec version and connects.
    pub async fn connect(
        &self,
        url: &str,
        attrs: KeyValue,
    ) -> Result<Arc<dyn MessagingAccessPoint>> {
        let uri: AccessPointUri = url.parse()?;
        let mut attrs = attrs;
        let driver_name = attrs
            .get_str(keyvalue::DRIVER_IMPL)
            .unwrap_or(&uri.driver_type)
            .to_ascii_lowercase();
        let driver = self.drivers.get(&driver_name).ok_or_else(|| {
            OmsError::new(
                OmsErrorKind::DriverLoad,
                OmsStatus::DRIVER_CONSTRUCTION_FAILED,
                format!(
                    "no driver '{driver_name}' is available; known drivers: {} (a broker driver may need its cargo feature)",
                    self.driver_types().join(", ")
                ),
            )
        })?;
        let theirs = major_minor(driver.spec_version()).ok_or_else(|| {
            OmsError::new(
                OmsErrorKind::DriverLoad,
                OmsStatus::ILLEGAL_DRIVER_VERSION,
                format!(
                    "driver '{driver_name}' reports spec version '{}', not major.minor",
                    driver.spec_version()
                ),
            )
        })?;
        let ours = major_minor(SPEC_VERSION).unwrap_or((1, 0));
        if theirs != ours {
            return Err(OmsError::new(
                OmsErrorKind::DriverLoad,
                OmsStatus::SPEC_VERSION_MISMATCH,
                format!(
                    "driver '{driver_name}' implements OMS {}, this API is OMS {SPEC_VERSION}; use a matching driver",
                    driver.spec_version()
                ),
            ));
        }
        attrs.put(keyvalue::ACCESS_POINTS, uri.hosts_string());
        attrs.put(keyvalue::DRIVER_IMPL, &driver_name);
        attrs.put(keyvalue::REGION, &uri.region);
        if let Some(acc) = &uri.account_id {
            attrs.put(keyvalue::ACCOUNT_ID, acc);
        }
        driver.connect(&uri, attrs).await
    }
}

/// Connects with the built-in drivers: `DriverRegistry::with_builtin().connect(url, attrs)`.
pub async fn connect(url: &str, attrs: KeyValue) -> Result<Arc<dyn MessagingAccessPoint>> {
    DriverRegistry::with_builtin().connect(url, attrs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OldDriver;

    #[async_trait]
    impl Driver for OldDriver {
        fn driver_type(&self) -> &str {
            "old"
        }
        fn spec_version(&self) -> &str {
            "0.3.1-alpha"
        }
        async fn connect(
            &self,
            _: &AccessPointUri,
            _: KeyValue,
        ) -> Result<Arc<dyn MessagingAccessPoint>> {
            Err(OmsError::storage("never reached"))
        }
    }

    #[tokio::test]
    async fn unknown_driver_and_version_mismatch_have_their_codes() {
        let mut registry = DriverRegistry::with_builtin();
        let err = registry
            .connect("oms:nats://localhost:4222/r", KeyValue::new())
            .await
            .unwrap_err();
        assert_eq!(err.status(), OmsStatus::DRIVER_CONSTRUCTION_FAILED);
        assert!(err.to_string().contains("known drivers: embedded"), "{err}");
        registry.register(Arc::new(OldDriver));
        let err = registry
            .connect("oms:old://h/r", KeyValue::new())
            .await
            .unwrap_err();
        assert_eq!(err.status(), OmsStatus::SPEC_VERSION_MISMATCH);
        let err = registry
            .connect("oms:://h/r", KeyValue::new())
            .await
            .unwrap_err();
        assert_eq!(err.status(), OmsStatus::ILLEGAL_ACCESS_POINT);
    }

    #[test]
    fn versions_compare_by_major_minor() {
        assert_eq!(major_minor("1.0.0"), Some((1, 0)));
        assert_eq!(major_minor("0.3-alpha"), Some((0, 3)));
        assert_eq!(major_minor("x"), None);
    }
}
