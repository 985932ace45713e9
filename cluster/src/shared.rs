//! Everything a node's runtime and its API share, in owned parts: the network side
//! ([`Net`]: members, links, inboxes), the registry of jobs ([`Jobs`]), admission control,
//! the counts of what the node refused, and the suspicions about unreachable members. Calls go one way: the mesh and the links use the
//! parts; the parts never call back up.

use crate::guard::{Admission, RefusedCounts};
use crate::jobs::Jobs;
use crate::net::Net;
use std::sync::Arc;

/// The parts of a node (see the module docs).
pub(crate) struct Shared {
    /// Members, links and the data plane's directories.
    pub(crate) net: Arc<Net>,
    /// The jobs this node coordinates or hosts.
    pub(crate) jobs: Jobs,
    /// Admission control of incoming connections.
    pub(crate) admission: Option<Arc<Admission>>,
    /// What this node refused.
    pub(crate) refused: RefusedCounts,
    /// The election on etcd, if the node is configured with it (see [`crate::leader`]).
    pub(crate) leadership: Option<Arc<crate::leader::Leadership>>,
    /// Who cannot reach whom, as reported to this node and by it (see the `verdict` module).
    pub(crate) suspicions: std::sync::Mutex<crate::suspicions::Suspicions>,
}
