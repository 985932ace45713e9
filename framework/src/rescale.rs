//! Restoring a checkpoint at other parallelisms: keyed state is split by the new key ring.
//!
//! A keyed operator's snapshot is a list of `(key hash, key, state)` sorted by hash. Restoring it
//! at another parallelism gives every entry to the subtask that owns its hash on the new ring —
//! the same routing the new job uses — without knowing the key or state types (the entries
//! are moved as MessagePack values). Only the keys whose owner changed move; with the ring that
//! is about `1 − N/M` of them for N → M subtasks (see [`RescaleReport`]).

use crate::checkpoint::{Checkpoint, TaskSnapshot};
use crate::graph::ExecutionPlan;
use crate::partition::Partitioner;
use rmpv::Value;

/// What restoring at other parallelisms moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescaleReport {
    /// Per chain that changed: (chain name, old parallelism, new parallelism, keys, keys moved).
    pub chains: Vec<(String, usize, usize, usize, usize)>,
}

impl RescaleReport {
    /// Keys whose subtask index changed, over all chains.
    pub fn keys_moved(&self) -> usize {
        self.chains.iter().map(|c| c.4).sum()
    }

    /// Keys in the rescaled chains.
    pub fn keys(&self) -> usize {
        self.chains.iter().map(|c| c.3).sum()
    }
}

fn split_err(chain: &str, what: &str) -> String {
    format!("chain `{chain}`: {what}")
}

impl ExecutionPlan {
    /// Fits `checkpoint` to this plan: chains whose parallelism changed get their keyed state
    /// split by the new ring. Other state cannot be split: a changed source chain, or a changed
    /// chain with non-keyed operator state, is an error.
    ///
    /// # Errors
    /// A description of what does not fit.
    pub fn adapt_checkpoint(
        &self,
        checkpoint: Checkpoint,
    ) -> Result<(Checkpoint, RescaleReport), String> {
        let mut tasks = Vec::new();
        let mut report = RescaleReport::default();
        for chain in 0..self.chain_count() {
            let name = self.chain_name(chain).to_string();
            let mut old: Vec<&TaskSnapshot> = checkpoint
                .tasks
                .iter()
                .filter(|t| t.chain == chain)
                .collect();
            old.sort_by_key(|t| t.subtask);
            let p = self.parallelism(chain);
            let entries = self.state_entries(chain);
            if old.is_empty() || old.iter().any(|t| t.states.len() != entries) {
                return Err(split_err(
                    &name,
                    "no matching state in the checkpoint (another job?)",
                ));
            }
            if old.len() == p {
                // Same parallelism: keyed state moves only if the ring's weights changed.
                let keyed = self.keyed_entries(chain);
                let splittable = !self.is_source(chain)
                    && keyed.iter().any(|k| *k)
                    && old
                        .iter()
                        .all(|t| keyed.iter().zip(&t.states).all(|(k, s)| *k || s.is_empty()));
                if splittable {
                    let (split, keys, moved) = self.split_chain(chain, &old, p)?;
                    if moved > 0 {
                        report.chains.push((name, p, p, keys, moved));
                        tasks.extend(split);
                        continue;
                    }
                }
                tasks.extend(old.into_iter().cloned());
                continue;
            }
            if self.is_source(chain) {
                return Err(split_err(&name, "a source's parallelism cannot change yet"));
            }
            let (split, keys, moved) = self.split_chain(chain, &old, p)?;
            report.chains.push((name, old.len(), p, keys, moved));
            tasks.extend(split);
        }
        Ok((
            Checkpoint {
                id: checkpoint.id,
                savepoint: checkpoint.savepoint,
                tasks,
            },
            report,
        ))
    }

    fn split_chain(
        &self,
        chain: usize,
        old: &[&TaskSnapshot],
        p: usize,
    ) -> Result<(Vec<TaskSnapshot>, usize, usize), String> {
        let name = self.chain_name(chain);
        let keyed = self.keyed_entries(chain);
        let ring = self.config().routing_for(self.head_name(chain), p);
        let finished = old.iter().all(|t| t.finished);
        let mut new: Vec<TaskSnapshot> = (0..p)
            .map(|subtask| TaskSnapshot {
                chain,
                subtask,
                finished,
                position: None,
                states: vec![Vec::new(); keyed.len()],
            })
            .collect();
        let (mut keys, mut moved) = (0, 0);
        for (e, is_keyed) in keyed.iter().enumerate() {
            if !is_keyed {
                if old.iter().any(|t| !t.states[e].is_empty()) {
                    return Err(split_err(
                        name,
                        "operator state that is not keyed cannot be split",
                    ));
                }
                continue;
            }
            let mut parts: Vec<Vec<Value>> = vec![Vec::new(); p];
            for t in old {
                if t.states[e].is_empty() {
                    continue;
                }
                let mut bytes = t.states[e].as_slice();
                let Value::Array(items) =
                    rmpv::decode::read_value(&mut bytes).map_err(|x| x.to_string())?
                else {
                    return Err(split_err(name, "keyed state is not a list"));
                };
                for item in items {
                    let hash = match &item {
                        Value::Array(fields) => fields.first().and_then(Value::as_u64),
                        _ => None,
                    }
                    .ok_or_else(|| split_err(name, "a keyed state entry has no hash"))?;
                    let owner = ring.route(hash);
                    keys += 1;
                    moved += usize::from(owner != t.subtask);
                    parts[owner].push(item);
                }
            }
            for (j, part) in parts.into_iter().enumerate() {
                let mut buf = Vec::new();
                rmpv::encode::write_value(&mut buf, &Value::Array(part))
                    .map_err(|x| x.to_string())?;
                new[j].states[e] = buf;
            }
        }
        Ok((new, keys, moved))
    }
}
