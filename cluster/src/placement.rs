//! Placement of subtasks on nodes over a consistent-hash ring of node ids.
//!
//! Every subtask `(chain, subtask)` is hashed (XXH3-64 over its canonical bytes, like keys)
//! onto a ring whose nodes are the live node ids, each with virtual nodes in proportion to its
//! weight (e.g. its worker count). Losing or adding one of n nodes therefore moves only about
//! 1/n of the subtasks — the ones the ring hands over — instead of reshuffling everything.

use consistent_hash_ring::{Ring, RingBuilder};
use riffle_framework::{Key, RingHasher, TaskId};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// Virtual nodes per unit of weight.
pub const PLACEMENT_VNODES: usize = 256;

/// A ring node: a node id, hashed by its UTF-8 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeId(String);

impl Hash for NodeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// A task's position on the ring.
struct TaskPos(u64);

impl Hash for TaskPos {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// Where each subtask runs.
#[derive(Clone)]
pub struct Placement {
    ring: Ring<NodeId, RingHasher>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("nodes", &self.ring.len())
            .finish()
    }
}

impl Placement {
    /// A placement over `nodes` as (node id, weight); weights of 0 count as 1.
    pub fn new<'a>(nodes: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let weighted: Vec<(NodeId, usize)> = nodes
            .into_iter()
            .map(|(n, w)| (NodeId(n.to_string()), w.max(1) * PLACEMENT_VNODES))
            .collect();
        Placement {
            ring: RingBuilder::new(RingHasher)
                .weighted_nodes(&weighted)
                .build(),
        }
    }

    /// The node that runs `task`, or `None` without nodes.
    pub fn node_of(&self, task: TaskId) -> Option<&str> {
        let pos = (task.chain as u64, task.subtask as u64).key_hash();
        self.ring.try_get(TaskPos(pos)).map(|n| n.0.as_str())
    }

    /// The placement of every task, grouped by node.
    pub fn assign(&self, tasks: &[TaskId]) -> BTreeMap<String, Vec<TaskId>> {
        let mut by_node: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
        for &t in tasks {
            if let Some(n) = self.node_of(t) {
                by_node.entry(n.to_string()).or_default().push(t);
            }
        }
        by_node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tasks(n: usize) -> Vec<TaskId> {
        (0..n)
            .map(|i| TaskId {
                chain: i % 7,
                subtask: i,
            })
            .collect()
    }

    #[test]
    fn losing_or_adding_a_node_moves_about_its_share() {
        let all = tasks(600);
        let three = Placement::new([("n1", 1), ("n2", 1), ("n3", 1)]);
        let two = Placement::new([("n1", 1), ("n2", 1)]);
        let four = Placement::new([("n1", 1), ("n2", 1), ("n3", 1), ("n4", 1)]);
        let moved = |a: &Placement, b: &Placement| {
            all.iter()
                .filter(|t| a.node_of(**t) != b.node_of(**t))
                .count()
        };
        let lost = moved(&three, &two);
        let added = moved(&three, &four);
        let on_n3 = all
            .iter()
            .filter(|t| three.node_of(**t) == Some("n3"))
            .count();
        assert_eq!(lost, on_n3, "only n3's subtasks move when n3 leaves");
        assert!((lost as f64) < 600.0 / 3.0 * 1.3, "lost {lost}");
        assert!((added as f64) < 600.0 / 4.0 * 1.3, "added {added}");
        for t in &all {
            let (before, after) = (three.node_of(*t), four.node_of(*t));
            assert!(
                before == after || after == Some("n4"),
                "moves only to the new node"
            );
        }
        let per = three.assign(&all);
        for (n, v) in &per {
            assert!(v.len() > 120 && v.len() < 280, "{n} got {}", v.len());
        }
    }

    #[test]
    fn weights_shift_the_share() {
        let all = tasks(900);
        let p = Placement::new([("big", 2), ("small", 1)]);
        let big = all.iter().filter(|t| p.node_of(**t) == Some("big")).count();
        assert!(big > 500 && big < 700, "big got {big} of 900");
    }
}
