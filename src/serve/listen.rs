//! The accept loop under the routes (in place of `axum::serve`, which exposes neither): HTTP/1.1
//! connections served by hyper with a deadline for each request's headers and a cap on open
//! connections.
//!
//! - `--header-timeout-s`: a request's headers must have arrived that long after the connection
//!   began waiting for them (a trickle does not extend it), else the connection is closed; a
//!   kept-alive connection waiting for its next request is on the same clock, so it is also the
//!   longest a connection idles.
//! - `--max-connections N`: the first N open connections get every route. The next [`RESERVE`]
//!   get the `limited` router (health and metrics answer as usual, every other route 503 with
//!   `Retry-After`) and are closed after one response; past those a connection is closed at once.
//!   So a Kubernetes probe, which opens a connection per probe, still reads `/v2/health/live`
//!   while N clients hold the server.
//!
//! On `shutdown`, accepting stops, each connection finishes the request in flight (idle ones
//! close), and [`serve`] returns once every connection has closed.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::config::Limits;
use super::metrics::Connections;

/// Connections past `--max-connections` still served the health and metrics routes.
pub const RESERVE: usize = 16;

/// Holds one of the open-connection counts; gives it back when dropped.
struct Slot(Arc<Connections>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `listener` until `shutdown` completes and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    full: Router,
    limited: Router,
    limits: &Limits,
    conns: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let before = conns.open.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(conns.clone());
        let (router, keep_alive) = if before < limits.max_connections {
            (full.clone(), true)
        } else {
            conns.over_limit.fetch_add(1, Ordering::SeqCst);
            if before >= limits.max_connections + RESERVE {
                continue;
            }
            (limited.clone(), false)
        };
        let _ = stream.set_nodelay(true);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(keep_alive)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Per-connection failures are the client's; running out of descriptors waits a moment, as
/// `axum::serve` does.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    eprintln!("warning: accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
