//! The RocketMQ driver: OMS on Apache RocketMQ's remoting protocol, through
//! `rocketmq-client-rust` 1.0 (cargo feature `rocketmq`, on by default in the `omstream`
//! binary).
//!
//! URL: `oms:rocketmq://<name server>[,<name server>...]/<region>`, for example
//! `oms:rocketmq://127.0.0.1:9876/default`. The hosts are the cluster's name servers (port
//! 9876 when none is given); the region is kept as an attribute and not otherwise used.
//!
//! # How OMS maps onto RocketMQ
//!
//! | OMS | RocketMQ |
//! | --- | --- |
//! | queue `name` | topic `name`; queue `ns://name` is topic `ns%name` (RocketMQ's namespace form) |
//! | partitions | the topic's message queues, numbered by queue id (one broker: `broker-a` 0..n) |
//! | offset | queue offset (the next offset to read, when committed) |
//! | consumer group (`CONSUMER_ID`) | consumer group; committed offsets are stored on the broker |
//! | producer group (`PRODUCER_ID`) | producer group (default `omstream_producer`, `omstream_tx_producer` for transactional producers) |
//! | `messageKey` | message keys (`KEYS`); the key also picks the partition (hash of the key) |
//! | `messageId` | the producer's unique id (`UNIQ_KEY`), the `msg_id` a send returns (batches are sent without an id of their own, which the broker would give every member); messages stored by earlier omstream drivers carry it in `OMS_MESSAGE_ID` too, which wins |
//! | `delayTime` | delivery at the shortest of the broker's delay levels (1 s to 2 h) at least that long; the asked delay is kept in `OMS_DELAY_TIME` |
//! | `bornTimestamp`, `bornHost` | RocketMQ's born timestamp and born host, which the client records at send (the time it sent the message, a few ms after the producer's stamp, and its address `ip:port`); a `bornHost` the sender set itself is carried in `OMS_BORN_HOST` |
//! | `transactionId` | the transaction id of a half message |
//! | `storeTimestamp`, `storeHost`, `partition`, `offset` | as the broker stored them |
//! | `deliveryCount` | how often this consumer handed the message out (pull and push consumers); 1 for streaming consumers |
//! | pull / push consumers | a lite pull consumer subscribed to the topics: the group's consumers split the message queues (rebalanced by the client); per-message acks held by the driver, the group's offset on the broker being the lowest unacknowledged one; redelivery after `ROCKETMQ_ACK_TIMEOUT_MS` (see below) |
//! | `correlationId`, `traceId`, `expireTime`, `priority`, `qos`, `compression` | message properties `OMS_CORRELATION_ID`, `OMS_TRACE_ID`, ... (see [`header`]) so that they come back exactly as sent |
//! | user properties | message properties of the same name; a name RocketMQ reserves (`KEYS`, `TAGS`, ...) or one starting with `OMS_` is stored as `OMS_P_<name>` |
//! | transactions | half messages; commit and rollback by end-transaction; the broker's check-back asks the producer group's check listener |
//! | `ResourceManager` | topics created on every master with a queue count; listed and deleted through the admin API |
//!
//! RocketMQ has no namespaces to create or delete (a namespace is a prefix of the topic
//! name), so those calls return the spec's "unsupported" error, as do expiring messages on
//! the broker (`expireTime` is carried and checked by readers) and message priority (carried,
//! not acted on).
//!
//! # Pull and push consumers
//!
//! A pull consumer needs a group (`CONSUMER_ID`). The group's live consumers split the bound
//! topics' message queues between them. Each message handed out stays in flight until
//! acknowledged; the offset committed to the group for a message queue is its lowest offset
//! in flight, so a consumer that dies (or loses the queue to another) has its
//! unacknowledged messages redelivered by the group, and none it acknowledged before them.
//! A message not acknowledged within `ROCKETMQ_ACK_TIMEOUT_MS` (default 30 s) is handed out
//! again by the same consumer, with `deliveryCount` one higher. Push consumers are pull
//! consumers with a listener ([`PushConsumer`](crate::oms::PushConsumer)). Delivery is at
//! least once. (RocketMQ's own retry topics are not used: a message acknowledged late is
//! not sent back to the broker.)
//!
//! # Runtime
//!
//! The client runs on a tokio runtime of its own (one per process, started on first use), so
//! its connections outlive any one caller's runtime; every client call is made on it.

mod access_point;
mod error;
pub mod header;
mod producer;
mod pull;
mod resource;
mod runtime;
mod streaming;

pub use access_point::{RocketMqAccessPoint, RocketMqDriver};
pub use error::describe_client_error;

/// The producer group of plain producers created without `PRODUCER_ID`.
pub const DEFAULT_PRODUCER_GROUP: &str = "omstream_producer";

/// The producer group of transactional producers created without `PRODUCER_ID`. The broker
/// asks any producer of a half message's group whether to commit it, so every producer of a
/// transactional group must have a check listener; plain producers are kept out of it.
pub const DEFAULT_TRANSACTIONAL_PRODUCER_GROUP: &str = "omstream_tx_producer";

/// Attribute: how long a send, a fetch or an admin call may take, in ms (default 5000).
pub const ROCKETMQ_TIMEOUT_MS: &str = "ROCKETMQ_TIMEOUT_MS";

/// Attribute of pull and push consumers: how long a received message may stay unacknowledged
/// before it is delivered again, in ms (default 30000).
pub const ROCKETMQ_ACK_TIMEOUT_MS: &str = "ROCKETMQ_ACK_TIMEOUT_MS";

/// The ack timeout of pull and push consumers without [`ROCKETMQ_ACK_TIMEOUT_MS`].
pub const DEFAULT_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Attribute: the broker cluster topics are created in and deleted from (default
/// `DefaultCluster`).
pub const ROCKETMQ_CLUSTER: &str = "ROCKETMQ_CLUSTER";
