//! Accepting client connections: HTTP/1.1, no Nagle delay, a deadline for each request's
//! headers, and a graceful drain on shutdown.
//!
//! Written over hyper instead of `axum::serve` because that sets no timer on hyper's connection
//! builder, so a client could hold a connection (and its file descriptor) forever by sending
//! nothing, by sending headers a byte at a time, or by never sending the next request on a
//! keep-alive connection. HTTP/1.1 only: `axum::serve` also took cleartext HTTP/2 (h2c), whose
//! version sniffing waits for the first bytes with no deadline and whose idle connections hyper
//! never closes; LiteLLM's server (uvicorn) speaks HTTP/1.1 only too.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serve `app` on `listener` until `shutdown` completes, then stop accepting, let open
/// connections finish their requests (idle ones close at once), and return when all are closed.
///
/// `header_timeout` bounds how long a connection may take to deliver a request's headers,
/// counted from when the server starts waiting for them: an idle keep-alive connection is
/// closed after it too (hyper's `header_read_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    // hyper's own header limits answer with an empty body; they sit above ours
    // (`body::MAX_HEADERS`, `MAX_HEADER_BYTES`), which answer in the OpenAI shape.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_headers(crate::body::MAX_HEADERS * 4)
        .max_buf_size(crate::body::MAX_HEADER_BYTES * 16);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Stream chunks must leave as soon as they are written.
        let _ = tcp.set_nodelay(true);
        let tcp = crate::canned::ShapeCanned::new(tcp);
        let connection =
            builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A failed accept: a connection reset before it was taken is nothing; anything else (out of
/// file descriptors, above all) is logged and accepting pauses for a second instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
