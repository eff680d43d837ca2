//! The command line: `serve`, `check`, `token`, `sign`, `verify`, `healthcheck` (SPEC section 4).
//!
//! [`run`] executes a parsed [`Cli`] and returns the process exit code; `main` only maps errors.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::proxy::client;
use crate::secret::{self, Secret};
use crate::signing::storno;
use crate::store::file::FileBackend;
use crate::{AppState, Listeners, RunError};

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
    /// Print the storno signature of FILE (or stdin).
    Sign {
        /// The signing secret (whsec_...).
        #[arg(long, env = "HOOKSIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// The body to sign; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Exit 0 if SIG is FILE's (or stdin's) storno signature, 1 if not.
    Verify {
        /// The signing secret (whsec_...).
        #[arg(long, env = "HOOKSIGN_SECRET", hide_env_values = true)]
        secret: String,
        /// The signature to check (hex).
        #[arg(long)]
        signature: String,
        /// The body; stdin when absent.
        file: Option<PathBuf>,
    },
    /// Exit 0 if the admin port's /healthz answers 200 (for a container HEALTHCHECK).
    Healthcheck(ConfigArg),
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
        Command::Sign { secret, file } => {
            let body = read_input(file.as_deref())?;
            write_stdout(&format!("{}\n", storno::sign(&Secret::new(secret), &body)))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            secret,
            signature,
            file,
        } => {
            let body = read_input(file.as_deref())?;
            if storno::verify(&Secret::new(secret), &body, &signature) {
                eprintln!("signature valid");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("signature does not match");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Healthcheck(arg) => Ok(healthcheck(&arg.path())),
    }
}

fn serve(path: &Path) -> Result<ExitCode, RunError> {
    let config = Config::load(path)?;
    crate::init_logging(config.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads)
        .enable_all()
        .build()
        .map_err(|source| RunError::Io {
            what: "starting the runtime",
            source,
        })?;
    runtime.block_on(async move {
        let listeners = Listeners::bind(&config).await?;
        let state = AppState::build(config).await?;
        // Handlers first, then the ready line: whoever reads it may signal at once.
        let signalled = crate::shutdown_signal();
        let ready = listeners.ready_line().map_err(|source| RunError::Io {
            what: "reading listener addresses",
            source,
        })?;
        tracing::info!("{ready}");
        crate::announce(&ready).map_err(|source| RunError::Io {
            what: "writing the ready line",
            source,
        })?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            signalled.await;
            signal.cancel();
        });
        crate::serve(state, listeners, shutdown).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Validates everything `serve` would load; prints each problem.
fn check(path: &Path) -> ExitCode {
    let problems = match Config::load(path) {
        Err(err) => err.problems(),
        Ok(config) => {
            let mut problems = Vec::new();
            match FileBackend::new(config.store.path.clone()).load_file() {
                Ok(Some(snapshot)) => {
                    println!("store {}: {} endpoints", config.store.path.display(), snapshot.len())
                }
                Ok(None) => println!(
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
    };
    if problems.is_empty() {
        println!("config {}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            eprintln!("{problem}");
        }
        eprintln!("{} problem(s) found", problems.len());
        ExitCode::FAILURE
    }
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
    let addr = match Config::load(path) {
        Ok(config) => loopback_for(config.admin.listen),
        Err(err) => {
            eprintln!("hooksign: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hooksign: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async { tokio::time::timeout(HEALTHCHECK_TIMEOUT, probe(addr)).await }) {
        Ok(Ok(200)) => ExitCode::SUCCESS,
        Ok(Ok(status)) => {
            eprintln!("http://{addr}/healthz answered {status}");
            ExitCode::FAILURE
        }
        Ok(Err(err)) => {
            eprintln!("http://{addr}/healthz: {err}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("http://{addr}/healthz: no answer within {HEALTHCHECK_TIMEOUT:?}");
            ExitCode::FAILURE
        }
    }
}

async fn probe(addr: SocketAddr) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header(http::header::HOST, addr.to_string())
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
