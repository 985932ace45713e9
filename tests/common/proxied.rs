//! Three in-process nodes whose every link passes through a fault proxy of its own (node `i`
//! dials node `j` through proxy `(i, j)`), so that a test can hold or reset any one link.

use super::proxy::{Proxy, DOWN, UP};
use riffle::cluster::{Node, NodeBuilder, NodeError, Status};
use std::collections::HashMap;
use std::time::Duration;

const SECRET: &[u8] = b"proxied cluster test secret";
/// The nodes' ids, in index order.
pub const NAMES: [&str; 3] = ["n1", "n2", "n3"];
/// The nodes' failure timeout (heartbeats every 50 ms).
pub const FAILURE_TIMEOUT: Duration = Duration::from_millis(400);

/// Three nodes whose every link passes through a proxy of its own.
pub struct Cluster {
    /// n1, n2, n3.
    pub nodes: Vec<Node>,
    /// `(i, j)`: the proxy node `i` dials node `j` through.
    pub proxies: HashMap<(usize, usize), Proxy>,
}

impl Cluster {
    /// Starts the three nodes, each built by `f` from a builder with its name, address,
    /// secret, timing and routes set (it registers the jobs, and adds etcd if wanted), and
    /// waits until each sees the other two.
    pub fn start(f: impl Fn(NodeBuilder) -> NodeBuilder) -> Cluster {
        // The ports are picked before the nodes bind them (the proxies must know them), so
        // another test can take one first: the whole cluster is then started again.
        for _ in 0..5 {
            match Self::try_start(&f) {
                Ok(c) => return c,
                Err(e) => println!("a port was taken meanwhile ({e}); starting again"),
            }
        }
        panic!("no free ports for the cluster in five tries");
    }

    fn try_start(f: &impl Fn(NodeBuilder) -> NodeBuilder) -> Result<Cluster, NodeError> {
        let addrs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", super::free_port()))
            .collect();
        let mut proxies = HashMap::new();
        for i in 0..3 {
            for j in (0..3).filter(|&j| j != i) {
                proxies.insert((i, j), Proxy::start(addrs[j].clone()));
            }
        }
        let nodes = (0..3)
            .map(|i| {
                let routes: Vec<(String, String)> = (0..3)
                    .filter(|&j| j != i)
                    .map(|j| (addrs[j].clone(), proxies[&(i, j)].addr.clone()))
                    .collect();
                let mut b = Node::builder()
                    .name(NAMES[i])
                    .listen(&addrs[i])
                    .secret(riffle::cluster::Secret::new(SECRET).expect("secret"))
                    .heartbeat(Duration::from_millis(50))
                    .failure_timeout(FAILURE_TIMEOUT)
                    .dial_via(move |a| {
                        routes
                            .iter()
                            .find(|(real, _)| real == a)
                            .map_or_else(|| a.to_string(), |(_, via)| via.clone())
                    });
                if i > 0 {
                    b = b.seeds([addrs[0].clone()]);
                }
                match f(b).start() {
                    Err(e @ NodeError::Bind { .. }) => Err(e),
                    other => Ok(other.expect("node")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        for n in &nodes {
            let m = n.wait_members(Duration::from_secs(20), |m| {
                m.len() == 2 && m.iter().all(|x| x.status == Status::Up)
            });
            assert!(
                m.len() == 2 && m.iter().all(|x| x.status == Status::Up),
                "{} sees the other two: {m:?}",
                n.name()
            );
        }
        Ok(Cluster { nodes, proxies })
    }

    /// The proxies of the link between nodes `a` and `b`, both ways.
    pub fn link(&self, a: usize, b: usize) -> [&Proxy; 2] {
        [&self.proxies[&(a, b)], &self.proxies[&(b, a)]]
    }

    /// Holds the link between nodes `a` and `b`: `a → b` always, `b → a` too if `both`.
    pub fn hold(&self, a: usize, b: usize, both: bool) {
        // On a's proxy to b, a is the client: a → b is UP. On b's proxy to a, it is DOWN.
        let (ab, ba) = if both {
            (UP | DOWN, UP | DOWN)
        } else {
            (UP, DOWN)
        };
        self.proxies[&(a, b)].hold(ab);
        self.proxies[&(b, a)].hold(ba);
    }

    /// Ends the hold of the link between nodes `a` and `b`.
    pub fn release(&self, a: usize, b: usize) {
        self.proxies[&(a, b)].hold(0);
        self.proxies[&(b, a)].hold(0);
    }

    /// Pieces of the link's traffic that holds kept back so far (both ways).
    pub fn held_back(&self, a: usize, b: usize) -> u64 {
        self.proxies[&(a, b)].held_back() + self.proxies[&(b, a)].held_back()
    }
}
