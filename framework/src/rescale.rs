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
use rmpv::ValueRef;

/// What restoring at other parallelisms moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RescaleReport {
    /// Per chain whose keyed state moved.
    pub chains: Vec<ChainRescale>,
}

/// How one chain's keyed state was split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainRescale {
    /// The chain's name.
    pub chain: String,
    /// Parallelism in the checkpoint.
    pub from: usize,
    /// Parallelism now.
    pub to: usize,
    /// Keys in its keyed state.
    pub keys: usize,
    /// Keys whose subtask changed.
    pub keys_moved: usize,
    /// Bytes of keyed state (encoded entries).
    pub bytes: usize,
    /// Bytes of the entries that moved.
    pub bytes_moved: usize,
}

impl ChainRescale {
    /// The share of keys that moved, next to the least any scheme must move: `1 − N/M` for
    /// N → M subtasks (growing), `1 − M/N` (shrinking).
    pub fn moved_vs_ideal(&self) -> (f64, f64) {
        let (n, m) = (self.from.max(1) as f64, self.to.max(1) as f64);
        let ideal = 1.0 - n.min(m) / n.max(m);
        (self.keys_moved as f64 / self.keys.max(1) as f64, ideal)
    }
}

impl RescaleReport {
    /// Keys whose subtask index changed, over all chains.
    pub fn keys_moved(&self) -> usize {
        self.chains.iter().map(|c| c.keys_moved).sum()
    }

    /// Keys in the rescaled chains.
    pub fn keys(&self) -> usize {
        self.chains.iter().map(|c| c.keys).sum()
    }

    /// Bytes of keyed state that moved, over all chains.
    pub fn bytes_moved(&self) -> usize {
        self.chains.iter().map(|c| c.bytes_moved).sum()
    }
}

/// What a rescale in place of one chain moves (see [`ExecutionPlan::adapt_in_place`]).
#[derive(Clone, Debug, Default)]
pub struct InPlaceSplit {
    /// The checkpoint fitted to the rescaled plan.
    pub checkpoint: Checkpoint,
    /// The keys and bytes that move.
    pub moved: ChainRescale,
    /// Per subtask of the rescaled chain, per state entry: the keyed entries it gains.
    pub gained: Gained,
}

/// Per subtask of a rescaled chain, per state entry: the encoded keyed entries it gains.
pub type Gained = Vec<Vec<Vec<u8>>>;

/// A MessagePack list of already encoded entries.
fn encode_entries(entries: &[&[u8]]) -> Vec<u8> {
    let len: usize = entries.iter().map(|e| e.len()).sum();
    let mut buf = Vec::with_capacity(len + 5);
    // Writing to a `Vec` cannot fail; a list has fewer than 2^32 entries (one per key).
    let _ = rmp::encode::write_array_len(&mut buf, entries.len() as u32);
    for e in entries {
        buf.extend_from_slice(e);
    }
    buf
}

/// Why a checkpoint does not fit a plan.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("chain `{chain}`: {problem}")]
pub struct FitError {
    /// The chain whose state does not fit.
    pub chain: String,
    /// What does not fit.
    pub problem: FitProblem,
}

/// What does not fit in a [`FitError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FitProblem {
    /// The checkpoint holds no state of this chain's shape (another job?).
    #[error("no matching state in the checkpoint (another job?)")]
    NoMatchingState,
    /// A source's parallelism would change, which is not supported yet.
    #[error("a source's parallelism cannot change yet")]
    SourceParallelism,
    /// The chain holds operator state that is not keyed, which cannot be split.
    #[error("operator state that is not keyed cannot be split")]
    UnkeyedState,
    /// The keyed state in the checkpoint is not a list of (key hash, key, state) entries.
    #[error("the keyed state in the checkpoint is damaged (not a list of hashed entries)")]
    DamagedKeyedState,
}

fn split_err(chain: &str, problem: FitProblem) -> FitError {
    FitError {
        chain: chain.to_string(),
        problem,
    }
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
    ) -> Result<(Checkpoint, RescaleReport), FitError> {
        self.adapt(checkpoint, None)
            .map(|(checkpoint, report, _)| (checkpoint, report))
    }

    /// Fits `checkpoint`, taken while the job ran at other parallelisms, to this plan for a
    /// rescale *in place* of `chain`: besides the adapted checkpoint (for recoveries after the
    /// rescale) it gives what each of the chain's subtasks gains — per new subtask, per state
    /// entry, the keyed entries whose owner was another subtask (for a new subtask, all of its
    /// state). The keys a subtask keeps stay where they are.
    ///
    /// # Errors
    /// A description of what does not fit (see [`ExecutionPlan::adapt_checkpoint`]).
    pub fn adapt_in_place(
        &self,
        checkpoint: Checkpoint,
        chain: usize,
    ) -> Result<InPlaceSplit, FitError> {
        let (checkpoint, report, gained) = self.adapt(checkpoint, Some(chain))?;
        let name = self.chain_name(chain);
        let moved = report
            .chains
            .into_iter()
            .find(|c| c.chain == name)
            .unwrap_or_default();
        Ok(InPlaceSplit {
            checkpoint,
            moved,
            gained,
        })
    }

    fn adapt(
        &self,
        checkpoint: Checkpoint,
        in_place: Option<usize>,
    ) -> Result<(Checkpoint, RescaleReport, Gained), FitError> {
        let mut gained = Vec::new();
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
                return Err(split_err(&name, FitProblem::NoMatchingState));
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
                    let (split, mut stats, g) = self.split_chain(chain, &old, p)?;
                    if in_place == Some(chain) {
                        gained = g;
                    }
                    if stats.keys_moved > 0 {
                        stats.chain = name;
                        report.chains.push(stats);
                        tasks.extend(split);
                        continue;
                    }
                }
                tasks.extend(old.into_iter().cloned());
                continue;
            }
            if self.is_source(chain) {
                return Err(split_err(&name, FitProblem::SourceParallelism));
            }
            let (split, mut stats, g) = self.split_chain(chain, &old, p)?;
            if in_place == Some(chain) {
                gained = g;
            }
            stats.chain = name;
            report.chains.push(stats);
            tasks.extend(split);
        }
        if let Some(chain) = in_place {
            if gained.len() != self.parallelism(chain) {
                // Nothing keyed to split: every subtask gains nothing.
                let entries = self.state_entries(chain);
                gained = vec![vec![Vec::new(); entries]; self.parallelism(chain)];
            }
        }
        Ok((
            Checkpoint {
                id: checkpoint.id,
                savepoint: checkpoint.savepoint,
                tasks,
            },
            report,
            gained,
        ))
    }

    fn split_chain(
        &self,
        chain: usize,
        old: &[&TaskSnapshot],
        p: usize,
    ) -> Result<(Vec<TaskSnapshot>, ChainRescale, Gained), FitError> {
        let name = self.chain_name(chain);
        let keyed = self.keyed_entries(chain);
        let ring = self.key_routing(chain);
        let finished = old.iter().all(|t| t.finished);
        let mut new: Vec<TaskSnapshot> = (0..p)
            .map(|subtask| TaskSnapshot {
                chain,
                subtask,
                finished,
                position: None,
                states: vec![Vec::new(); keyed.len()],
                // Behind every old subtask's clock: no new one is ahead of any input.
                watermark: old.iter().map(|t| t.watermark).min().flatten(),
            })
            .collect();
        let mut gained: Gained = vec![vec![Vec::new(); keyed.len()]; p];
        let mut stats = ChainRescale {
            from: old.len(),
            to: p,
            ..ChainRescale::default()
        };
        for (e, is_keyed) in keyed.iter().enumerate() {
            if !is_keyed {
                if old.iter().any(|t| !t.states[e].is_empty()) {
                    return Err(split_err(name, FitProblem::UnkeyedState));
                }
                continue;
            }
            // Entries are cut out of the snapshots as raw bytes: only their hash is read.
            let mut parts: Vec<Vec<&[u8]>> = vec![Vec::new(); p];
            let mut moved_in: Vec<Vec<&[u8]>> = vec![Vec::new(); p];
            for t in old {
                if t.states[e].is_empty() {
                    continue;
                }
                let mut bytes = t.states[e].as_slice();
                let items = rmp::decode::read_array_len(&mut bytes)
                    .map_err(|_| split_err(name, FitProblem::DamagedKeyedState))?;
                for _ in 0..items {
                    let start = bytes;
                    let item = rmpv::decode::read_value_ref(&mut bytes)
                        .map_err(|_| split_err(name, FitProblem::DamagedKeyedState))?;
                    let hash = match &item {
                        ValueRef::Array(fields) => fields.first().and_then(ValueRef::as_u64),
                        _ => None,
                    }
                    .ok_or_else(|| split_err(name, FitProblem::DamagedKeyedState))?;
                    let raw = &start[..start.len() - bytes.len()];
                    let owner = ring.route(hash);
                    stats.keys += 1;
                    stats.bytes += raw.len();
                    if owner != t.subtask {
                        stats.keys_moved += 1;
                        stats.bytes_moved += raw.len();
                        moved_in[owner].push(raw);
                    }
                    parts[owner].push(raw);
                }
            }
            for (j, (part, moved)) in parts.iter().zip(&moved_in).enumerate() {
                new[j].states[e] = encode_entries(part);
                if !moved.is_empty() {
                    gained[j][e] = encode_entries(moved);
                }
            }
        }
        Ok((new, stats, gained))
    }
}
