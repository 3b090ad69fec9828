//! The driver and its access point: settings from the URL and attributes, and the factories
//! of producers, consumers and the resource manager.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::producer::RocketMqProducer;
use super::pull::RocketMqPullConsumer;
use super::resource::RocketMqResourceManager;
use super::streaming::RocketMqStreamingConsumer;
use super::{
    DEFAULT_ACK_TIMEOUT, DEFAULT_PRODUCER_GROUP, DEFAULT_TRANSACTIONAL_PRODUCER_GROUP,
    ROCKETMQ_ACK_TIMEOUT_MS, ROCKETMQ_CLUSTER, ROCKETMQ_TIMEOUT_MS,
};
use crate::oms::{
    keyvalue, AccessPointUri, Driver, KeyValue, LifecycleCell, MessagingAccessPoint, OmsError,
    Producer, PullConsumer, ResourceManager, Result, ServiceLifeState, ServiceLifecycle,
    StreamingConsumer, TransactionChecks, TransactionStateCheckListener,
};

/// The name server port when the URL gives none.
const DEFAULT_NAME_SERVER_PORT: u16 = 9876;

/// The driver for `oms:rocketmq://...` URLs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RocketMqDriver;

/// What the handles of one access point share.
#[derive(Debug)]
pub(crate) struct Settings {
    /// The name servers, as the client takes them (`host:port;host:port`).
    pub(crate) name_servers: String,
    /// The timeout of a client call, in ms.
    pub(crate) timeout_ms: u64,
    /// The cluster topics are created in.
    pub(crate) cluster: String,
}

impl Settings {
    fn from(uri: &AccessPointUri, attrs: &KeyValue) -> Result<Self> {
        if uri.hosts.is_empty() {
            return Err(OmsError::bad_parameter(
                "a RocketMQ URL names its name servers: oms:rocketmq://127.0.0.1:9876/<region>",
            ));
        }
        let name_servers = uri
            .hosts
            .iter()
            .map(|h| format!("{}:{}", h.host, h.port.unwrap_or(DEFAULT_NAME_SERVER_PORT)))
            .collect::<Vec<_>>()
            .join(";");
        let timeout_ms = attrs.get_i64_or(ROCKETMQ_TIMEOUT_MS, 5000)?;
        if timeout_ms <= 0 {
            return Err(OmsError::bad_parameter(format!(
                "{ROCKETMQ_TIMEOUT_MS} must be above 0 ms, not {timeout_ms}"
            )));
        }
        Ok(Settings {
            name_servers,
            timeout_ms: timeout_ms as u64,
            cluster: attrs
                .get_str(ROCKETMQ_CLUSTER)
                .unwrap_or("DefaultCluster")
                .to_string(),
        })
    }
}

/// Checks a producer or consumer group name against RocketMQ's rules.
pub(crate) fn validate_group(what: &str, group: &str) -> Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '%' | '|');
    if group.is_empty() || group.len() > 120 || !group.chars().all(valid) {
        return Err(OmsError::bad_parameter(format!(
            "{what} '{group}' is not a RocketMQ group name: 1 to 120 letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

#[async_trait]
impl Driver for RocketMqDriver {
    fn driver_type(&self) -> &str {
        "rocketmq"
    }

    async fn connect(
        &self,
        uri: &AccessPointUri,
        attrs: KeyValue,
    ) -> Result<Arc<dyn MessagingAccessPoint>> {
        let settings = Settings::from(uri, &attrs)?;
        // Fails here, not at the first send, when the client runtime cannot start.
        super::runtime::driver_runtime()?;
        Ok(Arc::new(RocketMqAccessPoint {
            settings: Arc::new(settings),
            attributes: attrs,
            state: LifecycleCell::new(ServiceLifeState::Started),
        }))
    }
}

/// An access point on a RocketMQ cluster.
#[derive(Debug)]
pub struct RocketMqAccessPoint {
    settings: Arc<Settings>,
    attributes: KeyValue,
    state: LifecycleCell,
}

impl RocketMqAccessPoint {
    /// The name servers, as `host:port;host:port`.
    pub fn name_servers(&self) -> &str {
        &self.settings.name_servers
    }

    fn attr<'a>(&'a self, attrs: &'a KeyValue, key: &str) -> Option<&'a str> {
        attrs.get_str(key).or_else(|| self.attributes.get_str(key))
    }

    /// The producer group: `PRODUCER_ID`, else the default of plain or transactional
    /// producers. (The broker asks any producer of a half message's group about it, so a
    /// group's producers must all have a check listener: plain ones get a group of their own.)
    fn producer_group(&self, attrs: &KeyValue, transactional: bool) -> Result<String> {
        let default = if transactional {
            DEFAULT_TRANSACTIONAL_PRODUCER_GROUP
        } else {
            DEFAULT_PRODUCER_GROUP
        };
        let group = self
            .attr(attrs, keyvalue::PRODUCER_ID)
            .unwrap_or(default)
            .to_string();
        validate_group("producer group (PRODUCER_ID)", &group)?;
        Ok(group)
    }

    fn consumer_group(&self, attrs: &KeyValue) -> Result<Option<String>> {
        let group = self.attr(attrs, keyvalue::CONSUMER_ID).map(str::to_string);
        if let Some(group) = &group {
            validate_group("consumer group (CONSUMER_ID)", group)?;
        }
        Ok(group)
    }
}

#[async_trait]
impl ServiceLifecycle for RocketMqAccessPoint {
    async fn start(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Started);
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.state.set(ServiceLifeState::Stopped);
        Ok(())
    }

    fn current_state(&self) -> ServiceLifeState {
        self.state.get()
    }
}

#[async_trait]
impl MessagingAccessPoint for RocketMqAccessPoint {
    fn version(&self) -> &str {
        "1.0.0"
    }

    fn attributes(&self) -> &KeyValue {
        &self.attributes
    }

    async fn create_producer(&self, attrs: KeyValue) -> Result<Producer> {
        let group = self.producer_group(&attrs, false)?;
        Ok(Producer::new(Arc::new(RocketMqProducer::new(
            self.settings.clone(),
            &group,
            None,
        )?)))
    }

    async fn create_transactional_producer(
        &self,
        attrs: KeyValue,
        listener: Arc<dyn TransactionStateCheckListener>,
    ) -> Result<Producer> {
        let group = self.producer_group(&attrs, true)?;
        Ok(Producer::new(Arc::new(RocketMqProducer::new(
            self.settings.clone(),
            &group,
            Some(listener),
        )?)))
    }

    /// The broker checks back half messages nobody ended with a live producer of their group.
    fn transaction_checks(&self) -> TransactionChecks {
        TransactionChecks::WhileRunning
    }

    async fn create_pull_consumer(&self, attrs: KeyValue) -> Result<Arc<dyn PullConsumer>> {
        let group = self.consumer_group(&attrs)?.ok_or_else(|| {
            OmsError::bad_parameter(
                "a pull consumer consumes for a consumer group: set CONSUMER_ID",
            )
        })?;
        let ack_timeout = match self.attr(&attrs, ROCKETMQ_ACK_TIMEOUT_MS) {
            None => DEFAULT_ACK_TIMEOUT,
            Some(value) => match value.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(OmsError::bad_parameter(format!(
                        "{ROCKETMQ_ACK_TIMEOUT_MS} is a number of ms above 0, not '{value}'"
                    )))
                }
            },
        };
        Ok(Arc::new(RocketMqPullConsumer::new(
            self.settings.clone(),
            group,
            ack_timeout,
        )?))
    }

    async fn create_streaming_consumer(
        &self,
        attrs: KeyValue,
    ) -> Result<Arc<dyn StreamingConsumer>> {
        let group = self.consumer_group(&attrs)?;
        Ok(Arc::new(RocketMqStreamingConsumer::new(
            self.settings.clone(),
            group,
        )?))
    }

    async fn resource_manager(&self) -> Result<Arc<dyn ResourceManager>> {
        Ok(Arc::new(RocketMqResourceManager::new(
            self.settings.clone(),
        )?))
    }
}
