//! The egress guard (SPEC section 6): which destinations a delivery may reach, and the connector
//! that makes sure the connection goes to the very address that was checked.
//!
//! Customer URLs are untrusted. [`EgressPolicy`] owns the parsed `[egress]` rules (plain http,
//! private ranges, CIDR exceptions, ports) and a [`Resolve`]r. Every address a host resolves to
//! is classified by [`classify`] (a table of integer range compares, no allocation); if any of
//! them is denied the destination is refused, otherwise the [`GuardedConnector`] dials those
//! addresses, never the name again, so a DNS answer that changes between the check and the
//! connect (rebinding) cannot reach a denied address. The hostname is kept for SNI, certificate
//! verification and `Host` (hyper-rustls and hyper take it from the URI).
//!
//! Names are resolved by [`dns::DnsResolver`] (hickory-resolver on the runtime, cached for the
//! answers' TTLs) and a host's checked addresses are raced Happy Eyeballs style
//! ([`eyeballs`]), so a dead address costs `[proxy] happy_eyeballs_delay`, not a connect
//! timeout.
//!
//! Invariants:
//! - IP-literal hosts are classified here too: hyper-util's resolver hook is never called for
//!   them, so the check lives in the connector, not in a resolver.
//! - IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4) are
//!   judged by the IPv4 address they embed; Teredo (`2001::/32`) and local-use NAT64
//!   (`64:ff9b:1::/48`) are denied outright.
//! - [`EgressDenied`] never names a resolved address, only the host it was given.
//! - With `[egress] proxy` set, the checked address is what the tunnel is asked for
//!   ([`forward`]): a destination the guard refuses never reaches the proxy.

pub mod dns;
pub mod eyeballs;
pub mod forward;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpStream;
use url::{Host, Url};

use crate::config::EgressConfig;
use forward::{ForwardProxy, TunnelError, TunnelFailure};

/// How long a name may take to resolve before the destination is refused.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a destination is refused: the closed set of `hooksign_egress_blocked_total{reason}` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and local-use NAT64 `64:ff9b:1::/48`.
    Private,
    /// `169.254.0.0/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT `100.64.0.0/10`.
    Cgnat,
    /// `0.0.0.0/8`, `::` (on Linux, connecting there reaches loopback listeners).
    Unspecified,
    /// `255.255.255.255`.
    Broadcast,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// `240.0.0.0/4`, `192.0.0.0/24`, `192.88.99.0/24`, IPv6 outside `2000::/3`, `2001::/23`,
    /// and IPv4-compatible IPv6 (`::a.b.c.d`, deprecated).
    Reserved,
    /// IPv6 unique local `fc00::/7`.
    UniqueLocal,
    /// Teredo `2001::/32`: a tunnel whose far end is not ours to judge.
    Tunnel,
    /// The port is not in `[egress] allow_ports`.
    Port,
    /// Plain http without `[egress] allow_http`, or a scheme that is neither http nor https.
    Scheme,
    /// The name did not resolve (error, timeout or no address).
    ResolveFailed,
}

/// What the guard thinks of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(DenyReason),
}

/// A destination the egress policy refuses, and why. The message names the host as given (an
/// IP literal or a name), never an address a name resolved to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressDenied {
    #[error("plain http is not allowed ([egress] allow_http = false)")]
    PlainHttp,
    #[error("scheme {scheme:?} is neither https nor http")]
    Scheme { scheme: String },
    #[error("port {port} is not in [egress] allow_ports")]
    Port { port: u16 },
    #[error("{host} is {}", .reason.describe())]
    Literal { host: String, reason: DenyReason },
    #[error("{host} resolves to {}", .reason.describe())]
    Resolved { host: String, reason: DenyReason },
    #[error("{host} could not be resolved: {why}")]
    Unresolved { host: String, why: String },
}

/// Resolves a host name to addresses. `serve` uses [`dns::DnsResolver`]; [`SystemResolver`] is getaddrinfo; tests inject stubs
/// that answer whatever they like (rebinding included).
pub trait Resolve: Send + Sync + fmt::Debug {
    /// Every address `host` resolves to. `port` is passed for resolvers that want it.
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The operating system's resolver (`getaddrinfo` via `tokio::net::lookup_host`, on tokio's
/// blocking pool, uncached). hooksign serves with [`dns::DnsResolver`]; this one stays for
/// comparisons and tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

/// The parsed `[egress]` rules and the resolver: what `AppState` holds and every check uses.
#[derive(Debug)]
pub struct EgressPolicy {
    allow_http: bool,
    allow_private: bool,
    allow_cidrs: Vec<IpNet>,
    /// Empty means any port.
    allow_ports: Vec<u16>,
    resolver: Arc<dyn Resolve>,
    resolve_timeout: Duration,
    /// `[egress] proxy`: checked addresses are reached through its tunnels.
    forward: Option<ForwardProxy>,
}

/// A hyper-util connector that resolves, classifies and dials the checked address. hyper-rustls's
/// `HttpsConnector` wraps it, so TLS and the pool work as with `HttpConnector`.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    policy: Arc<EgressPolicy>,
    connect_timeout: Duration,
    /// The Happy Eyeballs stagger between two addresses' attempts.
    attempt_delay: Duration,
}

/// A connection the [`GuardedConnector`] opened, and how long its phases took.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    /// Resolving and classifying the host (zero-ish for an IP literal).
    pub resolved: Duration,
    /// From the checked addresses to a connected socket (the whole race).
    pub connected: Duration,
}

/// Why the [`GuardedConnector`] produced no connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("destination forbidden by the egress policy")]
    Denied(#[source] EgressDenied),
    #[error("the request target has no usable host")]
    InvalidTarget,
    #[error("connecting to {host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {host}:{port}: no answer within {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    #[error("connecting to {host}:{port} through the forward proxy")]
    Tunnel {
        host: String,
        port: u16,
        #[source]
        source: TunnelError,
    },
}

/// The [`EgressDenied`] anywhere in an error's cause chain (hyper and hyper-rustls wrap the
/// connector's error; `io::Error::source` skips what it wraps, so those are opened explicitly).
pub fn denial_in<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a EgressDenied> {
    if let Some(denied) = err.downcast_ref::<EgressDenied>() {
        return Some(denied);
    }
    if let Some(inner) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        if let Some(denied) = denial_in(inner) {
            return Some(denied);
        }
    }
    err.source().and_then(denial_in)
}

/// The forward proxy's failure anywhere in `err`'s cause chain.
pub fn tunnel_failure_in(err: &(dyn StdError + 'static)) -> Option<TunnelFailure> {
    if let Some(tunnel) = err.downcast_ref::<TunnelError>() {
        return Some(tunnel.failure());
    }
    err.source().and_then(tunnel_failure_in)
}

/// Classifies one address by the table alone (no policy): `Allow` only for public unicast.
/// IPv6 forms embedding an IPv4 address are judged by that address.
pub fn classify(ip: IpAddr) -> Verdict {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

// === impl DenyReason ===

impl DenyReason {
    /// Every reason, in declaration order (the metrics index counters by discriminant).
    pub const ALL: [DenyReason; 15] = [
        Self::Loopback,
        Self::Private,
        Self::LinkLocal,
        Self::Cgnat,
        Self::Unspecified,
        Self::Broadcast,
        Self::Multicast,
        Self::Documentation,
        Self::Benchmarking,
        Self::Reserved,
        Self::UniqueLocal,
        Self::Tunnel,
        Self::Port,
        Self::Scheme,
        Self::ResolveFailed,
    ];

    /// The `reason` label of `hooksign_egress_blocked_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::Cgnat => "cgnat",
            Self::Unspecified => "unspecified",
            Self::Broadcast => "broadcast",
            Self::Multicast => "multicast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
            Self::UniqueLocal => "unique_local",
            Self::Tunnel => "tunnel",
            Self::Port => "port",
            Self::Scheme => "scheme",
            Self::ResolveFailed => "resolve_failed",
        }
    }

    /// "a loopback address" and the like, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::Cgnat => "a carrier-grade NAT address (100.64.0.0/10)",
            Self::Unspecified => "an unspecified address",
            Self::Broadcast => "the broadcast address",
            Self::Multicast => "a multicast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::Reserved => "a reserved address",
            Self::UniqueLocal => "a unique local IPv6 address (fc00::/7)",
            Self::Tunnel => "a Teredo tunnel address",
            Self::Port => "a port outside [egress] allow_ports",
            Self::Scheme => "a scheme that is not allowed",
            Self::ResolveFailed => "a name that did not resolve",
        }
    }

    /// Whether `allow_private = true` lifts this reason. Unspecified, broadcast and multicast
    /// are never unicast destinations, so only `allow_cidrs` lifts them.
    fn lifted_by_allow_private(self) -> bool {
        !matches!(
            self,
            Self::Unspecified
                | Self::Broadcast
                | Self::Multicast
                | Self::Port
                | Self::Scheme
                | Self::ResolveFailed
        )
    }
}

// === impl EgressDenied ===

impl EgressDenied {
    /// The metric label this refusal counts under.
    pub fn reason(&self) -> DenyReason {
        match self {
            Self::PlainHttp | Self::Scheme { .. } => DenyReason::Scheme,
            Self::Port { .. } => DenyReason::Port,
            Self::Literal { reason, .. } | Self::Resolved { reason, .. } => *reason,
            Self::Unresolved { .. } => DenyReason::ResolveFailed,
        }
    }
}

// === impl SystemResolver ===

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, port)).await?;
            Ok(addrs.map(|addr| addr.ip()).collect())
        })
    }
}

// === impl EgressPolicy ===

impl EgressPolicy {
    /// The policy for `config`, resolving names with `resolver`.
    pub fn new(config: &EgressConfig, resolver: Arc<dyn Resolve>) -> Self {
        Self {
            allow_http: config.allow_http,
            allow_private: config.allow_private,
            allow_cidrs: config.allow_cidrs.clone(),
            allow_ports: config.allow_ports.clone(),
            resolver,
            resolve_timeout: RESOLVE_TIMEOUT,
            forward: config.proxy.as_ref().map(ForwardProxy::new),
        }
    }

    /// The policy for `config` (a reloaded `[egress]`), resolving names as this one does.
    pub fn reconfigured(&self, config: &EgressConfig) -> Self {
        Self::new(config, Arc::clone(&self.resolver)).with_resolve_timeout(self.resolve_timeout)
    }

    /// Whether plain `http` destinations are allowed (`allow_http`).
    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// The policy for `config` with the system resolver.
    pub fn system(config: &EgressConfig) -> Self {
        Self::new(config, Arc::new(SystemResolver))
    }

    /// Sets how long a name may take to resolve (default [`RESOLVE_TIMEOUT`]).
    pub fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
        self.resolve_timeout = timeout;
        self
    }

    /// The verdict on one address under this policy: `allow_cidrs` first, then the table, with
    /// `allow_private` lifting the non-public unicast categories.
    pub fn verdict(&self, ip: IpAddr) -> Verdict {
        let canonical = ip.to_canonical();
        if self
            .allow_cidrs
            .iter()
            .any(|net| net.contains(&canonical) || net.contains(&ip))
        {
            return Verdict::Allow;
        }
        match classify(ip) {
            Verdict::Deny(reason) if self.allow_private && reason.lifted_by_allow_private() => {
                Verdict::Allow
            }
            verdict => verdict,
        }
    }

    /// Refuses plain http (unless allowed) and every scheme but http and https.
    pub fn check_scheme(&self, scheme: &str) -> Result<u16, EgressDenied> {
        match scheme {
            "https" => Ok(443),
            "http" if self.allow_http => Ok(80),
            "http" => Err(EgressDenied::PlainHttp),
            other => Err(EgressDenied::Scheme {
                scheme: other.to_owned(),
            }),
        }
    }

    /// Refuses a port outside `allow_ports` (when it is not empty).
    pub fn check_port(&self, port: u16) -> Result<(), EgressDenied> {
        if self.allow_ports.is_empty() || self.allow_ports.contains(&port) {
            Ok(())
        } else {
            Err(EgressDenied::Port { port })
        }
    }

    /// Checks an endpoint URL as the admin API's create and update do (422): scheme, port, and
    /// every address its host resolves to. A delivery checks again, at connect time.
    pub async fn check_url(&self, url: &Url) -> Result<(), EgressDenied> {
        let default_port = self.check_scheme(url.scheme())?;
        let port = url.port().unwrap_or(default_port);
        self.check_port(port)?;
        let host = url.host().ok_or_else(|| EgressDenied::Unresolved {
            host: String::new(),
            why: "the URL has no host".into(),
        })?;
        self.resolve(&host, port).await.map(drop)
    }

    /// Resolves `host` (an IP literal stands for itself), classifies every address and returns
    /// the socket addresses to dial: all of them allowed, or an error naming the first denial.
    /// IPv4-mapped addresses are dialled as the IPv4 address they map.
    pub async fn resolve(
        &self,
        host: &Host<&str>,
        port: u16,
    ) -> Result<Vec<SocketAddr>, EgressDenied> {
        let (addrs, resolved) = match *host {
            Host::Ipv4(ip) => (vec![IpAddr::V4(ip)], false),
            Host::Ipv6(ip) => (vec![IpAddr::V6(ip)], false),
            Host::Domain(name) => {
                let unresolved = |why: String| EgressDenied::Unresolved {
                    host: name.to_owned(),
                    why,
                };
                let answer =
                    tokio::time::timeout(self.resolve_timeout, self.resolver.resolve(name, port))
                        .await
                        .map_err(|_| {
                            unresolved(format!("no answer within {:?}", self.resolve_timeout))
                        })?
                        .map_err(|err| unresolved(err.to_string()))?;
                if answer.is_empty() {
                    return Err(unresolved("no address".into()));
                }
                (answer, true)
            }
        };
        let mut dial = Vec::with_capacity(addrs.len());
        for ip in addrs {
            match self.verdict(ip) {
                Verdict::Allow => {
                    let addr = SocketAddr::new(ip.to_canonical(), port);
                    if !dial.contains(&addr) {
                        dial.push(addr);
                    }
                }
                Verdict::Deny(reason) => {
                    let host = host.to_string();
                    return Err(if resolved {
                        EgressDenied::Resolved { host, reason }
                    } else {
                        EgressDenied::Literal { host, reason }
                    });
                }
            }
        }
        Ok(dial)
    }

    /// Checks `uri` and connects to the first of its checked addresses that answers, racing
    /// them Happy Eyeballs style ([`eyeballs`]): each attempt under `connect_timeout`, the next
    /// one started `attempt_delay` after the previous (or at once when it fails).
    async fn connect(
        &self,
        uri: &Uri,
        connect_timeout: Duration,
        attempt_delay: Duration,
    ) -> Result<Connected, ConnectError> {
        let started = Instant::now();
        let default_port = self
            .check_scheme(uri.scheme_str().unwrap_or_default())
            .map_err(ConnectError::Denied)?;
        let port = uri.port_u16().unwrap_or(default_port);
        self.check_port(port).map_err(ConnectError::Denied)?;
        let text = uri.host().ok_or(ConnectError::InvalidTarget)?;
        // The URI came from a parsed `Url`, so this is the same host the URL check saw.
        let host = Host::parse(text).map_err(|_| ConnectError::InvalidTarget)?;
        let host = match &host {
            Host::Domain(name) => Host::Domain(name.as_str()),
            Host::Ipv4(ip) => Host::Ipv4(*ip),
            Host::Ipv6(ip) => Host::Ipv6(*ip),
        };
        let addrs = self
            .resolve(&host, port)
            .await
            .map_err(ConnectError::Denied)?;
        let resolved = started.elapsed();
        tracing::info!(target: crate::trace_names::TARGET, addresses = addrs.len() as i64, "dns");
        let addrs = if addrs.len() > 1 {
            eyeballs::interleave(&addrs)
        } else {
            addrs
        };

        let host = &host;
        let stream = eyeballs::race(&addrs, attempt_delay, |addr| async move {
            self.connect_one(host, text, addr, connect_timeout).await
        })
        .await
        .map_err(|last| last.unwrap_or(ConnectError::InvalidTarget))?;
        Ok(Connected {
            stream,
            resolved,
            connected: started.elapsed().saturating_sub(resolved),
        })
    }

    /// One attempt: a tunnel through the forward proxy, or a TCP connect to `addr` (a checked
    /// address), under `connect_timeout`.
    async fn connect_one(
        &self,
        host: &Host<&str>,
        text: &str,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<TcpStream, ConnectError> {
        let port = addr.port();
        if let Some(forward) = self
            .forward
            .as_ref()
            .filter(|forward| !forward.goes_direct(host, addr.ip()))
        {
            return forward
                .tunnel(addr, connect_timeout)
                .await
                .map_err(|source| ConnectError::Tunnel {
                    host: text.to_owned(),
                    port,
                    source,
                });
        }
        match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                tracing::info!(target: crate::trace_names::TARGET, "connect");
                if let Err(err) = stream.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY upstream");
                }
                Ok(stream)
            }
            Ok(Err(source)) => Err(ConnectError::Connect {
                host: text.to_owned(),
                port,
                source,
            }),
            Err(_) => Err(ConnectError::Timeout {
                host: text.to_owned(),
                port,
                timeout: connect_timeout,
            }),
        }
    }
}

// === impl GuardedConnector ===

impl GuardedConnector {
    /// A connector enforcing `policy`, giving each TCP connect `connect_timeout`, and
    /// staggering a host's addresses by [`eyeballs::ATTEMPT_DELAY`].
    pub fn new(policy: Arc<EgressPolicy>, connect_timeout: Duration) -> Self {
        Self {
            policy,
            connect_timeout,
            attempt_delay: eyeballs::ATTEMPT_DELAY,
        }
    }

    /// Sets the Happy Eyeballs stagger (`[proxy] happy_eyeballs_delay`).
    pub fn with_attempt_delay(mut self, delay: Duration) -> Self {
        self.attempt_delay = delay;
        self
    }

    /// The policy every connection it opens passes.
    pub fn policy(&self) -> &Arc<EgressPolicy> {
        &self.policy
    }

    /// Resolves, classifies and connects to `uri`'s host (see [`EgressPolicy`]), timing the
    /// phases.
    pub async fn connect(&self, uri: &Uri) -> Result<Connected, ConnectError> {
        self.policy
            .connect(uri, self.connect_timeout, self.attempt_delay)
            .await
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(|c| TokioIo::new(c.stream)) })
    }
}

// === classification tables ===

/// IPv4 ranges that are not public unicast, first match wins (broadcast before `240/4`).
const V4_DENIED: &[(u32, u8, DenyReason)] = &[
    (0x0000_0000, 8, DenyReason::Unspecified),    // 0.0.0.0/8
    (0x0a00_0000, 8, DenyReason::Private),        // 10.0.0.0/8
    (0x6440_0000, 10, DenyReason::Cgnat),         // 100.64.0.0/10
    (0x7f00_0000, 8, DenyReason::Loopback),       // 127.0.0.0/8
    (0xa9fe_0000, 16, DenyReason::LinkLocal),     // 169.254.0.0/16
    (0xac10_0000, 12, DenyReason::Private),       // 172.16.0.0/12
    (0xc000_0000, 24, DenyReason::Reserved),      // 192.0.0.0/24
    (0xc000_0200, 24, DenyReason::Documentation), // 192.0.2.0/24
    (0xc058_6300, 24, DenyReason::Reserved),      // 192.88.99.0/24 (6to4 relay anycast)
    (0xc0a8_0000, 16, DenyReason::Private),       // 192.168.0.0/16
    (0xc612_0000, 15, DenyReason::Benchmarking),  // 198.18.0.0/15
    (0xc633_6400, 24, DenyReason::Documentation), // 198.51.100.0/24
    (0xcb00_7100, 24, DenyReason::Documentation), // 203.0.113.0/24
    (0xe000_0000, 4, DenyReason::Multicast),      // 224.0.0.0/4
    (0xffff_ffff, 32, DenyReason::Broadcast),     // 255.255.255.255/32
    (0xf000_0000, 4, DenyReason::Reserved),       // 240.0.0.0/4
];

/// IPv6 ranges denied outright (no embedded IPv4 to judge), first match wins.
const V6_DENIED: &[(u128, u8, DenyReason)] = &[
    (0x0064_ff9b_0001 << 80, 48, DenyReason::Private), // 64:ff9b:1::/48 local-use NAT64
    (0x2001_0000 << 96, 32, DenyReason::Tunnel),       // 2001::/32 Teredo
    (0x2001_0002 << 96, 48, DenyReason::Benchmarking), // 2001:2::/48
    (0x2001_0db8 << 96, 32, DenyReason::Documentation), // 2001:db8::/32
    (0x2001 << 112, 23, DenyReason::Reserved),         // 2001::/23 IETF protocol assignments
    (0x3fff << 112, 20, DenyReason::Documentation),    // 3fff::/20
    (0xfc00 << 112, 7, DenyReason::UniqueLocal),       // fc00::/7
    (0xfe80 << 112, 10, DenyReason::LinkLocal),        // fe80::/10
    (0xff00 << 112, 8, DenyReason::Multicast),         // ff00::/8
];

fn classify_v4(ip: Ipv4Addr) -> Verdict {
    let bits = u32::from(ip);
    for &(net, len, reason) in V4_DENIED {
        if (bits ^ net) >> (32 - u32::from(len)) == 0 {
            return Verdict::Deny(reason);
        }
    }
    Verdict::Allow
}

fn classify_v6(ip: Ipv6Addr) -> Verdict {
    let bits = u128::from(ip);
    let within = |net: u128, len: u32| (bits ^ net) >> (128 - len) == 0;
    // The low 32 bits, for the forms that carry an IPv4 address there.
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if bits == 0 {
        return Verdict::Deny(DenyReason::Unspecified);
    }
    if bits == 1 {
        return Verdict::Deny(DenyReason::Loopback);
    }
    if within(0xffff << 32, 96) {
        // ::ffff:a.b.c.d, IPv4-mapped: exactly the IPv4 address (and dialled as such).
        return classify_v4(low_v4);
    }
    if within(0, 96) {
        // ::a.b.c.d, IPv4-compatible (deprecated): denied, with the embedded address's reason
        // when it has a telling one.
        return match classify_v4(low_v4) {
            Verdict::Allow | Verdict::Deny(DenyReason::Unspecified) => {
                Verdict::Deny(DenyReason::Reserved)
            }
            denied => denied,
        };
    }
    if within(0x0064_ff9b << 96, 96) {
        // 64:ff9b::a.b.c.d, well-known NAT64: what the translator will reach.
        return classify_v4(low_v4);
    }
    if within(0x2002 << 112, 16) {
        // 2002:AABB:CCDD::/48, 6to4: the IPv4 address in bits 16..48.
        return classify_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    for &(net, len, reason) in V6_DENIED {
        if within(net, u32::from(len)) {
            return Verdict::Deny(reason);
        }
    }
    if !within(0x2000 << 112, 3) {
        // Only 2000::/3 is global unicast.
        return Verdict::Deny(DenyReason::Reserved);
    }
    Verdict::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use DenyReason::*;

    const fn deny(reason: DenyReason) -> Verdict {
        Verdict::Deny(reason)
    }

    /// Every range, at both its edges where that matters, and the public addresses beside them.
    const TABLE: &[(&str, Verdict)] = &[
        // IPv4 public
        ("8.8.8.8", Verdict::Allow),
        ("1.1.1.1", Verdict::Allow),
        ("93.184.216.34", Verdict::Allow),
        ("1.0.0.0", Verdict::Allow),
        ("9.255.255.255", Verdict::Allow),
        ("11.0.0.0", Verdict::Allow),
        ("100.63.255.255", Verdict::Allow),
        ("100.128.0.0", Verdict::Allow),
        ("126.255.255.255", Verdict::Allow),
        ("128.0.0.0", Verdict::Allow),
        ("169.253.255.255", Verdict::Allow),
        ("169.255.0.0", Verdict::Allow),
        ("172.15.255.255", Verdict::Allow),
        ("172.32.0.0", Verdict::Allow),
        ("192.0.1.1", Verdict::Allow),
        ("192.167.255.255", Verdict::Allow),
        ("192.169.0.0", Verdict::Allow),
        ("198.17.255.255", Verdict::Allow),
        ("198.20.0.0", Verdict::Allow),
        ("223.255.255.255", Verdict::Allow),
        // IPv4 denied
        ("0.0.0.0", deny(Unspecified)),
        ("0.255.255.255", deny(Unspecified)),
        ("10.0.0.0", deny(Private)),
        ("10.255.255.255", deny(Private)),
        ("100.64.0.0", deny(Cgnat)),
        ("100.127.255.255", deny(Cgnat)),
        ("127.0.0.1", deny(Loopback)),
        ("127.255.255.254", deny(Loopback)),
        ("169.254.0.0", deny(LinkLocal)),
        ("169.254.169.254", deny(LinkLocal)),
        ("169.254.255.255", deny(LinkLocal)),
        ("172.16.0.0", deny(Private)),
        ("172.31.255.255", deny(Private)),
        ("192.0.0.8", deny(Reserved)),
        ("192.0.2.1", deny(Documentation)),
        ("192.88.99.1", deny(Reserved)),
        ("192.168.0.1", deny(Private)),
        ("192.168.255.255", deny(Private)),
        ("198.18.0.0", deny(Benchmarking)),
        ("198.19.255.255", deny(Benchmarking)),
        ("198.51.100.7", deny(Documentation)),
        ("203.0.113.9", deny(Documentation)),
        ("224.0.0.1", deny(Multicast)),
        ("239.255.255.255", deny(Multicast)),
        ("240.0.0.1", deny(Reserved)),
        ("255.255.255.254", deny(Reserved)),
        ("255.255.255.255", deny(Broadcast)),
        // IPv6 public
        ("2606:4700:4700::1111", Verdict::Allow),
        ("2a00:1450:4001:80b::200e", Verdict::Allow),
        ("2000::", Verdict::Allow),
        ("3ffe:ffff::1", Verdict::Allow),
        ("2001:200::1", Verdict::Allow),
        // IPv6 denied
        ("::", deny(Unspecified)),
        ("::1", deny(Loopback)),
        ("::2", deny(Reserved)),
        ("fc00::1", deny(UniqueLocal)),
        ("fd12:3456:789a::1", deny(UniqueLocal)),
        ("fe80::1", deny(LinkLocal)),
        ("febf:ffff::1", deny(LinkLocal)),
        ("fec0::1", deny(Reserved)),
        ("ff02::1", deny(Multicast)),
        ("ff0e::1", deny(Multicast)),
        ("2001:db8::1", deny(Documentation)),
        ("3fff::1", deny(Documentation)),
        ("2001:2::1", deny(Benchmarking)),
        ("2001:10::1", deny(Reserved)),
        ("100::1", deny(Reserved)),
        ("4000::1", deny(Reserved)),
        ("1fff:ffff::1", deny(Reserved)),
        // IPv4-mapped: exactly the IPv4 address
        ("::ffff:127.0.0.1", deny(Loopback)),
        ("::ffff:10.1.2.3", deny(Private)),
        ("::ffff:169.254.169.254", deny(LinkLocal)),
        ("::ffff:0.0.0.0", deny(Unspecified)),
        ("::ffff:8.8.8.8", Verdict::Allow),
        // IPv4-compatible: denied, with the embedded address's reason
        ("::127.0.0.1", deny(Loopback)),
        ("::169.254.169.254", deny(LinkLocal)),
        ("::8.8.8.8", deny(Reserved)),
        // NAT64 well-known prefix: judged by the IPv4 address
        ("64:ff9b::127.0.0.1", deny(Loopback)),
        ("64:ff9b::10.0.0.1", deny(Private)),
        ("64:ff9b::169.254.169.254", deny(LinkLocal)),
        ("64:ff9b::8.8.8.8", Verdict::Allow),
        // NAT64 local-use: denied outright
        ("64:ff9b:1::8.8.8.8", deny(Private)),
        ("64:ff9b:1:ffff::1", deny(Private)),
        // 6to4: the IPv4 address in bits 16..48
        ("2002:7f00:1::1", deny(Loopback)),
        ("2002:a9fe:a9fe::", deny(LinkLocal)),
        ("2002:c0a8:101::1", deny(Private)),
        ("2002:0808:0808::1", Verdict::Allow),
        // Teredo: denied outright, whatever client it encodes
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", deny(Tunnel)),
        ("2001::80f7:fffe", deny(Tunnel)),
    ];

    #[test]
    fn the_table_classifies_every_range() {
        for (text, expected) in TABLE {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(classify(ip), *expected, "{text}");
        }
    }

    fn policy(edit: impl FnOnce(&mut EgressConfig)) -> EgressPolicy {
        let mut config = EgressConfig {
            allow_http: false,
            allow_private: false,
            allow_cidrs: Vec::new(),
            allow_ports: Vec::new(),
            ca_file: None,
            proxy: None,
        };
        edit(&mut config);
        EgressPolicy::system(&config)
    }

    #[test]
    fn allow_private_lifts_private_ranges_but_not_non_unicast() {
        let open = policy(|c| c.allow_private = true);
        for text in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "fd00::1", "::1"] {
            assert_eq!(
                open.verdict(text.parse().unwrap()),
                Verdict::Allow,
                "{text}"
            );
        }
        for (text, reason) in [
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("255.255.255.255", Broadcast),
            ("224.0.0.1", Multicast),
        ] {
            assert_eq!(open.verdict(text.parse().unwrap()), deny(reason), "{text}");
        }
    }

    #[test]
    fn allow_cidrs_are_exceptions_matched_on_the_canonical_address() {
        let p = policy(|c| {
            c.allow_cidrs = vec![
                "127.0.0.1/32".parse().unwrap(),
                "10.20.0.0/16".parse().unwrap(),
                "fd00:1::/32".parse().unwrap(),
            ]
        });
        for text in ["127.0.0.1", "::ffff:127.0.0.1", "10.20.3.4", "fd00:1::5"] {
            assert_eq!(p.verdict(text.parse().unwrap()), Verdict::Allow, "{text}");
        }
        assert_eq!(p.verdict("127.0.0.2".parse().unwrap()), deny(Loopback));
        assert_eq!(p.verdict("10.21.0.1".parse().unwrap()), deny(Private));
        assert_eq!(p.verdict("fd00:2::1".parse().unwrap()), deny(UniqueLocal));
        // An embedding is judged by what it reaches, not matched against IPv4 exceptions.
        assert_eq!(
            p.verdict("64:ff9b::7f00:1".parse().unwrap()),
            deny(Loopback)
        );
    }

    #[test]
    fn ports_and_schemes() {
        let p = policy(|c| c.allow_ports = vec![443, 8443]);
        assert!(p.check_port(443).is_ok() && p.check_port(8443).is_ok());
        assert_eq!(p.check_port(80), Err(EgressDenied::Port { port: 80 }));
        assert_eq!(p.check_scheme("https"), Ok(443));
        assert_eq!(p.check_scheme("http"), Err(EgressDenied::PlainHttp));
        assert_eq!(
            p.check_scheme("ftp").map_err(|e| e.reason()),
            Err(DenyReason::Scheme)
        );
        assert!(policy(|_| {}).check_port(1).is_ok());
        assert_eq!(policy(|c| c.allow_http = true).check_scheme("http"), Ok(80));
    }

    #[test]
    fn labels_are_distinct_and_in_declaration_order() {
        for (index, reason) in DenyReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?}");
            let label = reason.as_label();
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            let same = DenyReason::ALL.iter().filter(|r| r.as_label() == label);
            assert_eq!(same.count(), 1, "{label}");
        }
    }

    #[test]
    fn denials_are_found_in_a_wrapped_cause_chain() {
        let denied = EgressDenied::Literal {
            host: "127.0.0.1".into(),
            reason: Loopback,
        };
        let boxed: Box<dyn StdError + Send + Sync> = Box::new(ConnectError::Denied(denied.clone()));
        let wrapped = io::Error::other(boxed);
        assert_eq!(denial_in(&wrapped), Some(&denied));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(denial_in(&refused), None);
    }

    #[test]
    fn messages_name_the_host_given_not_the_address_resolved() {
        let denied = EgressDenied::Resolved {
            host: "rebind.example".into(),
            reason: LinkLocal,
        };
        assert_eq!(
            denied.to_string(),
            "rebind.example resolves to a link-local address"
        );
    }
}
