//! The HTTP server of a Riffle process (actix-web): `GET /metrics` in Prometheus's text
//! format, and a JSON REST API over the jobs the process runs (see [`crate::registry`]):
//!
//! | route | what |
//! |---|---|
//! | `GET /jobs` | every job: id, name, state, start, coordinator; on a cluster node also the jobs it runs in part for a coordinator elsewhere (`"part": true`) |
//! | `GET /jobs/{id}` | its plan (chains: name, parallelism, inputs) and each subtask's node and state |
//! | `GET /jobs/{id}/checkpoints` | its completed checkpoints |
//! | `POST /jobs/{id}/savepoints` | takes a savepoint; answers its id |
//! | `POST /jobs/{id}/rescale` | `{"operator": .., "parallelism": ..}`: rescales in place |
//! | `POST /jobs/{id}/stop` | `{"savepoint": true}` stops at a savepoint; without, cancels |
//! | `GET /cluster/nodes` | the cluster's nodes as this one sees them (a local process: itself) |
//! | `GET /openapi.json` | the OpenAPI 3 description of these routes ([`OPENAPI`]) |
//! | `GET /console/` | the web console (`/` redirects there): static files built in |
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
                        .route("/", web::get().to(console_redirect))
                        .route("/console", web::get().to(console_redirect))
                        .route("/console/", web::get().to(console_index))
                        .route("/console/{file}", web::get().to(console_file))
                        .route("/openapi.json", web::get().to(openapi))
                        .route("/cluster/nodes", web::get().to(cluster_nodes))
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

/// The console's files, built into the binary.
const CONSOLE: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("console/console.css"),
    ),
];

/// The OpenAPI description of this server's routes.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn console_redirect() -> HttpResponse {
    HttpResponse::Found()
        .insert_header(("Location", "/console/"))
        .finish()
}

async fn console_index() -> HttpResponse {
    console_serve("index.html")
}

async fn console_file(file: web::Path<String>) -> HttpResponse {
    console_serve(&file)
}

fn console_serve(file: &str) -> HttpResponse {
    match CONSOLE.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => HttpResponse::Ok().content_type(*kind).body(*body),
        None => error(actix_web::http::StatusCode::NOT_FOUND, "no such file"),
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// One node of the cluster, as `GET /cluster/nodes` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeInfo {
    /// Its id.
    pub name: String,
    /// The address it listens on for its peers (empty for a process without a cluster).
    pub address: String,
    /// `up`, `suspect` or `down`, as this node sees it.
    pub state: String,
    /// Whether it is the node that answers.
    pub this: bool,
    /// Whether it coordinates the cluster's jobs (as this node sees it).
    pub coordinator: bool,
    /// The last heartbeat round trip to it, in milliseconds (`None` for this node, or
    /// before the first answer).
    pub rtt_ms: Option<f64>,
    /// Links made to it again after the first.
    pub reconnects: u64,
}

type ClusterView = Arc<dyn Fn() -> Option<Vec<NodeInfo>> + Send + Sync>;

fn cluster_view() -> &'static std::sync::RwLock<Option<ClusterView>> {
    static VIEW: std::sync::OnceLock<std::sync::RwLock<Option<ClusterView>>> =
        std::sync::OnceLock::new();
    VIEW.get_or_init(|| std::sync::RwLock::new(None))
}

/// Sets what `GET /cluster/nodes` answers (the cluster layer calls it when a node starts;
/// the last call in a process wins). Without it, or while it answers `None` (its node
/// stopped), the answer is this process alone.
pub fn set_cluster_view(view: impl Fn() -> Option<Vec<NodeInfo>> + Send + Sync + 'static) {
    *cluster_view().write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(view));
}

async fn cluster_nodes() -> HttpResponse {
    let view = cluster_view()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let nodes = match view.and_then(|v| v()) {
        Some(nodes) => nodes,
        None => vec![NodeInfo {
            name: crate::telemetry::node_name(),
            address: String::new(),
            state: "up".to_string(),
            this: true,
            coordinator: true,
            rtt_ms: None,
            reconnects: 0,
        }],
    };
    HttpResponse::Ok().json(nodes)
}

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// A job this process's node runs part of for a coordinator on another node, as `GET /jobs`
/// lists it (the coordinator serves the job itself).
#[derive(Clone, Debug)]
pub struct PartInfo {
    /// The job's id (the same on every node).
    pub id: String,
    /// The job's name.
    pub name: String,
    /// The node that coordinates it.
    pub coordinator: String,
    /// `running`, `finished` or `failed` (as far as this node's part goes).
    pub state: &'static str,
    /// When this node started its part.
    pub started: std::time::SystemTime,
}

type PartsView = Arc<dyn Fn() -> Vec<PartInfo> + Send + Sync>;

fn parts_view() -> &'static std::sync::RwLock<Option<PartsView>> {
    static VIEW: std::sync::OnceLock<std::sync::RwLock<Option<PartsView>>> =
        std::sync::OnceLock::new();
    VIEW.get_or_init(|| std::sync::RwLock::new(None))
}

/// Sets which jobs `GET /jobs` lists as run here in part for a coordinator elsewhere (the
/// cluster layer calls it when a node starts; the last call in a process wins). A job the
/// process coordinates itself is listed once, as its own.
pub fn set_parts_view(view: impl Fn() -> Vec<PartInfo> + Send + Sync + 'static) {
    *parts_view().write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(view));
}

/// The jobs run here in part and coordinated elsewhere (none outside a cluster).
fn parts() -> Vec<PartInfo> {
    let view = parts_view()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let own = registry::jobs();
    view.map(|v| v())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !own.iter().any(|j| j.id == p.id))
        .collect()
}

/// 404 for a job id this process does not serve; for a job it runs in part, the answer names
/// the coordinator that does.
fn unknown_job(id: &str) -> HttpResponse {
    let message = match parts().into_iter().find(|p| p.id == id) {
        Some(p) => format!(
            "job {id} ({}) runs here in part; its coordinator `{}` serves it",
            p.name, p.coordinator
        ),
        None => format!("no job with id {id}"),
    };
    error(actix_web::http::StatusCode::NOT_FOUND, &message)
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
        "coordinator": crate::telemetry::node_name(),
        "part": false,
    })
}

async fn list_jobs() -> HttpResponse {
    let mut jobs: Vec<_> = registry::jobs().iter().map(|j| summary(j)).collect();
    jobs.extend(parts().into_iter().map(|p| {
        json!({
            "id": p.id,
            "name": p.name,
            "state": p.state,
            "started_ms": millis(p.started),
            "coordinator": p.coordinator,
            "part": true,
        })
    }));
    HttpResponse::Ok().json(jobs)
}

fn with_job(id: &str, f: impl FnOnce(Arc<RegisteredJob>) -> HttpResponse) -> HttpResponse {
    match registry::job(id) {
        Some(j) => f(j),
        None => unknown_job(id),
    }
}

/// A chain of `plan`: name, parallelism, inputs, and the live figures summed (rates) or
/// at their worst (busy, backpressured) over its subtasks in this process.
fn chain_view(plan: &riffle_framework::ExecutionPlan, job: &str, c: usize) -> serde_json::Value {
    let task = |subtask| riffle_framework::TaskId { chain: c, subtask };
    let mut inputs: Vec<&str> = plan
        .in_channels(task(0))
        .iter()
        .map(|(t, _)| plan.chain_name(t.chain))
        .collect();
    inputs.dedup();
    let name = plan.chain_name(c);
    let live: Vec<_> = (0..plan.parallelism(c))
        .filter_map(|s| crate::telemetry::live(job, name, s))
        .collect();
    let sum = |f: fn(&crate::telemetry::LiveFigures) -> f64| live.iter().map(f).sum::<f64>();
    let max = |f: fn(&crate::telemetry::LiveFigures) -> f64| live.iter().map(f).fold(0.0, f64::max);
    json!({
        "name": name,
        "operator": plan.head_name(c),
        "parallelism": plan.parallelism(c),
        "inputs": inputs,
        "source": plan.is_source(c),
        "sink": plan.is_sink(c),
        "records_in": live.iter().map(|l| l.records_in).sum::<u64>(),
        "records_out": live.iter().map(|l| l.records_out).sum::<u64>(),
        "rate_in": sum(|l| l.rate_in),
        "rate_out": sum(|l| l.rate_out),
        "busy": max(|l| l.busy),
        "backpressured": max(|l| l.backpressured),
        "reporting": live.len(),
    })
}

/// Every subtask of the job: its chain, index, node, state and live figures (`null` when
/// it runs on another node).
fn subtask_views(
    j: &RegisteredJob,
    plan: &riffle_framework::ExecutionPlan,
) -> Vec<serde_json::Value> {
    let progress = j.control.progress();
    plan.tasks()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let state = match (progress.ended, progress.active(i)) {
                (true, _) => "ended",
                (false, true) => "running",
                (false, false) => "finishing",
            };
            let name = plan.chain_name(t.chain);
            json!({
                "chain": name,
                "subtask": t.subtask,
                "node": j.control.node_of(t),
                "state": state,
                "figures": crate::telemetry::live(&j.id, name, t.subtask),
            })
        })
        .collect()
}

async fn show_job(id: web::Path<String>) -> HttpResponse {
    with_job(&id, |j| {
        let plan = j.control.plan();
        let progress = j.control.progress();
        let chains: Vec<_> = (0..plan.chain_count())
            .map(|c| chain_view(&plan, &j.id, c))
            .collect();
        let mut body = summary(&j);
        body["failure"] = json!(progress.failure);
        body["epoch"] = json!(progress.epoch);
        body["checkpoints"] = json!(progress.checkpoints);
        body["checkpointing"] = json!(plan.config().checkpoint.is_some());
        body["chains"] = json!(chains);
        body["subtasks"] = json!(subtask_views(&j, &plan));
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
