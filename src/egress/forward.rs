//! Egress through an HTTP CONNECT forward proxy (`[egress] proxy`), with the guard intact.
//!
//! The guard has already resolved the customer's host and classified every address; the tunnel
//! is asked for one checked address (`CONNECT 203.0.113.7:443`), never for the hostname, so the
//! proxy cannot resolve it to somewhere else. TLS to the customer then runs inside the tunnel,
//! with SNI and certificate verification for the hostname, as on a direct connection. The proxy
//! itself is the operator's and is not classified (it usually sits on a private network).
//! `no_proxy` names destinations that are dialled directly. Credentials (basic auth) are built
//! into the `Proxy-Authorization` value once and never logged.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Host;
use zeroize::Zeroizing;

use crate::config::{ForwardProxyConfig, NoProxy};

/// The largest CONNECT response head read from the proxy.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The forward proxy every guarded connection goes through (but `no_proxy`).
pub struct ForwardProxy {
    host: String,
    port: u16,
    /// `Basic <base64 user:password>`, wiped on drop.
    authorization: Option<Zeroizing<String>>,
    no_proxy: Vec<NoProxy>,
}

/// Why a tunnel through the forward proxy was not opened. Its `Display` names the proxy's
/// address and status at most: never a credential.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("connecting to the forward proxy {proxy}")]
    Unreachable {
        proxy: String,
        #[source]
        source: io::Error,
    },
    #[error("the forward proxy {proxy} did not answer within {timeout:?}")]
    Timeout { proxy: String, timeout: Duration },
    #[error("the forward proxy {proxy} asked for credentials (407)")]
    AuthRequired { proxy: String },
    #[error("the forward proxy {proxy} refused the tunnel with status {status}")]
    Refused { proxy: String, status: u16 },
    #[error("the forward proxy {proxy} answered CONNECT with something that is not HTTP")]
    Malformed { proxy: String },
}

/// A [`TunnelError`]'s kind: how the proxy port names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelFailure {
    /// The proxy could not be reached, or stalled.
    Unreachable,
    /// The proxy answered 407.
    AuthRequired,
    /// The proxy refused the tunnel (any other status), or did not speak HTTP.
    Refused,
}

impl TunnelError {
    pub fn failure(&self) -> TunnelFailure {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => TunnelFailure::Unreachable,
            Self::AuthRequired { .. } => TunnelFailure::AuthRequired,
            Self::Refused { .. } | Self::Malformed { .. } => TunnelFailure::Refused,
        }
    }
}

impl fmt::Debug for ForwardProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardProxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ForwardProxy {
    pub fn new(config: &ForwardProxyConfig) -> Self {
        let authorization = config.credentials.as_ref().map(|credentials| {
            let pair = Zeroizing::new(format!(
                "{}:{}",
                credentials.user,
                credentials.password.expose()
            ));
            Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ))
        });
        Self {
            host: config.host.clone(),
            port: config.port,
            authorization,
            no_proxy: config.no_proxy.clone(),
        }
    }

    /// Whether a connection to `host` at its checked address `ip` skips the proxy.
    pub fn goes_direct(&self, host: &Host<&str>, ip: IpAddr) -> bool {
        self.no_proxy.iter().any(|rule| match rule {
            NoProxy::Net(net) => net.contains(&ip),
            NoProxy::Domain(name) => match host {
                Host::Domain(host) => {
                    let host = host.trim_end_matches('.');
                    host.eq_ignore_ascii_case(name)
                        || (host.len() > name.len()
                            && host.as_bytes()[host.len() - name.len() - 1] == b'.'
                            && host[host.len() - name.len()..].eq_ignore_ascii_case(name))
                }
                Host::Ipv4(_) | Host::Ipv6(_) => false,
            },
        })
    }

    /// Opens a tunnel to `to` (a checked address): connects to the proxy, sends `CONNECT` for the
    /// address and reads the proxy's answer, each within `timeout`.
    pub async fn tunnel(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, TunnelError> {
        let proxy = self.label();
        let stalled = || TunnelError::Timeout {
            proxy: proxy.clone(),
            timeout,
        };
        let mut stream =
            tokio::time::timeout(timeout, TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| stalled())?
                .map_err(|source| TunnelError::Unreachable {
                    proxy: proxy.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        // `SocketAddr`'s Display brackets IPv6 (`[2001:db8::1]:443`), as CONNECT's authority-form
        // wants.
        let mut request = Zeroizing::new(format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n"));
        if let Some(authorization) = &self.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(authorization);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let status = tokio::time::timeout(timeout, async {
            stream.write_all(request.as_bytes()).await?;
            read_status(&mut stream).await
        })
        .await
        .map_err(|_| stalled())?
        .map_err(|source| match source.kind() {
            io::ErrorKind::InvalidData => TunnelError::Malformed {
                proxy: proxy.clone(),
            },
            _ => TunnelError::Unreachable {
                proxy: proxy.clone(),
                source,
            },
        })?;
        match status {
            200..=299 => Ok(stream),
            407 => Err(TunnelError::AuthRequired { proxy }),
            status => Err(TunnelError::Refused { proxy, status }),
        }
    }

    fn label(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

/// Reads the proxy's response head to its blank line (no further: the tunnel's first byte is the
/// customer's) and returns its status.
async fn read_status(stream: &mut TcpStream) -> io::Result<u16> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    // `HTTP/1.1 200 Connection established`
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with(b"HTTP/1.") && code.len() == 3 => {
            std::str::from_utf8(code)
                .ok()
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status"))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not HTTP")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyCredentials;
    use crate::secret::Secret;

    fn proxy(no_proxy: Vec<NoProxy>) -> ForwardProxy {
        ForwardProxy::new(&ForwardProxyConfig {
            host: "127.0.0.1".into(),
            port: 3128,
            credentials: Some(ProxyCredentials {
                user: "hooksign".into(),
                password: Secret::new("s3cret-pw"),
            }),
            no_proxy,
        })
    }

    #[test]
    fn no_proxy_covers_names_below_a_domain_and_addresses_in_a_block() {
        let proxy = proxy(vec![
            NoProxy::Domain("internal.example".into()),
            NoProxy::Net("10.0.0.0/8".parse().unwrap()),
        ]);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(proxy.goes_direct(&Host::Domain("internal.example"), ip));
        assert!(proxy.goes_direct(&Host::Domain("hooks.Internal.Example."), ip));
        assert!(!proxy.goes_direct(&Host::Domain("notinternal.example"), ip));
        assert!(!proxy.goes_direct(&Host::Domain("example"), ip));
        assert!(proxy.goes_direct(
            &Host::Domain("customer.example.com"),
            "10.1.2.3".parse().unwrap()
        ));
        assert!(!proxy.goes_direct(&Host::Domain("customer.example.com"), ip));
    }

    #[test]
    fn credentials_never_reach_debug() {
        let text = format!("{:?}", proxy(Vec::new()));
        assert!(!text.contains("s3cret"), "{text}");
        assert!(!text.contains("Basic"), "{text}");
        let expected = base64::engine::general_purpose::STANDARD.encode("hooksign:s3cret-pw");
        assert!(!text.contains(&expected), "{text}");
    }

    #[tokio::test]
    async fn the_connect_line_names_the_checked_address_and_the_status_is_read() {
        use tokio::net::TcpListener;
        for (answer, expect) in [
            (&b"HTTP/1.1 200 Connection established\r\n\r\n"[..], None),
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
                Some(TunnelFailure::AuthRequired),
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\n\r\n",
                Some(TunnelFailure::Refused),
            ),
            (b"SSH-2.0-nope\r\n\r\n", Some(TunnelFailure::Refused)),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.ends_with(b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                stream.write_all(answer).await.unwrap();
                String::from_utf8(seen).unwrap()
            });
            let mut proxy = proxy(Vec::new());
            proxy.port = port;
            let to: SocketAddr = "[2001:db8::7]:8443".parse().unwrap();
            let result = proxy.tunnel(to, Duration::from_secs(5)).await;
            let seen = server.await.unwrap();
            assert!(
                seen.starts_with("CONNECT [2001:db8::7]:8443 HTTP/1.1\r\n"),
                "{seen}"
            );
            let auth = base64::engine::general_purpose::STANDARD.encode("hooksign:s3cret-pw");
            assert!(seen.contains(&format!("Proxy-Authorization: Basic {auth}\r\n")));
            assert_eq!(result.as_ref().err().map(TunnelError::failure), expect);
            if let Err(err) = result {
                assert!(!err.to_string().contains("s3cret"));
            }
        }
    }
}
