//! RocketMQ client errors as OMS errors that say what failed, where, and what to check.
//!
//! The client redacts the detail of its errors in `Display` (only a code such as
//! `core.argument.invalid` shows); the detail is in typed sources, read here.

use rocketmq_client_rust::{ClientError, MQBrokerException, MQClientException};

use crate::oms::{OmsError, OmsErrorKind, OmsStatus};

/// RocketMQ's response code for a broker that refuses requests for now (`SYSTEM_BUSY`).
const SYSTEM_BUSY: i32 = 2;

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
    match (error.broker_response_code(), error.broker_addr()) {
        // The client keeps only the code and the address of a broker's refusal (its remark is
        // redacted), so they are all there is to say.
        (Some(response), Some(addr)) => format!("{code} (broker {addr}, code {response})"),
        (Some(response), None) => format!("{code} (broker code {response})"),
        // The rest of the client's debug form is redacted context; the error stays the OMS
        // error's source for callers that want it.
        (None, Some(addr)) => format!("{code} (broker {addr})"),
        (None, None) => code,
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
    } else if broker_code == Some(SYSTEM_BUSY) {
        (
            OmsErrorKind::Runtime,
            OmsStatus::SERVICE_NOT_AVAILABLE,
            format!(
                "the broker refuses writes for now (SYSTEM_BUSY): most often its store's disk is 90 % full or \
                 more (RocketMQ's diskSpaceWarningLevelRatio), else its page cache is busy or it is shutting \
                 down; free disk space where the broker keeps its store and see its log (name servers \
                 {name_servers})"
            ),
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
    // Unreachable, unanswered and busy brokers may take the call again later.
    if status == OmsStatus::SERVICE_NOT_AVAILABLE || status == OmsStatus::REQUEST_TIMEOUT {
        oms.transient()
    } else {
        oms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_broker_is_a_transient_error_that_points_at_the_disk() {
        let error = ClientError::broker_operation_failed("SEND_MESSAGE", SYSTEM_BUSY, "disk full")
            .with_broker_addr("127.0.0.1:10911");
        let oms = oms_error("send to topic 'orders'", "127.0.0.1:9876", error);
        assert_eq!(oms.status(), OmsStatus::SERVICE_NOT_AVAILABLE);
        assert!(
            oms.is_transient(),
            "a busy broker may take writes again: {oms}"
        );
        let text = oms.to_string();
        assert!(text.contains("cannot send to topic 'orders'"), "{text}");
        assert!(text.contains("broker 127.0.0.1:10911, code 2"), "{text}");
        assert!(text.contains("90 % full"), "{text}");
        assert!(
            !text.contains("ErrorContext"),
            "no redacted debug dump: {text}"
        );
    }

    #[test]
    fn an_unknown_broker_refusal_names_its_code_and_the_log() {
        let error = ClientError::broker_operation_failed("SEND_MESSAGE", 1, "");
        let oms = oms_error("send to topic 'orders'", "127.0.0.1:9876", error);
        assert_eq!(oms.status(), OmsStatus::SERVER_ERROR);
        assert!(!oms.is_transient());
        let text = oms.to_string();
        assert!(text.contains("broker code 1"), "{text}");
        assert!(text.contains("see the broker's log"), "{text}");
    }

    #[test]
    fn client_errors_read_as_their_code_and_broker_without_the_debug_dump() {
        let refused = ClientError::broker_operation_failed("SEND_MESSAGE", 1, "")
            .with_broker_addr("127.0.0.1:10911");
        assert_eq!(
            describe_client_error(&refused),
            "broker.operation.failed (broker 127.0.0.1:10911, code 1)"
        );
        let unresolved = ClientError::dns_failed();
        let text = describe_client_error(&unresolved);
        assert_eq!(text, unresolved.code().as_str(), "only the code: {text}");
        let oms = oms_error("read topic 'orders'", "ns1:9876", unresolved);
        assert_eq!(oms.status(), OmsStatus::SERVICE_NOT_AVAILABLE);
        assert!(oms
            .to_string()
            .contains("cannot reach RocketMQ (name servers ns1:9876)"));
    }
}
