//! Serving the router over TCP with the two limits `axum::serve` has no setting for: a cap on
//! open connections and a deadline for a request's headers. Without them a client that opens
//! connections and sends nothing (or a byte at a time) holds a file descriptor each until the
//! process runs out and `/healthz` stops answering. Connections past the cap wait in the
//! kernel's accept queue, where they cost this process nothing, until one ends.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What one server accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (live pages hold one each while open).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, also while a kept-alive
    /// connection waits for its next request.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    /// Half the common 1024 open-file limit for connections, leaving the rest to PostgreSQL,
    /// checkpoints and uploads; ten seconds is ample for headers from any real client.
    fn default() -> Self {
        Limits {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their current request (live event streams end on the state's `closing` signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        // No upgrades: nothing here speaks WebSocket, and live pages use plain event streams.
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended with an error: {e}");
            }
            drop(permit);
        });
    }
    graceful.shutdown().await;
}
