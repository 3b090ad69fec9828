//! Errors of the OpenMessaging layer, carrying the spec's status codes.

use std::fmt;

/// A status code from the OpenMessaging spec (`OMSResponseStatus`).
///
/// The classes follow the spec: `110x` informational, `120x` success, `140x` client error,
/// `150x` server error, `10000`–`10003` driver loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OmsStatus(pub u16);

impl OmsStatus {
    /// 1101: the driver implements another major.minor version of the spec.
    pub const UNSUPPORTED_VERSION: Self = Self(1101);
    /// 1200: success.
    pub const SUCCESS: Self = Self(1200);
    /// 1400: the request is malformed or not supported.
    pub const BAD_REQUEST: Self = Self(1400);
    /// 1401: credentials are missing or wrong.
    pub const UNAUTHORIZED: Self = Self(1401);
    /// 1402: a message body is required.
    pub const MESSAGE_BODY_REQUIRED: Self = Self(1402);
    /// 1403: the caller may not do this.
    pub const FORBIDDEN: Self = Self(1403);
    /// 1404: the queue does not exist.
    pub const DESTINATION_NOT_FOUND: Self = Self(1404);
    /// 1405: the namespace does not exist.
    pub const NAMESPACE_NOT_FOUND: Self = Self(1405);
    /// 1406: the queue exists already.
    pub const DESTINATION_ALREADY_EXISTS: Self = Self(1406);
    /// 1407: the namespace exists already.
    pub const NAMESPACE_ALREADY_EXISTS: Self = Self(1407);
    /// 1408: another consumer already owns this consumer id.
    pub const CONSUMER_ID_ALREADY_EXISTS: Self = Self(1408);
    /// 1409: another producer already owns this producer id.
    pub const PRODUCER_ID_ALREADY_EXISTS: Self = Self(1409);
    /// 1410: the operation timed out.
    pub const REQUEST_TIMEOUT: Self = Self(1410);
    /// 1411: the user properties are too large.
    pub const MESSAGE_ATTRIBUTES_TOO_LARGE: Self = Self(1411);
    /// 1412: the headers are too large.
    pub const MESSAGE_HEADER_TOO_LARGE: Self = Self(1412);
    /// 1413: the body is larger than the configured maximum.
    pub const MESSAGE_BODY_TOO_LARGE: Self = Self(1413);
    /// 1414: no new message was found.
    pub const NO_NEW_MESSAGE_FOUND: Self = Self(1414);
    /// 1415: too many topics.
    pub const MAX_TOPICS_REACHED: Self = Self(1415);
    /// 1416: too many queues.
    pub const MAX_QUEUES_REACHED: Self = Self(1416);
    /// 1417: too many namespaces.
    pub const MAX_NAMESPACES_REACHED: Self = Self(1417);
    /// 1418: a parameter has a value outside its domain.
    pub const BAD_PARAMETER: Self = Self(1418);
    /// 1500: the server failed.
    pub const SERVER_ERROR: Self = Self(1500);
    /// 1501: the storage service failed (I/O error, corrupt data).
    pub const STORAGE_SERVICE_ERROR: Self = Self(1501);
    /// 1502: the storage service is busy.
    pub const STORAGE_SERVICE_BUSY: Self = Self(1502);
    /// 1503: the service is not available (stopped, not started, unreachable).
    pub const SERVICE_NOT_AVAILABLE: Self = Self(1503);
    /// 1504: flushing to disk timed out.
    pub const FLUSH_DISK_TIMEOUT: Self = Self(1504);
    /// 10000: the driver could not be constructed.
    pub const DRIVER_CONSTRUCTION_FAILED: Self = Self(10000);
    /// 10001: the access point URL is illegal.
    pub const ILLEGAL_ACCESS_POINT: Self = Self(10001);
    /// 10002: the driver's version string cannot be parsed.
    pub const ILLEGAL_DRIVER_VERSION: Self = Self(10002);
    /// 10003: the driver's spec version does not match ours.
    pub const SPEC_VERSION_MISMATCH: Self = Self(10003);

    /// The spec's reason phrase for this code.
    pub fn reason(self) -> &'static str {
        match self.0 {
            1101 => "Unsupported Version",
            1200 => "Success",
            1400 => "Bad Request",
            1401 => "Unauthorized",
            1402 => "Message Body Required",
            1403 => "Forbidden",
            1404 => "Destination Not Found",
            1405 => "Namespace Not Found",
            1406 => "Destination Already Exists",
            1407 => "Namespace Already Exists",
            1408 => "ConsumerId Already Exists",
            1409 => "ProducerId Already Exists",
            1410 => "Request Timeout",
            1411 => "Message Attributes Too Large",
            1412 => "Message Header Too Large",
            1413 => "Message Body Too Large",
            1414 => "No New Message Found",
            1415 => "Max Topics Reached",
            1416 => "Max Queues Reached",
            1417 => "Max Namespaces Reached",
            1418 => "Bad Parameter",
            1500 => "Server Error",
            1501 => "Storage Service Error",
            1502 => "Storage Service Busy",
            1503 => "Service Not Available",
            1504 => "Flush Disk Timeout",
            10000 => "Driver Construction Failed",
            10001 => "Illegal Access Point",
            10002 => "Illegal Driver Version",
            10003 => "Spec Version Mismatch",
            _ => "Unknown Status",
        }
    }
}

impl fmt::Display for OmsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// What kind of failure an [`OmsError`] is: the spec's exception classes, plus driver loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OmsErrorKind {
    /// A failure that fits no narrower class (`OMSRuntimeException`).
    Runtime,
    /// The queue or namespace is missing, exists already, or cannot take the message.
    Destination,
    /// The message is malformed or too large.
    MessageFormat,
    /// Credentials or permissions.
    Security,
    /// The operation did not finish in time.
    Timeout,
    /// A transaction could not be prepared, committed or rolled back.
    Transaction,
    /// The driver does not support this operation.
    Unsupported,
    /// The access point URL or the driver could not be loaded.
    DriverLoad,
    /// The store failed: I/O error, corrupt or foreign data.
    Storage,
    /// A parameter or configuration value is out of its domain.
    Parameter,
}

/// The error type of every OMS operation.
///
/// It says what failed in words a user can act on, with the spec's status code and the
/// underlying cause (an I/O error, say) when there is one.
#[derive(Debug)]
pub struct OmsError {
    kind: OmsErrorKind,
    status: OmsStatus,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// Set by drivers on errors a retry may cure.
    transient: bool,
}

/// The result type of the OMS layer.
pub type Result<T, E = OmsError> = std::result::Result<T, E>;

impl OmsError {
    /// An error of `kind` with `status` and a message that says what to change.
    pub fn new(kind: OmsErrorKind, status: OmsStatus, message: impl Into<String>) -> Self {
        Self {
            kind,
            status,
            message: message.into(),
            source: None,
            transient: false,
        }
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The failure class.
    pub fn kind(&self) -> OmsErrorKind {
        self.kind
    }

    /// The spec's status code.
    pub fn status(&self) -> OmsStatus {
        self.status
    }

    /// The message, without the status code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Marks the error as transient: the same call may succeed later (the driver could not
    /// reach its service, say). See [`is_transient`](Self::is_transient).
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Whether the call may succeed if made again unchanged: the driver marked the error so
    /// (the service could not be reached), or it is a timeout (1410), a busy service (1502) or
    /// a flush timeout (1504). Sources and sinks retry these with backoff
    /// ([`RetryPolicy`](crate::connectors::RetryPolicy)); every other error is final. (A
    /// 1503 that says a producer or consumer is stopped is not transient: it stays stopped.)
    pub fn is_transient(&self) -> bool {
        self.transient
            || self.kind == OmsErrorKind::Timeout
            || matches!(
                self.status,
                OmsStatus::REQUEST_TIMEOUT
                    | OmsStatus::STORAGE_SERVICE_BUSY
                    | OmsStatus::FLUSH_DISK_TIMEOUT
            )
    }

    /// 1404: the queue does not exist.
    pub fn destination_not_found(queue: &str) -> Self {
        Self::new(
            OmsErrorKind::Destination,
            OmsStatus::DESTINATION_NOT_FOUND,
            format!("queue '{queue}' does not exist; create it first (ResourceManager::create_queue, or `omstream queue create {queue}`)"),
        )
    }

    /// 1406: the queue exists already.
    pub fn destination_exists(queue: &str) -> Self {
        Self::new(
            OmsErrorKind::Destination,
            OmsStatus::DESTINATION_ALREADY_EXISTS,
            format!("queue '{queue}' exists already; pick another name or delete it first"),
        )
    }

    /// 1418: a parameter is out of its domain.
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(OmsErrorKind::Parameter, OmsStatus::BAD_PARAMETER, message)
    }

    /// 1400: the driver does not support this operation.
    pub fn unsupported(driver: &str, what: &str) -> Self {
        Self::new(
            OmsErrorKind::Unsupported,
            OmsStatus::BAD_REQUEST,
            format!("the {driver} driver does not support {what}"),
        )
    }

    /// 1503: the service is stopped or not started.
    pub fn not_available(what: &str) -> Self {
        Self::new(
            OmsErrorKind::Runtime,
            OmsStatus::SERVICE_NOT_AVAILABLE,
            format!("{what} is stopped; start it (ServiceLifecycle::start) before use"),
        )
    }

    /// 1501: the store failed or holds data it cannot read.
    pub fn storage(message: impl Into<String>) -> Self {
        Self::new(
            OmsErrorKind::Storage,
            OmsStatus::STORAGE_SERVICE_ERROR,
            message,
        )
    }

    /// 1501: an I/O error on `path` while doing `action`.
    pub fn io(action: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::storage(format!("cannot {action} {}: {err}", path.display())).with_source(err)
    }

    /// A transaction error with `status`.
    pub fn transaction(status: OmsStatus, message: impl Into<String>) -> Self {
        Self::new(OmsErrorKind::Transaction, status, message)
    }

    /// 1410: the operation did not finish in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(OmsErrorKind::Timeout, OmsStatus::REQUEST_TIMEOUT, message)
    }

    /// A malformed or oversized message, with `status`.
    pub fn message_format(status: OmsStatus, message: impl Into<String>) -> Self {
        Self::new(OmsErrorKind::MessageFormat, status, message)
    }
}

impl fmt::Display for OmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[OMS {}] {}", self.status, self.message)
    }
}

impl std::error::Error for OmsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_reason_and_advice() {
        let err = OmsError::destination_not_found("orders");
        let text = err.to_string();
        assert!(
            text.starts_with("[OMS 1404 Destination Not Found]"),
            "{text}"
        );
        assert!(text.contains("omstream queue create orders"), "{text}");
        assert_eq!(err.kind(), OmsErrorKind::Destination);
    }

    #[test]
    fn every_spec_code_has_a_reason() {
        for code in [
            1101, 1200, 1400, 1401, 1402, 1403, 1404, 1405, 1406, 1407, 1408, 1409, 1410, 1411,
            1412, 1413, 1414, 1415, 1416, 1417, 1418, 1500, 1501, 1502, 1503, 1504, 10000, 10001,
            10002, 10003,
        ] {
            assert_ne!(OmsStatus(code).reason(), "Unknown Status", "code {code}");
        }
        assert_eq!(OmsStatus(42).reason(), "Unknown Status");
    }
}
