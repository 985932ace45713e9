//! Leader election and fencing on etcd: which node coordinates the cluster's jobs, and proof
//! that it still does.
//!
//! A node configured with etcd endpoints ([`crate::NodeBuilder::etcd`]) runs an agent on its
//! own thread: it takes a lease with a TTL, keeps it alive, and campaigns with it in the
//! election `/riffle/CLUSTER/leader` (etcd's v3 election API). The winner is the **leader**:
//! it coordinates every job. Its **epoch** is the creation revision of its election key —
//! etcd revisions only grow, so a later leader always has a higher epoch.
//!
//! Fencing, three ways:
//! - every write a leader makes to etcd (a job's record, its latest checkpoint, its end) is a
//!   transaction that holds only while the leader's election key still exists with the
//!   leader's epoch: a leader whose lease expired cannot write anything;
//! - a checkpoint completes only after such a write (the coordinator's checkpoint gate), so a
//!   deposed leader never saves a checkpoint nor tells a sink to commit;
//! - a leader considers itself the leader only while its lease is surely alive (last
//!   successful keep-alive + 80 % of the TTL), so a leader that was paused past its lease
//!   stops acting the moment it runs again, before etcd even answers; and every node learns
//!   the current leader's epoch by observing the election, so it refuses what a job started
//!   under an older epoch sends (`Refusals::fenced`).
//!
//! Whoever can write to the etcd can depose the leader or end its jobs, so the agent speaks
//! TLS with a client certificate ([`EtcdTls`], [`crate::NodeBuilder::etcd_tls`]) and
//! authenticates as an etcd user ([`EtcdAuth`], [`crate::NodeBuilder::etcd_auth`]) when
//! told to; a refusal is reported by `Node::etcd_error` and retried.
//!
//! Without etcd a cluster has one fixed coordinator, the lowest live node id, and does not
//! survive its loss.

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Default TTL of a leader's lease: a lost leader is replaced about this long after it died.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// How long a blocking request to etcd waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the agent waits before it tries etcd again after an error (doubling while it
/// keeps failing, up to [`MAX_RETRY`]).
const RETRY: Duration = Duration::from_millis(200);

/// The longest pause between two tries of etcd.
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Where a cluster's nodes meet in etcd.
#[derive(Clone, Debug)]
pub struct EtcdSettings {
    /// etcd's client URLs (`http://127.0.0.1:2379`, or `https://…` with [`Self::tls`]).
    pub endpoints: Vec<String>,
    /// TTL of the leader's lease (whole seconds in etcd; at least 1 s).
    pub lease_ttl: Duration,
    /// The etcd user and password to authenticate as (etcd's auth enabled), if any.
    pub auth: Option<EtcdAuth>,
    /// TLS to etcd (`https://` endpoints): the CA that signed etcd's certificate and, for
    /// etcd's `--client-cert-auth`, this node's certificate and key.
    pub tls: Option<EtcdTls>,
}

/// An etcd user and its password (etcd's role-based access control: with auth enabled on
/// etcd, a client without them can neither read nor write the cluster's keys).
#[derive(Clone)]
pub struct EtcdAuth {
    /// The etcd user.
    pub user: String,
    /// Its password (never printed: `Debug` shows `***`).
    pub password: String,
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// TLS to etcd, in PEM.
#[derive(Clone)]
pub struct EtcdTls {
    /// The certificate authority that signed etcd's server certificate.
    pub ca_pem: Vec<u8>,
    /// This node's certificate and private key, for an etcd that checks its clients'
    /// certificates (`--client-cert-auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name etcd's certificate must carry, if not the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl EtcdTls {
    /// TLS trusting the CA in the PEM file `ca`, with this node's certificate and key from
    /// `cert_key` (PEM files) for an etcd that checks client certificates.
    ///
    /// # Errors
    /// The file that cannot be read, with its path.
    pub fn from_files(
        ca: &std::path::Path,
        cert_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        let identity = match cert_key {
            Some((c, k)) => Some((read(c)?, read(k)?)),
            None => None,
        };
        Ok(EtcdTls {
            ca_pem: read(ca)?,
            identity,
            domain: None,
        })
    }
}

impl EtcdSettings {
    /// The client options for these settings: timeouts, and the user and TLS if set.
    fn options(&self, connect: Duration, request: Option<Duration>) -> ConnectOptions {
        let mut o = ConnectOptions::new().with_connect_timeout(connect);
        if let Some(t) = request {
            o = o.with_timeout(t);
        }
        if let Some(a) = &self.auth {
            o = o.with_user(a.user.clone(), a.password.clone());
        }
        if let Some(t) = &self.tls {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(t.ca_pem.clone()));
            if let Some((cert, key)) = &t.identity {
                tls = tls.identity(Identity::from_pem(cert.clone(), key.clone()));
            }
            if let Some(d) = &t.domain {
                tls = tls.domain_name(d.clone());
            }
            o = o.with_tls(tls);
        }
        o
    }
}

/// Who leads the cluster, as this node knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// The leader's node id, if there is one.
    pub leader: Option<String>,
    /// Its epoch (0: none known yet).
    pub epoch: u64,
}

/// Why etcd refused or could not take a leader's write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// etcd refused the write: this node's election key of that epoch is gone (its lease
    /// expired or was revoked), so another node leads or will.
    #[error("fenced: etcd refused the write, this node no longer leads (epoch {epoch})")]
    Fenced {
        /// The epoch it led in.
        epoch: u64,
    },
    /// Nothing was written: this node's lease is not surely alive (etcd did not renew it in
    /// time, or this node was paused), so it may not act as the leader of that epoch.
    #[error("fenced: the lease of epoch {epoch} is not surely alive; etcd was not asked")]
    Lapsed {
        /// The epoch it led in.
        epoch: u64,
    },
    /// etcd did not answer or failed.
    #[error("etcd: {0}")]
    Etcd(String),
}

/// What the agent tells the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaderEvent {
    /// This node won the election with this epoch.
    Elected(u64),
    /// This node lost the leadership of this epoch (its lease ended).
    Deposed(u64),
    /// The leader changed (observed on the election).
    Changed(LeaderView),
}

/// This node's leadership, while it holds it.
#[derive(Clone, Debug)]
struct Mine {
    epoch: u64,
    key: Vec<u8>,
}

#[derive(Default)]
struct State {
    view: LeaderView,
    mine: Option<Mine>,
    /// The lease is surely alive until then (set by each successful keep-alive).
    valid_until: Option<Instant>,
    refused_as_leader: u64,
    /// The lease the agent holds now.
    lease: Option<i64>,
    /// The TTL etcd granted the lease (etcd raises a TTL below its minimum).
    granted: Option<Duration>,
    /// Why the agent could not connect to etcd, while it cannot (unreachable, or it refused
    /// the node's user, password or certificate).
    refused: Option<String>,
}

/// Keys and their values.
type KeyValues = Vec<(String, Vec<u8>)>;

/// A condition on a value.
type Until = Box<dyn Fn(&[u8]) -> bool + Send>;

/// A request served by the agent's runtime.
enum Request {
    /// Put `key = value` if this node still leads in `epoch`.
    PutFenced {
        epoch: u64,
        key: String,
        value: Vec<u8>,
        reply: std_mpsc::Sender<Result<(), LeaderError>>,
    },
    /// Every key under a prefix.
    List {
        prefix: String,
        reply: std_mpsc::Sender<Result<KeyValues, LeaderError>>,
    },
    /// The value of `key` once `until` holds for it (watched, not polled), or `None` once
    /// `within` passed.
    Await {
        key: String,
        until: Until,
        within: Duration,
        reply: std_mpsc::Sender<Result<Option<Vec<u8>>, LeaderError>>,
    },
}

/// A node's handle on the election (see the module docs).
pub(crate) struct Leadership {
    me: String,
    prefix: String,
    ttl: Duration,
    state: Mutex<State>,
    changed: Condvar,
    requests: mpsc::UnboundedSender<Request>,
    /// The epoch whose leadership the agent must give up ([`Leadership::resign`]); a value,
    /// not a signal, so a request made before the agent waits for it is not missed.
    resign: watch::Sender<u64>,
    /// Stops the agent ([`Leadership::shutdown`]).
    stop: watch::Sender<bool>,
    /// Signalled when the agent stopped.
    stopped: Mutex<Option<std_mpsc::Receiver<()>>>,
}

impl Leadership {
    /// Starts the agent of node `me` of cluster `cluster` on its own thread; its events go
    /// to `events`.
    pub(crate) fn start(
        me: &str,
        cluster: &str,
        settings: &EtcdSettings,
        events: std_mpsc::Sender<LeaderEvent>,
    ) -> std::io::Result<Arc<Leadership>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, mut stopping) = watch::channel(false);
        let (done, stopped) = std_mpsc::channel();
        let l = Arc::new(Leadership {
            me: me.to_string(),
            prefix: format!("/riffle/{cluster}"),
            ttl: settings.lease_ttl.max(Duration::from_secs(1)),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            requests: tx,
            resign: watch::channel(0).0,
            stop,
            stopped: Mutex::new(Some(stopped)),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (agent, settings) = (l.clone(), settings.clone());
        std::thread::Builder::new()
            .name(format!("riffle-etcd-{me}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let l = agent.clone();
                    tokio::select! {
                        () = run(agent, settings.clone(), rx, events) => {}
                        _ = stopping.wait_for(|v| *v) => revoke(&l, &settings).await,
                    }
                });
                let _ = done.send(());
            })?;
        Ok(l)
    }

    /// Stops the agent: revokes its lease, so that a leader that stops hands over at once
    /// rather than after the TTL, and leaves the election (waits at most 2 s).
    pub(crate) fn shutdown(&self) {
        let _ = self.stop.send(true);
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(rx) = stopped {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of job `name`'s record.
    pub(crate) fn job_key(&self, name: &str) -> String {
        format!("{}/jobs/{name}", self.prefix)
    }

    /// The prefix of every job record.
    pub(crate) fn jobs_prefix(&self) -> String {
        format!("{}/jobs/", self.prefix)
    }

    /// Who leads, as observed.
    pub(crate) fn view(&self) -> LeaderView {
        self.lock().view.clone()
    }

    /// Why the agent cannot connect to etcd, while it cannot.
    pub(crate) fn connect_error(&self) -> Option<String> {
        self.lock().refused.clone()
    }

    /// The epoch this node leads in, if it surely still does: it won the election and its
    /// lease was renewed recently enough to be alive now.
    pub(crate) fn holds(&self) -> Option<u64> {
        let st = self.lock();
        let alive = st.valid_until.is_some_and(|t| Instant::now() < t);
        st.mine.as_ref().filter(|_| alive).map(|m| m.epoch)
    }

    /// Blocks until this node leads (or `timeout` passes); the epoch it leads in.
    pub(crate) fn wait_holds(&self, timeout: Duration) -> Option<u64> {
        let st = self.lock();
        let st = self
            .changed
            .wait_timeout_while(st, timeout, |st| st.mine.is_none())
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        drop(st);
        self.holds()
    }

    /// Whether this node surely leads in `epoch`.
    pub(crate) fn holds_epoch(&self, epoch: u64) -> bool {
        self.holds() == Some(epoch)
    }

    /// What this node tried as a leader after it lost the leadership, refused: writes etcd
    /// refused, and actions its lease no longer covered ([`Leadership::refused`]).
    pub(crate) fn refused_as_leader(&self) -> u64 {
        self.lock().refused_as_leader
    }

    /// Counts an action refused because this node no longer surely leads.
    pub(crate) fn refused(&self) {
        self.lock().refused_as_leader += 1;
    }

    /// Gives the leadership up (revokes the lease), if this node has it: after a path fenced
    /// it (its lease was not surely alive, or etcd refused its write), a new election —
    /// which this node may win again — makes some leader continue its jobs within the
    /// lease's TTL.
    pub(crate) fn resign(&self) {
        let Some(epoch) = self.lock().mine.as_ref().map(|m| m.epoch) else {
            return;
        };
        if *self.resign.borrow() != epoch {
            tracing::warn!(
                epoch,
                "giving up the leadership (revoking the lease): a new election continues the jobs"
            );
            self.resign.send_replace(epoch);
        }
    }

    /// The TTL of the leader's lease as etcd granted it (what was asked until a lease is
    /// granted): how long a lost leader stays the leader.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.lock().granted.unwrap_or(self.ttl)
    }

    /// Blocks until some node leads (or `timeout` passes); the view then. When this node
    /// is the leader, it also holds the leadership by then.
    pub(crate) fn wait_leader(&self, timeout: Duration) -> LeaderView {
        let me = self.me.as_str();
        let unsettled = |st: &mut State| {
            st.view.leader.is_none() || (st.view.leader.as_deref() == Some(me) && st.mine.is_none())
        };
        let st = self
            .changed
            .wait_timeout_while(self.lock(), timeout, unsettled)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        st.view.clone()
    }

    /// Puts `key = value` if this node still leads in `epoch` (blocks for etcd's answer).
    ///
    /// # Errors
    /// [`LeaderError::Fenced`] if it does not (nothing was written); [`LeaderError::Etcd`] if
    /// etcd did not answer in time.
    pub(crate) fn put_fenced(
        &self,
        epoch: u64,
        key: &str,
        value: Vec<u8>,
    ) -> Result<(), LeaderError> {
        if !self.holds_epoch(epoch) {
            self.lock().refused_as_leader += 1;
            self.resign();
            return Err(LeaderError::Lapsed { epoch });
        }
        let (reply, rx) = std_mpsc::channel();
        let req = Request::PutFenced {
            epoch,
            key: key.to_string(),
            value,
            reply,
        };
        let r = self.ask(req, rx);
        if matches!(r, Err(LeaderError::Fenced { .. })) {
            self.lock().refused_as_leader += 1;
            self.resign();
        }
        r
    }

    /// Every key and value under `prefix` (blocks for etcd's answer).
    ///
    /// # Errors
    /// [`LeaderError::Etcd`] if etcd did not answer in time.
    pub(crate) fn list(&self, prefix: &str) -> Result<KeyValues, LeaderError> {
        let (reply, rx) = std_mpsc::channel();
        let prefix = prefix.to_string();
        self.ask(Request::List { prefix, reply }, rx)
    }

    /// The value of `key` once `until` holds for it; `None` if `within` passed first (etcd
    /// answered, the value is not there yet). Waits on etcd's watch.
    ///
    /// # Errors
    /// [`LeaderError::Etcd`] if etcd failed, or did not answer within `within` and a little
    /// more.
    pub(crate) fn await_value(
        &self,
        key: &str,
        until: impl Fn(&[u8]) -> bool + Send + 'static,
        within: Duration,
    ) -> Result<Option<Vec<u8>>, LeaderError> {
        let (reply, rx) = std_mpsc::channel();
        let key = key.to_string();
        let until = Box::new(until);
        let req = Request::Await {
            key,
            until,
            within,
            reply,
        };
        self.ask_for(req, rx, within + REQUEST_TIMEOUT)
    }

    fn ask<T>(
        &self,
        req: Request,
        rx: std_mpsc::Receiver<Result<T, LeaderError>>,
    ) -> Result<T, LeaderError> {
        self.ask_for(req, rx, REQUEST_TIMEOUT)
    }

    fn ask_for<T>(
        &self,
        req: Request,
        rx: std_mpsc::Receiver<Result<T, LeaderError>>,
        timeout: Duration,
    ) -> Result<T, LeaderError> {
        let gone = || LeaderError::Etcd("the etcd agent stopped".to_string());
        self.requests.send(req).map_err(|_| gone())?;
        rx.recv_timeout(timeout)
            .map_err(|_| LeaderError::Etcd("no answer from etcd in time".to_string()))?
    }

    fn set_view(&self, view: LeaderView) -> bool {
        let mut st = self.lock();
        if view.epoch < st.view.epoch || view == st.view {
            return false;
        }
        st.view = view;
        self.changed.notify_all();
        true
    }

    fn elected(&self, mine: Mine) {
        let mut st = self.lock();
        if mine.epoch >= st.view.epoch {
            st.view = LeaderView {
                leader: Some(self.me.clone()),
                epoch: mine.epoch,
            };
        }
        st.mine = Some(mine);
        self.changed.notify_all();
    }

    /// Drops this node's leadership; the epoch it had.
    fn deposed(&self) -> Option<u64> {
        let mut st = self.lock();
        st.valid_until = None;
        let m = st.mine.take()?;
        if st.view.epoch == m.epoch {
            st.view.leader = None;
        }
        self.changed.notify_all();
        Some(m.epoch)
    }

    fn renewed(&self, until: Instant) {
        self.lock().valid_until = Some(until);
    }

    fn my_key(&self, epoch: u64) -> Option<Vec<u8>> {
        let st = self.lock();
        st.mine
            .as_ref()
            .filter(|m| m.epoch == epoch)
            .map(|m| m.key.clone())
    }
}

/// Revokes the lease the agent holds, if any (on a fresh connection: the agent's own is
/// being dropped).
async fn revoke(l: &Leadership, settings: &EtcdSettings) {
    let Some(lease) = l.lock().lease.take() else {
        return;
    };
    l.deposed();
    let options = settings.options(Duration::from_secs(1), None);
    if let Ok(mut c) = Client::connect(&settings.endpoints, Some(options)).await {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease)).await;
    }
}

/// The agent: connects, serves requests, observes the election and campaigns for ever.
async fn run(
    l: Arc<Leadership>,
    settings: EtcdSettings,
    requests: mpsc::UnboundedReceiver<Request>,
    events: std_mpsc::Sender<LeaderEvent>,
) {
    let options = settings.options(Duration::from_secs(2), Some(REQUEST_TIMEOUT));
    let endpoints = settings.endpoints;
    let mut backoff = Backoff::default();
    let client = loop {
        match Client::connect(&endpoints, Some(options.clone())).await {
            Ok(c) => break c,
            Err(e) => {
                l.lock().refused = Some(e.to_string());
                tracing::warn!(endpoints = ?endpoints, error = %e, "cannot reach etcd, or it refused this node's user or certificate; trying again");
                backoff.wait().await;
            }
        }
    };
    l.lock().refused = None;
    tracing::info!(endpoints = ?endpoints, "connected to etcd; campaigning for the leadership");
    tokio::spawn(serve(l.clone(), client.clone(), requests));
    tokio::spawn(observe(l.clone(), client.clone(), events.clone()));
    let mut backoff = Backoff::default();
    loop {
        match campaign_once(&l, client.clone(), &events).await {
            Ok(()) => backoff = Backoff::default(),
            Err(e) => tracing::warn!(error = %e, "etcd: the campaign failed; trying again"),
        }
        if let Some(epoch) = l.deposed() {
            tracing::warn!(epoch, "lost the leadership");
            let _ = events.send(LeaderEvent::Deposed(epoch));
        }
        backoff.wait().await;
    }
}

/// The pause before the agent tries etcd again: [`RETRY`] at first, doubling to
/// [`MAX_RETRY`] while etcd keeps failing.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(RETRY)
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_RETRY);
    }
}

/// One lease: keeps it alive, campaigns with it, and leads until it is lost.
async fn campaign_once(
    l: &Arc<Leadership>,
    mut client: Client,
    events: &std_mpsc::Sender<LeaderEvent>,
) -> Result<(), etcd_client::Error> {
    let ttl = l.ttl.as_secs().max(1) as i64;
    let granted_at = Instant::now();
    let grant = client.lease_grant(ttl, None).await?;
    let lease = grant.id();
    let granted = Duration::from_secs(grant.ttl().max(1) as u64);
    if granted != l.ttl {
        tracing::warn!(asked = ?l.ttl, ?granted, "etcd granted the leader's lease another TTL than asked (it raises a TTL below its minimum, 1.5 × its election timeout): a lost leader is replaced after the granted one");
    }
    {
        let mut st = l.lock();
        st.lease = Some(lease);
        st.granted = Some(granted);
    }
    l.renewed(granted_at + granted.mul_f64(0.8));
    let (lost_tx, mut lost) = watch::channel(false);
    let keeper = tokio::spawn(keep_alive(
        l.clone(),
        client.clone(),
        lease,
        granted,
        lost_tx,
    ));
    let mut resign = l.resign.subscribe();
    let name = format!("{}/leader", l.prefix);
    let won = tokio::select! {
        r = client.campaign(name, l.me.clone(), lease) => Some(r),
        _ = lost.wait_for(|v| *v) => None,
    };
    if let Some(r) = won {
        let resp = r?;
        if let Some(key) = resp.leader() {
            let epoch = key.rev() as u64;
            l.elected(Mine {
                epoch,
                key: key.key().to_vec(),
            });
            tracing::info!(epoch, "elected leader");
            let _ = events.send(LeaderEvent::Elected(epoch));
            tokio::select! {
                _ = lost.wait_for(|v| *v) => {}
                _ = resign.wait_for(|e| *e == epoch) => {}
            }
        }
    }
    keeper.abort();
    l.lock().lease = None;
    let _ = client.lease_revoke(lease).await;
    Ok(())
}

/// Renews `lease` (granted for `ttl`) every third of its TTL; says when it is lost (expired,
/// or etcd gone).
async fn keep_alive(
    l: Arc<Leadership>,
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let result: Result<(), String> = async {
        let (mut keeper, mut stream) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let sent = Instant::now();
            keeper.keep_alive().await.map_err(|e| e.to_string())?;
            match stream.message().await {
                Ok(Some(r)) if r.ttl() > 0 => l.renewed(sent + ttl.mul_f64(0.8)),
                Ok(_) => return Err("the lease expired".to_string()),
                Err(e) => return Err(e.to_string()),
            }
            tokio::time::sleep(every).await;
        }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(lease, error = %e, "the lease is lost");
    }
    let _ = lost.send(true);
}

/// Follows the election: every change of leader becomes this node's view.
async fn observe(l: Arc<Leadership>, mut client: Client, events: std_mpsc::Sender<LeaderEvent>) {
    let name = format!("{}/leader", l.prefix);
    loop {
        match client.observe(name.clone()).await {
            Ok(mut stream) => {
                while let Ok(Some(resp)) = stream.message().await {
                    let Some(kv) = resp.kv() else { continue };
                    let view = LeaderView {
                        leader: kv.value_str().ok().map(str::to_string),
                        epoch: kv.create_revision() as u64,
                    };
                    if l.set_view(view.clone()) {
                        tracing::info!(leader = ?view.leader, epoch = view.epoch, "the cluster's leader");
                        let _ = events.send(LeaderEvent::Changed(view));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "etcd: cannot observe the election"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Serves the node's requests, each in its own task.
async fn serve(l: Arc<Leadership>, client: Client, mut requests: mpsc::UnboundedReceiver<Request>) {
    while let Some(req) = requests.recv().await {
        let (l, mut client) = (l.clone(), client.clone());
        tokio::spawn(async move {
            match req {
                Request::PutFenced {
                    epoch,
                    key,
                    value,
                    reply,
                } => {
                    let _ = reply.send(put_fenced(&l, &mut client, epoch, key, value).await);
                }
                Request::List { prefix, reply } => {
                    let r = client
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                        .map(|resp| {
                            resp.kvs()
                                .iter()
                                .map(|kv| {
                                    (
                                        String::from_utf8_lossy(kv.key()).to_string(),
                                        kv.value().to_vec(),
                                    )
                                })
                                .collect()
                        })
                        .map_err(|e| LeaderError::Etcd(e.to_string()));
                    let _ = reply.send(r);
                }
                Request::Await {
                    key,
                    until,
                    within,
                    reply,
                } => {
                    let r = tokio::time::timeout(within, await_value(&mut client, key, until));
                    let r = match r.await {
                        Ok(Ok(v)) => Ok(Some(v)),
                        Ok(Err(e)) => Err(LeaderError::Etcd(e.to_string())),
                        Err(_) => Ok(None),
                    };
                    let _ = reply.send(r);
                }
            }
        });
    }
}

/// The value of `key` once `until` holds for it: read, then watched from the revision read.
async fn await_value(
    client: &mut Client,
    key: String,
    until: Until,
) -> Result<Vec<u8>, etcd_client::Error> {
    let now = client.get(key.clone(), None).await?;
    if let Some(kv) = now.kvs().first().filter(|kv| until(kv.value())) {
        return Ok(kv.value().to_vec());
    }
    let from = now.header().map_or(0, |h| h.revision()) + 1;
    let options = etcd_client::WatchOptions::new().with_start_revision(from);
    let mut stream = client.watch(key, Some(options)).await?;
    while let Some(resp) = stream.message().await? {
        for ev in resp.events() {
            if let Some(kv) = ev.kv().filter(|kv| until(kv.value())) {
                return Ok(kv.value().to_vec());
            }
        }
    }
    Err(etcd_client::Error::WatchError(
        "the watch ended".to_string(),
    ))
}

/// The fenced write: `key = value` only while this node's election key of `epoch` exists.
async fn put_fenced(
    l: &Leadership,
    client: &mut Client,
    epoch: u64,
    key: String,
    value: Vec<u8>,
) -> Result<(), LeaderError> {
    let Some(mine) = l.my_key(epoch) else {
        return Err(LeaderError::Fenced { epoch });
    };
    let txn = Txn::new()
        .when([Compare::create_revision(
            mine,
            CompareOp::Equal,
            epoch as i64,
        )])
        .and_then([TxnOp::put(key, value, None)]);
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(()),
        Ok(_) => Err(LeaderError::Fenced { epoch }),
        Err(e) => Err(LeaderError::Etcd(e.to_string())),
    }
}
