//! The accept loop both ports share: at most `max_connections` open at once (accepting pauses
//! at the cap, so a flood waits in the kernel's backlog instead of taking descriptors), a short
//! back-off when `accept` fails (out of file descriptors and the like), every connection in a
//! task of its own, and the drain: on `shutdown` the listener closes, connections finish their
//! requests within the grace (idle keep-alive ones close at once), and whatever is still open
//! after it is cut and counted in a warning.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::listen::{Listener, Stream};

/// How one port accepts and drains.
#[derive(Clone, Copy, Debug)]
pub struct Accepting {
    /// The port's name in log lines (`proxy`, `admin`).
    pub port: &'static str,
    pub max_connections: usize,
    /// How long open connections may take to finish once accepting stopped.
    pub grace: Duration,
}

/// Accepts on `listener` until `shutdown`, serving each stream with the connection `serve`
/// makes of it, then drains (see the module docs).
pub async fn serve<C>(
    listener: Listener,
    accepting: Accepting,
    shutdown: CancellationToken,
    mut serve: impl FnMut(Stream) -> C,
) -> io::Result<()>
where
    C: GracefulConnection + Send + 'static,
    C::Error: fmt::Display,
{
    let Accepting {
        port,
        max_connections,
        grace,
    } = accepting;
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    // Every connection's task, aborted (its connection dropped) when the grace is over. A set
    // rather than a cancellation token each task would poll: nothing extra runs per request.
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("the connection semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, port, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = graceful.watch(serve(stream));
        tasks.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, port, "connection ended with an error");
            }
            drop(permit);
        });
        // Forget the tasks that have ended (no waiting).
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);

    let open = max_connections - connections.available_permits();
    tracing::info!(open, grace = ?grace, "{port} stopped accepting; draining");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("{port} drained"),
        () = tokio::time::sleep(grace) => {
            let cut = max_connections - connections.available_permits();
            tasks.abort_all();
            tracing::warn!(cut, grace = ?grace, "shutdown grace elapsed; cut {cut} {port} connection(s) still open");
        }
    }
    Ok(())
}
