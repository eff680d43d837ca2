//! The log output: the global `tracing` subscriber (text or JSON on stderr), its filter
//! (`[log] filter`, else `RUST_LOG`, else `info`; replaced live by a config reload), and, with
//! traces on, the OpenTelemetry layer beside it.

use std::io::{self, IsTerminal};

use crate::config::LogFormat;
use crate::telemetry;
use crate::trace_names;

/// The installed log output's filter, replaced by [`set_log_filter`] on a config reload.
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Whether the subscriber installed writes JSON (so the binary's last error line does too).
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a trace pipeline is installed (its log-line span must then pass the filter).
static TRACES_ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `[log] format = "json"` is in force: every line hooksign prints must then be JSON.
pub fn logs_are_json() -> bool {
    LOG_JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// The filter `[log] filter` asks for, else `RUST_LOG`, else `info`. The log output never shows
/// the spans exported ([`trace_names::TARGET`]); with traces on it shows a delivery's `trace_id`
/// span ([`trace_names::LOG_TARGET`]) whatever the filter says.
fn log_filter(configured: Option<&str>) -> tracing_subscriber::EnvFilter {
    let filter = configured
        .and_then(|text| tracing_subscriber::EnvFilter::try_new(text).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let mut filter = filter.add_directive(
        format!("{}=off", trace_names::TARGET)
            .parse()
            .expect("a target=off directive parses"),
    );
    if TRACES_ON.load(std::sync::atomic::Ordering::Relaxed) {
        filter = filter.add_directive(
            format!("{}=info", trace_names::LOG_TARGET)
                .parse()
                .expect("a target=info directive parses"),
        );
    }
    filter
}

/// Installs the global `tracing` subscriber: `[log] filter`, else `RUST_LOG` (default `info`),
/// text or JSON; with a trace pipeline, its layer beside the log output (the filter applies to
/// the log output only).
pub fn init_logging(format: LogFormat, filter: Option<&str>, traces: Option<&telemetry::Pipeline>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    TRACES_ON.store(traces.is_some(), std::sync::atomic::Ordering::Relaxed);
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(filter));
    let output = tracing_subscriber::fmt::layer()
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    let output = match format {
        LogFormat::Text => output.with_filter(filter).boxed(),
        LogFormat::Json => output
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(output);
    let installed = match traces {
        Some(traces) => registry.with(traces.layer()).try_init(),
        None => registry.try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_FILTER.set(handle);
        LOG_JSON.store(
            format == LogFormat::Json,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Replaces the log filter (a config reload changed `[log] filter`).
pub fn set_log_filter(filter: Option<&str>) {
    if let Some(handle) = LOG_FILTER.get() {
        if let Err(err) = handle.reload(log_filter(filter)) {
            tracing::warn!(error = %err, "could not replace the log filter");
            return;
        }
        tracing::info!(
            filter = filter.unwrap_or("RUST_LOG or info"),
            "log filter reloaded"
        );
    }
}
