//! The join string: everything a worker needs to join a run, in one line the coordinator
//! prints and the operator passes to workers out of band.
//!
//! ```text
//! meridian://203.0.113.7:7000/?fp=<64 hex>&run=<32 hex>&secret=<64 hex>
//! ```
//!
//! - the address is `HOST:PORT`: an IPv4 address, a bracketed IPv6 address, or a DNS name;
//! - `fp`: SHA-256 of the coordinator's certificate, pinned by the worker;
//! - `run`: the run id, so a worker cannot join a different run on the same host by mistake;
//! - `secret`: the join secret. Anyone holding the string can join the run, so treat it like
//!   a password; `Debug` hides the secret, `Display` (the string itself) does not.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::ids::{CertFingerprint, JoinSecret, RunId};
use crate::quic::tls::crypto_provider;

const SCHEME: &str = "meridian://";

/// Why a join string was rejected; each variant names the part at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinError {
    /// It does not start with `meridian://`.
    #[error("must start with `{SCHEME}`")]
    Scheme,
    /// The `HOST:PORT` part is malformed.
    #[error("address `{address}`: {reason}")]
    Address {
        /// The address part as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something other than `/?` follows the address.
    #[error("expected `/?` after the address, found `{0}`")]
    Path(String),
    /// A parameter is missing.
    #[error("missing parameter `{0}=`")]
    Missing(&'static str),
    /// A parameter appears twice.
    #[error("parameter `{0}=` given twice")]
    Duplicate(String),
    /// A parameter this version does not know (perhaps a typo).
    #[error("unknown parameter `{0}`")]
    Unknown(String),
    /// A parameter's value is not the expected number of hex digits.
    #[error("parameter `{field}=`: {reason}")]
    Value {
        /// The parameter.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve `{address}`: {reason}")]
    Resolve {
        /// `HOST:PORT`.
        address: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The system random number generator failed while making a run id or secret.
    #[error("cannot draw random bytes for a new run")]
    Random,
}

/// A parsed join string, `meridian://HOST:PORT/?fp=<64 hex>&run=<32 hex>&secret=<64 hex>`:
/// the coordinator's address, the SHA-256 fingerprint of its certificate (pinned by the
/// worker), the run id and the join secret. Whoever holds the string can join the run, so it
/// is passed like a password; `Debug` hides the secret, `Display` (the string) does not.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinString {
    /// The coordinator's host: an IP address or a DNS name (IPv6 without brackets).
    pub host: String,
    /// The coordinator's UDP port.
    pub port: u16,
    /// The coordinator certificate's fingerprint.
    pub fingerprint: CertFingerprint,
    /// The run.
    pub run: RunId,
    /// The run's join secret.
    pub secret: JoinSecret,
}

impl JoinString {
    /// The join string for a coordinator reachable at `addr`.
    pub fn new(
        addr: SocketAddr,
        fingerprint: CertFingerprint,
        run: RunId,
        secret: JoinSecret,
    ) -> Self {
        Self { host: addr.ip().to_string(), port: addr.port(), fingerprint, run, secret }
    }

    /// A fresh random run id and join secret.
    pub fn new_run() -> Result<(RunId, JoinSecret), JoinError> {
        let random = crypto_provider().secure_random;
        let mut run = [0u8; 16];
        let mut secret = [0u8; 32];
        random.fill(&mut run).map_err(|_| JoinError::Random)?;
        random.fill(&mut secret).map_err(|_| JoinError::Random)?;
        Ok((RunId(run), JoinSecret(secret)))
    }

    /// `HOST:PORT`, IPv6 hosts in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The socket address when the host is an IP literal (no lookup needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The coordinator's socket address, resolving a DNS name if needed (first answer).
    pub async fn resolve(&self) -> Result<SocketAddr, JoinError> {
        if let Some(addr) = self.socket_addr() {
            return Ok(addr);
        }
        let address = self.address();
        let fail = |reason: String| JoinError::Resolve { address: address.clone(), reason };
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail("no addresses".into()))
    }
}

impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString")
            .field("address", &self.address())
            .field("fingerprint", &self.fingerprint.to_string())
            .field("run", &self.run.to_string())
            .field("secret", &self.secret)
            .finish()
    }
}

impl fmt::Display for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/?fp={}&run={}&secret={}",
            self.address(),
            self.fingerprint,
            self.run,
            hex(&self.secret.0)
        )
    }
}

impl FromStr for JoinString {
    type Err = JoinError;

    fn from_str(s: &str) -> Result<Self, JoinError> {
        let rest = s.trim().strip_prefix(SCHEME).ok_or(JoinError::Scheme)?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (address, tail) = rest.split_at(split);
        let (host, port) = parse_address(address)?;
        let query = tail
            .strip_prefix("/?")
            .or_else(|| tail.strip_prefix('?'))
            .ok_or_else(|| JoinError::Path(tail.to_owned()))?;

        let (mut fp, mut run, mut secret) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot: &mut Option<&str> = match key {
                "fp" => &mut fp,
                "run" => &mut run,
                "secret" => &mut secret,
                _ => return Err(JoinError::Unknown(key.to_owned())),
            };
            if slot.replace(value).is_some() {
                return Err(JoinError::Duplicate(key.to_owned()));
            }
        }
        Ok(Self {
            host,
            port,
            fingerprint: CertFingerprint(parse_hex("fp", fp)?),
            run: RunId(parse_hex("run", run)?),
            secret: JoinSecret(parse_hex("secret", secret)?),
        })
    }
}

fn parse_address(address: &str) -> Result<(String, u16), JoinError> {
    let fail = |reason: &str| JoinError::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or_else(|| fail("unclosed `[`"))?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| fail("not an IPv6 address in brackets"))?;
        let port = after.strip_prefix(':').ok_or_else(|| fail("missing `:PORT`"))?;
        (v6, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or_else(|| fail("missing `:PORT`"))?;
        if host.contains(':') {
            return Err(fail("IPv6 addresses must be in brackets"));
        }
        let valid_name = !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !valid_name {
            return Err(fail("host must be an IP address or a DNS name"));
        }
        (host, port)
    };
    let port: u16 = port.parse().map_err(|_| fail("port must be a number in 1..=65535"))?;
    if port == 0 {
        return Err(fail("port must be a number in 1..=65535"));
    }
    Ok((host.to_owned(), port))
}

fn parse_hex<const N: usize>(
    field: &'static str,
    value: Option<&str>,
) -> Result<[u8; N], JoinError> {
    let value = value.ok_or(JoinError::Missing(field))?;
    let fail = |reason: String| JoinError::Value { field, reason };
    if value.len() != 2 * N {
        return Err(fail(format!("expected {} hex digits, got {}", 2 * N, value.len())));
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(value.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            // Both digits are < 16, so the byte cannot overflow.
            (Some(hi), Some(lo)) => *byte = (hi * 16 + lo) as u8,
            _ => return Err(fail(format!("`{}` is not hex", String::from_utf8_lossy(pair)))),
        }
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinString {
        JoinString {
            host: "203.0.113.7".into(),
            port: 7000,
            fingerprint: CertFingerprint([0xab; 32]),
            run: RunId([0x01; 16]),
            secret: JoinSecret([0x5e; 32]),
        }
    }

    #[test]
    fn round_trips_ipv4_ipv6_and_names() {
        let v4 = sample();
        let text = v4.to_string();
        assert_eq!(
            text,
            format!(
                "meridian://203.0.113.7:7000/?fp={}&run={}&secret={}",
                "ab".repeat(32),
                "01".repeat(16),
                "5e".repeat(32)
            )
        );
        assert_eq!(text.parse::<JoinString>().unwrap(), v4);
        assert_eq!(v4.socket_addr(), Some("203.0.113.7:7000".parse().unwrap()));

        let v6 = JoinString::new(
            "[2001:db8::1]:7443".parse().unwrap(),
            v4.fingerprint,
            v4.run,
            v4.secret.clone(),
        );
        assert!(v6.to_string().starts_with("meridian://[2001:db8::1]:7443/?"));
        assert_eq!(v6.to_string().parse::<JoinString>().unwrap(), v6);

        let named = JoinString { host: "coord.example.org".into(), ..sample() };
        assert_eq!(named.to_string().parse::<JoinString>().unwrap(), named);
        assert_eq!(named.socket_addr(), None);
        // Surrounding whitespace from copy-paste and uppercase hex are accepted.
        let loose = format!("  {}\n", text.replace(&"ab".repeat(32), &"AB".repeat(32)));
        assert_eq!(loose.parse::<JoinString>().unwrap(), v4);
    }

    #[test]
    fn debug_hides_the_secret() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains(&"5e".repeat(32)), "{shown}");
        assert!(shown.contains("JoinSecret(..)"));
    }

    #[test]
    fn new_run_draws_distinct_values() {
        let (run_a, secret_a) = JoinString::new_run().unwrap();
        let (run_b, secret_b) = JoinString::new_run().unwrap();
        assert_ne!(run_a, run_b);
        assert_ne!(secret_a, secret_b);
    }

    #[tokio::test]
    async fn resolves_literals_and_names() {
        assert_eq!(sample().resolve().await.unwrap(), "203.0.113.7:7000".parse().unwrap());
        let local = JoinString { host: "localhost".into(), ..sample() };
        assert_eq!(local.resolve().await.unwrap().port(), 7000);
    }

    #[test]
    fn parse_errors_name_the_bad_part() {
        let good = sample().to_string();
        let parse = |s: &str| s.parse::<JoinString>().unwrap_err();
        assert_eq!(parse(&good.replace("meridian://", "http://")), JoinError::Scheme);
        assert!(matches!(parse(&good.replace(":7000", "")), JoinError::Address { .. }));
        assert!(matches!(parse(&good.replace(":7000", ":70000")), JoinError::Address { .. }));
        assert!(matches!(parse(&good.replace(":7000", ":0")), JoinError::Address { .. }));
        assert!(matches!(
            parse("meridian://2001:db8::1:7000/?fp=00"),
            JoinError::Address { reason, .. } if reason.contains("brackets")
        ));
        assert!(matches!(parse(&good.replace("/?", "/x?")), JoinError::Path(_)));
        let no_run = good.replace(&format!("&run={}", "01".repeat(16)), "");
        assert_eq!(parse(&no_run), JoinError::Missing("run"));
        assert_eq!(parse(&format!("{good}&run=00")), JoinError::Duplicate("run".into()));
        assert_eq!(parse(&format!("{good}&sekret=00")), JoinError::Unknown("sekret".into()));
        let short_fp = good.replace(&"ab".repeat(32), &"ab".repeat(31));
        let err = parse(&short_fp);
        assert!(matches!(err, JoinError::Value { field: "fp", .. }), "{err}");
        assert_eq!(err.to_string(), "parameter `fp=`: expected 64 hex digits, got 62");
        let bad_secret = good.replace(&"5e".repeat(32), &format!("zz{}", "5e".repeat(31)));
        let err = parse(&bad_secret);
        assert!(matches!(err, JoinError::Value { field: "secret", .. }), "{err}");
        // Non-ASCII input must not panic on a char boundary.
        let err = parse(&good.replace(&"5e".repeat(32), &format!("é{}", "5e".repeat(31))));
        assert!(matches!(err, JoinError::Value { field: "secret", .. }), "{err}");
    }
}
