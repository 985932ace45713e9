//! The HTTP server of a Riffle process (actix-web): `GET /metrics` in Prometheus's text
//! format, and a JSON REST API over the jobs the process runs (see [`crate::registry`]):
//!
//! | route | what |
//! |---|---|
//! | `GET /jobs` | every job: id, name, state, start |
//! | `GET /jobs/{id}` | its plan (chains: name, parallelism, inputs) and each subtask's node and state |
//! | `GET /jobs/{id}/checkpoints` | its completed checkpoints |
//! | `POST /jobs/{id}/savepoints` | takes a savepoint; answers its id |
//! | `POST /jobs/{id}/rescale` | `{"operator": .., "parallelism": ..}`: rescales in place |
//! | `POST /jobs/{id}/stop` | `{"savepoint": true}` stops at a savepoint; without, cancels |
//!
//! Errors are JSON (`{"error": ".."}`) with 400 for a bad request, 404 for an unknown job or
//! operator, 409 for an action the job's state does not allow.
//!
//! Off by default for library use: [`serve`] starts it on an address of the caller's
//! choice, in a thread of its own, and installs the Prometheus recorder (see
//! [`crate::telemetry`]). Dropping the [`HttpServer`] stops it.

use crate::error::JobError;
use crate::registry::{self, RegisteredJob};
use actix_web::{web, App, HttpResponse};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
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
                    App::new()
                        .app_data(web::JsonConfig::default().error_handler(|e, _| {
                            let body = json!({"error": format!("bad request body: {e}")});
                            actix_web::error::InternalError::from_response(
                                e,
                                HttpResponse::BadRequest().json(body),
                            )
                            .into()
                        }))
                        .route("/metrics", web::get().to(metrics))
                        .route("/jobs", web::get().to(list_jobs))
                        .route("/jobs/{id}", web::get().to(show_job))
                        .route("/jobs/{id}/checkpoints", web::get().to(checkpoints))
                        .route("/jobs/{id}/savepoints", web::post().to(savepoint))
                        .route("/jobs/{id}/rescale", web::post().to(rescale))
                        .route("/jobs/{id}/stop", web::post().to(stop))
                        .default_service(web::to(|| async {
                            error(actix_web::http::StatusCode::NOT_FOUND, "no such route")
                        }))
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

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

fn unknown_job(id: &str) -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        &format!("no job with id {id}"),
    )
}

/// The status a job's refusal gets.
fn refused(e: &JobError) -> HttpResponse {
    use actix_web::http::StatusCode;
    let status = match e {
        JobError::Graph(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    error(status, &e.to_string())
}

fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn summary(j: &RegisteredJob) -> serde_json::Value {
    json!({
        "id": j.id,
        "name": j.name,
        "state": j.state(),
        "started_ms": millis(j.started),
    })
}

async fn list_jobs() -> HttpResponse {
    let jobs: Vec<_> = registry::jobs().iter().map(|j| summary(j)).collect();
    HttpResponse::Ok().json(jobs)
}

fn with_job(id: &str, f: impl FnOnce(Arc<RegisteredJob>) -> HttpResponse) -> HttpResponse {
    match registry::job(id) {
        Some(j) => f(j),
        None => unknown_job(id),
    }
}

async fn show_job(id: web::Path<String>) -> HttpResponse {
    with_job(&id, |j| {
        let plan = j.control.plan();
        let progress = j.control.progress();
        let node = crate::telemetry::node_name();
        let chains: Vec<_> = (0..plan.chain_count())
            .map(|c| {
                let mut inputs: Vec<&str> = plan
                    .in_channels(riffle_framework::TaskId {
                        chain: c,
                        subtask: 0,
                    })
                    .iter()
                    .map(|(t, _)| plan.chain_name(t.chain))
                    .collect();
                inputs.dedup();
                json!({
                    "name": plan.chain_name(c),
                    "parallelism": plan.parallelism(c),
                    "inputs": inputs,
                    "source": plan.is_source(c),
                    "sink": plan.is_sink(c),
                })
            })
            .collect();
        let subtasks: Vec<_> = plan
            .tasks()
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let state = match (progress.ended, progress.active(i)) {
                    (true, _) => "ended",
                    (false, true) => "running",
                    (false, false) => "finishing",
                };
                json!({
                    "chain": plan.chain_name(t.chain),
                    "subtask": t.subtask,
                    "node": node,
                    "state": state,
                })
            })
            .collect();
        let mut body = summary(&j);
        body["failure"] = json!(progress.failure);
        body["epoch"] = json!(progress.epoch);
        body["checkpoints"] = json!(progress.checkpoints);
        body["chains"] = json!(chains);
        body["subtasks"] = json!(subtasks);
        HttpResponse::Ok().json(body)
    })
}

async fn checkpoints(id: web::Path<String>) -> HttpResponse {
    with_job(&id, |j| {
        let list: Vec<_> = j
            .control
            .checkpoints()
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "duration_ms": c.duration.as_secs_f64() * 1e3,
                    "bytes": c.bytes,
                    "savepoint": c.savepoint,
                })
            })
            .collect();
        HttpResponse::Ok().json(list)
    })
}

async fn savepoint(id: web::Path<String>) -> HttpResponse {
    let Some(j) = registry::job(&id) else {
        return unknown_job(&id);
    };
    match j.control.savepoint(false).await {
        Ok(sp) => HttpResponse::Created().json(json!({ "savepoint": sp })),
        Err(e) => refused(&e),
    }
}

/// The body of `POST /jobs/{id}/rescale`.
#[derive(serde::Deserialize)]
struct RescaleBody {
    operator: String,
    parallelism: usize,
}

async fn rescale(id: web::Path<String>, body: web::Json<RescaleBody>) -> HttpResponse {
    use actix_web::http::StatusCode;
    let Some(j) = registry::job(&id) else {
        return unknown_job(&id);
    };
    if j.control.plan().chain_of(&body.operator).is_none() {
        let msg = format!("job {id} has no operator named `{}`", body.operator);
        return error(StatusCode::NOT_FOUND, &msg);
    }
    if body.parallelism == 0 {
        return error(StatusCode::BAD_REQUEST, "parallelism must be at least 1");
    }
    match j.control.rescale(&body.operator, body.parallelism).await {
        Ok(r) => HttpResponse::Ok().json(json!({
            "operator": body.operator,
            "parallelism": body.parallelism,
            "checkpoint": r.checkpoint,
            "keys_moved": r.keys_moved,
            "keys": r.keys,
            "pause_ms": r.pause.as_secs_f64() * 1e3,
        })),
        Err(e @ JobError::Graph(_)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => refused(&e),
    }
}

/// The body of `POST /jobs/{id}/stop` (optional).
#[derive(serde::Deserialize, Default)]
struct StopBody {
    #[serde(default)]
    savepoint: bool,
}

async fn stop(id: web::Path<String>, body: Option<web::Json<StopBody>>) -> HttpResponse {
    let Some(j) = registry::job(&id) else {
        return unknown_job(&id);
    };
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    if body.savepoint {
        return match j.control.savepoint(true).await {
            Ok(sp) => HttpResponse::Ok().json(json!({ "stopped": true, "savepoint": sp })),
            Err(e) => refused(&e),
        };
    }
    match j.control.cancel("the REST API") {
        Ok(()) => HttpResponse::Ok().json(json!({ "stopped": true, "savepoint": null })),
        Err(e) => refused(&e),
    }
}
