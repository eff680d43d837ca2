//! The command line: `serve`, `check`, `token`, `sign`, `verify`, `healthcheck` (SPEC section 4),
//! and `store import` / `store export`, which move endpoints between a TOML store file and etcd;
//! `store rekey` (re-encrypt every secret under the keyring's primary key), `keyring new` and
//! `audit verify`.
//!
//! [`run`] executes a parsed [`Cli`] and returns the process exit code; `main` only maps errors.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, Listen, StoreBackend};
use crate::egress::dns::DnsResolver;
use crate::metrics::Metrics;
use crate::secret::{self, Secret};
use crate::signing::{self, ed25519, github, standard_webhooks, storno, stripe, MessageId, Scheme};
use crate::state::{self, AppState, BuildError};
use crate::store::crypt::Sealer;
use crate::store::etcd::{self, EtcdBackend};
use crate::store::file::{self as file_store, FileBackend};
use crate::store::{Backend, EndpointRecord, Snapshot};
use crate::upstream::client;
use crate::{audit, keyring, telemetry};
use crate::{Listeners, RunError};

/// `println!` for a pipe that may be closed (`hooksign check | head -c0`): a write error ends
/// nothing, the command keeps its exit code.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!`, likewise.
macro_rules! tell {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr().lock(), $($arg)*);
    }};
}

/// How long `healthcheck` waits for `/healthz`.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// hooksign: a signing sidecar for outbound webhooks.
#[derive(Debug, Parser)]
#[command(name = "hooksign", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: the proxy port and the admin port.
    Serve(ConfigArg),
    /// Validate the config and the store; print every problem and exit 1, else exit 0.
    Check(ConfigArg),
    /// Print a new admin token and the config lines that grant it.
    Token {
        /// The name the config lines give the token.
        #[arg(long, default_value = "ops")]
        name: String,
    },
    /// Print the signature of FILE (or stdin): the bare hex for storno, else the scheme's
    /// headers as `name: value` lines.
    Sign {
        /// The signing secret (whsec_..., or whsk_... for standard-webhooks-ed25519).
        #[arg(long, env = "HOOKSIGN_SECRET", hide_env_values = true)]
        secret: String,
        #[command(flatten)]
        message: MessageArgs,
        /// The body to sign; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Exit 0 if SIG holds a signature of FILE (or stdin) under the scheme, 1 if not.
    Verify {
        /// The signing secret (whsec_...); for standard-webhooks-ed25519 the public key
        /// (whpk_...) or the private key (whsk_...).
        #[arg(long, env = "HOOKSIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// The signature header's value: hex (storno), sha256=<hex> (github),
        /// t=<unix>,v1=<hex>[,v1=...] (stripe), or space-separated v1,<base64> / v1a,<base64>
        /// entries (standard-webhooks). Any one matching signature is enough.
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        message: MessageArgs,
        /// The body; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Exit 0 if the admin port's /healthz answers 200 (for a container HEALTHCHECK).
    Healthcheck(ConfigArg),
    /// Move endpoints between a TOML store file and the etcd store of the config; re-encrypt.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The keyring that encrypts secrets at rest.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// The audit log of admin writes.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `hooksign keyring ...`.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// Print a new key line (`"NAME" = "<base64 of 32 random bytes>"`) for a keyring's [keys].
    New {
        /// The key's name (letters, digits, '.', '_' or '-'), e.g. 2026-12.
        name: String,
    },
}

/// `hooksign audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log: exit 0 if intact, else name the first bad line, exit 1.
    Verify {
        /// The audit log (`[admin] audit_log`).
        path: PathBuf,
    },
}

/// `hooksign store ...`: the config's `[store.etcd]` says where etcd is.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Write every endpoint of FILE (a TOML store file) to etcd, creating or overwriting each
    /// key; endpoints already in etcd and not in FILE stay.
    Import {
        /// The TOML store file to read.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write every endpoint in etcd as a TOML store file to FILE (mode 0600), or to stdout.
    Export {
        /// Where to write; stdout when absent.
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-encrypt every secret of the config's store (file or etcd) under the keyring's primary
    /// key, in batches; plaintext secrets are encrypted. Safe to interrupt and rerun.
    Rekey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// What a signature covers besides the body.
#[derive(Debug, clap::Args)]
pub struct MessageArgs {
    /// The signing scheme.
    #[arg(long, default_value_t = Scheme::Storno)]
    pub scheme: Scheme,
    /// The message id (`webhook-id`) of the standard-webhooks schemes. `sign` makes a new one
    /// when absent; `verify` needs it.
    #[arg(long)]
    pub id: Option<String>,
    /// Unix seconds (`webhook-timestamp`, or Stripe's `t`). `sign` uses the current time when
    /// absent; `verify` needs it for the standard-webhooks schemes (Stripe's is in the header).
    #[arg(long)]
    pub timestamp: Option<u64>,
}

/// `--config PATH`, defaulting to `$HOOKSIGN_CONFIG`, then `./config.toml`.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(long, env = "HOOKSIGN_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        config::resolve_path(self.config.clone())
    }
}

/// Runs a command; `Ok` carries the exit code of a command that ran to its verdict.
pub fn run(cli: Cli) -> Result<ExitCode, RunError> {
    match cli.command {
        Command::Serve(arg) => serve(&arg.path()),
        Command::Check(arg) => Ok(check(&arg.path())),
        Command::Token { name } => token(&name),
        Command::Sign {
            secret,
            message,
            file,
        } => {
            let body = read_input(file.as_deref())?;
            match sign(&Secret::new(secret), &message, &body) {
                Ok(text) => {
                    write_stdout(&text)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => Ok(usage_error(&why)),
            }
        }
        Command::Verify {
            secret,
            signature,
            message,
            file,
        } => {
            let body = read_input(file.as_deref())?;
            match verify(&Secret::new(secret), &message, &body, &signature) {
                Ok(true) => {
                    tell!("signature valid");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(false) => {
                    tell!("signature does not match");
                    Ok(ExitCode::FAILURE)
                }
                Err(why) => Ok(usage_error(&why)),
            }
        }
        Command::Healthcheck(arg) => Ok(healthcheck(&arg.path())),
        Command::Store(StoreCommand::Import { file, config }) => {
            store_command(&config.path(), StoreAction::Import(file))
        }
        Command::Store(StoreCommand::Export { file, config }) => {
            store_command(&config.path(), StoreAction::Export(file))
        }
        Command::Store(StoreCommand::Rekey { config }) => rekey(&config.path()),
        Command::Keyring(KeyringCommand::New { name }) => match keyring::new_key_line(&name) {
            Ok(line) => {
                write_stdout(&format!("{line}\n"))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => Ok(usage_error(&why)),
        },
        Command::Audit(AuditCommand::Verify { path }) => match audit::verify(&path) {
            Ok(lines) => {
                say!("{}: {lines} line(s), chain intact", path.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                tell!("{}: {err}", path.display());
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// `store rekey`: re-encrypts the config's store under the primary key, printing progress;
/// exit 0, or print why and exit 1 (what was done stays done; rerun to finish).
fn rekey(path: &Path) -> Result<ExitCode, RunError> {
    let config = Config::load(path)?;
    let sealer = match state::sealer_for(&config) {
        Ok(sealer) => sealer.permissive(),
        Err(err) => {
            tell!("hooksign: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let primary = sealer.primary().unwrap_or_default();
    let report = |done: usize, total: usize| {
        tell!("rekey: {done}/{total} re-encrypted under key {primary:?}");
    };
    let outcome = match config.store.backend {
        StoreBackend::File => FileBackend::new(config.store.path.clone())
            .with_sealer(sealer.clone())
            .rekey(report),
        StoreBackend::Etcd => runtime(1)?.block_on(async {
            match EtcdBackend::connect(&config.store.etcd, None).await {
                Ok(backend) => backend.with_sealer(sealer.clone()).rekey(report).await,
                Err(err) => Err(err.into()),
            }
        }),
    };
    match outcome {
        Ok(count) => {
            say!(
                "rekey: done, {count} re-encrypted; every secret is under key {:?}",
                sealer.primary().unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            tell!(
                "hooksign: rekey stopped: {}",
                crate::error_chain::error_chain(&err)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

enum StoreAction {
    Import(PathBuf),
    Export(Option<PathBuf>),
}

/// `store import` / `store export`: exit 0, or print why and exit 1.
fn store_command(path: &Path, action: StoreAction) -> Result<ExitCode, RunError> {
    let config = Config::load(path)?;
    let runtime = runtime(1)?;
    let outcome: Result<(), String> = runtime.block_on(async {
        let sealer = state::sealer_for(&config)
            .map_err(|err| err.to_string())?
            .permissive();
        let backend = EtcdBackend::connect(&config.store.etcd, None)
            .await
            .map_err(|err| err.to_string())?
            .with_sealer(sealer.clone());
        match action {
            StoreAction::Import(file) => {
                let records = read_store_file(&file, &sealer)?;
                let written = backend
                    .import(&records)
                    .await
                    .map_err(|err| err.to_string())?;
                tell!("imported {written} endpoint(s) from {}", file.display());
                Ok(())
            }
            StoreAction::Export(file) => {
                let records = backend.records().await.map_err(|err| err.to_string())?;
                let count = records.len();
                match file {
                    Some(file) => {
                        FileBackend::new(file.clone())
                            .with_sealer(sealer.clone())
                            .write_records(records)
                            .await
                            .map_err(|err| err.to_string())?;
                        tell!("exported {count} endpoint(s) to {}", file.display());
                    }
                    None => {
                        let sealed = records
                            .iter()
                            .map(|record| sealer.seal_record(record))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|err| err.to_string())?;
                        let text = file_store::render(&sealed);
                        write_stdout(&text).map_err(|err| err.to_string())?;
                        tell!("exported {count} endpoint(s)");
                    }
                }
                Ok(())
            }
        }
    });
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(why) => {
            tell!("hooksign: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The records of a TOML store file, validated, delivery records stripped.
fn read_store_file(file: &Path, sealer: &Sealer) -> Result<Vec<EndpointRecord>, String> {
    let snapshot: Snapshot = match FileBackend::new(file)
        .with_sealer(sealer.clone())
        .load_file()
    {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return Err(format!("{} does not exist", file.display())),
        Err(err) => return Err(err.problems().join("\n")),
    };
    Ok(snapshot
        .endpoints()
        .map(|endpoint| etcd::stripped(&endpoint.record_now()))
        .collect())
}

/// The text `sign` prints: the bare hex for storno, else `name: value` header lines.
fn sign(secret: &Secret, message: &MessageArgs, body: &[u8]) -> Result<String, String> {
    check_secret_arg(message.scheme, secret)?;
    let timestamp = message.timestamp.unwrap_or_else(signing::unix_now);
    let id = || {
        message
            .id
            .clone()
            .unwrap_or_else(|| MessageId::generate().as_str().to_owned())
    };
    let text = match message.scheme {
        Scheme::Storno => format!("{}\n", storno::sign(secret, body)),
        Scheme::Github => format!(
            "{}: {}\n",
            github::X_HUB_SIGNATURE_256,
            github::sign(secret, body)
        ),
        Scheme::Stripe => format!(
            "{}: t={timestamp},v1={}\n",
            stripe::STRIPE_SIGNATURE,
            stripe::sign(secret, timestamp, body)
        ),
        Scheme::StandardWebhooks => {
            let key =
                standard_webhooks::key_bytes(secret).map_err(|err| format!("--secret {err}"))?;
            let id = id();
            standard_headers(
                &id,
                timestamp,
                &standard_webhooks::sign(&key, &id, timestamp, body),
            )
        }
        Scheme::StandardWebhooksEd25519 => {
            let key = ed25519::signing_key(secret).map_err(|err| format!("--secret {err}"))?;
            let id = id();
            standard_headers(&id, timestamp, &ed25519::sign(&key, &id, timestamp, body))
        }
    };
    Ok(text)
}

fn standard_headers(id: &str, timestamp: u64, signature: &str) -> String {
    format!(
        "{}: {id}\n{}: {timestamp}\n{}: {signature}\n",
        standard_webhooks::WEBHOOK_ID,
        standard_webhooks::WEBHOOK_TIMESTAMP,
        standard_webhooks::WEBHOOK_SIGNATURE
    )
}

/// Whether `signature` holds a valid signature; `Err` for a usage problem.
fn verify(
    secret: &Secret,
    message: &MessageArgs,
    body: &[u8],
    signature: &str,
) -> Result<bool, String> {
    let public_key = message.scheme == Scheme::StandardWebhooksEd25519
        && secret.expose().starts_with(ed25519::PUBLIC_PREFIX);
    if !public_key {
        check_secret_arg(message.scheme, secret)?;
    }
    let signature = signature.trim();
    let id_and_timestamp = || {
        match (&message.id, message.timestamp) {
        (Some(id), Some(timestamp)) => Ok((id.as_str(), timestamp)),
        _ => Err(format!(
            "the {} scheme needs --id and --timestamp (the webhook-id and webhook-timestamp headers)",
            message.scheme
        )),
    }
    };
    Ok(match message.scheme {
        Scheme::Storno => storno::verify(secret, body, signature),
        Scheme::Github => github::verify(secret, body, signature),
        Scheme::Stripe => stripe::verify(secret, body, signature),
        Scheme::StandardWebhooks => {
            let (id, timestamp) = id_and_timestamp()?;
            standard_webhooks::key_bytes(secret).map_err(|err| format!("--secret {err}"))?;
            standard_webhooks::verify(secret, id, timestamp, body, signature)
        }
        Scheme::StandardWebhooksEd25519 => {
            let (id, timestamp) = id_and_timestamp()?;
            let public = if secret.expose().starts_with(ed25519::PUBLIC_PREFIX) {
                ed25519::parse_public_key(secret.expose())
            } else {
                ed25519::signing_key(secret).map(|key| key.verifying_key())
            }
            .map_err(|err| format!("--secret {err} (or whsk_ with a private key)"))?;
            ed25519::verify(&public, id, timestamp, body, signature)
        }
    })
}

/// Refuses a `--secret` that is not a key of `scheme` (a masked `whsec_••••` copied from the
/// API, a truncated value): signing with it would print a signature no receiver accepts.
fn check_secret_arg(scheme: Scheme, secret: &Secret) -> Result<(), String> {
    if secret.expose().contains('•') {
        return Err(
            "--secret is the masked value the API shows, not the secret: use the \
                    secret returned by create or regenerate-secret"
                .into(),
        );
    }
    scheme
        .check_secret(secret)
        .map_err(|err| format!("--secret is not a {scheme} secret: {err}"))
}

/// A command-line problem clap could not see: printed, exit 2 (clap's usage code).
fn usage_error(why: &str) -> ExitCode {
    tell!("hooksign: {why}");
    ExitCode::from(2)
}

fn serve(path: &Path) -> Result<ExitCode, RunError> {
    let mut config = Config::load(path)?;
    let format = config.log.format;
    let metrics = Metrics::new().map_err(BuildError::Metrics)?;
    let traces = telemetry::Pipeline::start(&config.tracing, metrics.trace_spans_dropped.clone())
        .map_err(BuildError::Telemetry)?;
    crate::logging::init_logging(format, config.log.filter.as_deref(), traces.as_ref());
    let grace = config.server.shutdown_grace;
    let as_read = config.clone();
    let budget = crate::limits::Budget::derive(crate::limits::raise_nofile_limit(), &config);
    budget.apply(&mut config);
    tracing::info!(
        open_file_limit = budget.limit,
        proxy_connections = config.proxy.max_connections,
        admin_connections = config.admin.max_connections,
        idle_upstream = config.proxy.pool_max_idle,
        "connection caps"
    );
    let runtime = runtime(config.server.worker_threads)?;
    let served = runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let resolver = DnsResolver::system().map_err(BuildError::Dns)?;
        let state = AppState::build_with(config, Arc::new(resolver), metrics).await?;
        // Reloads compare with the file as read, not with the caps fitted to the fd limit.
        state.live.send_replace(Arc::new(as_read));
        // Handlers first, then the ready line: whoever reads it may signal at once.
        let signalled = crate::shutdown_signal();
        let shutdown = CancellationToken::new();
        crate::start_reloading(&state, &shutdown);
        let ready = listeners.ready_line().map_err(|source| RunError::Io {
            what: "reading listener addresses",
            source,
        })?;
        tracing::info!("{ready}");
        let ready = match format {
            config::LogFormat::Text => ready,
            // Every line hooksign prints parses as JSON in JSON mode, the ready line too.
            config::LogFormat::Json => {
                let mut fields = serde_json::Map::new();
                fields.insert("message".into(), "ready".into());
                for field in ready.split_whitespace().skip(1) {
                    if let Some((key, value)) = field.split_once('=') {
                        fields.insert(key.into(), value.into());
                    }
                }
                serde_json::Value::Object(fields).to_string()
            }
        };
        crate::announce(&ready).map_err(|source| RunError::Io {
            what: "writing the ready line",
            source,
        })?;
        tokio::spawn(crate::drain_after(
            Arc::clone(&state),
            signalled,
            shutdown.clone(),
        ));
        crate::serve(state, listeners, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    });
    // After the servers: the last spans are exported, within the shutdown grace.
    drop(runtime);
    if let Some(traces) = traces {
        traces.shutdown(grace.min(TRACE_FLUSH_MAX));
    }
    if served.is_ok() {
        tracing::info!("stopped");
    }
    served
}

/// How long `serve` waits at exit for the last spans to reach the collector, at most.
const TRACE_FLUSH_MAX: Duration = Duration::from_secs(5);

/// Validates everything `serve` would load; prints each problem.
fn check(path: &Path) -> ExitCode {
    // Config problems do not stop the check: the store the config names is checked too, so
    // one run lists everything.
    let loaded = std::fs::read_to_string(path)
        .map_err(|source| config::ConfigError::Read {
            path: path.to_owned(),
            source,
        })
        .and_then(|text| Config::parse_with_problems(&text, path));
    let (config, mut problems) = match loaded {
        Ok((config, problems)) => (
            Some(config),
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        ),
        Err(err) => (None, err.problems()),
    };
    problems.extend(match config {
        None => Vec::new(),
        Some(config) if config.store.backend == StoreBackend::Etcd => {
            let mut problems = check_etcd(&config);
            if let Err(err) = client::tls_config(&config.egress) {
                problems.push(err.to_string());
            }
            problems
        }
        Some(config) => {
            let mut problems = Vec::new();
            let sealer = match checked_sealer(&config) {
                Ok(sealer) => sealer,
                Err(why) => {
                    problems.push(why);
                    Sealer::plaintext()
                }
            };
            match FileBackend::new(config.store.path.clone())
                .with_sealer(sealer)
                .load_file()
            {
                Ok(Some(snapshot)) => {
                    say!("store {}: {} endpoints", config.store.path.display(), snapshot.len())
                }
                Ok(None) => say!(
                    "store {}: does not exist yet (an empty store; the first admin write creates it)",
                    config.store.path.display()
                ),
                Err(err) => problems.extend(err.problems()),
            }
            if let Err(err) = client::tls_config(&config.egress) {
                problems.push(err.to_string());
            }
            problems
        }
    });
    if problems.is_empty() {
        say!("config {}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            tell!("{problem}");
        }
        tell!("{} problem(s) found", problems.len());
        ExitCode::FAILURE
    }
}

/// The config's sealer for `check`, with a line naming the keyring's keys (never a key).
fn checked_sealer(config: &Config) -> Result<Sealer, String> {
    let sealer = state::sealer_for(config).map_err(|err| crate::error_chain::error_chain(&err))?;
    if let (Some(path), Some(keyring)) = (&config.store.keyring, sealer.keyring()) {
        say!(
            "keyring {}: primary {:?}, keys {}",
            path.display(),
            keyring.primary(),
            keyring.names().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(sealer)
}

/// Connects to the configured etcd and loads the prefix: the problems found.
fn check_etcd(config: &Config) -> Vec<String> {
    let runtime = match runtime(1) {
        Ok(runtime) => runtime,
        Err(err) => return vec![err.to_string()],
    };
    let etcd = &config.store.etcd;
    let sealer = match checked_sealer(config) {
        Ok(sealer) => sealer,
        Err(why) => return vec![why],
    };
    runtime.block_on(async {
        let loaded = match EtcdBackend::connect(etcd, None).await {
            Ok(backend) => backend.with_sealer(sealer).load(None).await,
            Err(err) => Err(err),
        };
        match loaded {
            Ok(snapshot) => {
                say!(
                    "store etcd {} prefix {}: {} endpoints",
                    etcd.endpoints.join(","),
                    etcd.prefix,
                    snapshot.len()
                );
                Vec::new()
            }
            Err(err) => err.problems(),
        }
    })
}

fn token(name: &str) -> Result<ExitCode, RunError> {
    let bytes = secret::random_bytes::<32>().map_err(|err| RunError::Io {
        what: "generating a token",
        source: io::Error::other(err),
    })?;
    let token = Secret::new(format!("hks_{}", hex::encode(bytes.as_slice())));
    let digest = hex::encode(Sha256::digest(token.expose().as_bytes()));
    let text = format!(
        "token: {token}\n\n\
         # Add to the config; only the hash is stored, so keep the token now.\n\
         [[admin.tokens]]\n\
         name = {name:?}\n\
         sha256 = \"{digest}\"\n\
         permissions = [\"webhook.view\", \"webhook.manage\"]\n\
         companies = [\"*\"]\n",
        token = token.expose()
    );
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn healthcheck(path: &Path) -> ExitCode {
    let listen = match Config::load(path) {
        Ok(config) => match config.admin.listen {
            Listen::Tcp(addr) => Listen::Tcp(loopback_for(addr)),
            unix => unix,
        },
        Err(err) => {
            tell!("hooksign: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match runtime(1) {
        Ok(runtime) => runtime,
        Err(err) => {
            tell!("hooksign: {err}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match &listen {
        Listen::Tcp(addr) => addr.to_string(),
        Listen::Unix { path, .. } => format!("unix:{}", path.display()),
    };
    match runtime
        .block_on(async { tokio::time::timeout(HEALTHCHECK_TIMEOUT, probe(&listen)).await })
    {
        Ok(Ok(200)) => ExitCode::SUCCESS,
        Ok(Ok(status)) => {
            tell!("http://{addr}/healthz answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            tell!("http://{addr}/healthz: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            tell!("http://{addr}/healthz: no answer within {HEALTHCHECK_TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(listen: &Listen) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let (stream, host) = match listen {
        Listen::Tcp(addr) => (
            crate::listen::Stream::Left(tokio::net::TcpStream::connect(addr).await?),
            addr.to_string(),
        ),
        #[cfg(unix)]
        Listen::Unix { path, .. } => (
            crate::listen::Stream::Right(tokio::net::UnixStream::connect(path).await?),
            "localhost".to_owned(),
        ),
        #[cfg(not(unix))]
        Listen::Unix { .. } => return Err("unix sockets need a Unix system".into()),
    };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?.status().as_u16())
}

/// A listener on the unspecified address is probed on loopback.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

fn read_input(file: Option<&Path>) -> Result<Vec<u8>, RunError> {
    let read = match file {
        Some(path) => std::fs::read(path),
        None => {
            let mut body = Vec::new();
            io::stdin().read_to_end(&mut body).map(|_| body)
        }
    };
    read.map_err(|source| RunError::Io {
        what: "reading the body",
        source,
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(text: &str) -> Result<(), RunError> {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(RunError::Io {
            what: "writing to stdout",
            source: err,
        }),
        _ => Ok(()),
    }
}

/// A runtime with `workers` threads. One worker needs no work-stealing scheduler: the
/// current-thread runtime is cheaper per task.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, RunError> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().map_err(|source| RunError::Io {
        what: "starting the runtime",
        source,
    })
}
