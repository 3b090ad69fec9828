//! The access point URL: `oms:<driver>://[account@]host[:port][,host[:port]...]/<region>`.

use std::fmt;
use std::str::FromStr;

use super::error::{OmsError, OmsErrorKind, OmsStatus};

/// One host of an access point, with its port when the URL names one (the spec's default is 80).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host name or address (IPv6 addresses keep their brackets).
    pub host: String,
    /// The port, when the URL gives one.
    pub port: Option<u16>,
}

impl HostPort {
    /// The port, or the spec's default of 80.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(80)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// A parsed access point URL.
///
/// The grammar is the spec's (`oms_access_point_schema.md`): the `oms:` prefix, a driver type, an
/// optional account id before `@`, one or more comma-separated hosts with optional ports, and a
/// region after the last `/`.
///
/// ```
/// use omstream_core::oms::AccessPointUri;
/// let uri: AccessPointUri = "oms:rocketmq://alice@10.0.0.1:9876,10.0.0.2:9876/us-east".parse().unwrap();
/// assert_eq!(uri.driver_type, "rocketmq");
/// assert_eq!(uri.account_id.as_deref(), Some("alice"));
/// assert_eq!(uri.hosts.len(), 2);
/// assert_eq!(uri.region, "us-east");
/// assert_eq!(uri.to_string(), "oms:rocketmq://alice@10.0.0.1:9876,10.0.0.2:9876/us-east");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessPointUri {
    /// The driver type, such as `embedded` or `rocketmq` (lower case).
    pub driver_type: String,
    /// The account id, when the URL has `account@`.
    pub account_id: Option<String>,
    /// The hosts, in the order given.
    pub hosts: Vec<HostPort>,
    /// The region.
    pub region: String,
}

impl AccessPointUri {
    /// The hosts joined by commas, as the spec's `ACCESS_POINTS` attribute holds them.
    pub fn hosts_string(&self) -> String {
        self.hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn illegal(url: &str, what: &str) -> OmsError {
    OmsError::new(
        OmsErrorKind::DriverLoad,
        OmsStatus::ILLEGAL_ACCESS_POINT,
        format!(
            "access point URL '{url}' is illegal: {what}; the form is \
             oms:<driver>://[account@]host[:port][,host[:port]...]/<region>, \
             e.g. oms:embedded://localhost/default"
        ),
    )
}

fn parse_host(url: &str, raw: &str) -> Result<HostPort, OmsError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(illegal(
            url,
            "a host is empty (check the commas between hosts)",
        ));
    }
    // A bracketed IPv6 address may contain colons; its port follows the closing bracket.
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| illegal(url, "an IPv6 host lacks its closing ']'"))?;
        let host = &raw[..end + 2];
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => {
                return Err(illegal(
                    url,
                    &format!("unexpected '{after}' after host {host}"),
                ))
            }
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(illegal(url, &format!("'{host}' is not a host name")));
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            illegal(
                url,
                &format!("port '{p}' of host {host} is not a number from 0 to 65535"),
            )
        })?),
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

impl FromStr for AccessPointUri {
    type Err = OmsError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("oms:")
            .ok_or_else(|| illegal(url, "it must start with 'oms:'"))?;
        if rest.starts_with("//") {
            return Err(illegal(
                url,
                "the driver type is missing (oms:<driver>://...)",
            ));
        }
        let (driver, rest) = rest
            .split_once("://")
            .ok_or_else(|| illegal(url, "'://' must follow the driver type"))?;
        if driver.is_empty() {
            return Err(illegal(
                url,
                "the driver type is missing (oms:<driver>://...)",
            ));
        }
        if !driver
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(illegal(
                url,
                &format!("driver type '{driver}' may hold only letters, digits, '-' and '_'"),
            ));
        }
        let (authority, region) = rest
            .rsplit_once('/')
            .ok_or_else(|| illegal(url, "the region is missing (add /<region> at the end)"))?;
        if region.is_empty() {
            return Err(illegal(url, "the region after the last '/' is empty"));
        }
        let (account_id, hosts) = match authority.split_once('@') {
            Some(("", _)) => return Err(illegal(url, "the account id before '@' is empty")),
            Some((acc, hosts)) => (Some(acc.to_string()), hosts),
            None => (None, authority),
        };
        if hosts.trim().is_empty() {
            return Err(illegal(url, "at least one host is required"));
        }
        let hosts = hosts
            .split(',')
            .map(|h| parse_host(url, h))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            driver_type: driver.to_ascii_lowercase(),
            account_id,
            hosts,
            region: region.to_string(),
        })
    }
}

impl fmt::Display for AccessPointUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oms:{}://", self.driver_type)?;
        if let Some(acc) = &self.account_id {
            write!(f, "{acc}@")?;
        }
        write!(f, "{}/{}", self.hosts_string(), self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AccessPointUri, OmsError> {
        s.parse()
    }

    #[test]
    fn parses_the_spec_examples() {
        let u = parse("oms:rocketmq://alice@rocketmq.apache.org/us-east").unwrap();
        assert_eq!(u.driver_type, "rocketmq");
        assert_eq!(u.account_id.as_deref(), Some("alice"));
        assert_eq!(
            u.hosts,
            vec![HostPort {
                host: "rocketmq.apache.org".into(),
                port: None
            }]
        );
        assert_eq!(u.hosts[0].port_or_default(), 80);
        let u =
            parse("oms:rocketmq://alice@rocketmq.apache.org, openmessaging.io/us-east").unwrap();
        assert_eq!(u.hosts[1].host, "openmessaging.io");
        let u = parse("oms:embedded://localhost/default").unwrap();
        assert_eq!((u.account_id, u.region.as_str()), (None, "default"));
    }

    #[test]
    fn region_is_after_the_last_slash_and_ipv6_keeps_ports() {
        let u = parse("oms:rocketmq://[::1]:9876,127.0.0.1:9877/us-east:space").unwrap();
        assert_eq!(u.region, "us-east:space");
        assert_eq!(
            u.hosts[0],
            HostPort {
                host: "[::1]".into(),
                port: Some(9876)
            }
        );
        assert_eq!(u.hosts[1].port, Some(9877));
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn rejects_what_the_spec_rejects_with_a_reason() {
        for (url, why) in [
            (
                "oms://alice@rocketmq.apache.org/us-east",
                "driver type is missing",
            ),
            (
                "oms:rocketmq://alice@rocketmq.apache.org/",
                "region after the last '/' is empty",
            ),
            ("rocketmq://host/r", "must start with 'oms:'"),
            ("oms:rocketmq:host/r", "'://' must follow"),
            ("oms:rocketmq://host", "region is missing"),
            (
                "oms:rocketmq://host:99999/r",
                "not a number from 0 to 65535",
            ),
            ("oms:rocketmq://a,,b/r", "a host is empty"),
            ("oms:rocketmq://@host/r", "account id before '@' is empty"),
            ("oms:rocket mq://host/r", "may hold only"),
        ] {
            let err = parse(url).unwrap_err();
            assert_eq!(err.status(), OmsStatus::ILLEGAL_ACCESS_POINT);
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }
}
