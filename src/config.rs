//! Configuration: the TOML file of SPEC section 4, parsed into validated types.
//!
//! `Raw*` types mirror the file (`deny_unknown_fields`, so a typo is an error, never a silent
//! default); [`Config::parse`] turns them into [`Config`], collecting every problem with its TOML
//! path before failing, so `hooksign check` can print them all at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use url::Url;
use uuid::Uuid;

use crate::secret::Secret;

/// Where `serve` and `check` look for the config when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file this configuration was read from (relative paths inside it start from its
    /// directory).
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub signing: SigningConfig,
    pub egress: EgressConfig,
    pub events: EventsConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub tracing: TracingConfig,
}

/// Where a port listens (`listen`, `listen_mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `"127.0.0.1:8080"`, `"[::1]:8080"` or `"localhost:8080"` (loopback, IPv4).
    Tcp(SocketAddr),
    /// `"unix:/run/hooksign/proxy.sock"` (a relative path starts from the config's directory),
    /// created with `listen_mode` (default `"0660"`).
    Unix { path: PathBuf, mode: u32 },
}

impl Listen {
    /// The TCP address, if it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Unix { .. } => None,
        }
    }

    /// Whether only this host can connect: a loopback address or a Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(addr) => addr.ip().is_loopback(),
            Self::Unix { .. } => true,
        }
    }
}

/// `[proxy]`: the application-facing listener and the delivery path.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    pub listen: Listen,
    /// `allow_remote`: the proxy port may listen on an address other hosts can reach.
    pub allow_remote: bool,
    /// `[[proxy.tokens]]`: when any is listed, every delivery must carry
    /// `Proxy-Authorization: Bearer <token>` matching one.
    pub tokens: Vec<ProxyToken>,
    pub max_body_bytes: u64,
    pub upstream_timeout: Duration,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// `connect_timeout`: each TCP connect attempt to one of the upstream's addresses.
    pub connect_timeout: Duration,
    /// `happy_eyeballs_delay`: how long a connect attempt to one of the upstream's addresses
    /// runs alone before the next address (the other family first) is tried beside it.
    pub happy_eyeballs_delay: Duration,
    /// `tls_handshake_timeout`: the TLS handshake with the upstream, after the TCP connect.
    pub tls_handshake_timeout: Duration,
    /// `response_idle_timeout`: the longest wait between two chunks of an upstream's response
    /// body (after its headers).
    pub response_idle_timeout: Duration,
    /// `response_timeout`: the whole upstream exchange, from sending the request to the end of
    /// the response body.
    pub response_timeout: Duration,
    /// `max_response_bytes`: the largest upstream response body passed on (`None`: no limit).
    pub max_response_bytes: Option<u64>,
    /// `pool_idle_timeout`: how long an idle upstream connection is kept (and, at checkout,
    /// the oldest one reused); below common servers' own idle timeouts.
    pub pool_idle_timeout: Duration,
    /// `max_connections_per_origin`: open upstream connections to one origin, at most.
    pub max_connections_per_origin: usize,
    /// `pool_max_idle_per_origin`: idle upstream connections kept per origin, at most (the
    /// oldest is closed to make room).
    pub pool_max_idle_per_origin: usize,
    /// `pool_max_idle`: idle upstream connections kept over every origin, at most.
    pub pool_max_idle: usize,
    /// `tls_session_cache`: customer servers whose TLS sessions are remembered for resumption.
    pub tls_session_cache: usize,
    /// `breaker_failures`: consecutive connect, TLS or timeout failures that open an origin's
    /// circuit; 0 turns the breaker off.
    pub breaker_failures: u32,
    /// `breaker_cooldown`: how long an open circuit fails fast before one probe is let through.
    pub breaker_cooldown: Duration,
    /// `max_in_flight_per_endpoint`: deliveries to one endpoint at once, at most.
    pub max_in_flight_per_endpoint: u32,
    pub max_connections: usize,
    /// Consecutive failures that disable an endpoint; 0 means never.
    pub auto_disable_after: u32,
}

/// One `[[proxy.tokens]]` entry: the application's credential for the proxy port. Only the
/// SHA-256 of the token is held.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyToken {
    pub name: String,
    pub sha256: [u8; 32],
}

/// `[admin]`: the operator-facing listener.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminConfig {
    pub listen: Listen,
    /// `max_connections`: open admin connections at most (`None`: derived from the process's
    /// file-descriptor limit at start).
    pub max_connections: Option<usize>,
    /// `header_read_timeout`: the longest wait for a request's head.
    pub header_read_timeout: Duration,
    /// `body_read_timeout`: the longest a request's body may take to arrive.
    pub body_read_timeout: Duration,
    /// `max_body_bytes`: the largest request body, read only once the caller is authenticated
    /// and allowed.
    pub max_body_bytes: usize,
    pub rate_limit_per_minute: u32,
    pub tokens: Vec<AdminToken>,
    /// `[admin] audit_log`: the hash-chained audit log of admin writes, resolved against the
    /// config file's directory (none: no audit log).
    pub audit_log: Option<PathBuf>,
}

/// One `[[admin.tokens]]` grant. Only the SHA-256 of the bearer token is held.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub permissions: Vec<Permission>,
    pub companies: Companies,
}

/// What an admin token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// `webhook.view`: read routes.
    View,
    /// `webhook.manage`: write routes.
    Manage,
}

/// Which companies an admin token sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Companies {
    All,
    Only(Vec<Uuid>),
}

/// `[store]`: where endpoints and secrets live.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// The store file, resolved against the config file's directory.
    pub path: PathBuf,
    pub etcd: EtcdConfig,
    /// `[store] keyring`: the keyring file that encrypts secrets at rest, resolved against the
    /// config file's directory (none: secrets are stored in plaintext).
    pub keyring: Option<PathBuf>,
    /// `[store] require_encryption`: refuse to read a plaintext secret (needs a keyring).
    pub require_encryption: bool,
}

/// `[store] backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    File,
    /// etcd for a fleet (SPEC section 9): `[store.etcd]`.
    Etcd,
}

/// `[store.etcd]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdConfig {
    /// `http://` or `https://` URLs of etcd members.
    pub endpoints: Vec<String>,
    /// Every key hooksign reads or writes starts with this (`<prefix>webhooks/<uuid>`).
    pub prefix: String,
    /// PEM roots that sign the etcd members' certificates (endpoints must be `https://`).
    pub ca_file: Option<PathBuf>,
    /// etcd authentication (both or neither).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `page_size`: endpoints read per range request when loading or resyncing the prefix.
    pub page_size: u32,
    /// `max_message_bytes`: the largest gRPC message hooksign accepts from or sends to etcd.
    pub max_message_bytes: usize,
}

/// Bounds of `[store.etcd] page_size`.
pub const ETCD_PAGE_SIZE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// Bounds of `[store.etcd] max_message_bytes`: etcd's own request limit is 1.5 MiB by default;
/// replies (a page of endpoints, a watch batch) need room above tonic's 4 MiB default.
pub const ETCD_MAX_MESSAGE_BYTES: std::ops::RangeInclusive<usize> = (1 << 20)..=(1 << 30);

/// `[signing]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SigningConfig {
    /// The `storno` scheme's header name.
    pub header: HeaderName,
}

/// `[egress]`: which destinations deliveries may reach.
#[derive(Clone, Debug, PartialEq)]
pub struct EgressConfig {
    pub allow_http: bool,
    pub allow_private: bool,
    pub allow_cidrs: Vec<IpNet>,
    /// Empty means any port.
    pub allow_ports: Vec<u16>,
    /// Extra PEM roots trusted beside the platform's.
    pub ca_file: Option<PathBuf>,
    /// `proxy`, `proxy_credentials_file`, `no_proxy`: an HTTP CONNECT forward proxy every
    /// connection goes through (but those `no_proxy` names).
    pub proxy: Option<ForwardProxyConfig>,
}

/// `[egress] proxy`: the forward proxy, its credentials and the destinations that go direct.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardProxyConfig {
    pub host: String,
    pub port: u16,
    /// From `proxy_credentials_file` (`user:password`, one line): basic auth for the proxy.
    pub credentials: Option<ProxyCredentials>,
    pub no_proxy: Vec<NoProxy>,
}

/// A forward proxy's basic-auth credentials. The password never reaches `Debug`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyCredentials {
    pub user: String,
    pub password: Secret,
}

/// One `no_proxy` entry: a destination that is dialled directly, not through the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoProxy {
    /// A name: the host itself and every name under it (`example.com` covers
    /// `hooks.example.com`; a leading `.` or `*.` is the same).
    Domain(String),
    /// An address or CIDR block the checked address falls in.
    Net(IpNet),
}

/// `[events]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventsConfig {
    /// The event types endpoints may subscribe to; empty accepts any name.
    pub catalog: Vec<String>,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub shutdown_grace: Duration,
    /// `drain_delay`: after SIGTERM, how long the proxy keeps accepting (with `/readyz` 503)
    /// before it stops and drains; zero stops at once.
    pub drain_delay: Duration,
    pub worker_threads: usize,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `access`: one log line per delivery (target `hooksign::access`).
    pub access: bool,
    /// `filter`: the log filter (`RUST_LOG` syntax, such as `"info,hooksign=debug"`); applied
    /// live on reload. None: `RUST_LOG`, else `info`.
    pub filter: Option<String>,
}

/// `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf). Off unless
/// `otlp_endpoint` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// `otlp_endpoint`: the collector's base URL (`http://host:port`); spans go to its
    /// `/v1/traces`. `None`: tracing is off.
    pub otlp_endpoint: Option<http::Uri>,
    /// `service_name`: the `service.name` resource attribute.
    pub service_name: String,
    /// `resource_attributes`: further resource attributes, by key.
    pub resource_attributes: Vec<(String, String)>,
    /// `sample_ratio`: the share of new traces sampled (0 to 1); a request that arrives with a
    /// `traceparent` follows its sampled flag.
    pub sample_ratio: f64,
    /// `export_timeout`: one export request to the collector, at most.
    pub export_timeout: Duration,
    /// `max_queue_size`: finished spans waiting for export, at most; more are dropped (and
    /// counted in `hooksign_trace_spans_dropped_total`).
    pub max_queue_size: usize,
    /// `propagate_to_customers`: forward `traceparent`/`tracestate` to customers (hooksign's
    /// own span context when tracing is on); off: they are removed.
    pub propagate_to_customers: bool,
}

/// Bounds of `[tracing] max_queue_size` (the queue's slots are allocated at start).
pub const TRACING_QUEUE_SIZE: std::ops::RangeInclusive<usize> = 1..=100_000;

/// `[log] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML. `message` is the position and reason, never the source text (which may hold
    /// a secret pasted in the wrong place).
    #[error("config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config {}: {}", path.display(), problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Every problem as its own line, for `hooksign check`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            Self::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`, which was read from `path`. Every problem is collected:
    /// unknown sections and keys, values of the wrong type (each section is read on after one),
    /// and every rule [`RawConfig::validate`] checks. Only a TOML syntax error stops at once.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let (config, problems) = Self::parse_with_problems(text, path)?;
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// As [`Config::parse`], but a config with problems is returned too, each key that had one
    /// at its default: `hooksign check` goes on to check the store it names. Only text that is
    /// not TOML is an error.
    pub fn parse_with_problems(
        text: &str,
        path: &Path,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            message: crate::toml_error::describe(&source, text),
        })?;
        let mut problems = Vec::new();
        let raw = RawConfig::from_table(table, &mut problems);
        let config = raw.validate(path, &mut problems);
        let problems = problems
            .into_iter()
            .map(|problem| match problem.split_once(": ") {
                Some((key, what)) => match line_of(text, key) {
                    Some(line) => format!("{key} (line {line}): {what}"),
                    None => problem,
                },
                None => problem,
            })
            .collect();
        Ok((config, problems))
    }

    /// The built-in defaults (every key unset), as if read from `path`.
    pub fn defaults(path: &Path) -> Result<Self, ConfigError> {
        Self::parse("", path)
    }
}

/// Every key the config file accepts, section by section, as `(section, keys)`: the nine
/// sections, then the nested tables (`store.etcd`, `proxy.tokens`, `admin.tokens`) as sections of
/// their own. Read from the serde field lists of the `Raw*` types, so it cannot differ from what
/// [`Config::parse`] accepts; the configuration reference's drift test (`tests/docs.rs`) uses it.
pub fn accepted_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", field_names::<RawConfig>()),
        ("proxy", field_names::<RawProxy>()),
        ("proxy.tokens", field_names::<RawProxyToken>()),
        ("admin", field_names::<RawAdmin>()),
        ("admin.tokens", field_names::<RawToken>()),
        ("store", field_names::<RawStore>()),
        ("store.etcd", field_names::<RawEtcd>()),
        ("signing", field_names::<RawSigning>()),
        ("egress", field_names::<RawEgress>()),
        ("events", field_names::<RawEvents>()),
        ("server", field_names::<RawServer>()),
        ("log", field_names::<RawLog>()),
        ("tracing", field_names::<RawTracing>()),
    ]
}

/// The config path: the flag, else `$HOOKSIGN_CONFIG`, else `./config.toml` (clap fills the
/// environment variable in).
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

// === raw file types ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    proxy: RawProxy,
    admin: RawAdmin,
    store: RawStore,
    signing: RawSigning,
    egress: RawEgress,
    events: RawEvents,
    server: RawServer,
    log: RawLog,
    tracing: RawTracing,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawProxy {
    listen: String,
    listen_mode: String,
    allow_remote: bool,
    tokens: Vec<RawProxyToken>,
    max_body_bytes: u64,
    upstream_timeout: String,
    header_read_timeout: String,
    body_read_timeout: String,
    connect_timeout: String,
    happy_eyeballs_delay: String,
    tls_handshake_timeout: String,
    response_idle_timeout: String,
    response_timeout: String,
    max_response_bytes: Option<u64>,
    pool_idle_timeout: String,
    max_connections_per_origin: usize,
    pool_max_idle_per_origin: usize,
    pool_max_idle: usize,
    tls_session_cache: usize,
    breaker_failures: u32,
    breaker_cooldown: String,
    max_in_flight_per_endpoint: u32,
    max_connections: usize,
    auto_disable_after: u32,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            listen_mode: DEFAULT_SOCKET_MODE.into(),
            allow_remote: false,
            tokens: Vec::new(),
            max_body_bytes: 1024 * 1024,
            upstream_timeout: "30s".into(),
            header_read_timeout: "10s".into(),
            body_read_timeout: "30s".into(),
            connect_timeout: "5s".into(),
            happy_eyeballs_delay: "250ms".into(),
            tls_handshake_timeout: "10s".into(),
            response_idle_timeout: "30s".into(),
            response_timeout: "60s".into(),
            max_response_bytes: None,
            pool_idle_timeout: "4s".into(),
            max_connections_per_origin: 128,
            pool_max_idle_per_origin: 64,
            pool_max_idle: 4096,
            tls_session_cache: 10_000,
            breaker_failures: 5,
            breaker_cooldown: "30s".into(),
            max_in_flight_per_endpoint: 128,
            max_connections: 4096,
            auto_disable_after: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawAdmin {
    listen: String,
    listen_mode: String,
    max_connections: Option<usize>,
    header_read_timeout: String,
    body_read_timeout: String,
    max_body_bytes: usize,
    rate_limit_per_minute: u32,
    tokens: Vec<RawToken>,
    audit_log: Option<PathBuf>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            listen_mode: DEFAULT_SOCKET_MODE.into(),
            max_connections: None,
            header_read_timeout: "10s".into(),
            body_read_timeout: "10s".into(),
            max_body_bytes: 256 * 1024,
            rate_limit_per_minute: 120,
            tokens: Vec::new(),
            audit_log: None,
        }
    }
}

#[derive(Debug, Deserialize)]

struct RawToken {
    name: String,
    sha256: String,
    permissions: Vec<String>,
    #[serde(default = "all_companies")]
    companies: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawProxyToken {
    name: String,
    sha256: String,
}

/// A Unix socket's mode unless `listen_mode` says otherwise: owner and group.
const DEFAULT_SOCKET_MODE: &str = "0660";

fn all_companies() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawStore {
    backend: String,
    path: PathBuf,
    etcd: RawEtcd,
    keyring: Option<PathBuf>,
    require_encryption: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            backend: "file".into(),
            path: PathBuf::from("webhooks.toml"),
            etcd: RawEtcd::default(),
            keyring: None,
            require_encryption: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: String,
    ca_file: Option<PathBuf>,
    username: Option<String>,
    password: Option<Secret>,
    page_size: u32,
    max_message_bytes: usize,
}

impl Default for RawEtcd {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/hooksign/".into(),
            ca_file: None,
            username: None,
            password: None,
            page_size: 10_000,
            max_message_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawSigning {
    header: String,
}

impl Default for RawSigning {
    fn default() -> Self {
        Self {
            header: "X-Storno-Signature".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEgress {
    allow_http: bool,
    allow_private: bool,
    allow_cidrs: Vec<String>,
    allow_ports: Vec<u16>,
    ca_file: Option<PathBuf>,
    proxy: Option<String>,
    proxy_credentials_file: Option<PathBuf>,
    no_proxy: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEvents {
    catalog: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawServer {
    shutdown_grace: String,
    drain_delay: String,
    worker_threads: Option<usize>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            shutdown_grace: "25s".into(),
            drain_delay: "5s".into(),
            worker_threads: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawLog {
    format: String,
    access: bool,
    filter: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            access: false,
            filter: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    service_name: String,
    resource_attributes: std::collections::BTreeMap<String, String>,
    sample_ratio: f64,
    export_timeout: String,
    max_queue_size: usize,
    propagate_to_customers: bool,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "hooksign".into(),
            resource_attributes: std::collections::BTreeMap::new(),
            sample_ratio: 1.0,
            export_timeout: "5s".into(),
            max_queue_size: 4096,
            propagate_to_customers: false,
        }
    }
}

// === the accepted keys ===

/// The field names serde's derive hands `deserialize_struct` for `T`: a deserializer that
/// records them and then refuses, so nothing is built.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _refused = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("only field names are read"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("only field names are read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

// === reading sections ===

impl RawConfig {
    /// The sections of `table`, each read on its own so that one bad section or value does not
    /// hide the problems of the others.
    fn from_table(table: toml::Table, problems: &mut Vec<String>) -> Self {
        let mut raw = Self::default();
        for (name, value) in table {
            match name.as_str() {
                "proxy" => raw.proxy = section(&name, value, problems),
                "admin" => raw.admin = section(&name, value, problems),
                "store" => raw.store = section(&name, value, problems),
                "signing" => raw.signing = section(&name, value, problems),
                "egress" => raw.egress = section(&name, value, problems),
                "events" => raw.events = section(&name, value, problems),
                "server" => raw.server = section(&name, value, problems),
                "log" => raw.log = section(&name, value, problems),
                "tracing" => raw.tracing = section(&name, value, problems),
                _ => problems.push(format!(
                    "{name}: unknown section (expected proxy, admin, store, signing, egress, \
                     events, server, log or tracing)"
                )),
            }
        }
        raw
    }
}

/// Reads one section. A key of the wrong type is reported and left out (its default applies),
/// and the section is read again, so every such key is reported; unknown keys are reported too.
fn section<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    mut value: toml::Value,
    problems: &mut Vec<String>,
) -> T {
    // Each round removes one key, so this ends; the bound only guards against a surprise.
    for _ in 0..256 {
        let mut unknown = Vec::new();
        let read: Result<T, _> =
            serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
                value.clone(),
                &mut |path: serde_ignored::Path<'_>| unknown.push(path.to_string()),
            ));
        match read {
            Ok(section) => {
                for key in unknown {
                    problems.push(format!("{name}.{key}: unknown key"));
                }
                return section;
            }
            Err(err) => {
                let at = err.path().to_string();
                let key = if at == "." {
                    name.to_owned()
                } else {
                    format!("{name}.{at}")
                };
                problems.push(format!(
                    "{key}: {}",
                    crate::toml_error::reason(err.inner().message())
                ));
                if !remove_at(&mut value, err.path()) {
                    return T::default();
                }
            }
        }
    }
    T::default()
}

/// The line where `key` (a dotted path such as `proxy.listen`, `store.etcd.prefix`,
/// `admin.tokens[0].name` or a section name) is set in `text`, when it is written in the usual
/// `[table]` / `key = value` layout.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let segments: Vec<&str> = key
        .split(['.', '['])
        .map(|s| s.trim_end_matches(']'))
        .filter(|s| !s.is_empty() && !s.chars().all(|c| c.is_ascii_digit()))
        .collect();
    let (name, table) = segments.split_last()?;
    let table = table.join(".");
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if table.is_empty() && current == *name {
                return Some(index + 1);
            }
            continue;
        }
        if current == table {
            if let Some(rest) = trimmed.strip_prefix(name) {
                if rest.trim_start().starts_with('=') {
                    return Some(index + 1);
                }
            }
        }
    }
    None
}

/// Removes the value at `path` from `value`; false when there is nothing to remove (the error
/// was about `value` itself).
fn remove_at(value: &mut toml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut here = value;
    for segment in parents {
        here = match (segment, here) {
            (Segment::Map { key }, toml::Value::Table(table)) => match table.get_mut(key) {
                Some(next) => next,
                None => return false,
            },
            (Segment::Seq { index }, toml::Value::Array(items)) => match items.get_mut(*index) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, here) {
        (Segment::Map { key }, toml::Value::Table(table)) => table.remove(key).is_some(),
        (Segment::Seq { index }, toml::Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

// === validation ===

impl RawConfig {
    fn validate(self, path: &Path, problems: &mut Vec<String>) -> Config {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problem = |key: &str, what: String| problems.push(format!("{key}: {what}"));

        let mut proxy_tokens = Vec::with_capacity(self.proxy.tokens.len());
        for (i, raw) in self.proxy.tokens.iter().enumerate() {
            let key = format!("proxy.tokens[{i}]");
            if let Some(sha256) = token_hash(&key, &raw.sha256, &mut problem) {
                proxy_tokens.push(ProxyToken {
                    name: raw.name.clone(),
                    sha256,
                });
            }
        }
        let proxy = ProxyConfig {
            listen: listen(
                "proxy",
                &self.proxy.listen,
                &self.proxy.listen_mode,
                base,
                &mut problem,
            ),
            allow_remote: self.proxy.allow_remote,
            tokens: proxy_tokens,
            max_body_bytes: self.proxy.max_body_bytes,
            upstream_timeout: duration(
                "proxy.upstream_timeout",
                &self.proxy.upstream_timeout,
                &mut problem,
            ),
            header_read_timeout: duration(
                "proxy.header_read_timeout",
                &self.proxy.header_read_timeout,
                &mut problem,
            ),
            body_read_timeout: duration(
                "proxy.body_read_timeout",
                &self.proxy.body_read_timeout,
                &mut problem,
            ),
            connect_timeout: duration(
                "proxy.connect_timeout",
                &self.proxy.connect_timeout,
                &mut problem,
            ),
            happy_eyeballs_delay: duration(
                "proxy.happy_eyeballs_delay",
                &self.proxy.happy_eyeballs_delay,
                &mut problem,
            ),
            tls_handshake_timeout: duration(
                "proxy.tls_handshake_timeout",
                &self.proxy.tls_handshake_timeout,
                &mut problem,
            ),
            response_idle_timeout: duration(
                "proxy.response_idle_timeout",
                &self.proxy.response_idle_timeout,
                &mut problem,
            ),
            response_timeout: duration(
                "proxy.response_timeout",
                &self.proxy.response_timeout,
                &mut problem,
            ),
            max_response_bytes: self.proxy.max_response_bytes,
            pool_idle_timeout: duration(
                "proxy.pool_idle_timeout",
                &self.proxy.pool_idle_timeout,
                &mut problem,
            ),
            max_connections_per_origin: self.proxy.max_connections_per_origin,
            pool_max_idle_per_origin: self.proxy.pool_max_idle_per_origin,
            pool_max_idle: self.proxy.pool_max_idle,
            tls_session_cache: self.proxy.tls_session_cache,
            breaker_failures: self.proxy.breaker_failures,
            breaker_cooldown: duration(
                "proxy.breaker_cooldown",
                &self.proxy.breaker_cooldown,
                &mut problem,
            ),
            max_in_flight_per_endpoint: self.proxy.max_in_flight_per_endpoint,
            max_connections: self.proxy.max_connections,
            auto_disable_after: self.proxy.auto_disable_after,
        };
        if !proxy.listen.is_local() && !proxy.allow_remote {
            problem(
                "proxy.listen",
                "other hosts could reach the proxy port and have any body signed with a \
                 customer's secret: listen on loopback or a unix socket, or set \
                 proxy.allow_remote = true (and list [[proxy.tokens]])"
                    .into(),
            );
        }
        let mut bounded = |key: &str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if !range.contains(&value) {
                problem(
                    key,
                    format!("must be from {} to {}", range.start(), range.end()),
                );
            }
        };
        bounded(
            "proxy.max_body_bytes",
            proxy.max_body_bytes,
            1..=MAX_BODY_BYTES,
        );
        bounded(
            "proxy.max_connections",
            proxy.max_connections as u64,
            1..=MAX_COUNT,
        );
        bounded(
            "proxy.max_connections_per_origin",
            proxy.max_connections_per_origin as u64,
            1..=MAX_COUNT,
        );
        bounded(
            "proxy.pool_max_idle_per_origin",
            proxy.pool_max_idle_per_origin as u64,
            0..=MAX_COUNT,
        );
        bounded(
            "proxy.pool_max_idle",
            proxy.pool_max_idle as u64,
            0..=MAX_COUNT,
        );
        bounded(
            "proxy.max_in_flight_per_endpoint",
            u64::from(proxy.max_in_flight_per_endpoint),
            1..=MAX_COUNT,
        );
        bounded(
            "proxy.breaker_failures",
            u64::from(proxy.breaker_failures),
            0..=MAX_COUNT,
        );
        bounded(
            "proxy.auto_disable_after",
            u64::from(proxy.auto_disable_after),
            0..=MAX_COUNT,
        );
        if let Some(limit) = proxy.max_response_bytes {
            bounded("proxy.max_response_bytes", limit, 1..=MAX_RESPONSE_BYTES);
        }
        bounded(
            "admin.rate_limit_per_minute",
            u64::from(self.admin.rate_limit_per_minute),
            1..=MAX_COUNT,
        );
        bounded(
            "admin.max_body_bytes",
            self.admin.max_body_bytes as u64,
            1024..=MAX_BODY_BYTES,
        );
        if let Some(max) = self.admin.max_connections {
            bounded("admin.max_connections", max as u64, 1..=MAX_COUNT);
        }
        if let Some(workers) = self.server.worker_threads {
            bounded(
                "server.worker_threads",
                workers as u64,
                1..=MAX_WORKER_THREADS,
            );
        }
        if proxy.tls_session_cache > MAX_TLS_SESSION_CACHE {
            problem(
                "proxy.tls_session_cache",
                format!("must be at most {MAX_TLS_SESSION_CACHE} (0 turns resumption off)"),
            );
        }
        if proxy.pool_max_idle_per_origin > proxy.pool_max_idle {
            problem(
                "proxy.pool_max_idle_per_origin",
                "must be at most proxy.pool_max_idle".into(),
            );
        }
        if proxy.pool_idle_timeout.is_zero() {
            problem("proxy.pool_idle_timeout", "must be more than 0".into());
        }
        if proxy.response_timeout < proxy.upstream_timeout {
            problem(
                "proxy.response_timeout",
                "must be at least proxy.upstream_timeout (it covers the headers and the body)"
                    .into(),
            );
        }

        let mut tokens = Vec::with_capacity(self.admin.tokens.len());
        for (i, raw) in self.admin.tokens.into_iter().enumerate() {
            if let Some(token) = raw.validate(&format!("admin.tokens[{i}]"), &mut problem) {
                tokens.push(token);
            }
        }
        let admin = AdminConfig {
            listen: listen(
                "admin",
                &self.admin.listen,
                &self.admin.listen_mode,
                base,
                &mut problem,
            ),
            max_connections: self.admin.max_connections,
            header_read_timeout: duration(
                "admin.header_read_timeout",
                &self.admin.header_read_timeout,
                &mut problem,
            ),
            body_read_timeout: duration(
                "admin.body_read_timeout",
                &self.admin.body_read_timeout,
                &mut problem,
            ),
            max_body_bytes: self.admin.max_body_bytes,
            rate_limit_per_minute: self.admin.rate_limit_per_minute,
            tokens,
            audit_log: self.admin.audit_log.as_ref().map(|p| base.join(p)),
        };

        let backend = match self.store.backend.as_str() {
            "file" => StoreBackend::File,
            "etcd" => StoreBackend::Etcd,
            _ => {
                problem(
                    "store.backend",
                    "unknown backend (expected \"file\" or \"etcd\")".into(),
                );
                StoreBackend::File
            }
        };
        let etcd = validate_etcd(self.store.etcd, base, &mut problem);
        if self.store.require_encryption && self.store.keyring.is_none() {
            problem(
                "store.require_encryption",
                "needs [store] keyring (the keys to encrypt with)".into(),
            );
        }
        let store = StoreConfig {
            backend,
            path: base.join(&self.store.path),
            etcd,
            keyring: self.store.keyring.as_ref().map(|p| base.join(p)),
            require_encryption: self.store.require_encryption,
        };

        let header = match HeaderName::from_bytes(self.signing.header.as_bytes()) {
            Ok(name) if crate::signing::is_reserved_header(&name) => {
                problem(
                    "signing.header",
                    "names a header that HTTP, hooksign or another signature scheme owns \
                     (hop-by-hop, Host, Content-Length, X-Webhook-*, X-Hooksign-*, \
                     webhook-*, Stripe-Signature, X-Hub-Signature-256…): the signature would \
                     be dropped or overwritten"
                        .into(),
                );
                HeaderName::from_static("x-storno-signature")
            }
            Ok(name) => name,
            Err(_) => {
                problem("signing.header", "is not a valid header name".into());
                HeaderName::from_static("x-storno-signature")
            }
        };

        let mut allow_cidrs = Vec::new();
        for (i, cidr) in self.egress.allow_cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => allow_cidrs.push(net),
                None => problem(
                    &format!("egress.allow_cidrs[{i}]"),
                    "is not an address or CIDR block".into(),
                ),
            }
        }
        if self.egress.allow_ports.contains(&0) {
            problem("egress.allow_ports", "port 0 cannot be connected to".into());
        }
        let ca_file = self.egress.ca_file.map(|file| base.join(file));
        if let Some(file) = &ca_file {
            if !file.is_file() {
                problem(
                    "egress.ca_file",
                    format!("{} is not a readable file", file.display()),
                );
            }
        }
        let forward = forward_proxy(
            self.egress.proxy.as_deref(),
            self.egress
                .proxy_credentials_file
                .map(|file| base.join(file)),
            &self.egress.no_proxy,
            &mut problem,
        );
        let egress = EgressConfig {
            allow_http: self.egress.allow_http,
            allow_private: self.egress.allow_private,
            allow_cidrs,
            allow_ports: self.egress.allow_ports,
            ca_file,
            proxy: forward,
        };

        for (i, name) in self.events.catalog.iter().enumerate() {
            if name.is_empty() || name == "*" || name.len() > 255 {
                problem(
                    &format!("events.catalog[{i}]"),
                    "event types are 1 to 255 characters and not \"*\"".into(),
                );
            }
        }

        let worker_threads = match self.server.worker_threads {
            Some(n) => n.clamp(1, MAX_WORKER_THREADS as usize),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let server = ServerConfig {
            shutdown_grace: duration(
                "server.shutdown_grace",
                &self.server.shutdown_grace,
                &mut problem,
            ),
            drain_delay: if humantime::parse_duration(&self.server.drain_delay)
                .is_ok_and(|d| d.is_zero())
            {
                Duration::ZERO
            } else {
                duration("server.drain_delay", &self.server.drain_delay, &mut problem)
            },
            worker_threads,
        };

        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                problem(
                    "log.format",
                    "unknown format (expected \"text\" or \"json\")".into(),
                );
                LogFormat::Text
            }
        };

        if let Some(filter) = &self.log.filter {
            if tracing_subscriber::EnvFilter::try_new(filter).is_err() {
                problem(
                    "log.filter",
                    "is not a filter such as \"info\" or \"warn,hooksign=debug\"".into(),
                );
            }
        }

        let tracing = validate_tracing(self.tracing, &mut problem);

        Config {
            path: path.to_owned(),
            proxy,
            admin,
            store,
            signing: SigningConfig { header },
            egress,
            events: EventsConfig {
                catalog: self.events.catalog,
            },
            server,
            log: LogConfig {
                format,
                access: self.log.access,
                filter: self.log.filter,
            },
            tracing,
        }
    }
}

impl RawToken {
    fn validate(self, key: &str, problem: &mut impl FnMut(&str, String)) -> Option<AdminToken> {
        let hash = token_hash(key, &self.sha256, problem);
        let mut ok = hash.is_some();
        let sha256 = hash.unwrap_or_default();
        let mut permissions = Vec::new();
        for p in &self.permissions {
            match p.as_str() {
                "webhook.view" => permissions.push(Permission::View),
                "webhook.manage" => permissions.push(Permission::Manage),
                _ => {
                    problem(
                        &format!("{key}.permissions"),
                        "unknown permission (expected webhook.view or webhook.manage)".into(),
                    );
                    ok = false;
                }
            }
        }
        let companies = if self.companies.iter().any(|c| c == "*") {
            Companies::All
        } else {
            let mut ids = Vec::new();
            for c in &self.companies {
                match Uuid::parse_str(c) {
                    Ok(id) => ids.push(id),
                    Err(_) => {
                        problem(
                            &format!("{key}.companies"),
                            "is not a company uuid or \"*\"".into(),
                        );
                        ok = false;
                    }
                }
            }
            Companies::Only(ids)
        };
        ok.then_some(AdminToken {
            name: self.name,
            sha256,
            permissions,
            companies,
        })
    }
}

fn validate_etcd(raw: RawEtcd, base: &Path, problem: &mut impl FnMut(&str, String)) -> EtcdConfig {
    if raw.endpoints.is_empty() {
        problem("store.etcd.endpoints", "must list at least one URL".into());
    }
    let ca_file = raw.ca_file.map(|file| base.join(file));
    for (i, endpoint) in raw.endpoints.iter().enumerate() {
        let scheme_ok = match url::Url::parse(endpoint) {
            Ok(url) if url.host().is_some() => match url.scheme() {
                "https" => true,
                "http" if ca_file.is_none() => true,
                "http" => {
                    problem(
                        &format!("store.etcd.endpoints[{i}]"),
                        "must be https:// when ca_file is set".into(),
                    );
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !scheme_ok {
            problem(
                &format!("store.etcd.endpoints[{i}]"),
                "is not a URL such as \"http://127.0.0.1:2379\"".into(),
            );
        }
    }
    if raw.prefix.is_empty() {
        problem(
            "store.etcd.prefix",
            "must not be empty (hooksign's keys need a prefix of their own)".into(),
        );
    }
    if let Some(file) = &ca_file {
        if !file.is_file() {
            problem(
                "store.etcd.ca_file",
                format!("{} is not a readable file", file.display()),
            );
        }
    }
    if raw.username.is_some() != raw.password.is_some() {
        problem(
            "store.etcd.username",
            "username and password go together (set both or neither)".into(),
        );
    }
    if !ETCD_PAGE_SIZE.contains(&raw.page_size) {
        problem(
            "store.etcd.page_size",
            format!(
                "must be {} to {}",
                ETCD_PAGE_SIZE.start(),
                ETCD_PAGE_SIZE.end()
            ),
        );
    }
    if !ETCD_MAX_MESSAGE_BYTES.contains(&raw.max_message_bytes) {
        problem(
            "store.etcd.max_message_bytes",
            format!(
                "must be {} to {}",
                ETCD_MAX_MESSAGE_BYTES.start(),
                ETCD_MAX_MESSAGE_BYTES.end()
            ),
        );
    }
    EtcdConfig {
        endpoints: raw.endpoints,
        prefix: raw.prefix,
        ca_file,
        username: raw.username,
        password: raw.password,
        page_size: raw.page_size,
        max_message_bytes: raw.max_message_bytes,
    }
}

fn validate_tracing(raw: RawTracing, problem: &mut impl FnMut(&str, String)) -> TracingConfig {
    let otlp_endpoint = raw.otlp_endpoint.as_deref().and_then(|text: &str| {
        let usable = Url::parse(text).ok().filter(|url| {
            url.scheme() == "http"
                && url.host().is_some()
                && url.username().is_empty()
                && url.password().is_none()
                && url.query().is_none()
        });
        match usable.and_then(|_| text.parse::<http::Uri>().ok()) {
            Some(uri) => Some(uri),
            None => {
                problem(
                    "tracing.otlp_endpoint",
                    // The value is not echoed: it may hold credentials.
                    "must be a URL such as \"http://127.0.0.1:4318\" (http://, no credentials or query)".into(),
                );
                None
            }
        }
    });
    if raw.service_name.trim().is_empty() {
        problem("tracing.service_name", "must not be empty".into());
    }
    for key in raw.resource_attributes.keys() {
        if key.is_empty() || key == "service.name" {
            problem(
                &format!("tracing.resource_attributes.{key}"),
                "keys are not empty and not service.name (set service_name)".into(),
            );
        }
    }
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        problem("tracing.sample_ratio", "must be 0 to 1".into());
    }
    if !TRACING_QUEUE_SIZE.contains(&raw.max_queue_size) {
        problem(
            "tracing.max_queue_size",
            format!(
                "must be {} to {}",
                TRACING_QUEUE_SIZE.start(),
                TRACING_QUEUE_SIZE.end()
            ),
        );
    }
    TracingConfig {
        otlp_endpoint,
        service_name: raw.service_name,
        resource_attributes: raw.resource_attributes.into_iter().collect(),
        sample_ratio: raw.sample_ratio.clamp(0.0, 1.0),
        export_timeout: duration("tracing.export_timeout", &raw.export_timeout, problem),
        max_queue_size: raw.max_queue_size,
        propagate_to_customers: raw.propagate_to_customers,
    }
}

/// Largest `max_body_bytes` (proxy and admin): 1 GiB.
const MAX_BODY_BYTES: u64 = 1 << 30;
/// Largest `max_response_bytes`: 1 TiB.
const MAX_RESPONSE_BYTES: u64 = 1 << 40;
/// Largest connection, idle, in-flight, failure and rate counts: far above any real setting,
/// far below where arithmetic on them could overflow.
const MAX_COUNT: u64 = 1 << 20;
/// Largest `[server] worker_threads`.
const MAX_WORKER_THREADS: u64 = 1024;
/// Longest duration any key accepts.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The SHA-256 of a token, as 64 hex characters.
fn token_hash(key: &str, text: &str, problem: &mut impl FnMut(&str, String)) -> Option<[u8; 32]> {
    let mut sha256 = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut sha256).is_ok() {
        Some(sha256)
    } else {
        problem(
            &format!("{key}.sha256"),
            "must be 64 hex characters (the SHA-256 of the token)".into(),
        );
        None
    }
}

/// `<port>.listen` and `<port>.listen_mode`.
fn listen(
    port: &str,
    text: &str,
    mode: &str,
    base: &Path,
    problem: &mut impl FnMut(&str, String),
) -> Listen {
    let fallback = Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    if let Some(path) = text.strip_prefix("unix:") {
        let mode = match u32::from_str_radix(mode, 8) {
            Ok(mode) if mode <= 0o777 => mode,
            _ => {
                problem(
                    &format!("{port}.listen_mode"),
                    "must be an octal file mode such as \"0660\"".into(),
                );
                0o660
            }
        };
        if path.is_empty() {
            problem(&format!("{port}.listen"), "names no socket path".into());
            return fallback;
        }
        return Listen::Unix {
            path: base.join(path),
            mode,
        };
    }
    if let Some(port_text) = text.strip_prefix("localhost:") {
        if let Ok(number) = port_text.parse::<u16>() {
            return Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], number)));
        }
    }
    match text.parse() {
        Ok(addr) => Listen::Tcp(addr),
        Err(_) => {
            problem(
                &format!("{port}.listen"),
                "is not an address:port such as \"127.0.0.1:8080\" or \"localhost:8080\", \
                 nor a socket path such as \"unix:/run/hooksign/proxy.sock\""
                    .into(),
            );
            fallback
        }
    }
}

fn duration(key: &str, text: &str, problem: &mut impl FnMut(&str, String)) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            problem(key, "must be longer than zero".into());
            Duration::from_secs(1)
        }
        Ok(d) if d > MAX_DURATION => {
            problem(key, "must be at most 24h".into());
            MAX_DURATION
        }
        Ok(d) => d,
        Err(_) => {
            problem(key, "is not a duration such as \"30s\" or \"500ms\"".into());
            Duration::from_secs(1)
        }
    }
}

/// `[egress] proxy` (`http://host:port`), its credentials file and `no_proxy`, validated.
fn forward_proxy(
    url: Option<&str>,
    credentials_file: Option<PathBuf>,
    no_proxy: &[String],
    problem: &mut impl FnMut(&str, String),
) -> Option<ForwardProxyConfig> {
    let Some(url) = url else {
        if credentials_file.is_some() || !no_proxy.is_empty() {
            problem(
                "egress.proxy",
                "proxy_credentials_file and no_proxy need a proxy".into(),
            );
        }
        return None;
    };
    let parsed = match Url::parse(url) {
        Ok(parsed) => parsed,
        Err(err) => {
            problem(
                "egress.proxy",
                format!("not a URL such as \"http://proxy.internal:3128\" ({err})"),
            );
            return None;
        }
    };
    if parsed.scheme() != "http" {
        problem(
            "egress.proxy",
            "only an http:// proxy is supported (TLS to the customer runs inside its tunnel)"
                .into(),
        );
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        problem(
            "egress.proxy",
            "credentials belong in proxy_credentials_file, not in the URL".into(),
        );
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        problem("egress.proxy", "the proxy URL has no path or query".into());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(name)) => name.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => {
            problem("egress.proxy", "the proxy URL has no host".into());
            return None;
        }
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let credentials = credentials_file.and_then(|file| {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => Secret::new(text),
            Err(err) => {
                problem(
                    "egress.proxy_credentials_file",
                    format!("{}: {err}", file.display()),
                );
                return None;
            }
        };
        match text.expose().trim_end_matches(['\r', '\n']).split_once(':') {
            Some((user, password))
                if !user.is_empty() && !password.is_empty() && !password.contains('\n') =>
            {
                Some(ProxyCredentials {
                    user: user.to_owned(),
                    password: Secret::new(password),
                })
            }
            // Never quote the file: it holds a password.
            _ => {
                problem(
                    "egress.proxy_credentials_file",
                    format!("{} must hold one line, user:password", file.display()),
                );
                None
            }
        }
    });
    let mut rules = Vec::with_capacity(no_proxy.len());
    for (i, entry) in no_proxy.iter().enumerate() {
        let entry = entry.trim();
        if let Some(net) = parse_cidr(entry) {
            rules.push(NoProxy::Net(net));
            continue;
        }
        let name = entry
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .to_ascii_lowercase();
        if name.is_empty() || url::Host::parse(&name).is_err() {
            problem(
                &format!("egress.no_proxy[{i}]"),
                "is not a host name, address or CIDR block".into(),
            );
            continue;
        }
        rules.push(NoProxy::Domain(name));
    }
    Some(ForwardProxyConfig {
        host,
        port,
        credentials,
        no_proxy: rules,
    })
}

/// The most customer servers whose TLS sessions are remembered (a few hundred bytes each, up to
/// 8 tickets per server).
const MAX_TLS_SESSION_CACHE: usize = 1_000_000;

fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hooksign/config.toml"))
    }

    #[test]
    fn empty_file_gives_the_spec_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.proxy.listen,
            Listen::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(c.proxy.max_body_bytes, 1_048_576);
        assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.proxy.body_read_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.max_connections, 4096);
        assert_eq!(c.proxy.auto_disable_after, 0);
        assert_eq!(
            c.admin.listen,
            Listen::Tcp("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(c.admin.rate_limit_per_minute, 120);
        assert!(c.admin.tokens.is_empty());
        assert_eq!(c.store.backend, StoreBackend::File);
        assert_eq!(c.store.path, PathBuf::from("/etc/hooksign/webhooks.toml"));
        assert_eq!(
            c.store.etcd.endpoints,
            vec!["http://127.0.0.1:2379".to_owned()]
        );
        assert_eq!(c.store.etcd.prefix, "/hooksign/");
        assert_eq!(c.signing.header, "x-storno-signature");
        assert!(!c.egress.allow_http && !c.egress.allow_private);
        assert!(c.egress.allow_cidrs.is_empty() && c.egress.allow_ports.is_empty());
        assert!(c.egress.ca_file.is_none());
        assert!(c.events.catalog.is_empty());
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(25));
        assert!(c.server.worker_threads >= 1);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn tracing_is_off_by_default_and_validated() {
        let c = parse("").unwrap();
        assert!(c.tracing.otlp_endpoint.is_none());
        assert_eq!(c.tracing.service_name, "hooksign");
        assert_eq!(c.tracing.sample_ratio, 1.0);
        assert_eq!(c.tracing.export_timeout, Duration::from_secs(5));
        assert_eq!(c.tracing.max_queue_size, 4096);
        assert!(!c.tracing.propagate_to_customers);

        let c = parse(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.25\n\
             resource_attributes = { \"deployment.environment\" = \"prod\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.tracing.otlp_endpoint.unwrap().to_string(),
            "http://127.0.0.1:4318/"
        );
        assert_eq!(c.tracing.sample_ratio, 0.25);
        assert_eq!(
            c.tracing.resource_attributes,
            [("deployment.environment".to_owned(), "prod".to_owned())]
        );

        let err = parse(
            "[tracing]\notlp_endpoint = \"https://user:pw@collector:4318\"\nsample_ratio = 1.5\n\
             export_timeout = \"0s\"\nmax_queue_size = 0\nservice_name = \"\"\n\
             resource_attributes = { \"service.name\" = \"x\" }\n",
        )
        .unwrap_err();
        let problems = err.problems().join("\n");
        for key in [
            "tracing.otlp_endpoint",
            "tracing.sample_ratio",
            "tracing.export_timeout",
            "tracing.max_queue_size",
            "tracing.service_name",
            "tracing.resource_attributes.service.name",
        ] {
            assert!(problems.contains(key), "{key} in {problems}");
        }
        assert!(!problems.contains("pw"), "{problems}");
        assert!(parse("[tracing]\notlp_endpoint = \"not a url\"\n").is_err());
        assert!(parse("[tracing]\nsample_rate = 1\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_named_by_their_path() {
        let err = parse("[proxy]\nmax_body_byte = 10\n[store.etcd]\nprefx = \"/\"\n").unwrap_err();
        let problems = err.problems();
        assert!(
            problems[0].contains("proxy.max_body_byte (line 2): unknown key"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("store.etcd.prefx (line 4): unknown key"),
            "{problems:?}"
        );
        assert!(parse("[proxi]\n").is_err());
        let syntax = parse("[proxy]\nlisten = \"whsec_unterminated\n").unwrap_err();
        assert!(syntax.to_string().contains("line 2"), "{syntax}");
        assert!(!syntax.to_string().contains("whsec_"), "{syntax}");
    }

    #[test]
    fn a_wrong_type_is_reported_and_the_rest_of_its_section_still_read() {
        let err =
            parse("[proxy]\nupstream_timeout = 30\nmax_body_bytes = \"big\"\nlisten = \"nope\"\n")
                .unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        for key in [
            "proxy.upstream_timeout",
            "proxy.max_body_bytes",
            "proxy.listen",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key}: {problems:#?}"
            );
        }
        assert!(!problems.iter().any(|p| p.contains("big")), "{problems:#?}");
    }

    #[test]
    fn durations_are_strings() {
        let c = parse("[proxy]\nupstream_timeout = \"500ms\"\n").unwrap();
        assert_eq!(c.proxy.upstream_timeout, Duration::from_millis(500));
        assert!(parse("[proxy]\nupstream_timeout = 30\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            "[proxy]\nlisten = \"nope\"\nupstream_timeout = \"soon\"\n[log]\nformat = \"xml\"\n\
             [[admin.tokens]]\nname = \"ops\"\nsha256 = \"abc\"\npermissions = [\"webhook.own\"]\n",
        )
        .unwrap_err();
        let problems = err.problems();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        for key in [
            "proxy.listen",
            "proxy.upstream_timeout",
            "log.format",
            "admin.tokens[0].sha256",
            "admin.tokens[0].permissions",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key} missing from {problems:#?}"
            );
        }
    }

    #[test]
    fn tokens_parse() {
        let c = parse(&format!(
            "[[admin.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\npermissions = [\"webhook.view\", \"webhook.manage\"]\n\
             companies = [\"550e8400-e29b-41d4-a716-446655440000\"]\n",
            "ab".repeat(32)
        ))
        .unwrap();
        let token = &c.admin.tokens[0];
        assert_eq!(token.sha256, [0xab; 32]);
        assert_eq!(
            token.permissions,
            vec![Permission::View, Permission::Manage]
        );
        assert_eq!(
            token.companies,
            Companies::Only(vec!["550e8400-e29b-41d4-a716-446655440000"
                .parse()
                .unwrap()])
        );
    }

    #[test]
    fn keyring_audit_log_and_the_encryption_policy_parse() {
        let c = parse(
            "[store]\nkeyring = \"keys/keyring.toml\"\nrequire_encryption = true\n\
             [admin]\naudit_log = \"audit.log\"\n",
        )
        .unwrap();
        assert_eq!(
            c.store.keyring,
            Some(PathBuf::from("/etc/hooksign/keys/keyring.toml"))
        );
        assert!(c.store.require_encryption);
        assert_eq!(
            c.admin.audit_log,
            Some(PathBuf::from("/etc/hooksign/audit.log"))
        );
        let defaults = parse("").unwrap();
        assert_eq!(defaults.store.keyring, None);
        assert!(!defaults.store.require_encryption);
        assert_eq!(defaults.admin.audit_log, None);
        let err = parse("[store]\nrequire_encryption = true\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("store.require_encryption (line 2): needs [store] keyring"),
            "{err}"
        );
    }

    #[test]
    fn etcd_settings_parse_and_are_checked() {
        let c = parse(
            "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [\"http://10.0.0.1:2379\"]\n\
             prefix = \"/x/\"\nusername = \"hooksign\"\npassword = \"pw\"\n",
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Etcd);
        assert_eq!(c.store.etcd.prefix, "/x/");
        assert_eq!(c.store.etcd.username.as_deref(), Some("hooksign"));
        assert!(!format!("{:?}", c.store.etcd).contains("pw"));
        let problems = parse(
            "[store.etcd]\nendpoints = [\"etcd:2379\"]\nprefix = \"\"\nusername = \"u\"\n\
             ca_file = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap_err()
        .problems();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(parse("[store.etcd]\nendpoint = [\"http://127.0.0.1:2379\"]\n").is_err());
    }

    #[test]
    fn cidrs_accept_blocks_and_addresses() {
        let c = parse("[egress]\nallow_cidrs = [\"10.1.0.0/16\", \"192.168.1.5\", \"fd00::/8\"]\n")
            .unwrap();
        assert_eq!(c.egress.allow_cidrs.len(), 3);
        assert!(parse("[egress]\nallow_cidrs = [\"10.1.0.0/33\"]\n").is_err());
    }
}
