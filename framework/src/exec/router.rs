//! Routers (the tail of a chain for an outgoing edge) and tees (a stream read twice).

use super::{BoxStage, RouteLayout, Stage, StageCx};
use crate::config::{Batching, REMOTE_BATCH_BYTES};
use crate::data::Data;
use crate::error::StageError;
use crate::event::{ChannelEvent, GiveBack, Payload, RecordBatch};
use crate::partition::{Partitioner, RingTable, Routing};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

/// How many empty buffers a router keeps for reuse: enough for the batches in flight on a
/// few channels; past it, returned buffers are freed.
const POOL_KEEP: usize = 16;

/// The empty batch buffers of one router, returned by the subtasks that consumed them (see
/// [`GiveBack`]): a full lane takes its next buffer from here instead of from the allocator,
/// so the batch memory stays warm and no allocation crosses threads per batch.
pub(crate) struct BufferPool<T> {
    free: Mutex<Vec<Vec<T>>>,
}

impl<T> BufferPool<T> {
    fn new() -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer with room for at least `capacity` records: the smallest kept one that
    /// has it (lanes to other nodes take larger batches than local ones, and each should find
    /// its own kind) and of those the last given back (the one most likely still in a cache;
    /// cycling through all of them would keep them all warm at the keyed state's expense),
    /// else a new one.
    fn take(&self, capacity: usize) -> Vec<T> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let fit = (free.iter().enumerate().rev())
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fit {
            Some(i) => free.remove(i),
            None => Vec::with_capacity(capacity),
        }
    }
}

impl<T: Send + 'static> GiveBack for BufferPool<T> {
    fn give_back(&self, payload: Payload) {
        let Ok(mut buf) = payload.downcast::<Vec<T>>() else {
            return;
        };
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < POOL_KEEP {
            free.push(*buf);
        }
    }
}

/// How a router picks the channel of a record; `H` computes a record's key hash.
pub enum Route<H> {
    /// Everything to the one channel (subtask i → subtask i).
    Forward,
    /// Round robin over the channels.
    Rebalance,
    /// A copy to every channel.
    Broadcast,
    /// By key hash through a partitioner.
    Key {
        /// Computes the record's key hash (a concrete closure, so it inlines).
        hash: H,
        /// Maps the hash to a channel.
        partitioner: Routing,
        /// The keyed operator: the key selector is its code, so its failure is that
        /// operator's (and its poison policy applies to the record).
        operator: std::sync::Arc<str>,
    },
}

/// The tail of a chain for one outgoing edge: cuts records into per-channel batches.
///
/// Batches that fill up during a unit of work are *staged* and queued for sending only at
/// [`Stage::commit`]; [`Stage::rollback`] restores every buffer to its length at the last
/// commit.
pub struct Router<T, H = fn(&T) -> u64> {
    route: Route<H>,
    base: usize,
    /// One lane per channel.
    lanes: Vec<Lane<T>>,
    /// Full batches of the current unit of work, in order, with their channel.
    staged: Vec<(usize, Vec<T>)>,
    next_rr: usize,
    /// The configured most records per batch (what the runtime asks for a local channel).
    batch_size: usize,
    /// The records of a full local batch of `T` (at most `batch_size`, and at most the
    /// configured bytes).
    local: usize,
    /// Records pushed in the current unit of work (counted as output when it commits).
    pushed: u64,
    /// Buffers for lanes that filled up, given back by the consumers of earlier batches.
    pool: Arc<BufferPool<T>>,
}

/// One channel of a router: the batch being filled and its bounds.
struct Lane<T> {
    buf: Vec<T>,
    /// The records at which a batch is full: a local batch of `T`, or more on a channel to
    /// another node ([`Stage::batch_limits`]).
    limit: usize,
    /// How many records of `buf` were committed.
    committed: usize,
}

impl<T> Lane<T> {
    fn new(limit: usize) -> Self {
        Lane {
            buf: Vec::with_capacity(limit),
            limit,
            committed: 0,
        }
    }

    /// Marks everything buffered as committed.
    fn commit(&mut self) {
        self.committed = self.buf.len();
    }

    /// Takes the batch, leaving an empty buffer from `pool` in its place.
    fn take(&mut self, pool: &BufferPool<T>) -> Vec<T> {
        std::mem::replace(&mut self.buf, pool.take(self.limit))
    }
}

/// Buffers `record` in channel `ch`; a buffer that reaches its limit is staged whole.
#[inline(always)]
fn put<T>(lanes: &mut [Lane<T>], staging: &mut Staging<'_, T>, ch: usize, record: T) {
    let lane = &mut lanes[ch];
    lane.buf.push(record);
    if lane.buf.len() >= lane.limit {
        staging.stage(ch, lane);
    }
}

/// Where full lanes go: their batch to the staged list, a fresh buffer from the pool.
struct Staging<'a, T> {
    staged: &'a mut Vec<(usize, Vec<T>)>,
    pool: &'a BufferPool<T>,
}

impl<T> Staging<'_, T> {
    #[cold]
    #[inline(never)]
    fn stage(&mut self, ch: usize, lane: &mut Lane<T>) {
        self.staged.push((ch, lane.take(self.pool)));
    }
}

/// Moves `records` into channel 0's `lane`, staging each batch that fills up.
fn append<T>(lane: &mut Lane<T>, records: &mut Vec<T>, mut staging: Staging<'_, T>) {
    let mut rest = records.drain(..);
    while rest.len() > 0 {
        let room = lane.limit.saturating_sub(lane.buf.len()).max(1);
        lane.buf.extend(rest.by_ref().take(room));
        if lane.buf.len() >= lane.limit {
            staging.stage(0, lane);
        }
    }
}

/// Routes a chunk by key into the channel buffers: hash, pick the channel, buffer. One
/// `catch_unwind` for the chunk; a key selector that panics stops it there, with the index of
/// the record at hand (the unit of work then fails and is rolled back).
#[inline(always)]
fn route_chunk<T, H: Fn(&T) -> u64>(
    records: &mut Vec<T>,
    hash: &H,
    route: impl Fn(u64) -> usize,
    lanes: &mut [Lane<T>],
    mut staging: Staging<'_, T>,
) -> Result<(), (usize, Box<dyn std::any::Any + Send>)> {
    let last = lanes.len().saturating_sub(1);
    let len = records.len();
    let mut drain = records.drain(..);
    catch_unwind(AssertUnwindSafe(|| {
        for record in &mut drain {
            let ch = route(hash(&record)).min(last);
            put(lanes, &mut staging, ch, record);
        }
    }))
    // The record at hand was taken from the drain before its key selector panicked.
    .map_err(|panic| (len - drain.len() - 1, panic))
}

impl<T: Data, H: Fn(&T) -> u64 + Send + 'static> Router<T, H> {
    /// A router over output queues `base..base + channels`, cutting batches as `batching`
    /// says. Round robin starts at `start`.
    pub fn new(
        route: Route<H>,
        base: usize,
        channels: usize,
        batching: Batching,
        start: usize,
    ) -> Self {
        let channels = channels.max(1);
        let local = batching.records_of::<T>();
        Router {
            route,
            base,
            lanes: (0..channels).map(|_| Lane::new(local)).collect(),
            staged: Vec::new(),
            next_rr: start % channels,
            batch_size: batching.records,
            local,
            pushed: 0,
            pool: Arc::new(BufferPool::new()),
        }
    }

    #[inline(always)]
    fn buffer(&mut self, ch: usize, record: T) {
        let mut staging = Staging {
            staged: &mut self.staged,
            pool: &self.pool,
        };
        put(&mut self.lanes, &mut staging, ch, record);
    }

    fn queue(&mut self, cx: &mut StageCx, ch: usize, batch: Vec<T>) {
        let len = batch.len();
        let home: Arc<dyn GiveBack> = self.pool.clone();
        cx.queues[self.base + ch].push_back(ChannelEvent::Batch(RecordBatch {
            payload: Box::new(batch),
            len,
            home: Some(home),
        }));
    }
}

impl<T: Data, H: Fn(&T) -> u64 + Send + 'static> Router<T, H> {
    /// Buffers `record` in the channel its route picks; a key selector that panics fails
    /// as the keyed operator. With one channel every route picks it, and a keyed one needs
    /// no hash (see [`Stage::push_many`]).
    #[inline]
    fn place(&mut self, record: T) -> Result<(), StageError> {
        let n = self.lanes.len();
        if n == 1 {
            self.buffer(0, record);
            return Ok(());
        }
        match &self.route {
            Route::Forward => self.buffer(0, record),
            Route::Rebalance => {
                let ch = self.next_rr;
                self.next_rr = if ch + 1 == n { 0 } else { ch + 1 };
                self.buffer(ch, record);
            }
            Route::Broadcast => {
                for ch in 1..n {
                    self.buffer(ch, record.clone());
                }
                self.buffer(0, record);
            }
            Route::Key {
                hash,
                partitioner,
                operator,
            } => {
                let h = match catch_unwind(AssertUnwindSafe(|| hash(&record))) {
                    Ok(h) => h,
                    Err(panic) => return Err(StageError::from_panic(operator, panic)),
                };
                let ch = partitioner.route(h);
                self.buffer(ch.min(n - 1), record);
            }
        }
        Ok(())
    }
}

impl<T: Data, H: Fn(&T) -> u64 + Send + 'static> Stage<T> for Router<T, H> {
    #[inline]
    fn push(&mut self, record: T, _cx: &mut StageCx) -> Result<(), StageError> {
        self.pushed += 1;
        self.place(record)
    }
    fn push_many(
        &mut self,
        records: &mut Vec<T>,
        _cx: &mut StageCx,
    ) -> Result<(), (usize, StageError)> {
        self.pushed += records.len() as u64;
        if let [lane] = self.lanes.as_mut_slice() {
            // One channel: every record goes there, whatever the route (a broadcast makes one
            // copy), so the chunk moves over whole. A keyed route needs no hash: the keyed
            // operator calls its key selector itself, and fails as the same operator if it
            // panics.
            let staging = Staging {
                staged: &mut self.staged,
                pool: &self.pool,
            };
            append(lane, records, staging);
            return Ok(());
        }
        if let Route::Key {
            hash,
            partitioner,
            operator,
        } = &self.route
        {
            // The common case in one loop per partitioner, everything it reads hoisted.
            let lanes = &mut self.lanes;
            let staging = Staging {
                staged: &mut self.staged,
                pool: &self.pool,
            };
            let r = match partitioner {
                Routing::Ring(ring) => match ring.table() {
                    RingTable::Narrow(t) => {
                        route_chunk(records, hash, |h| t.route(h), lanes, staging)
                    }
                    RingTable::Wide(t) => {
                        route_chunk(records, hash, |h| t.route(h), lanes, staging)
                    }
                },
                Routing::Modulo(m) => route_chunk(records, hash, |h| m.route(h), lanes, staging),
            };
            return r.map_err(|(i, panic)| (i, StageError::from_panic(operator, panic)));
        }
        for (i, record) in records.drain(..).enumerate() {
            self.place(record).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    fn reroute(&mut self, moves: &[(usize, RouteLayout)]) {
        let Some((_, layout)) = moves.iter().find(|(old, _)| *old == self.base) else {
            return;
        };
        // After a barrier's flush nothing is buffered; anything left is routed again.
        let left: Vec<T> = self
            .lanes
            .iter_mut()
            .flat_map(|l| l.buf.drain(..))
            .collect();
        let channels = layout.channels.max(1);
        self.base = layout.base;
        // The runtime sets the limits of the new channels again once it knows where they go.
        self.lanes = (0..channels).map(|_| Lane::new(self.local)).collect();
        self.next_rr %= channels;
        if let (Route::Key { partitioner, .. }, Some(p)) = (&mut self.route, &layout.partitioner) {
            *partitioner = p.clone();
        }
        for r in left {
            // Each was routed once already, by the same key selector.
            if let Err(e) = self.place(r) {
                tracing::error!(operator = %e.operator, "a key selector failed on a record it had routed before; record dropped");
            }
        }
        self.lanes.iter_mut().for_each(Lane::commit);
    }
    fn open(&mut self, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        cx.records_out += std::mem::take(&mut self.pushed);
        for (ch, batch) in std::mem::take(&mut self.staged) {
            self.queue(cx, ch, batch);
        }
        self.lanes.iter_mut().for_each(Lane::commit);
        Ok(())
    }
    fn rollback(&mut self) {
        // At the start of the unit, channel `ch` held its `committed[ch]` records (fewer than a
        // batch). If the buffer filled up during the unit, the first staged batch of `ch`
        // starts with them; otherwise they are still at the front of the buffer.
        self.pushed = 0;
        let mut restored = vec![false; self.lanes.len()];
        for (ch, batch) in std::mem::take(&mut self.staged) {
            if !restored[ch] {
                restored[ch] = true;
                self.lanes[ch].buf = batch;
            }
        }
        for lane in &mut self.lanes {
            lane.buf.truncate(lane.committed);
        }
    }
    fn snapshot(&mut self, _checkpoint: u64, _out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        Ok(())
    }
    fn restore(
        &mut self,
        _states: &mut std::slice::Iter<'_, Vec<u8>>,
        _last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        Ok(())
    }
    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), StageError> {
        Ok(())
    }
    fn flush(&mut self, cx: &mut StageCx) {
        for ch in 0..self.lanes.len() {
            if !self.lanes[ch].buf.is_empty() {
                let full = self.lanes[ch].take(&self.pool);
                self.queue(cx, ch, full);
            }
            self.lanes[ch].committed = 0;
        }
    }
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
        // What the hooks before emitted is final; every record goes before the watermark.
        self.commit(cx)?;
        self.flush(cx);
        cx.watermark(self.base..self.base + self.lanes.len(), watermark);
        Ok(())
    }
    fn on_processing_time(&mut self, _now: i64, _cx: &mut StageCx) -> Result<(), StageError> {
        Ok(())
    }
    fn batch_limits(&mut self, limits: &[usize]) {
        // A larger batch (to another node) holds at most `REMOTE_BATCH_BYTES` of records, and
        // never fewer than a local batch; a local channel gets a local batch of `T`.
        let by_bytes = (REMOTE_BATCH_BYTES / std::mem::size_of::<T>().max(1)).max(self.local);
        for (ch, limit) in self.lanes.iter_mut().map(|l| &mut l.limit).enumerate() {
            let asked = limits
                .get(self.base + ch)
                .copied()
                .unwrap_or(self.batch_size);
            *limit = if asked > self.batch_size {
                asked.min(by_bytes)
            } else {
                asked.min(self.local)
            }
            .max(1);
        }
    }
    fn resume_clock(&mut self, _watermark: i64) {}
    fn on_idle(&mut self, cx: &mut StageCx) {
        // Called between batches: what it holds is committed.
        self.flush(cx);
        cx.idle(self.base..self.base + self.lanes.len());
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.commit(cx)?;
        self.flush(cx);
        Ok(())
    }
}

/// Feeds every record to several stages (a stream consumed by several operators).
pub struct Tee<T> {
    branches: Vec<BoxStage<T>>,
}

impl<T: Data> Tee<T> {
    /// A tee over `branches` (at least one).
    pub fn new(branches: Vec<BoxStage<T>>) -> Self {
        Tee { branches }
    }
}

impl<T: Data> Stage<T> for Tee<T> {
    fn push(&mut self, record: T, cx: &mut StageCx) -> Result<(), StageError> {
        if let Some((last, rest)) = self.branches.split_last_mut() {
            for b in rest {
                b.push(record.clone(), cx)?;
            }
            last.push(record, cx)?;
        }
        Ok(())
    }
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches.iter_mut().try_for_each(|b| b.open(cx))
    }
    fn commit(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches.iter_mut().try_for_each(|b| b.commit(cx))
    }
    fn rollback(&mut self) {
        self.branches.iter_mut().for_each(|b| b.rollback());
    }
    fn distinct_keys(&self) -> u64 {
        self.branches.iter().map(|b| b.distinct_keys()).sum()
    }
    fn snapshot(&mut self, checkpoint: u64, out: &mut Vec<Vec<u8>>) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.snapshot(checkpoint, out))
    }
    fn restore(
        &mut self,
        states: &mut std::slice::Iter<'_, Vec<u8>>,
        last_completed: Option<u64>,
    ) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.restore(states, last_completed))
    }
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.checkpoint_complete(checkpoint))
    }
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.on_watermark(watermark, cx))
    }
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.on_processing_time(now, cx))
    }
    fn resume_clock(&mut self, watermark: i64) {
        self.branches
            .iter_mut()
            .for_each(|b| b.resume_clock(watermark));
    }
    fn on_idle(&mut self, cx: &mut StageCx) {
        self.branches.iter_mut().for_each(|b| b.on_idle(cx));
    }
    fn flush(&mut self, cx: &mut StageCx) {
        self.branches.iter_mut().for_each(|b| b.flush(cx));
    }
    fn reroute(&mut self, moves: &[(usize, RouteLayout)]) {
        self.branches.iter_mut().for_each(|b| b.reroute(moves));
    }
    fn batch_limits(&mut self, limits: &[usize]) {
        self.branches
            .iter_mut()
            .for_each(|b| b.batch_limits(limits));
    }
    fn rekey(
        &mut self,
        keep: &dyn Fn(u64) -> bool,
        gained: &mut std::slice::Iter<'_, Vec<u8>>,
    ) -> Result<(), StageError> {
        self.branches
            .iter_mut()
            .try_for_each(|b| b.rekey(keep, gained))
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.branches.iter_mut().try_for_each(|b| b.close(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ChannelEvent;

    /// The sizes of the batches `records` records make on each of two channels whose limits
    /// the runtime asked to be `asked` (forward route: everything goes to channel 0).
    fn batch_sizes<T: Data + Default>(asked: &[usize], records: usize) -> Vec<usize> {
        let mut router: Router<T> = Router::new(Route::Forward, 0, 2, Batching::records(1024), 0);
        router.batch_limits(asked);
        let mut cx = StageCx::new(2, 1024);
        let mut chunk: Vec<T> = (0..records).map(|_| T::default()).collect();
        router.push_many(&mut chunk, &mut cx).expect("pushed");
        router.commit(&mut cx).expect("committed");
        cx.queues[0]
            .iter()
            .filter_map(|e| match e {
                ChannelEvent::Batch(b) => Some(b.len),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_panicking_key_selector_names_the_record_it_panicked_on() {
        let route = Route::Key {
            hash: |r: &u64| {
                assert!(*r != 13, "unlucky key");
                *r
            },
            partitioner: crate::PartitionScheme::default().build(2),
            operator: std::sync::Arc::from("keyed"),
        };
        let mut router = Router::new(route, 0, 2, Batching::records(4), 0);
        let mut cx = StageCx::new(2, 4);
        let mut chunk: Vec<u64> = vec![1, 2, 3, 13, 5];
        let (at, e) = router.push_many(&mut chunk, &mut cx).expect_err("panics");
        assert_eq!(at, 3);
        assert_eq!(&*e.operator, "keyed");
        assert!(chunk.is_empty(), "the chunk is taken whole");
        let mut fine: Vec<u64> = vec![1, 2, 3];
        router.push_many(&mut fine, &mut cx).expect("no panic");
    }

    #[test]
    fn one_channel_takes_every_record_of_any_route_in_order() {
        for route in [Route::Forward, Route::Rebalance, Route::Broadcast] {
            let mut router: Router<u64> = Router::new(route, 0, 1, Batching::records(4), 0);
            let mut cx = StageCx::new(1, 4);
            router
                .push_many(&mut (0..6).collect(), &mut cx)
                .expect("pushed");
            router.close(&mut cx).expect("closed");
            let sizes: Vec<usize> = queued(&mut cx).iter().map(|b| b.len).collect();
            assert_eq!(sizes, vec![4, 2]);
        }
    }

    #[test]
    fn one_keyed_channel_takes_every_record_in_order_without_hashing() {
        let route = Route::Key {
            hash: |_: &u64| -> u64 { unreachable!("one channel needs no hash") },
            partitioner: crate::PartitionScheme::default().build(1),
            operator: std::sync::Arc::from("keyed"),
        };
        let mut router = Router::new(route, 0, 1, Batching::records(4), 0);
        let mut cx = StageCx::new(1, 4);
        router
            .push_many(&mut (0..3).collect(), &mut cx)
            .expect("pushed");
        router.commit(&mut cx).expect("committed");
        // A unit of work that fills two batches and is rolled back leaves the three
        // committed records, not a batch more.
        router
            .push_many(&mut (3..10).collect(), &mut cx)
            .expect("pushed");
        router.rollback();
        assert!(queued(&mut cx).is_empty(), "nothing was sent");
        router
            .push_many(&mut (3..10).collect(), &mut cx)
            .expect("pushed");
        router.commit(&mut cx).expect("committed");
        router.push(10, &mut cx).expect("pushed one by one");
        router.commit(&mut cx).expect("committed");
        router.flush(&mut cx);
        let batches: Vec<Vec<u64>> = queued(&mut cx)
            .into_iter()
            .map(|b| *b.payload.downcast::<Vec<u64>>().expect("a Vec<u64>"))
            .collect();
        assert_eq!(
            batches,
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9, 10]]
        );
    }

    /// The batches queued on channel 0, taken out of `cx`.
    fn queued(cx: &mut StageCx) -> Vec<RecordBatch> {
        cx.queues[0]
            .drain(..)
            .filter_map(|e| match e {
                ChannelEvent::Batch(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_consumed_batch_buffer_is_filled_again_and_a_foreign_one_is_dropped() {
        let mut router: Router<u64> = Router::new(Route::Forward, 0, 1, Batching::records(4), 0);
        let mut cx = StageCx::new(1, 4);
        router
            .push_many(&mut (0..4).collect(), &mut cx)
            .expect("pushed");
        router.commit(&mut cx).expect("committed");
        let first = queued(&mut cx).pop().expect("a full batch");
        let at = first
            .payload
            .downcast_ref::<Vec<u64>>()
            .expect("a Vec<u64>")
            .as_ptr();
        // The lane already holds the next buffer; the one given back serves the one after.
        first.recycle();
        router
            .push_many(&mut (4..12).collect(), &mut cx)
            .expect("pushed");
        router.commit(&mut cx).expect("committed");
        let batches = queued(&mut cx);
        let reused = batches[1].payload.downcast_ref::<Vec<u64>>().expect("Vec");
        assert_eq!(
            reused.as_ptr(),
            at,
            "the buffer given back was filled again"
        );
        assert_eq!(reused, &vec![8, 9, 10, 11], "with the new records only");
        // A buffer of another type is dropped, not kept.
        let home = batches[0].home.clone().expect("a local batch has a home");
        home.give_back(Box::new(vec![1u32; 4]));
        assert!(router.pool.free.lock().expect("pool").is_empty());
    }

    #[test]
    fn larger_batches_hold_at_most_remote_batch_bytes_of_records() {
        // u64: 32 × 1024 records are 256 KiB, within the cap.
        assert_eq!(
            batch_sizes::<u64>(&[32 * 1024, 1024], 70_000),
            vec![32 * 1024; 2]
        );
        // 64-byte records: the cap is 4,096 of them.
        assert_eq!(
            batch_sizes::<[u64; 8]>(&[32 * 1024, 1024], 10_000),
            vec![4096; 2]
        );
        // Records larger than the cap allows for one local batch: a batch is never smaller.
        assert_eq!(
            batch_sizes::<[[u64; 32]; 2]>(&[32 * 1024, 1024], 3_000),
            vec![1024; 2]
        );
        // Local (or smaller) limits are kept as asked.
        assert_eq!(batch_sizes::<[u64; 8]>(&[100, 1024], 250), vec![100; 2]);
    }
}
