//! A cluster node: a TCP listener, one authenticated link per peer, heartbeats and a
//! timeout failure detector.
//!
//! A node dials its seeds, learns the other members from the member lists that every
//! heartbeat carries, and dials them too, so the cluster becomes a full mesh. A peer from
//! which no frame arrived for `failure_timeout` is declared down; a node that comes back
//! (a new handshake) rejoins as a fresh member. The node runs on its own thread with a tokio
//! runtime; its API is blocking and waits on signals ([`Node::wait_members`]).
//!
//! Jobs registered on the builder run across the nodes (see [`crate::job`]).

use crate::authority::Failover;
pub use crate::config::DialVia;
use crate::config::NodeConfig;
use crate::guard::{Admission, Limits};
use crate::hosting::HostedEnd;
use crate::job::{ClusterJob, JobOptions};
use crate::jobs::Jobs;
use crate::leader::{LeaderView, Leadership};
use crate::members::members_of;
pub use crate::members::{Member, Status};
use crate::mesh::{handshake_config, run};
use crate::remote::{Inbox, RemoteMailbox};
use crate::secret::Secret;
use crate::session::{LinkSender, Outgoing, SessionStats};
use crate::shared::Shared;
use crate::wire::{channel_key, EdgeAddress, Message, DEFAULT_MAX_FRAME};
use actix::prelude::{Actor, Addr};
use riffle_actors::JobError;
use riffle_framework::BatchCodec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Without etcd, a node that lost a job's coordinator waits this many failure timeouts for
/// it to come back and tell the job's outcome before it reports the job failed.
const ORPHAN_GRACE_TIMEOUTS: u32 = 10;

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
/// Default failure timeout: a peer silent this long is down.
pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time after which a member that stays down is forgotten.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(60);
/// Default memory a peer's delivered, unhandled batches may hold on a node (256 MiB).
pub const DEFAULT_LINK_BUDGET: usize = 256 << 20;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A required setting is missing.
    #[error("node configuration: {0}")]
    Config(&'static str),
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The node's thread or runtime could not start.
    #[error("cannot start the node runtime: {0}")]
    Runtime(std::io::Error),
    /// No link to that peer is up.
    #[error("no link to node `{0}`")]
    NoLink(String),
}

/// What a node refused since it started ([`Node::refusals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Connections turned away before their handshake (pending and connection limits, open
    /// files).
    pub connections: u64,
    /// Handshakes that failed: wrong secret, cluster or version, own id, malformed, late.
    pub handshakes: u64,
    /// Authenticated links refused: the id is linked already, or claimed from another address
    /// while its member is up.
    pub links: u64,
    /// Job frames from a node without authority over the job (not its coordinator, or not
    /// one of its nodes).
    pub frames: u64,
    /// Links closed because the peer's unhandled batches exceeded the link budget.
    pub over_budget: u64,
    /// Links closed because an authenticated peer sent a frame naming a job, subtask or
    /// channel that does not exist ([`crate::FrameError`]).
    pub bad_frames: u64,
    /// Job frames refused because a newer leader superseded the one that started the job
    /// (with etcd; see [`crate::leader`]).
    pub fenced: u64,
}

/// The writes a node made on its connections to one peer ([`Node::link_writes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkWrites {
    /// The peer's node id.
    pub peer: String,
    /// Writes: a gathered buffer written by the session's writer task (one `write_all`), or
    /// a frame written by the thread that sent it.
    pub writes: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of the writes, those made by the sending thread itself (the writer task was idle).
    pub direct: u64,
}

/// Builds a [`Node`]:
/// `Node::builder().name("n1").listen("127.0.0.1:0").secret(Secret::from_file(path)?).start()`.
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    cfg: NodeConfig,
}

impl NodeBuilder {
    /// The node's id (required; unique in the cluster).
    pub fn name(mut self, name: &str) -> Self {
        self.cfg.name = name.to_string();
        self
    }
    /// The cluster's name (default `riffle`).
    pub fn cluster(mut self, cluster: &str) -> Self {
        self.cfg.cluster = cluster.to_string();
        self
    }
    /// Where to listen (default `127.0.0.1:0`, any free port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.cfg.listen = addr.to_string();
        self
    }
    /// Addresses of nodes to join through.
    pub fn seeds<I: IntoIterator<Item = S>, S: Into<String>>(mut self, seeds: I) -> Self {
        self.cfg.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }
    /// The shared secret every member must hold (required; there is no default). Read it
    /// with [`Secret::from_file`] or [`Secret::from_env`].
    pub fn secret(mut self, secret: Secret) -> Self {
        self.cfg.secret = Some(secret);
        self
    }
    /// Encrypts every link after the handshake (default off). Every member of a cluster must
    /// choose the same; a node refuses a peer that chose otherwise. Turn it on where links
    /// cross a network you do not control: without it, a node without the secret still cannot
    /// join or speak on a link, but someone on the path can read and alter the traffic.
    pub fn encrypt(mut self, on: bool) -> Self {
        self.cfg.encrypt = on;
        self
    }
    /// Limits on incoming connections before they authenticate (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = Some(limits);
        self
    }
    /// How long a member may stay down before it is forgotten (default
    /// [`DEFAULT_FORGET_AFTER`]); a forgotten node can rejoin through its seeds.
    pub fn forget_after(mut self, after: Duration) -> Self {
        self.cfg.forget_after = after;
        self
    }
    /// The memory one peer's delivered batches may hold on this node before the subtasks
    /// handle them (default [`DEFAULT_LINK_BUDGET`]); a peer past it ignores the credit
    /// protocol and its link closes.
    pub fn link_budget(mut self, bytes: usize) -> Self {
        self.cfg.link_budget = bytes;
        self
    }
    /// Deadline of a link's handshake (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.handshake_timeout = timeout;
        self
    }
    /// Heartbeat interval (default [`DEFAULT_HEARTBEAT`]).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.cfg.heartbeat = every;
        self
    }
    /// Silence after which a peer is down (default [`DEFAULT_FAILURE_TIMEOUT`]).
    pub fn failure_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.failure_timeout = timeout;
        self
    }
    /// The address announced to peers (default: the bound address) — e.g. a NAT's or a
    /// proxy's address in front of this node.
    pub fn advertise(mut self, addr: &str) -> Self {
        self.cfg.advertise = Some(addr.to_string());
        self
    }
    /// Connects to peers through `via(advertised address)` instead of the address itself
    /// (a proxy or tunnel in between).
    pub fn dial_via(mut self, via: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.cfg.dial_via = Some(Arc::new(via));
        self
    }
    /// Where the jobs this node coordinates keep their checkpoints (overrides the job's own
    /// setting; a job without checkpointing gets none). Give every node the same directory
    /// on storage they share, so that any of them can restore the job.
    pub fn checkpoint_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.cfg.checkpoint_dir = Some(dir.into());
        self
    }
    /// Elects the cluster's leader on etcd at `endpoints` (`http://HOST:PORT`), so that the
    /// cluster survives the loss of the node that coordinates its jobs (see
    /// [`crate::leader`] and [`crate::failover`]). Every node of a cluster must use the same
    /// etcd. Without it (the default) the lowest live node id coordinates and its loss ends
    /// the jobs.
    pub fn etcd<I: IntoIterator<Item = S>, S: Into<String>>(mut self, endpoints: I) -> Self {
        let lease_ttl = self
            .cfg
            .etcd
            .as_ref()
            .map_or(crate::leader::DEFAULT_LEASE_TTL, |e| e.lease_ttl);
        let (auth, tls) = self
            .cfg
            .etcd
            .take()
            .map_or((None, None), |e| (e.auth, e.tls));
        self.cfg.etcd = Some(crate::leader::EtcdSettings {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            lease_ttl,
            auth,
            tls,
        });
        self
    }

    /// Authenticates to etcd as `user` with `password` (for an etcd with auth enabled, so
    /// that only the cluster's nodes can write its election and job records). Before or
    /// after [`Self::etcd`]; without it, [`Self::start`] refuses.
    pub fn etcd_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.etcd_settings().auth = Some(crate::leader::EtcdAuth {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Talks to etcd over TLS (`https://` endpoints), trusting `tls.ca_pem` and, for an
    /// etcd that checks client certificates, presenting `tls.identity`. Before or after
    /// [`Self::etcd`]; without it, [`Self::start`] refuses.
    pub fn etcd_tls(mut self, tls: crate::leader::EtcdTls) -> Self {
        self.etcd_settings().tls = Some(tls);
        self
    }

    /// The etcd settings, made (without endpoints yet) if there are none: credentials given
    /// first are kept for [`Self::etcd`], never dropped.
    fn etcd_settings(&mut self) -> &mut crate::leader::EtcdSettings {
        self.cfg
            .etcd
            .get_or_insert_with(|| crate::leader::EtcdSettings {
                endpoints: Vec::new(),
                lease_ttl: crate::leader::DEFAULT_LEASE_TTL,
                auth: None,
                tls: None,
            })
    }

    /// TTL of the leader's lease on etcd (default [`crate::leader::DEFAULT_LEASE_TTL`];
    /// whole seconds, at least 1): a lost leader is replaced about this long after it died,
    /// and a leader cut off from etcd stops coordinating within it. Before or after
    /// [`Self::etcd`]; without it, [`Self::start`] refuses.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.etcd_settings().lease_ttl = ttl;
        self
    }

    /// Registers a job builder under `name`. Every node of a cluster registers the same
    /// builders (same binary); the coordinator submits a job by name ([`Node::run_job`]).
    pub fn register_job(
        mut self,
        name: &str,
        build: impl Fn() -> riffle_framework::StreamEnv + Send + Sync + 'static,
    ) -> Self {
        self.cfg.jobs.push((name.to_string(), Arc::new(build)));
        self
    }

    /// Binds the listener and starts the node on its own thread.
    ///
    /// # Errors
    /// [`NodeError::Config`] without a name or a secret, or with etcd credentials but no
    /// endpoints; [`NodeError::Bind`] if the address
    /// cannot be bound, [`NodeError::Runtime`] if the thread cannot start.
    pub fn start(self) -> Result<Node, NodeError> {
        let cfg = self.cfg;
        if cfg.name.is_empty() {
            return Err(NodeError::Config("a node needs a name"));
        }
        if !crate::handshake::valid_node_id(&cfg.name) {
            return Err(NodeError::Config(
                "a node name is 1 to 128 printable characters without spaces",
            ));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NodeError::Runtime)?;
        let listener = {
            let _in_runtime = runtime.enter();
            listen(&cfg.listen)?
        };
        let local = listener.local_addr().map_err(NodeError::Runtime)?;
        let hs = handshake_config(&cfg, local, incarnation()).ok_or(NodeError::Config(
            "a node needs the cluster's shared secret (NodeBuilder::secret)",
        ))?;
        if cfg.etcd.as_ref().is_some_and(|e| e.endpoints.is_empty()) {
            return Err(NodeError::Config(
                "etcd settings (credentials, TLS or lease TTL) without etcd endpoints (NodeBuilder::etcd)",
            ));
        }
        let (events, leader_events) = std::sync::mpsc::channel();
        let leadership = match &cfg.etcd {
            Some(etcd) => Some(
                Leadership::start(&cfg.name, &cfg.cluster, etcd, events)
                    .map_err(NodeError::Runtime)?,
            ),
            None => {
                tracing::info!(node = %cfg.name, "no etcd: the lowest live node id coordinates jobs, and its loss ends them");
                None
            }
        };
        let shared = Arc::new(Shared {
            net: Arc::default(),
            jobs: Jobs::new(
                cfg.jobs.iter().cloned().collect(),
                cfg.checkpoint_dir.clone(),
                cfg.failure_timeout * ORPHAN_GRACE_TIMEOUTS,
            ),
            admission: Some(Admission::new(cfg.limits.clone().unwrap_or_default())),
            refused: Default::default(),
            leadership,
            suspicions: std::sync::Mutex::new(crate::suspicions::Suspicions::new(
                cfg.failure_timeout,
            )),
        });
        if shared.leadership.is_some() {
            let (s, me) = (shared.clone(), cfg.name.clone());
            std::thread::Builder::new()
                .name(format!("riffle-leader-{}", cfg.name))
                .spawn(move || {
                    for e in leader_events {
                        crate::failover::on_event(&s, &me, e);
                    }
                })
                .map_err(NodeError::Runtime)?;
        }
        let name = cfg.name.clone();
        // The `node` label of this process's metrics (the first node of a process names it).
        riffle_actors::telemetry::set_node_name(&name);
        riffle_actors::telemetry::forward_live();
        publish_cluster_view(&shared, &name, local);
        publish_parts_view(&shared);
        let (stop_tx, stop_rx) = watch::channel(false);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("riffle-node-{}", cfg.name))
            .spawn(move || runtime.block_on(run(cfg, hs, listener, s, stop_rx)))
            .map_err(NodeError::Runtime)?;
        Ok(Node {
            name,
            local,
            shared,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

/// The coordinator as the node `me` of `shared` sees it (see [`Node::coordinator`]).
fn coordinator_of(shared: &Shared, me: &str) -> String {
    if let Some(l) = &shared.leadership {
        return l.view().leader.unwrap_or_default();
    }
    let mut ids = shared.net.up_peers();
    ids.push(me.to_string());
    ids.into_iter().min().unwrap_or_default()
}

/// Makes this process's `GET /jobs` list the jobs this node runs in part for a coordinator
/// elsewhere (for as long as the node runs; the last node started in a process wins).
fn publish_parts_view(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    riffle_actors::http::set_parts_view(move || {
        weak.upgrade()
            .map_or_else(Vec::new, |shared| shared.jobs.parts())
    });
}

/// Makes this process's `GET /cluster/nodes` answer with the members node `me` sees (for as
/// long as the node runs; the last node started in a process wins).
fn publish_cluster_view(shared: &Arc<Shared>, me: &str, local: SocketAddr) {
    let weak = Arc::downgrade(shared);
    let me = me.to_string();
    riffle_actors::http::set_cluster_view(move || {
        let shared = weak.upgrade()?;
        let coordinator = coordinator_of(&shared, &me);
        let mut nodes = vec![riffle_actors::http::NodeInfo {
            name: me.clone(),
            address: local.to_string(),
            state: "up".to_string(),
            this: true,
            coordinator: coordinator == me,
            rtt_ms: None,
            reconnects: 0,
        }];
        for m in members_of(&shared.net.members.lock()) {
            let link = shared.net.counters.get(&m.node);
            let rtt_ms = link
                .as_ref()
                .and_then(|c| c.rtt())
                .map(|d| d.as_secs_f64() * 1e3);
            let reconnects = link.as_ref().map_or(0, |c| c.reconnects());
            drop(link);
            nodes.push(riffle_actors::http::NodeInfo {
                rtt_ms,
                reconnects,
                coordinator: coordinator == m.node,
                state: match m.status {
                    Status::Up => "up",
                    Status::Down => "down",
                    Status::Left => "left",
                }
                .to_string(),
                name: m.node,
                address: m.listen,
                this: false,
            });
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Some(nodes)
    });
}

/// A fresh incarnation for this process's node: random (the clock if randomness fails), so a
/// node restarted under the same id is told from the process it replaces.
fn incarnation() -> u64 {
    crate::session::random_u64()
}

/// Connections the kernel queues for a node before it accepts them: a burst of connections
/// (peers reconnecting, or a flood that admission control turns away) is not met with
/// dropped SYNs and second-long retries.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds `addr` (in the current runtime) with [`LISTEN_BACKLOG`].
fn listen(addr: &str) -> Result<TcpListener, NodeError> {
    let bind = |source| NodeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let at = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(bind)?
        .next()
        .ok_or_else(|| bind(std::io::ErrorKind::AddrNotAvailable.into()))?;
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(bind)?;
    socket.set_reuseaddr(true).map_err(bind)?;
    socket.bind(at).map_err(bind)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind)
}

/// A running node. Dropping it shuts it down.
pub struct Node {
    name: String,
    local: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// A builder with the documented defaults.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            cfg: NodeConfig {
                name: String::new(),
                cluster: "riffle".to_string(),
                listen: "127.0.0.1:0".to_string(),
                seeds: Vec::new(),
                secret: None,
                encrypt: false,
                limits: None,
                forget_after: DEFAULT_FORGET_AFTER,
                link_budget: DEFAULT_LINK_BUDGET,
                handshake_timeout: Duration::from_secs(5),
                heartbeat: DEFAULT_HEARTBEAT,
                failure_timeout: DEFAULT_FAILURE_TIMEOUT,
                max_frame: DEFAULT_MAX_FRAME,
                jobs: Vec::new(),
                advertise: None,
                dial_via: None,
                checkpoint_dir: None,
                etcd: None,
            },
        }
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The node's id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The coordinator of jobs submitted now: with etcd, the elected leader (empty while
    /// none is known); without, the live node with the lowest id.
    pub fn coordinator(&self) -> String {
        if let Some(l) = &self.shared.leadership {
            return l.view().leader.unwrap_or_default();
        }
        coordinator_of(&self.shared, &self.name)
    }

    /// With etcd: the cluster's leader and its epoch as this node knows them (`None`
    /// without etcd).
    pub fn leader(&self) -> Option<LeaderView> {
        self.shared.leadership.as_ref().map(|l| l.view())
    }

    /// With etcd: why this node cannot connect to etcd, while it cannot — etcd unreachable,
    /// or refusing the node's user and password ([`NodeBuilder::etcd_auth`]) or its TLS
    /// ([`NodeBuilder::etcd_tls`]). The node keeps trying; `None` once connected (and
    /// without etcd).
    pub fn etcd_error(&self) -> Option<String> {
        self.shared.leadership.as_ref()?.connect_error()
    }

    /// With etcd: blocks until a leader is known (or `timeout` passes) and returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Option<String> {
        let l = self.shared.leadership.as_ref()?;
        l.wait_leader(timeout).leader
    }

    /// With etcd: blocks until this node leads (or `timeout` passes); the epoch it leads in.
    pub fn wait_leads(&self, timeout: Duration) -> Option<u64> {
        self.shared.leadership.as_ref()?.wait_holds(timeout)
    }

    /// With etcd: the TTL of this node's lease as etcd granted it (etcd raises a TTL below
    /// its minimum — 1.5 × its election timeout, 2 s with its default settings — so a 1 s
    /// lease asked of a stock etcd is a 2 s one); what was asked until a lease is granted.
    /// A lost leader is replaced about this long after it stopped renewing it.
    pub fn lease_ttl(&self) -> Option<Duration> {
        Some(self.shared.leadership.as_ref()?.lease_ttl())
    }

    /// With etcd: the epoch this node leads in, if it surely leads now.
    pub fn leads(&self) -> Option<u64> {
        self.shared.leadership.as_ref().and_then(|l| l.holds())
    }

    /// With etcd: blocks until job `name` ended (or `timeout` passes) and returns its
    /// outcome as the leader recorded it in etcd — the same on every node, whoever
    /// coordinated it and whatever happened to this node meanwhile: `Ok(Ok(()))` if it
    /// succeeded, `Ok(Err(error))` if it failed. While etcd fails (unreachable, restarting,
    /// paused) it is asked again with backoff until `timeout` passes. (It is the latest end
    /// recorded under that name: ask once the job was submitted.)
    ///
    /// # Errors
    /// [`CoordinationUnavailable`] if etcd kept failing until `timeout`; [`NotEnded`] if the
    /// job had not ended by then; [`NoEtcd`] without etcd.
    ///
    /// [`CoordinationUnavailable`]: riffle_actors::ClusterError::CoordinationUnavailable
    /// [`NotEnded`]: riffle_actors::ClusterError::NotEnded
    /// [`NoEtcd`]: riffle_actors::ClusterError::NoEtcd
    pub fn wait_job_end(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Result<(), String>, riffle_actors::ClusterError> {
        let l = self
            .shared
            .leadership
            .as_ref()
            .ok_or(riffle_actors::ClusterError::NoEtcd)?;
        crate::authority::agreed_end(l, name, timeout)
    }

    /// With etcd: the jobs this node continued after it won the election (once there is at
    /// least one, or `timeout` passed).
    pub fn wait_failovers(&self, timeout: Duration) -> Vec<Failover> {
        self.shared.jobs.wait_failovers(timeout)
    }

    /// With etcd: what this node tried as a leader after it lost the leadership, refused:
    /// jobs it coordinated and had to stop, checkpoint triggers and recoveries its lease no
    /// longer covered, and writes etcd refused (records, checkpoints, ends).
    pub fn refused_as_leader(&self) -> u64 {
        self.shared
            .leadership
            .as_ref()
            .map_or(0, |l| l.refused_as_leader())
    }

    /// Submits the job registered as `name`, spread over every live node. Only the
    /// coordinator ([`Node::coordinator`]) runs jobs; see [`crate::job`].
    ///
    /// # Errors
    /// [`JobError::Cluster`] if this node is not the coordinator, no job is registered under
    /// `name`, or a node cannot be reached; the job's graph and start errors.
    pub fn run_job(&self, name: &str) -> Result<ClusterJob, JobError> {
        self.run_job_with(name, JobOptions::default())
    }

    /// Submits the job registered as `name` with `options` (another parallelism, a savepoint
    /// to continue from), spread over every live node; see [`Node::run_job`].
    ///
    /// # Errors
    /// As [`Node::run_job`], and the errors of loading or fitting the checkpoint to restore.
    pub fn run_job_with(&self, name: &str, options: JobOptions) -> Result<ClusterJob, JobError> {
        crate::job::run_job(
            &self.shared,
            &self.name,
            name,
            self.shared.net.up_peers(),
            options,
        )
    }

    /// Blocks until a job this node hosted (as a non-coordinator) ends, or `timeout` passes.
    /// With etcd, a job this node continued as a new leader reports its end here too, and a
    /// hosted job whose coordinator was lost is not an end (the next leader continues it).
    /// The ends are taken oldest first, whichever job they are of; see
    /// [`Node::wait_hosted_job`] for one job's.
    pub fn wait_hosted(&self, timeout: Duration) -> Option<HostedEnd> {
        self.shared.jobs.wait_hosted(None, timeout)
    }

    /// As [`Node::wait_hosted`], for the job of id `job` only (`ClusterJob::id`; the ends of
    /// other jobs stay for their callers).
    pub fn wait_hosted_job(&self, job: u64, timeout: Duration) -> Option<HostedEnd> {
        self.shared.jobs.wait_hosted(Some(job), timeout)
    }

    /// What this node refused since it started.
    pub fn refusals(&self) -> Refusals {
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.shared.refused;
        Refusals {
            connections: self.shared.admission.as_ref().map_or(0, |a| a.refused()),
            handshakes: r.handshakes.load(Relaxed),
            links: r.links.load(Relaxed),
            frames: r.frames.load(Relaxed),
            over_budget: r.over_budget.load(Relaxed),
            bad_frames: r.bad_frames.load(Relaxed),
            fenced: r.fenced.load(Relaxed),
        }
    }

    /// Node ids this node heard of from members but has not verified (linked with) yet.
    pub fn candidates(&self) -> usize {
        self.shared.net.members.lock().candidates.len()
    }

    /// Per peer, sorted: the writes this node made on its connections to it so far and their
    /// bytes — for measuring the data path.
    pub fn link_writes(&self) -> Vec<LinkWrites> {
        let mut v: Vec<_> = self
            .shared
            .net
            .counters
            .iter()
            .map(|e| {
                let (writes, bytes) = e.value().writes();
                LinkWrites {
                    peer: e.key().clone(),
                    writes,
                    bytes,
                    direct: e.value().direct_writes(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }

    /// The other members this node knows, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        members_of(&self.shared.net.members.lock())
    }

    /// Blocks until `cond` holds for the member list or `timeout` passes; returns the list.
    pub fn wait_members(&self, timeout: Duration, cond: impl Fn(&[Member]) -> bool) -> Vec<Member> {
        self.shared.net.members.wait_for(timeout, |st, late| {
            let m = members_of(st);
            (late || cond(&m)).then_some(m)
        })
    }

    /// A sender into the session with `peer`, if it is a member that is not declared down:
    /// what is sent on it reaches the peer in order, across links that break and are made
    /// again (see `cluster/PROTOCOL.md`, Sessions).
    pub fn link(&self, peer: &str) -> Option<LinkSender> {
        self.shared.net.members.link_sender(peer)
    }

    /// Blocks until `cond` holds for this node's sessions or `timeout` passes; returns them
    /// (see [`Node::sessions`]).
    pub fn wait_sessions(
        &self,
        timeout: Duration,
        cond: impl Fn(&[SessionStats]) -> bool,
    ) -> Vec<SessionStats> {
        self.shared.net.members.wait_for(timeout, |st, late| {
            let mut v: Vec<SessionStats> = st.sessions.iter().map(|(p, s)| s.stats(p)).collect();
            v.sort_by(|a, b| a.peer.cmp(&b.peer));
            (late || cond(&v)).then_some(v)
        })
    }

    /// The figures of this node's sessions with its peers (links each ran on, frames resent
    /// after a reset, frames not acknowledged yet), sorted by peer.
    pub fn sessions(&self) -> Vec<SessionStats> {
        self.wait_sessions(Duration::ZERO, |_| true)
    }

    /// Routes `Data` frames for subtask `to` of `chain` of `job` to `inbox`.
    pub fn register_inbox(&self, job: u64, chain: u32, to: u32, inbox: Inbox) {
        self.shared.net.inboxes.insert((job, chain, to), inbox);
    }

    /// Starts a remote mailbox (in the current actix system) for channel `edge` to `peer` and
    /// routes the channel's returned credits to it.
    ///
    /// # Errors
    /// [`NodeError::NoLink`] if there is no link to `peer`.
    pub fn remote_mailbox(
        &self,
        edge: EdgeAddress,
        peer: &str,
        codec: BatchCodec,
    ) -> Result<Addr<RemoteMailbox>, NodeError> {
        let link = self
            .link(peer)
            .ok_or_else(|| NodeError::NoLink(peer.to_string()))?;
        let addr = RemoteMailbox::new(edge, link, codec).start();
        self.shared
            .net
            .returns
            .insert(channel_key(&edge), addr.clone().recipient());
        Ok(addr)
    }

    /// Stops the node: closes its listener and links, and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.cancel_coordinated();
        // Nodes that hosted a job and were away when it ended wait for its outcome; give
        // them the grace they give us to come back and hear it.
        let jobs = &self.shared.jobs;
        if !jobs.owes_nothing() {
            tracing::info!(grace = ?jobs.grace, "waiting for nodes that hosted a job to come back and hear its end");
            self.shared.net.members.wait_for(jobs.grace, |_, late| {
                (late || jobs.owes_nothing()).then_some(())
            });
        }
        // A leader hands over at once; every node leaves the election.
        if let Some(l) = &self.shared.leadership {
            l.shutdown();
        }
        // Frames already queued (a job's end, for one) go out and are acknowledged before
        // the links close; then a `Leave`, so that peers take this node for gone at once and
        // quietly (its wait ends as soon as it is written: nothing numbered is unacknowledged).
        self.shared.net.members.lock().leaving = true;
        self.flush_links(None);
        self.flush_links(Some(Message::Leave));
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Without etcd, the jobs this node coordinates cannot outlive it (nobody else can
    /// continue them): they are cancelled, so that their own threads stop and their hosts
    /// hear the end. With etcd another node takes over as leader and continues them from
    /// their latest checkpoint, so they are left to that.
    fn cancel_coordinated(&self) {
        if self.shared.leadership.is_some() {
            return;
        }
        let jobs: Vec<u64> = self
            .shared
            .jobs
            .coordinated
            .iter()
            .map(|e| *e.key())
            .collect();
        for job in jobs {
            let Some(r) = riffle_actors::registry::job(&crate::jobs::instance_id(job)) else {
                continue;
            };
            if !r.control.progress().ended {
                tracing::warn!(
                    job,
                    "the node shuts down: the job it coordinates is cancelled"
                );
                let _ = r.control.cancel("its coordinator shut down");
            }
        }
    }

    /// Sends `last` (if any) on every session, then waits (at most a second per session) until
    /// the peer acknowledged everything numbered before it, or the session ended.
    fn flush_links(&self, last: Option<Message>) {
        let waits: Vec<_> = self
            .shared
            .net
            .members
            .lock()
            .sessions
            .values()
            .filter_map(|s| {
                if let Some(m) = &last {
                    s.enqueue(Outgoing::Frame(m.clone()));
                }
                let (done, wait) = std::sync::mpsc::channel();
                s.enqueue(Outgoing::Flushed(done)).then_some(wait)
            })
            .collect();
        for w in waits {
            let _ = w.recv_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ttl_is_kept_whether_given_before_or_after_the_endpoints() {
        let ttl = Duration::from_secs(3);
        for b in [
            Node::builder()
                .lease_ttl(ttl)
                .etcd(["http://127.0.0.1:2379"]),
            Node::builder()
                .etcd(["http://127.0.0.1:2379"])
                .lease_ttl(ttl),
        ] {
            let etcd = b.cfg.etcd.expect("etcd settings");
            assert_eq!((etcd.lease_ttl, etcd.endpoints.len()), (ttl, 1));
        }
        let alone = Node::builder()
            .name("n1")
            .secret(crate::Secret::new(b"a secret of enough bytes").expect("secret"))
            .lease_ttl(ttl)
            .start();
        match alone {
            Err(NodeError::Config(why)) => assert!(why.contains("lease TTL"), "{why}"),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a node started with a lease TTL and no etcd"),
        }
    }
}
