//! Topics as OMS queues: created with a queue count on every master broker, described by
//! their message queues' offsets, listed and deleted through the admin API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rocketmq_client_rust::{DefaultMQAdminExt, DefaultMQProducer, RouteAdmin, TopicAdmin};
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::topic::TopicValidator;
use tokio::sync::Mutex;

use super::access_point::Settings;
use super::error::oms_error;
use super::header::{queue_of, topic_of};
use super::runtime::driver_runtime;
use crate::oms::{
    OmsError, OmsStatus, PartitionDescription, QueueConfig, QueueDescription, ResourceManager,
    Result,
};

/// The group of the producer the resource manager creates topics with.
const ADMIN_GROUP: &str = "omstream_admin";
/// How long a new topic may take to appear at the name servers.
const ROUTE_WAIT: Duration = Duration::from_secs(15);

/// Clients started on first use, shared by every call.
struct Clients {
    producer: DefaultMQProducer,
    admin: DefaultMQAdminExt,
}

/// The resource manager of a RocketMQ access point.
pub(crate) struct RocketMqResourceManager {
    settings: Arc<Settings>,
    clients: Arc<Mutex<Option<Clients>>>,
}

impl std::fmt::Debug for RocketMqResourceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocketMqResourceManager")
            .field("name_servers", &self.settings.name_servers)
            .finish_non_exhaustive()
    }
}

impl Drop for RocketMqResourceManager {
    fn drop(&mut self) {
        let clients = self.clients.clone();
        if let Ok(runtime) = driver_runtime() {
            // Stops the clients on the driver's runtime; nobody waits for it.
            drop(runtime.run_local(move || async move {
                if let Some(mut clients) = clients.lock().await.take() {
                    clients.producer.shutdown().await;
                    clients.admin.shutdown().await;
                }
            }));
        }
    }
}

impl RocketMqResourceManager {
    pub(crate) fn new(settings: Arc<Settings>) -> Result<Self> {
        driver_runtime()?;
        Ok(RocketMqResourceManager {
            settings,
            clients: Arc::new(Mutex::new(None)),
        })
    }

    fn error(&self, action: String) -> impl FnOnce(rocketmq_client_rust::ClientError) -> OmsError {
        let servers = self.settings.name_servers.clone();
        move |e| oms_error(&action, &servers, e)
    }

    /// Runs `call` with the started clients, on the driver's runtime.
    async fn with_clients<F, Fut, T>(&self, call: F) -> Result<T>
    where
        F: FnOnce(DefaultMQProducer, Arc<Mutex<Option<Clients>>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + 'static,
        T: Send + 'static,
    {
        let clients = self.clients.clone();
        let settings = self.settings.clone();
        let runtime = driver_runtime()?;
        let client_runtime = runtime.client();
        runtime
            .run_local(move || async move {
                let producer = {
                    let mut guard = clients.lock().await;
                    if guard.is_none() {
                        let mut producer = DefaultMQProducer::builder(client_runtime.clone())
                            .producer_group(ADMIN_GROUP)
                            .name_server_addr(settings.name_servers.as_str())
                            .send_msg_timeout(settings.timeout_ms as u32)
                            .build();
                        producer.start().await.map_err(|e| {
                            oms_error("start an admin client", &settings.name_servers, e)
                        })?;
                        let mut admin = DefaultMQAdminExt::with_timeout(
                            client_runtime,
                            Duration::from_millis(settings.timeout_ms),
                        );
                        admin.set_namesrv_addr(settings.name_servers.as_str());
                        admin.start().await.map_err(|e| {
                            oms_error("start an admin client", &settings.name_servers, e)
                        })?;
                        *guard = Some(Clients { producer, admin });
                    }
                    guard.as_ref().expect("just set").producer.clone()
                };
                call(producer, clients).await
            })
            .await?
    }

    /// Whether any broker is registered at the name servers.
    async fn brokers_registered(&self) -> Result<bool> {
        let error = self.error("read the cluster's brokers".to_string());
        self.with_clients(move |_, clients| async move {
            let guard = clients.lock().await;
            let admin = &guard.as_ref().expect("started").admin;
            RouteAdmin::examine_broker_cluster_info(admin)
                .await
                .map(|info| {
                    info.broker_addr_table.is_some_and(|brokers| {
                        brokers
                            .values()
                            .any(|broker| !broker.broker_addrs().is_empty())
                    })
                })
                .map_err(error)
        })
        .await
    }

    /// What a topic without a route means: the queue does not exist, unless no broker is
    /// registered at all (it died, or has not started): then the queue may well exist, and
    /// the error is transient (a retry may find the broker back).
    pub(crate) async fn missing_route(&self, queue: &str) -> OmsError {
        match self.brokers_registered().await {
            Ok(true) => OmsError::destination_not_found(queue),
            Ok(false) => OmsError::new(
                crate::oms::OmsErrorKind::Runtime,
                OmsStatus::SERVICE_NOT_AVAILABLE,
                format!(
                    "no RocketMQ broker is registered at the name servers {}, so queue '{queue}' cannot be \
                     reached; check that the broker runs and can reach the name servers",
                    self.settings.name_servers
                ),
            )
            .transient(),
            Err(error) => error,
        }
    }

    /// The message queues of `topic` by queue id; `None` when the topic has no route.
    async fn queues(&self, topic: &str) -> Result<Option<Vec<MessageQueue>>> {
        let name = topic.to_string();
        let action = format!("look up topic '{topic}'");
        let servers = self.settings.name_servers.clone();
        self.with_clients(move |mut producer, _| async move {
            match producer.fetch_publish_message_queues(&name).await {
                Ok(mut queues) => {
                    queues.sort_by_key(|q| (q.queue_id(), q.broker_name().to_string()));
                    Ok(Some(queues))
                }
                Err(e) => {
                    let error = oms_error(&action, &servers, e);
                    // "No route" and "cannot find the message queues" both mean: no such topic.
                    if error.status() == OmsStatus::DESTINATION_NOT_FOUND
                        || error.message().contains("Can not find Message Queue")
                        || error.message().contains("No route info")
                        || error.message().contains("core.argument.invalid")
                    {
                        Ok(None)
                    } else {
                        Err(error)
                    }
                }
            }
        })
        .await
    }
}

#[async_trait]
impl ResourceManager for RocketMqResourceManager {
    async fn create_namespace(&self, _: &str) -> Result<()> {
        Err(OmsError::unsupported(
            "rocketmq",
            "creating namespaces (a namespace is the prefix of a topic name: queue 'ns://name' is topic 'ns%name')",
        ))
    }

    async fn delete_namespace(&self, _: &str) -> Result<()> {
        Err(OmsError::unsupported(
            "rocketmq",
            "deleting namespaces (delete the namespace's queues one by one)",
        ))
    }

    async fn list_namespaces(&self) -> Result<Vec<String>> {
        let mut namespaces: Vec<String> = self
            .list_queues(None)
            .await?
            .iter()
            .filter_map(|q| q.split_once("://").map(|(ns, _)| ns.to_string()))
            .collect();
        namespaces.push("default".to_string());
        namespaces.sort();
        namespaces.dedup();
        Ok(namespaces)
    }

    async fn create_queue(&self, queue: &str, config: QueueConfig) -> Result<()> {
        config.validate()?;
        if config.retention.max_age.is_some() || config.retention.max_bytes.is_some() {
            return Err(OmsError::unsupported(
                "rocketmq",
                "a retention policy per queue (the broker keeps every topic's messages for its fileReservedTime); \
                 create the queue without one",
            ));
        }
        let topic = topic_of(queue)?;
        if self.queues(&topic).await?.is_some() {
            return Err(OmsError::destination_exists(queue));
        }
        let partitions = config.partitions as i32;
        let name = topic.clone();
        let error = self.error(format!("create topic '{topic}'"));
        self.with_clients(move |mut producer, _| async move {
            producer
                .create_topic(
                    TopicValidator::AUTO_CREATE_TOPIC_KEY_TOPIC,
                    &name,
                    partitions,
                    HashMap::new(),
                )
                .await
                .map_err(error)
        })
        .await?;
        // The route reaches the name servers with the broker's next registration.
        let started = std::time::Instant::now();
        loop {
            if let Some(queues) = self.queues(&topic).await? {
                if queues.len() as i32 >= partitions {
                    return Ok(());
                }
            }
            if started.elapsed() > ROUTE_WAIT {
                return Err(OmsError::new(
                    crate::oms::OmsErrorKind::Timeout,
                    OmsStatus::REQUEST_TIMEOUT,
                    format!(
                        "topic '{topic}' was created but its {partitions} partitions did not appear at the name \
                         servers {} within {} s; check the broker's log",
                        self.settings.name_servers,
                        ROUTE_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<()> {
        let topic = topic_of(queue)?;
        if self.queues(&topic).await?.is_none() {
            return Err(self.missing_route(queue).await);
        }
        let cluster = self.settings.cluster.clone();
        let name = topic.clone();
        let error = self.error(format!("delete topic '{topic}'"));
        self.with_clients(move |_, clients| async move {
            let guard = clients.lock().await;
            let admin = &guard.as_ref().expect("started").admin;
            TopicAdmin::delete_topic(admin, name.into(), cluster.into())
                .await
                .map_err(error)
        })
        .await
    }

    async fn list_queues(&self, namespace: Option<&str>) -> Result<Vec<String>> {
        let error = self.error("list the topics".to_string());
        let topics = self
            .with_clients(move |_, clients| async move {
                let guard = clients.lock().await;
                let admin = &guard.as_ref().expect("started").admin;
                TopicAdmin::fetch_all_topic_list(admin)
                    .await
                    .map(|list| {
                        list.topic_list
                            .iter()
                            .map(|t| t.as_str().to_string())
                            .collect::<Vec<_>>()
                    })
                    .map_err(error)
            })
            .await?;
        let cluster = &self.settings.cluster;
        let mut queues: Vec<String> = topics
            .into_iter()
            .filter(|t| {
                !TopicValidator::is_system_topic(t)
                    && !t.starts_with("%RETRY%")
                    && !t.starts_with("%DLQ%")
                    && !t.starts_with(cluster.as_str())
                    && !t.starts_with("broker-")
                    && topic_of(&queue_of(t)).is_ok()
            })
            .map(|t| queue_of(&t))
            .filter(|q| match namespace {
                None => true,
                Some("default") => !q.contains("://"),
                Some(ns) => q.starts_with(&format!("{ns}://")),
            })
            .collect();
        queues.sort();
        Ok(queues)
    }

    async fn describe_queue(&self, queue: &str) -> Result<QueueDescription> {
        let topic = topic_of(queue)?;
        let Some(queues) = self.queues(&topic).await? else {
            return Err(self.missing_route(queue).await);
        };
        let error = self.error(format!("read the offsets of topic '{topic}'"));
        let ranges = self
            .with_clients(move |mut producer, _| async move {
                let mut ranges = Vec::with_capacity(queues.len());
                for mq in &queues {
                    let min = producer.min_offset(mq).await;
                    let max = producer.max_offset(mq).await;
                    match (min, max) {
                        (Ok(min), Ok(max)) => ranges.push((mq.queue_id(), min, max)),
                        (Err(e), _) | (_, Err(e)) => return Err(error(e)),
                    }
                }
                Ok(ranges)
            })
            .await?;
        Ok(QueueDescription {
            name: queue.to_string(),
            config: QueueConfig::with_partitions(ranges.len() as u32),
            partitions: ranges
                .into_iter()
                .map(|(partition, start, end)| PartitionDescription {
                    partition,
                    start_offset: start,
                    end_offset: end,
                    // The broker does not report bytes per message queue.
                    bytes: 0,
                })
                .collect(),
        })
    }
}

/// `error` when it is not about a missing route; else what the missing route of `queue`
/// means (see [`RocketMqResourceManager::missing_route`]).
pub(crate) async fn explain_missing_route(
    settings: &Arc<Settings>,
    queue: &str,
    error: OmsError,
) -> OmsError {
    if error.status() != OmsStatus::DESTINATION_NOT_FOUND {
        return error;
    }
    match RocketMqResourceManager::new(settings.clone()) {
        Ok(resources) => resources.missing_route(queue).await,
        Err(_) => error,
    }
}
