//! RocketMQ client errors as OMS errors that say what failed, where, and what to check.
//!
//! The client redacts the detail of its errors in `Display` (only a code such as
//! `core.argument.invalid` shows); the detail is in typed sources, read here.

use rocketmq_client_rust::{ClientError, MQBrokerException, MQClientException};

use crate::oms::{OmsError, OmsErrorKind, OmsStatus};

/// The client's error in words: its code, and the broker's or client's own message.
pub fn describe_client_error(error: &ClientError) -> String {
    let code = error.code().as_str().to_string();
    if let Some(client) = error.source_ref::<MQClientException>() {
        let detail = client.error_message().unwrap_or_default();
        return format!("{code} (client code {}): {detail}", client.response_code());
    }
    if let Some(broker) = error.source_ref::<MQBrokerException>() {
        let detail = broker.error_message().unwrap_or_default();
        return format!("{code} (broker code {}): {detail}", broker.response_code());
    }
    if let Some(io) = error.source_ref::<std::io::Error>() {
        return format!("{code}: {io}");
    }
    match error.broker_response_code() {
        Some(response) => format!("{code} (broker code {response}): {error:?}"),
        None => format!("{code}: {error:?}"),
    }
}

/// Turns a client error of `action` (e.g. "send to topic 'orders'") into an OMS error.
/// `name_servers` is the access point's name server list, named in connection errors.
pub(crate) fn oms_error(action: &str, name_servers: &str, error: ClientError) -> OmsError {
    let code = error.code().as_str().to_string();
    let detail = describe_client_error(&error);
    let client_code = error
        .source_ref::<MQClientException>()
        .map(MQClientException::response_code);
    let broker_code = error.broker_response_code().or_else(|| {
        error
            .source_ref::<MQBrokerException>()
            .map(MQBrokerException::response_code)
    });
    let (kind, status, advice) = if code.starts_with("transport.connection")
        || code.starts_with("transport.dns")
        || client_code == Some(10001)
        || client_code == Some(10004)
    {
        (
            OmsErrorKind::Runtime,
            OmsStatus::SERVICE_NOT_AVAILABLE,
            format!(
                "cannot reach RocketMQ (name servers {name_servers}); check that the name server and the broker \
                 run and that the URL's hosts are right (scripts/rocketmq.sh start runs both on 127.0.0.1)"
            ),
        )
    } else if code.contains("timeout") || client_code == Some(10002) || client_code == Some(10006) {
        (
            OmsErrorKind::Timeout,
            OmsStatus::REQUEST_TIMEOUT,
            format!("RocketMQ (name servers {name_servers}) did not answer in time; check the broker's load and log"),
        )
    } else if client_code == Some(10005) || broker_code == Some(17) {
        (
            OmsErrorKind::Destination,
            OmsStatus::DESTINATION_NOT_FOUND,
            format!(
                "the topic has no route: it does not exist (create the queue first), or no broker is \
                 registered at the name servers {name_servers}"
            ),
        )
    } else {
        (
            OmsErrorKind::Runtime,
            OmsStatus::SERVER_ERROR,
            format!("see the broker's log (name servers {name_servers})"),
        )
    };
    let oms = OmsError::new(kind, status, format!("cannot {action}: {detail}; {advice}"))
        .with_source(error);
    // Unreachable and unanswered calls may work once the broker is back.
    if status == OmsStatus::SERVICE_NOT_AVAILABLE || status == OmsStatus::REQUEST_TIMEOUT {
        oms.transient()
    } else {
        oms
    }
}
