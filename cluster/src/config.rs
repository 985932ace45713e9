//! A node's settings ([`NodeConfig`], filled in by `NodeBuilder`), shared by the parts of the
//! node that read them: membership, the mesh's runtime and the node's API.

use crate::guard::Limits;
use crate::secret::Secret;
use riffle_framework::StreamEnv;
use std::sync::Arc;
use std::time::Duration;

/// Builds a job; registered on every node under the same name.
pub type JobBuilder = Arc<dyn Fn() -> StreamEnv + Send + Sync>;

/// Settings of a node; see `NodeBuilder`.
#[derive(Clone)]
pub(crate) struct NodeConfig {
    pub(crate) name: String,
    pub(crate) cluster: String,
    pub(crate) listen: String,
    pub(crate) seeds: Vec<String>,
    pub(crate) secret: Option<Secret>,
    pub(crate) encrypt: bool,
    pub(crate) limits: Option<Limits>,
    pub(crate) forget_after: Duration,
    pub(crate) link_budget: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) failure_timeout: Duration,
    pub(crate) max_frame: u32,
    pub(crate) jobs: Vec<(String, JobBuilder)>,
    pub(crate) advertise: Option<String>,
    pub(crate) dial_via: Option<DialVia>,
    pub(crate) checkpoint_dir: Option<std::path::PathBuf>,
    pub(crate) etcd: Option<crate::leader::EtcdSettings>,
}

/// Maps a peer's advertised address to the address to connect to.
pub type DialVia = Arc<dyn Fn(&str) -> String + Send + Sync>;

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("cluster", &self.cluster)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("secret", &self.secret)
            .field("encrypt", &self.encrypt)
            .field("jobs", &self.jobs.iter().map(|j| &j.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
