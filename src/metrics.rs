//! Prometheus metrics: one [`Metrics`] registry per process, held in the app state.
//!
//! Every label value comes from a closed enum, so cardinality is bounded by construction: no
//! URL, uuid, path, secret or token ever becomes a label. Counters the delivery path touches are
//! resolved to their label once, here, so a request only does atomic adds.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::egress::DenyReason;
use crate::outcome::Outcome;

/// How an exchange that reached for the upstream can end: the `outcome` label of
/// `hooksign_upstream_duration_seconds`.
const UPSTREAM_OUTCOMES: [Outcome; 10] = [
    Outcome::Success,
    Outcome::Failed,
    Outcome::UpstreamUnreachable,
    Outcome::UpstreamTls,
    Outcome::UpstreamTimeout,
    Outcome::UpstreamProtocol,
    Outcome::UpstreamBodyTimeout,
    Outcome::UpstreamBodyFailed,
    Outcome::UpstreamResponseTooLarge,
    Outcome::ClientClosed,
];

/// Upstream latency buckets, loopback to the far side of the internet (seconds).
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Connection phase buckets, a cached lookup to a slow handshake far away (seconds).
const PHASE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A circuit's state: the `state` label of `hooksign_circuit_transitions_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub const ALL: [CircuitState; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The upstream pool's counters, handed to the pool (clones share the values).
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    /// `hooksign_upstream_tls_handshakes_total{kind="full"}`.
    pub tls_full: IntCounter,
    /// `hooksign_upstream_tls_handshakes_total{kind="resumed"}`.
    pub tls_resumed: IntCounter,
    /// `hooksign_upstream_connections_open`: upstream connections open now (busy or idle; an
    /// HTTP/2 connection counts once).
    pub open: IntGauge,
    /// `hooksign_upstream_connections_idle`: idle HTTP/1.1 connections in the pool now.
    pub idle: IntGauge,
    /// `hooksign_upstream_requests_total{connection="new"}`: requests that opened a connection.
    pub on_new: IntCounter,
    /// `hooksign_upstream_requests_total{connection="reused"}`: requests sent on a pooled one.
    pub on_reused: IntCounter,
    /// `hooksign_upstream_connect_phase_seconds{phase="dns"}`: resolving and checking the host.
    pub phase_dns: Histogram,
    /// `...{phase="connect"}`: the TCP connect (the whole Happy Eyeballs race).
    pub phase_connect: Histogram,
    /// `...{phase="tls"}`: the TLS handshake.
    pub phase_tls: Histogram,
}

/// Which bulkhead refused a delivery with 503 `upstream_saturated` (`limit` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bulkhead {
    /// `[proxy] max_in_flight_per_endpoint`.
    EndpointInFlight,
    /// `[proxy] max_connections_per_origin`.
    OriginConnections,
}

impl Bulkhead {
    pub const ALL: [Bulkhead; 2] = [Self::EndpointInFlight, Self::OriginConnections];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::EndpointInFlight => "endpoint_in_flight",
            Self::OriginConnections => "origin_connections",
        }
    }
}

/// Why a store reload ended as it did (`result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Rejected,
}

/// The store backend's connection metrics, handed to the backend (clones share the values).
#[derive(Clone)]
pub struct StoreBackendMetrics {
    /// `hooksign_store_backend_up`: 1 while the backend is reachable and followed.
    pub up: IntGauge,
    /// `hooksign_store_reconnects_total`: the backend's watch re-established after a loss.
    pub reconnects: IntCounter,
    /// `hooksign_store_endpoints`, set when a watch swaps a snapshot in.
    pub endpoints: IntGauge,
}

impl std::fmt::Debug for StoreBackendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBackendMetrics")
            .field("up", &self.up.get())
            .field("reconnects", &self.reconnects.get())
            .finish_non_exhaustive()
    }
}

/// Every metric hooksign exports.
pub struct Metrics {
    registry: Registry,
    deliveries: Vec<IntCounter>,
    /// `hooksign_upstream_duration_seconds`, resolved per outcome (indexed by discriminant;
    /// `None` for outcomes that never reach the upstream).
    upstream_duration: Vec<Option<Histogram>>,
    /// `hooksign_circuit_transitions_total`, per state entered.
    circuit_transitions: Vec<IntCounter>,
    /// `hooksign_bulkhead_refusals_total`, per limit.
    bulkhead_refusals: Vec<IntCounter>,
    in_flight: IntGauge,
    /// Store load and reload results (handed to the store's watcher).
    pub reload: ReloadMetrics,
    /// Keyring reload results (`hooksign_keyring_reloads_total`,
    /// `hooksign_keyring_last_reload_success`), handed to the keyring's watcher.
    pub keyring_reload: ReloadMetrics,
    /// Config reload results (`hooksign_config_reloads_total`,
    /// `hooksign_config_last_reload_success`).
    pub config_reload: ReloadMetrics,
    /// `hooksign_config_restart_required`: 1 while the config file holds a change to a key that
    /// applies only at start (listeners, store backend, worker threads…).
    pub config_restart_required: IntGauge,
    /// `hooksign_shutdown_grace_seconds`: `[server] shutdown_grace`, for the alert on
    /// deliveries slower than a drain allows.
    pub shutdown_grace: Gauge,
    store_endpoints: IntGauge,
    pub secret_rotations: IntCounter,
    /// `hooksign_trace_spans_dropped_total`: sampled spans the collector never got (the export
    /// queue was full, or their export failed), handed to the trace pipeline.
    pub trace_spans_dropped: IntCounter,
    /// `hooksign_client_certificate_expiry_timestamp_seconds`: the soonest `notAfter` of the
    /// endpoints' client certificates (0 when none has one), set at each scrape.
    pub client_certificate_expiry: IntGauge,
    pub egress_blocked: IntCounterVec,
    /// `egress_blocked`, resolved per reason (indexed by discriminant).
    egress_blocked_by_reason: Vec<IntCounter>,
    pub admin_requests: IntCounterVec,
    pub store_backend: StoreBackendMetrics,
    /// The upstream pool's counters (handed to the pool).
    pub upstream: UpstreamMetrics,
}

/// `hooksign_store_reloads_total` and `hooksign_store_last_reload_success`: the handle the
/// store's watcher records its reloads with (the endpoint gauge follows every swap by itself).
#[derive(Clone, Debug)]
pub struct ReloadMetrics {
    applied: IntCounter,
    rejected: IntCounter,
    last_success: IntGauge,
}

impl ReloadMetrics {
    /// Counts one load or reload by its result.
    pub fn record(&self, outcome: ReloadOutcome) {
        match outcome {
            ReloadOutcome::Applied => {
                self.applied.inc();
                self.last_success.set(1);
            }
            ReloadOutcome::Rejected => {
                self.rejected.inc();
                self.last_success.set(0);
            }
        }
    }

    /// Whether the last load was rejected.
    pub fn last_failed(&self) -> bool {
        self.last_success.get() == 0
    }
}

/// Keeps `hooksign_proxy_requests_in_flight` up while it lives: from the request's arrival to
/// the end of the response body it is moved into.
pub struct InFlight(IntGauge);

impl Metrics {
    /// Builds and registers every metric on a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let deliveries_vec = IntCounterVec::new(
            Opts::new(
                "hooksign_deliveries_total",
                "Requests through the proxy port, by outcome",
            ),
            &["outcome"],
        )?;
        let deliveries = Outcome::ALL
            .iter()
            .map(|outcome| deliveries_vec.with_label_values(&[outcome.as_label()]))
            .collect();
        let upstream_duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "hooksign_upstream_duration_seconds",
                "Time from sending a delivery upstream to its response headers (or to the failure that came first), by how the delivery ended",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let upstream_duration = Outcome::ALL
            .iter()
            .map(|outcome| {
                UPSTREAM_OUTCOMES
                    .contains(outcome)
                    .then(|| upstream_duration_vec.with_label_values(&[outcome.as_label()]))
            })
            .collect();
        let circuit_transitions_vec = IntCounterVec::new(
            Opts::new(
                "hooksign_circuit_transitions_total",
                "Upstream circuit breaker state changes, by the state entered",
            ),
            &["state"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "hooksign_upstream_tls_handshakes_total",
                "TLS handshakes with customers' servers, by kind (full or resumed)",
            ),
            &["kind"],
        )?;
        let connections_open = IntGauge::new(
            "hooksign_upstream_connections_open",
            "Upstream connections open now, busy or idle (an HTTP/2 connection counts once)",
        )?;
        let connections_idle = IntGauge::new(
            "hooksign_upstream_connections_idle",
            "Idle upstream HTTP/1.1 connections kept in the pool now",
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "hooksign_upstream_requests_total",
                "Requests sent upstream, by whether they opened a connection or reused a pooled one",
            ),
            &["connection"],
        )?;
        let phases = HistogramVec::new(
            HistogramOpts::new(
                "hooksign_upstream_connect_phase_seconds",
                "Time spent opening upstream connections, by phase (dns: resolving and checking the host; connect: TCP, every address's attempt; tls: the handshake)",
            )
            .buckets(PHASE_BUCKETS.to_vec()),
            &["phase"],
        )?;
        let upstream = UpstreamMetrics {
            tls_full: handshakes.with_label_values(&["full"]),
            tls_resumed: handshakes.with_label_values(&["resumed"]),
            open: connections_open.clone(),
            idle: connections_idle.clone(),
            on_new: requests.with_label_values(&["new"]),
            on_reused: requests.with_label_values(&["reused"]),
            phase_dns: phases.with_label_values(&["dns"]),
            phase_connect: phases.with_label_values(&["connect"]),
            phase_tls: phases.with_label_values(&["tls"]),
        };
        let bulkhead_vec = IntCounterVec::new(
            Opts::new(
                "hooksign_bulkhead_refusals_total",
                "Deliveries refused 503 upstream_saturated, by the limit that was reached",
            ),
            &["limit"],
        )?;
        let bulkhead_refusals = Bulkhead::ALL
            .iter()
            .map(|limit| bulkhead_vec.with_label_values(&[limit.as_label()]))
            .collect();
        let circuit_transitions = CircuitState::ALL
            .iter()
            .map(|state| circuit_transitions_vec.with_label_values(&[state.as_label()]))
            .collect();
        let in_flight = IntGauge::new(
            "hooksign_proxy_requests_in_flight",
            "Proxy requests being handled now",
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "hooksign_store_reloads_total",
                "Store loads and reloads, by result",
            ),
            &["result"],
        )?;
        let last_reload_success = IntGauge::new(
            "hooksign_store_last_reload_success",
            "1 if the last store load succeeded, 0 if it was rejected",
        )?;
        let keyring_reloads = IntCounterVec::new(
            Opts::new(
                "hooksign_keyring_reloads_total",
                "Keyring reloads ([store] keyring), by result",
            ),
            &["result"],
        )?;
        let keyring_last_success = IntGauge::new(
            "hooksign_keyring_last_reload_success",
            "1 if the last keyring reload succeeded (or none was needed), 0 if it was rejected",
        )?;
        keyring_last_success.set(1);
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "hooksign_config_reloads_total",
                "Config file reloads (SIGHUP or a change to the file), by result",
            ),
            &["result"],
        )?;
        let config_last_success = IntGauge::new(
            "hooksign_config_last_reload_success",
            "1 if the last config reload succeeded (or none was needed), 0 if it was rejected",
        )?;
        config_last_success.set(1);
        let config_restart_required = IntGauge::new(
            "hooksign_config_restart_required",
            "1 while the config file holds a change that applies only after a restart",
        )?;
        let shutdown_grace = Gauge::new(
            "hooksign_shutdown_grace_seconds",
            "[server] shutdown_grace: how long in-flight deliveries may run once the proxy stops accepting",
        )?;
        let store_endpoints = IntGauge::new(
            "hooksign_store_endpoints",
            "Endpoints in the snapshot in service",
        )?;
        let secret_rotations =
            IntCounter::new("hooksign_secret_rotations_total", "Secrets regenerated")?;
        let trace_spans_dropped = IntCounter::new(
            "hooksign_trace_spans_dropped_total",
            "Sampled trace spans not exported: the export queue was full or the export failed",
        )?;
        let client_certificate_expiry = IntGauge::new(
            "hooksign_client_certificate_expiry_timestamp_seconds",
            "The soonest expiry (notAfter, Unix seconds) of the endpoints' client certificates; 0 when none has one",
        )?;
        let egress_blocked = IntCounterVec::new(
            Opts::new(
                "hooksign_egress_blocked_total",
                "Destinations refused by the egress guard, by reason",
            ),
            &["reason"],
        )?;
        let egress_blocked_by_reason = DenyReason::ALL
            .iter()
            .map(|reason| egress_blocked.with_label_values(&[reason.as_label()]))
            .collect();
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "hooksign_admin_requests_total",
                "Admin API requests, by route and status",
            ),
            &["route", "status"],
        )?;
        let backend_up = IntGauge::new(
            "hooksign_store_backend_up",
            "1 while the store backend is reachable (always 1 for the file backend)",
        )?;
        backend_up.set(1);
        let reconnects = IntCounter::new(
            "hooksign_store_reconnects_total",
            "Times the store backend's watch was re-established after a loss",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("hooksign_build_info", "Always 1; the version is a label"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(deliveries_vec))?;
        registry.register(Box::new(upstream_duration_vec))?;
        registry.register(Box::new(circuit_transitions_vec))?;
        registry.register(Box::new(bulkhead_vec))?;
        registry.register(Box::new(handshakes))?;
        registry.register(Box::new(connections_open))?;
        registry.register(Box::new(connections_idle))?;
        registry.register(Box::new(requests))?;
        registry.register(Box::new(phases))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload_success.clone()))?;
        registry.register(Box::new(keyring_reloads.clone()))?;
        registry.register(Box::new(keyring_last_success.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_success.clone()))?;
        registry.register(Box::new(config_restart_required.clone()))?;
        registry.register(Box::new(shutdown_grace.clone()))?;
        registry.register(Box::new(store_endpoints.clone()))?;
        registry.register(Box::new(secret_rotations.clone()))?;
        registry.register(Box::new(trace_spans_dropped.clone()))?;
        registry.register(Box::new(client_certificate_expiry.clone()))?;
        registry.register(Box::new(egress_blocked.clone()))?;
        registry.register(Box::new(admin_requests.clone()))?;
        registry.register(Box::new(backend_up.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(build_info))?;

        Ok(Self {
            registry,
            deliveries,
            upstream_duration,
            circuit_transitions,
            bulkhead_refusals,
            in_flight,
            reload: ReloadMetrics {
                applied: reloads.with_label_values(&["success"]),
                rejected: reloads.with_label_values(&["error"]),
                last_success: last_reload_success,
            },
            config_reload: ReloadMetrics {
                applied: config_reloads.with_label_values(&["success"]),
                rejected: config_reloads.with_label_values(&["error"]),
                last_success: config_last_success,
            },
            config_restart_required,
            shutdown_grace,
            keyring_reload: ReloadMetrics {
                applied: keyring_reloads.with_label_values(&["success"]),
                rejected: keyring_reloads.with_label_values(&["error"]),
                last_success: keyring_last_success,
            },
            store_backend: StoreBackendMetrics {
                up: backend_up,
                reconnects,
                endpoints: store_endpoints.clone(),
            },
            store_endpoints,
            secret_rotations,
            trace_spans_dropped,
            client_certificate_expiry,
            egress_blocked,
            egress_blocked_by_reason,
            admin_requests,
            upstream,
        })
    }

    /// Counts one finished proxy request.
    pub fn delivery(&self, outcome: Outcome) {
        self.deliveries[outcome as usize].inc();
    }

    /// Counts one destination refused by the egress guard.
    pub fn egress_refused(&self, reason: DenyReason) {
        self.egress_blocked_by_reason[reason as usize].inc();
    }

    /// Records the upstream's time to response headers, or to the failure that came first, under
    /// how the delivery ended (`success` only for a 2xx whose body arrived whole).
    pub fn upstream_duration(&self, outcome: Outcome, seconds: f64) {
        if let Some(histogram) = &self.upstream_duration[outcome as usize] {
            histogram.observe(seconds);
        }
    }

    /// Counts a delivery refused by `limit` (also counted as `upstream_saturated`).
    pub fn bulkhead_refused(&self, limit: Bulkhead) {
        self.bulkhead_refusals[limit as usize].inc();
    }

    /// Counts an origin's circuit breaker entering `state`.
    pub fn circuit_transition(&self, state: CircuitState) {
        self.circuit_transitions[state as usize].inc();
    }

    /// Marks a proxy request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records a store load: its result and, when applied, the endpoint count.
    pub fn store_reload(&self, outcome: ReloadOutcome, endpoints: Option<usize>) {
        self.reload.record(outcome);
        if let Some(count) = endpoints {
            self.store_endpoints
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Whether the last store load was rejected (`hooksign_store_last_reload_success 0`).
    pub fn last_reload_failed(&self) -> bool {
        self.reload.last_failed()
    }

    /// Counts one admin request. `route` is a matched route template (or
    /// [`crate::admin::UNMATCHED_ROUTE`]), never a raw path.
    pub fn admin_request(&self, route: &str, status: http::StatusCode) {
        self.admin_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|err| prometheus::Error::Msg(err.to_string()))
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter() {
        let metrics = Metrics::new().unwrap();
        metrics.delivery(Outcome::Success);
        metrics.delivery(Outcome::UpstreamTimeout);
        metrics.delivery(Outcome::UpstreamTimeout);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("hooksign_deliveries_total{outcome=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hooksign_deliveries_total{outcome=\"upstream_timeout\"} 2"),
            "{text}"
        );
        assert!(text.contains("hooksign_build_info{version="), "{text}");
    }

    #[test]
    fn every_egress_reason_has_its_own_counter() {
        let metrics = Metrics::new().unwrap();
        metrics.egress_refused(DenyReason::LinkLocal);
        metrics.egress_refused(DenyReason::Port);
        metrics.egress_refused(DenyReason::Port);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("hooksign_egress_blocked_total{reason=\"link_local\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("hooksign_egress_blocked_total{reason=\"port\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("hooksign_egress_blocked_total{reason=\"loopback\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let metrics = Metrics::new().unwrap();
        {
            let _a = metrics.in_flight();
            let _b = metrics.in_flight();
            assert!(metrics
                .render()
                .unwrap()
                .contains("hooksign_proxy_requests_in_flight 2"));
        }
        assert!(metrics
            .render()
            .unwrap()
            .contains("hooksign_proxy_requests_in_flight 0"));
    }
}
