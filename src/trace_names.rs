//! The `tracing` targets of hooksign's trace spans and events: one home, below every module
//! that emits them (the egress guard, the pool, the telemetry pipeline, the log output).

/// The `tracing` target of every exported span and span event.
pub const TARGET: &str = "hooksign::otel";

/// The `tracing` target of the span that gives a delivery's log lines its `trace_id`.
pub const LOG_TARGET: &str = "hooksign::trace_id";
