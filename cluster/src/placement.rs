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
    /// The nodes and their weights.
    nodes: Vec<(String, usize)>,
    total_weight: usize,
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
        let nodes: Vec<(String, usize)> = weighted
            .iter()
            .map(|(n, w)| (n.0.clone(), w / PLACEMENT_VNODES))
            .collect();
        Placement {
            total_weight: nodes.iter().map(|(_, w)| w).sum(),
            nodes,
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

    /// The node for `task` at probe `probe` (probe 0 is [`Placement::node_of`]).
    fn probe(&self, task: TaskId, probe: u64) -> Option<&str> {
        let pos = (task.chain as u64, task.subtask as u64 | (probe << 40)).key_hash();
        self.ring.try_get(TaskPos(pos)).map(|n| n.0.as_str())
    }

    /// Places `tasks` with bounded loads (consistent hashing with bounded loads, Mirrokni et
    /// al.): each task goes to its ring node unless that node already holds its fair share of
    /// the task's chain (`ceil(parallelism × weight / total weight)`, at least one), in
    /// which case the next probe of the task's hash is tried. So every operator is spread
    /// evenly, and a placement over one node fewer or more still keeps most tasks where they
    /// were.
    pub fn assign_bounded(&self, tasks: &[TaskId]) -> Vec<(TaskId, String)> {
        self.assign_sticky(tasks, &[])
    }

    /// Places `added` tasks next to `kept` ones that stay where they are (a rescale in place):
    /// each added task goes to its ring node unless that node already holds its fair share of
    /// the task's chain (counting the kept tasks), as in [`Placement::assign_bounded`].
    pub fn assign_added(
        &self,
        added: &[TaskId],
        kept: &[(TaskId, String)],
    ) -> Vec<(TaskId, String)> {
        let per_chain = per_chain(added.iter().chain(kept.iter().map(|(t, _)| t)));
        let mut load: BTreeMap<(usize, String), usize> = BTreeMap::new();
        for (t, n) in kept {
            *load.entry((t.chain, n.clone())).or_default() += 1;
        }
        added
            .iter()
            .filter_map(|&t| {
                let p = per_chain.get(&t.chain).copied().unwrap_or(1);
                self.place_bounded(t, p, &mut load).map(|n| (t, n))
            })
            .collect()
    }

    /// The first probe of `task` whose node holds less than its fair share of a chain of
    /// `p` tasks (counted in `load`, which it updates); the ring node if every probe is full.
    fn place_bounded(
        &self,
        task: TaskId,
        p: usize,
        load: &mut BTreeMap<(usize, String), usize>,
    ) -> Option<String> {
        let nodes = self.nodes.len().max(1);
        for probe in 0..(64 * nodes as u64) {
            let Some(n) = self.probe(task, probe) else {
                break;
            };
            let l = load.entry((task.chain, n.to_string())).or_default();
            if *l < self.fair_share(p, n) {
                *l += 1;
                return Some(n.to_string());
            }
        }
        self.node_of(task).map(str::to_string)
    }

    /// As [`Placement::assign_bounded`], but a task keeps its node in `previous` while that
    /// node is in this placement and holds no more than its fair share of the task's chain.
    /// So continuing a job without a node moves only that node's tasks (at unchanged
    /// parallelism), and continuing it with one more node moves only the tasks the new node
    /// takes over.
    pub fn assign_sticky(
        &self,
        tasks: &[TaskId],
        previous: &[(TaskId, String)],
    ) -> Vec<(TaskId, String)> {
        let per_chain = per_chain(tasks);
        let cap =
            |t: &TaskId, n: &str| self.fair_share(per_chain.get(&t.chain).copied().unwrap_or(1), n);
        let mut load: BTreeMap<(usize, String), usize> = BTreeMap::new();
        let mut chosen: BTreeMap<TaskId, String> = BTreeMap::new();
        for &t in tasks {
            let Some((_, n)) = previous.iter().find(|(p, _)| *p == t) else {
                continue;
            };
            if !self.nodes.iter().any(|(m, _)| m == n) {
                continue;
            }
            let l = load.entry((t.chain, n.clone())).or_default();
            if *l < cap(&t, n) {
                *l += 1;
                chosen.insert(t, n.clone());
            }
        }
        for &t in tasks {
            if chosen.contains_key(&t) {
                continue;
            }
            let p = per_chain.get(&t.chain).copied().unwrap_or(1);
            if let Some(n) = self.place_bounded(t, p, &mut load) {
                chosen.insert(t, n);
            }
        }
        tasks
            .iter()
            .filter_map(|t| chosen.get(t).map(|n| (*t, n.clone())))
            .collect()
    }

    /// How many of a chain's `p` tasks node `node` may hold: its weighted share, at least one.
    fn fair_share(&self, p: usize, node: &str) -> usize {
        (p * self.weight(node))
            .div_ceil(self.total_weight.max(1))
            .max(1)
    }

    fn weight(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .find(|(n, _)| n == node)
            .map_or(1, |(_, w)| *w)
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

/// How many tasks each chain has.
fn per_chain<'a>(tasks: impl IntoIterator<Item = &'a TaskId>) -> BTreeMap<usize, usize> {
    let mut per_chain = BTreeMap::new();
    for t in tasks {
        *per_chain.entry(t.chain).or_default() += 1;
    }
    per_chain
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
    fn bounded_placement_spreads_every_operator_evenly() {
        let tasks: Vec<TaskId> = (0..3)
            .flat_map(|chain| (0..6).map(move |subtask| TaskId { chain, subtask }))
            .collect();
        let p = Placement::new([("n1", 1), ("n2", 1), ("n3", 1)]);
        let placed = p.assign_bounded(&tasks);
        assert_eq!(placed.len(), tasks.len());
        for chain in 0..3 {
            for n in ["n1", "n2", "n3"] {
                let k = placed
                    .iter()
                    .filter(|(t, m)| t.chain == chain && m == n)
                    .count();
                assert_eq!(k, 2, "chain {chain} on {n}: {placed:?}");
            }
        }
    }

    #[test]
    fn added_tasks_fill_the_nodes_below_their_share() {
        let task = |subtask| TaskId { chain: 1, subtask };
        let three = Placement::new([("n1", 1), ("n2", 1), ("n3", 1)]);
        let kept = three.assign_bounded(&(0..6).map(task).collect::<Vec<_>>());
        // A fourth node joins and the chain grows 6 -> 8: the new node takes both.
        let four = Placement::new([("n1", 1), ("n2", 1), ("n3", 1), ("n4", 1)]);
        let added = four.assign_added(&[task(6), task(7)], &kept);
        assert_eq!(added, vec![(task(6), "n4".into()), (task(7), "n4".into())]);
        // The same nodes and 6 -> 9: one more on each.
        let added = three.assign_added(&[task(6), task(7), task(8)], &kept);
        let mut nodes: Vec<&str> = added.iter().map(|(_, n)| n.as_str()).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, ["n1", "n2", "n3"]);
    }

    #[test]
    fn sticky_placement_moves_only_what_a_node_change_requires() {
        let tasks: Vec<TaskId> = (0..3)
            .flat_map(|chain| (0..12).map(move |subtask| TaskId { chain, subtask }))
            .collect();
        let three = Placement::new([("n1", 1), ("n2", 1), ("n3", 1)]);
        let before = three.assign_bounded(&tasks);
        let node_of = |v: &[(TaskId, String)], t: TaskId| {
            v.iter().find(|(x, _)| *x == t).map(|(_, n)| n.clone())
        };
        // n3 leaves: exactly its tasks move, and evenly.
        let two = Placement::new([("n1", 1), ("n2", 1)]);
        let after = two.assign_sticky(&tasks, &before);
        for &t in &tasks {
            let (b, a) = (node_of(&before, t), node_of(&after, t));
            if b.as_deref() != Some("n3") {
                assert_eq!(a, b, "{t:?} stays");
            }
        }
        for n in ["n1", "n2"] {
            assert_eq!(after.iter().filter(|(_, m)| m == n).count(), 18, "{n}");
        }
        // n4 joins: only tasks that n4 takes over move, 3 per chain.
        let four = Placement::new([("n1", 1), ("n2", 1), ("n3", 1), ("n4", 1)]);
        let grown = four.assign_sticky(&tasks, &before);
        let moved: Vec<&(TaskId, String)> = grown
            .iter()
            .filter(|(t, n)| node_of(&before, *t).as_deref() != Some(n.as_str()))
            .collect();
        assert!(moved.iter().all(|(_, n)| n == "n4"), "{moved:?}");
        assert_eq!(moved.len(), 9, "{moved:?}");
    }

    #[test]
    fn weights_shift_the_share() {
        let all = tasks(900);
        let p = Placement::new([("big", 2), ("small", 1)]);
        let big = all.iter().filter(|t| p.node_of(**t) == Some("big")).count();
        assert!(big > 500 && big < 700, "big got {big} of 900");
    }
}
