//! The HTTP server of a Riffle process (actix-web): `GET /metrics` in Prometheus's text
//! format, and (growing) the REST API of the jobs the process runs.
//!
//! Off by default for library use: [`serve`] starts it on an address of the caller's
//! choice, in a thread of its own, and installs the Prometheus recorder (see
//! [`crate::telemetry`]). Dropping the [`HttpServer`] stops it.

use actix_web::{web, App, HttpResponse};
use std::net::SocketAddr;
use std::thread::JoinHandle;

/// A running HTTP server; stopped when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<JoinHandle<()>>,
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed (another one was first).
    #[error("{0}")]
    Metrics(String),
    /// The server's thread ended before it listened.
    #[error("the HTTP server's thread ended before it listened")]
    Died,
}

impl HttpServer {
    /// The address it listens on (with the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // `stop` returns a future; the server's own system runs it.
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn metrics() -> HttpResponse {
    match crate::telemetry::prometheus() {
        Some(h) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(h.render()),
        None => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "no metrics recorder is installed"})),
    }
}

/// Starts the HTTP server on `addr` (port 0: any free port) and installs the Prometheus
/// recorder.
///
/// # Errors
/// The address cannot be bound, or another metrics recorder was installed first.
pub fn serve(addr: SocketAddr) -> Result<HttpServer, HttpError> {
    crate::telemetry::install_prometheus().map_err(HttpError::Metrics)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("riffle-http".to_string())
        .spawn(move || {
            let system = actix_rt::System::new();
            let started = system.block_on(async move {
                let server = actix_web::HttpServer::new(|| {
                    App::new().route("/metrics", web::get().to(metrics))
                })
                .workers(1)
                .disable_signals()
                .bind(addr)
                .map_err(|source| HttpError::Bind { addr, source })?;
                let bound = server.addrs().first().copied().unwrap_or(addr);
                let server = server.run();
                Ok::<_, HttpError>((bound, server))
            });
            match started {
                Ok((bound, server)) => {
                    let _ = tx.send(Ok((bound, server.handle())));
                    let _ = system.block_on(server);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|_| HttpError::Died)?;
    let (addr, handle) = rx.recv().map_err(|_| HttpError::Died)??;
    tracing::info!(%addr, "HTTP server listening (GET /metrics)");
    Ok(HttpServer {
        addr,
        handle,
        thread: Some(thread),
    })
}
