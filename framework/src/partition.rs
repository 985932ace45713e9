//! Key partitioning: the consistent-hash ring and the modulo baseline.
//!
//! A keyed edge sends each record to the downstream subtask that owns the record's key hash
//! (see [`crate::data`] for the hash). Ownership is decided by a consistent-hash ring built with
//! the `consistent_hash_ring` crate: each downstream subtask index is a ring node with
//! [`DEFAULT_VNODES`] virtual nodes. The ring is then compiled into a flat lookup table
//! ([`KeyRing`]) so that routing a record costs a table read and usually one comparison instead
//! of a binary search over every virtual node.
//!
//! # Positions on the ring
//!
//! The ring crate hashes whatever it is given through [`std::hash::Hash`]. Riffle hands it a
//! [`RingHasher`]: XXH3-64 (seed 0) over the bytes written, with every integer written
//! little-endian. Keys are given to the ring as their canonical bytes, so a key's position on
//! the ring *is* its routing hash; a subtask node is the `u32` subtask index, and its virtual
//! nodes follow the crate's chain `h(node), h(h(node)), ...`. All of it is independent of the
//! process, the platform and the compiler.
//!
//! # Why the ring
//!
//! Going from N to N+1 subtasks, the ring moves about 1/(N+1) of the keys, and only to the new
//! subtask; `hash mod N` ([`ModuloPartitioner`]) moves about N/(N+1) of them. The figures are
//! checked by `tests/routing_ring.rs` and printed by `examples/load_balance.rs`.

use consistent_hash_ring::{Ring, RingBuilder};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::RangeInclusive;
use xxhash_rust::xxh3::Xxh3;

/// Virtual nodes per subtask on a key ring.
///
/// Chosen by measurement over 100,000 distinct string keys for every N in 2..=16 (worst case
/// over N of max/mean keys per subtask, and of keys moved N → N+1 relative to the ideal
/// 1/(N+1)):
///
/// | vnodes | worst max/mean | worst moved / ideal |
/// |---|---|---|
/// | 128 | 1.207 | 1.195 |
/// | 256 | 1.177 | 1.177 |
/// | 512 | 1.113 | 1.094 |
/// | 1024 | 1.087 | 1.039 |
/// | 2048 | 1.061 | 1.020 |
///
/// 1024 is the smallest power of two that meets the ≤ 1.10 balance bound; the compiled table
/// makes the number of vnodes irrelevant to the per-record cost. `tests/routing_ring.rs`
/// asserts the bounds.
pub const DEFAULT_VNODES: usize = 1024;

/// The ring crate's hasher in Riffle: XXH3-64, seed 0, integers written little-endian.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingHasher;

/// The streaming state of [`RingHasher`].
#[derive(Clone)]
pub struct RingHashState(Xxh3);

impl Hasher for RingHashState {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn write_u8(&mut self, i: u8) {
        self.0.update(&[i]);
    }
    fn write_u16(&mut self, i: u16) {
        self.0.update(&i.to_le_bytes());
    }
    fn write_u32(&mut self, i: u32) {
        self.0.update(&i.to_le_bytes());
    }
    fn write_u64(&mut self, i: u64) {
        self.0.update(&i.to_le_bytes());
    }
    fn write_usize(&mut self, i: usize) {
        self.0.update(&(i as u64).to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0.digest()
    }
}

impl BuildHasher for RingHasher {
    type Hasher = RingHashState;
    fn build_hasher(&self) -> RingHashState {
        RingHashState(Xxh3::new())
    }
}

/// A ring node: a downstream subtask index (fixed width on the ring, always `u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubtaskNode(pub u32);

impl Hash for SubtaskNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0.to_le_bytes());
    }
}

/// Raw bytes given to the ring as a key without a length prefix, so that the ring position of
/// a key equals XXH3-64 of its canonical bytes.
struct RawKey<'a>(&'a [u8]);

impl Hash for RawKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// Decides which of `parallelism` downstream subtasks receives a key hash.
///
/// Implemented by [`KeyRing`] (the default) and [`ModuloPartitioner`] (the `hash mod N`
/// baseline, kept so that the two can be compared side by side).
pub trait Partitioner: Send + Sync + std::fmt::Debug {
    /// The subtask index in `0..parallelism()` that owns `key_hash`.
    fn route(&self, key_hash: u64) -> usize;
    /// The number of downstream subtasks.
    fn parallelism(&self) -> usize;
}

/// `hash mod N`: the partitioner most hand-rolled systems start with.
///
/// Balanced, but rescaling N → N+1 moves about N/(N+1) of all keys.
#[derive(Clone, Copy, Debug)]
pub struct ModuloPartitioner {
    n: usize,
}

impl ModuloPartitioner {
    /// A modulo partitioner over `n` subtasks (`n` of 0 is treated as 1).
    pub fn new(n: usize) -> Self {
        ModuloPartitioner { n: n.max(1) }
    }
}

impl Partitioner for ModuloPartitioner {
    #[inline]
    fn route(&self, key_hash: u64) -> usize {
        (key_hash % self.n as u64) as usize
    }
    fn parallelism(&self) -> usize {
        self.n
    }
}

/// A consistent-hash ring over subtask indexes, compiled into a flat lookup table.
///
/// The table has `2^bits` buckets indexed by the top bits of the key hash. A bucket that lies
/// inside one ring range holds that range's owner (one load routes the record); a bucket in
/// which a range ends holds the index of the first range that ends at or after the bucket's
/// start, and the lookup walks forward from there (zero or one step, almost always). There are
/// at least eight buckets per range, so most are of the first kind (eight rather than four:
/// the walk's branch is mispredicted, and half as many records taking it made the keyed path
/// ~6 % faster). Buckets are `u16` while owners and range indexes fit in 15 bits (up to
/// 32,767 ranges: 16 bytes per range, so the table of a P=2 ring is 32 KiB instead of 64 and
/// stays mostly in the first-level cache, which the `u32` table missed 0.8 times per record),
/// `u32` beyond.
/// [`KeyRing::route_with_crate`] asks the crate instead, so tests can check the two agree.
#[derive(Clone)]
pub struct KeyRing {
    /// The crate's ring, built only when asked (tests and tools).
    crate_ring: std::sync::OnceLock<Ring<SubtaskNode, RingHasher>>,
    /// Virtual nodes of each subtask (at least 1).
    weights: Vec<usize>,
    /// Inclusive end of each resident range, ascending; the last is `u64::MAX`.
    ends: Vec<u64>,
    /// Owner of each range.
    owners: Vec<u32>,
    /// Per bucket: the direct flag | the owner when the whole bucket lies in one range, else
    /// the first range index whose end is ≥ the bucket start.
    buckets: Buckets,
    shift: u32,
    parallelism: usize,
    vnodes: usize,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("parallelism", &self.parallelism)
            .field("vnodes", &self.vnodes)
            .field("ranges", &self.ends.len())
            .finish()
    }
}

impl KeyRing {
    /// A ring over subtasks `0..parallelism` with [`DEFAULT_VNODES`] virtual nodes each.
    pub fn new(parallelism: usize) -> Self {
        Self::with_vnodes(parallelism, DEFAULT_VNODES)
    }

    /// A ring over subtasks `0..parallelism` with `vnodes` virtual nodes each.
    ///
    /// `parallelism` and `vnodes` of 0 are treated as 1, so the ring is never empty.
    pub fn with_vnodes(parallelism: usize, vnodes: usize) -> Self {
        let weights: Vec<usize> = vec![vnodes.max(1); parallelism.max(1)];
        Self::weighted(&weights)
    }

    /// A ring where subtask `i` has `weights[i]` virtual nodes (a hot subtask can be given a
    /// smaller share). Zero weights are treated as 1 and an empty slice as one subtask.
    pub fn weighted(weights: &[usize]) -> Self {
        let weights = if weights.is_empty() {
            &[1][..]
        } else {
            weights
        };
        let weights: Vec<usize> = weights.iter().map(|w| (*w).max(1)).collect();
        let (mut ends, mut owners) = resident_ranges(&ring_points(&weights));
        // The crate's ranges end at u64::MAX; make sure of it, since lookups rely on it.
        if ends.last() != Some(&u64::MAX) {
            ends.push(u64::MAX);
            owners.push(owners.first().copied().unwrap_or(0));
        }
        let bits = (ends.len() * 8)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(4, 24);
        let shift = 64 - bits;
        let narrow = ends.len() < (1 << 15) && weights.len() < (1 << 15);
        let (parallelism, vnodes) = (weights.len(), weights.iter().copied().max().unwrap_or(1));
        let buckets = if narrow {
            Buckets::Narrow(compile::<u16>(&ends, &owners, bits))
        } else {
            Buckets::Wide(compile::<u32>(&ends, &owners, bits))
        };
        KeyRing {
            crate_ring: std::sync::OnceLock::new(),
            weights,
            ends,
            owners,
            buckets,
            shift,
            parallelism,
            vnodes,
        }
    }

    /// The subtask that owns `key_hash`, from the compiled table.
    #[inline]
    pub fn route_hash(&self, key_hash: u64) -> usize {
        self.table().route(key_hash)
    }

    /// The compiled table as plain slices, for routing many hashes in a loop (the slices are
    /// read once instead of through `self` per record).
    #[inline]
    pub fn table(&self) -> RingTable<'_> {
        match &self.buckets {
            Buckets::Narrow(b) => RingTable::Narrow(self.table_of(b)),
            Buckets::Wide(b) => RingTable::Wide(self.table_of(b)),
        }
    }

    fn table_of<'a, W: BucketWord>(&'a self, buckets: &'a [W]) -> RingTableOf<'a, W> {
        RingTableOf {
            buckets,
            ends: &self.ends,
            owners: &self.owners,
            shift: self.shift,
        }
    }

    /// The subtask that owns the key whose canonical bytes are `canonical`, asked of the
    /// `consistent_hash_ring` crate directly (binary search). For tests and tools.
    pub fn route_with_crate(&self, canonical: &[u8]) -> usize {
        self.crate_ring()
            .try_get(RawKey(canonical))
            .map_or(0, |n| n.0 as usize)
    }

    /// The subtask that owns ring position `key_hash` by binary search over the crate's
    /// resident ranges (no table). For tests and tools.
    pub fn route_hash_slow(&self, key_hash: u64) -> usize {
        let i = self.ends.partition_point(|e| *e < key_hash);
        self.owners[i] as usize
    }

    /// The hash ranges whose owner differs between `self` and `other`, as
    /// `(range, old owner, new owner)`; this is what a rescale has to move.
    ///
    /// The pieces are the intersections of the two rings' resident ranges, in ring order,
    /// exactly as `consistent_hash_ring::migrated_ranges` cuts them (a test checks it).
    pub fn migrated_ranges(&self, other: &KeyRing) -> Vec<(RangeInclusive<u64>, usize, usize)> {
        let (mut i, mut j, mut start) = (0, 0, 0u64);
        let mut out = Vec::new();
        while i < self.ends.len() && j < other.ends.len() {
            let end = self.ends[i].min(other.ends[j]);
            let (src, dst) = (self.owners[i], other.owners[j]);
            if src != dst {
                out.push((start..=end, src as usize, dst as usize));
            }
            i += usize::from(self.ends[i] == end);
            j += usize::from(other.ends[j] == end);
            match end.checked_add(1) {
                Some(next) => start = next,
                None => break,
            }
        }
        out
    }

    /// The `consistent_hash_ring` crate's own ring of the same subtasks and weights, built
    /// when first asked (its builder inserts into a sorted vector one virtual node at a time:
    /// quadratic, half a second at P=64), for [`KeyRing::route_with_crate`].
    fn crate_ring(&self) -> &Ring<SubtaskNode, RingHasher> {
        self.crate_ring.get_or_init(|| {
            let nodes: Vec<(SubtaskNode, usize)> = (self.weights.iter().enumerate())
                .map(|(i, w)| (SubtaskNode(i as u32), *w))
                .collect();
            RingBuilder::new(RingHasher).weighted_nodes(&nodes).build()
        })
    }

    /// Virtual nodes per subtask (the largest weight for a weighted ring).
    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// The number of resident ranges after merging neighbours with the same owner.
    pub fn ranges(&self) -> usize {
        self.ends.len()
    }
}

/// The ring crate's hash of `x` (XXH3-64 through [`RingHasher`]).
fn ring_hash<T: Hash>(x: &T) -> u64 {
    RingHasher.hash_one(x)
}

/// The virtual nodes of a ring where subtask `i` has `weights[i]` of them, as
/// `(position, subtask)` sorted by position: the points `consistent_hash_ring`'s builder
/// places, computed the way it does (subtask `i`'s first point is the hash of its node, each
/// next one the hash of the last; a later subtask's point replaces an earlier one at the same
/// position, and the position after a subtask's last point is cleared, as its `insert_weight`
/// does), but gathered and sorted once instead of inserted one by one into a sorted vector.
fn ring_points(weights: &[usize]) -> Vec<(u64, u32)> {
    let total = weights.iter().sum();
    let mut points: std::collections::HashMap<u64, u32> =
        std::collections::HashMap::with_capacity(total);
    for (i, w) in weights.iter().enumerate() {
        let mut hash = ring_hash(&SubtaskNode(i as u32));
        for _ in 0..*w {
            points.insert(hash, i as u32);
            hash = ring_hash(&hash);
        }
        while points.remove(&hash).is_some() {
            hash = ring_hash(&hash);
        }
    }
    let mut sorted: Vec<(u64, u32)> = points.into_iter().collect();
    sorted.sort_unstable_by_key(|p| p.0);
    sorted
}

/// The resident ranges of sorted ring `points` as (inclusive ends, owners), neighbours with
/// the same owner merged, as `consistent_hash_ring`'s `Ring::resident_ranges` gives them: a
/// point owns the positions after the previous point up to itself, and the positions after
/// the last point wrap to the first point's owner.
fn resident_ranges(points: &[(u64, u32)]) -> (Vec<u64>, Vec<u32>) {
    let mut ends: Vec<u64> = Vec::with_capacity(points.len() + 1);
    let mut owners: Vec<u32> = Vec::with_capacity(points.len() + 1);
    let wrap = points.first().map(|p| (u64::MAX, p.1));
    for (end, owner) in points.iter().copied().chain(wrap) {
        if owners.last() == Some(&owner) {
            if let Some(e) = ends.last_mut() {
                *e = end;
            }
        } else {
            ends.push(end);
            owners.push(owner);
        }
    }
    (ends, owners)
}

/// The compiled buckets of a [`KeyRing`], as narrow as its ranges allow.
#[derive(Clone)]
enum Buckets {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

/// The table of `2^bits` buckets over the ranges ending at `ends` (see [`KeyRing`]).
fn compile<W: BucketWord>(ends: &[u64], owners: &[u32], bits: u32) -> Vec<W> {
    let shift = 64 - bits;
    let mut buckets = Vec::with_capacity(1 << bits);
    let mut idx = 0usize;
    for b in 0..(1u64 << bits) {
        let start = b << shift;
        while ends[idx] < start {
            idx += 1;
        }
        // A bucket inside one range holds its owner directly.
        let last = start | (u64::MAX >> bits);
        let inside = ends[idx] >= last && owners[idx] < W::DIRECT;
        buckets.push(W::narrow(if inside {
            W::DIRECT | owners[idx]
        } else {
            idx as u32
        }));
    }
    buckets
}

/// A word of a [`KeyRing`]'s bucket table: its top bit flags a bucket that holds its owner
/// itself (most do: a table has at least eight buckets per range, and only those a range ends
/// in need the search).
pub trait BucketWord: Copy + Send + Sync + std::fmt::Debug + private::Sealed {
    /// The direct flag, widened.
    const DIRECT: u32;
    /// The word, widened.
    fn widen(self) -> u32;
    /// A widened value that fits (checked when the table is compiled).
    fn narrow(v: u32) -> Self;
}

mod private {
    pub trait Sealed {}
    impl Sealed for u16 {}
    impl Sealed for u32 {}
}

impl BucketWord for u16 {
    const DIRECT: u32 = 1 << 15;
    #[inline(always)]
    fn widen(self) -> u32 {
        u32::from(self)
    }
    fn narrow(v: u32) -> Self {
        v as u16
    }
}

impl BucketWord for u32 {
    const DIRECT: u32 = 1 << 31;
    #[inline(always)]
    fn widen(self) -> u32 {
        self
    }
    fn narrow(v: u32) -> Self {
        v
    }
}

/// A borrowed view of a [`KeyRing`]'s compiled lookup table (see [`KeyRing::table`]); match
/// on it once, outside a loop, to route many hashes with the table's own word width.
#[derive(Clone, Copy, Debug)]
pub enum RingTable<'a> {
    /// `u16` buckets (fewer than 32,768 ranges and subtasks).
    Narrow(RingTableOf<'a, u16>),
    /// `u32` buckets.
    Wide(RingTableOf<'a, u32>),
}

impl RingTable<'_> {
    /// The subtask that owns `key_hash`.
    #[inline]
    pub fn route(&self, key_hash: u64) -> usize {
        match self {
            RingTable::Narrow(t) => t.route(key_hash),
            RingTable::Wide(t) => t.route(key_hash),
        }
    }
}

/// A [`KeyRing`]'s lookup table with buckets of type `W`.
#[derive(Clone, Copy, Debug)]
pub struct RingTableOf<'a, W> {
    buckets: &'a [W],
    ends: &'a [u64],
    owners: &'a [u32],
    shift: u32,
}

impl<W: BucketWord> RingTableOf<'_, W> {
    /// The subtask that owns `key_hash`: the bucket of its top bits, then forward to the first
    /// range that ends at or after it (the last range ends at `u64::MAX`).
    #[inline(always)]
    pub fn route(&self, key_hash: u64) -> usize {
        let bucket = self.buckets[(key_hash >> self.shift) as usize].widen();
        if bucket & W::DIRECT != 0 {
            return (bucket & !W::DIRECT) as usize;
        }
        let mut i = bucket as usize;
        while self.ends[i] < key_hash {
            i += 1;
        }
        self.owners[i] as usize
    }
}

impl Partitioner for KeyRing {
    #[inline]
    fn route(&self, key_hash: u64) -> usize {
        self.route_hash(key_hash)
    }
    fn parallelism(&self) -> usize {
        self.parallelism
    }
}

/// Which partitioner keyed edges use; part of [`crate::JobConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionScheme {
    /// Consistent-hash ring with the given virtual nodes per subtask (default
    /// [`DEFAULT_VNODES`]).
    Ring {
        /// Virtual nodes per subtask.
        vnodes: usize,
    },
    /// `hash mod N` (for comparison; rescaling moves almost every key).
    Modulo,
}

impl Default for PartitionScheme {
    fn default() -> Self {
        PartitionScheme::Ring {
            vnodes: DEFAULT_VNODES,
        }
    }
}

impl PartitionScheme {
    /// Builds the partitioner for `parallelism` downstream subtasks.
    pub fn build(&self, parallelism: usize) -> Routing {
        match *self {
            PartitionScheme::Ring { vnodes } => Routing::Ring(std::sync::Arc::new(
                KeyRing::with_vnodes(parallelism, vnodes),
            )),
            PartitionScheme::Modulo => Routing::Modulo(ModuloPartitioner::new(parallelism)),
        }
    }
}

/// The partitioner of a keyed edge, dispatched without a virtual call (routing runs once per
/// record).
#[derive(Clone, Debug)]
pub enum Routing {
    /// The consistent-hash ring (shared by the subtasks of the edge's sender).
    Ring(std::sync::Arc<KeyRing>),
    /// `hash mod N`.
    Modulo(ModuloPartitioner),
}

impl Partitioner for Routing {
    #[inline]
    fn route(&self, key_hash: u64) -> usize {
        match self {
            Routing::Ring(r) => r.route_hash(key_hash),
            Routing::Modulo(m) => m.route(key_hash),
        }
    }
    fn parallelism(&self) -> usize {
        match self {
            Routing::Ring(r) => r.parallelism(),
            Routing::Modulo(m) => m.parallelism(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{canonical_key_bytes, Key};

    #[test]
    fn table_agrees_with_crate() {
        for n in [1usize, 2, 3, 5, 8, 16] {
            let ring = KeyRing::with_vnodes(n, 64);
            for i in 0..20_000u64 {
                let key = format!("key-{i}");
                let bytes = canonical_key_bytes(&key);
                assert_eq!(
                    ring.route_hash(key.key_hash()),
                    ring.route_with_crate(&bytes)
                );
                assert_eq!(
                    ring.route_hash(i.key_hash()),
                    ring.route_with_crate(&canonical_key_bytes(&i))
                );
            }
        }
    }

    #[test]
    fn hashes_at_and_around_every_range_end_route_as_the_ranges_say() {
        for (n, vnodes) in [(2usize, 1024usize), (3, 64), (16, 16)] {
            let ring = KeyRing::with_vnodes(n, vnodes);
            for e in ring.ends.clone() {
                for h in [e.wrapping_sub(1), e, e.wrapping_add(1), e ^ 1 << 20] {
                    assert_eq!(ring.route_hash(h), ring.route_hash_slow(h), "hash {h:#x}");
                }
            }
        }
    }

    #[test]
    fn narrow_and_wide_tables_route_alike() {
        // 2 x 1024 vnodes: u16 buckets; 40 x 1024: more than 32,767 ranges, u32 buckets.
        for (n, narrow) in [(2usize, true), (40, false)] {
            let ring = KeyRing::new(n);
            assert_eq!(
                matches!(ring.table(), RingTable::Narrow(_)),
                narrow,
                "P={n}"
            );
            let mut h = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..200_000 {
                h = h
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                assert_eq!(
                    ring.route_hash(h),
                    ring.route_hash_slow(h),
                    "P={n} hash {h:#x}"
                );
            }
        }
    }

    /// The crate's resident ranges of `ring`, as (ends, owners), and its migrated ranges.
    fn crate_ranges(ring: &KeyRing) -> (Vec<u64>, Vec<u32>) {
        (ring.crate_ring().resident_ranges())
            .map(|r| (*r.keys().end(), r.node().0))
            .unzip()
    }

    #[test]
    fn the_ring_is_the_crates_and_moves_what_the_crate_says() {
        let rings = [
            KeyRing::with_vnodes(1, 8),
            KeyRing::with_vnodes(2, 1024),
            KeyRing::with_vnodes(3, 64),
            KeyRing::with_vnodes(7, 100),
            KeyRing::weighted(&[1024, 512, 2048, 1]),
            KeyRing::weighted(&[300, 300, 0, 900, 17]),
        ];
        for ring in &rings {
            assert_eq!((ring.ends.clone(), ring.owners.clone()), crate_ranges(ring));
        }
        for a in &rings {
            for b in &rings {
                let ours = a.migrated_ranges(b);
                let theirs: Vec<_> =
                    consistent_hash_ring::migrated_ranges(a.crate_ring(), b.crate_ring())
                        .map(|m| (m.keys().clone(), m.src().0 as usize, m.dst().0 as usize))
                        .collect();
                assert_eq!(ours, theirs, "{a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn extremes_route() {
        let ring = KeyRing::with_vnodes(4, 16);
        for h in [0, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            assert_eq!(ring.route_hash(h), ring.route_hash_slow(h));
        }
    }
}
