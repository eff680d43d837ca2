//! The upstream side: the pooled rustls client that carries deliveries to customers. It sits
//! below the proxy (which decides what to send) and the shared state (which holds the pool), and
//! knows nothing of either.
//!
//! - [`pool`]: the per-origin connection pool ([`Upstream`]) and the response body that returns
//!   a connection to it.
//! - [`breaker`]: the per-origin circuit breaker.
//! - [`client`]: building the pool on rustls and the egress guard's connector.
//! - [`body`]: [`ChunkBody`], the request body sent upstream as it was received.

pub mod body;
pub mod breaker;
pub mod client;
pub mod pool;

pub use body::ChunkBody;
pub use pool::{Upstream, UpstreamBody};
