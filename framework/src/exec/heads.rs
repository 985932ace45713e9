//! Chain heads: the input stage (batches from upstream) and the source driver.

use super::{guarded, internal, BoxStage, Payload, StageCx};
use crate::data::Data;
use crate::error::StageError;
use crate::operator::Output;
use crate::operator::{Position, Source, SourceStatus, SubtaskInfo};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A failed batch: the error, and the index of the record that was being processed.
#[derive(Debug)]
pub struct BatchFailure {
    /// What failed.
    pub error: StageError,
    /// The index in the batch of the record that failed.
    pub index: usize,
}

/// A record set aside as poison, encoded with rmp-serde.
pub type DeadRecord = Vec<u8>;

/// What the runtime does with the head of any chain (input or source), apart from feeding it.
pub trait ChainHead: Send {
    /// Distinct keys held by the chain's keyed operators.
    fn distinct_keys(&self) -> u64;
    /// The chain's state at `checkpoint` (see [`super::Stage::snapshot`]).
    ///
    /// # Errors
    /// A hook that failed.
    fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<Vec<u8>>, StageError>;
    /// Restores a freshly opened chain (see [`super::Stage::restore`]).
    ///
    /// # Errors
    /// State that does not decode, or a hook that failed.
    fn restore(
        &mut self,
        states: &[Vec<u8>],
        last_completed: Option<u64>,
    ) -> Result<(), StageError>;
    /// Rescale in place: routers take new layouts (see [`super::Stage::reroute`]).
    fn reroute(&mut self, moves: &[(usize, super::RouteLayout)]);
    /// Routers take per output queue the records of a full batch (see
    /// [`super::Stage::batch_limits`]).
    fn batch_limits(&mut self, limits: &[usize]);
    /// Rescale in place: keyed state keeps the keys `keep` accepts and takes in `gained` (see
    /// [`super::Stage::rekey`]).
    ///
    /// # Errors
    /// A gained entry that does not decode.
    fn rekey(&mut self, keep: &dyn Fn(u64) -> bool, gained: &[Vec<u8>]) -> Result<(), StageError>;
    /// A checkpoint completed (see [`super::Stage::checkpoint_complete`]).
    ///
    /// # Errors
    /// A sink that failed to commit.
    fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError>;
    /// Runs the `on_start` hooks (a source's first).
    ///
    /// # Errors
    /// The first hook that failed.
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
    /// See [`super::Stage::flush`].
    fn flush(&mut self, cx: &mut StageCx);
    /// The subtask's event-time clock advanced (see [`super::Stage::on_watermark`]); on
    /// failure what the hooks emitted is rolled back.
    ///
    /// # Errors
    /// The first hook that failed.
    fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError>;
    /// The subtask's inputs went idle (see [`super::Stage::on_idle`]).
    fn on_idle(&mut self, cx: &mut StageCx);
    /// The wall clock reads `now`: due processing-time timers fire and what they emit is
    /// committed (see [`super::Stage::on_processing_time`]); on failure it is rolled back.
    ///
    /// # Errors
    /// The first timer that failed.
    fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError>;
    /// A restored chain's clock resumes at `watermark` (see [`super::Stage::resume_clock`]).
    fn resume_clock(&mut self, watermark: i64);
    /// Runs the `on_close` hooks (a source's first); on failure their output is rolled back.
    ///
    /// # Errors
    /// The first hook that failed.
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError>;
}

/// The [`ChainHead`] methods that only pass on to the chain's first stage (`self.next`).
macro_rules! forward_to_chain {
    () => {
        fn distinct_keys(&self) -> u64 {
            self.next.distinct_keys()
        }
        fn snapshot(&mut self, checkpoint: u64) -> Result<Vec<Vec<u8>>, StageError> {
            let mut out = Vec::new();
            self.next.snapshot(checkpoint, &mut out)?;
            Ok(out)
        }
        fn restore(
            &mut self,
            states: &[Vec<u8>],
            last_completed: Option<u64>,
        ) -> Result<(), StageError> {
            self.next.restore(&mut states.iter(), last_completed)
        }
        fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<(), StageError> {
            self.next.checkpoint_complete(checkpoint)
        }
        fn flush(&mut self, cx: &mut StageCx) {
            self.next.flush(cx);
        }
        fn on_watermark(&mut self, watermark: i64, cx: &mut StageCx) -> Result<(), StageError> {
            self.next
                .on_watermark(watermark, cx)
                .inspect_err(|_| self.next.rollback())
        }
        fn on_idle(&mut self, cx: &mut StageCx) {
            self.next.on_idle(cx);
        }
        fn on_processing_time(&mut self, now: i64, cx: &mut StageCx) -> Result<(), StageError> {
            self.next
                .on_processing_time(now, cx)
                .and_then(|()| self.next.commit(cx))
                .inspect_err(|_| self.next.rollback())
        }
        fn resume_clock(&mut self, watermark: i64) {
            self.next.resume_clock(watermark);
        }
        fn reroute(&mut self, moves: &[(usize, super::RouteLayout)]) {
            self.next.reroute(moves);
        }
        fn batch_limits(&mut self, limits: &[usize]) {
            self.next.batch_limits(limits);
        }
        fn rekey(
            &mut self,
            keep: &dyn Fn(u64) -> bool,
            gained: &[Vec<u8>],
        ) -> Result<(), StageError> {
            self.next.rekey(keep, &mut gained.iter())
        }
    };
}

/// The head of a chain that receives batches from upstream subtasks, type-erased so that the
/// runtime can hold any chain.
pub trait ErasedInput: ChainHead {
    /// Pushes the records of `batch` (a `Vec<T>`), except those whose index is in `skip`,
    /// through the chain and commits their output. The batch is left intact (records are
    /// cloned into the chain), so a failed batch can be retried on a fresh chain.
    ///
    /// # Errors
    /// The failure and the index of the failed record; the batch's output is rolled back.
    fn process(
        &mut self,
        batch: &Payload,
        skip: &[usize],
        cx: &mut StageCx,
    ) -> Result<usize, BatchFailure>;

    /// The record at `index` of `batch`, encoded (for a dead-letter output).
    fn encode_record(&self, batch: &Payload, index: usize) -> Option<DeadRecord>;
}

/// [`ErasedInput`] for a chain whose first stage takes `T`.
pub struct InputStage<T> {
    next: BoxStage<T>,
    name: Arc<str>,
}

impl<T: Data> InputStage<T> {
    /// Unpacks batches of `T` into `next`.
    pub fn new(next: BoxStage<T>, name: Arc<str>) -> Self {
        InputStage { next, name }
    }

    fn records<'a>(&self, batch: &'a Payload) -> Result<&'a Vec<T>, StageError> {
        batch
            .downcast_ref::<Vec<T>>()
            .ok_or_else(|| internal(&self.name, "batch of the wrong record type"))
    }
}

impl<T: Data> ErasedInput for InputStage<T> {
    fn process(
        &mut self,
        batch: &Payload,
        skip: &[usize],
        cx: &mut StageCx,
    ) -> Result<usize, BatchFailure> {
        let records = self
            .records(batch)
            .map_err(|error| BatchFailure { error, index: 0 })?;
        cx.chaos_hook(&self.name)
            .map_err(|error| BatchFailure { error, index: 0 })?;
        let pushed = if skip.is_empty() {
            self.next.push_all(records, cx).map_err(|(i, e)| (e, i))
        } else {
            records
                .iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .try_for_each(|(i, r)| self.next.push(r.clone(), cx).map_err(|e| (e, i)))
        };
        if let Err((error, index)) = pushed {
            self.next.rollback();
            return Err(BatchFailure { error, index });
        }
        if let Err(error) = self.next.commit(cx) {
            self.next.rollback();
            return Err(BatchFailure {
                error,
                index: records.len(),
            });
        }
        Ok(records.len())
    }
    fn encode_record(&self, batch: &Payload, index: usize) -> Option<DeadRecord> {
        let record = self.records(batch).ok()?.get(index)?;
        rmp_serde::to_vec(record).ok()
    }
}

impl<T: Data> ChainHead for InputStage<T> {
    forward_to_chain!();
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.open(cx)
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        self.next.close(cx).inspect_err(|_| self.next.rollback())
    }
}

/// The outcome of one [`ErasedSource::produce`] call.
#[derive(Debug)]
pub struct Produced {
    /// What the source said.
    pub status: SourceStatus,
    /// Records the source emitted (including a skipped one).
    pub emitted: u64,
    /// The record skipped on request, encoded.
    pub skipped: Option<DeadRecord>,
}

/// The head of a chain that starts with a source, type-erased.
pub trait ErasedSource: ChainHead {
    /// Asks the source for up to one batch of records and commits their output.
    ///
    /// With `skip` set, the record the source emits at that index of this call is not passed
    /// on but returned encoded (a poison record being set aside on replay).
    ///
    /// # Errors
    /// A failure of the source or of an operator chained after it, with the index of the
    /// emitted record whose processing failed (if the failure was downstream of the source);
    /// the output of the call is rolled back, so seeking to the position from before the call
    /// and producing again duplicates nothing.
    fn produce(&mut self, cx: &mut StageCx, skip: Option<u64>) -> Result<Produced, BatchFailure>;
    /// The source's replay position (`None`: not replayable).
    ///
    /// # Errors
    /// The source could not encode its position.
    fn position(&self) -> Result<Option<Position>, StageError>;
    /// Moves the (opened) source to `pos`.
    ///
    /// # Errors
    /// The source could not seek.
    fn seek(&mut self, pos: &Position) -> Result<(), StageError>;
}

/// [`ErasedSource`] for a user [`Source`].
pub struct SourceDriver<S: Source> {
    source: S,
    info: SubtaskInfo,
    next: BoxStage<S::Out>,
    /// The last watermark the source emitted itself.
    watermark: i64,
    /// Where the source's output gathers records before handing them on (kept for its
    /// allocation).
    chunk: Vec<S::Out>,
}

impl<S: Source> SourceDriver<S> {
    /// Drives `source` into `next`.
    pub fn new(source: S, info: SubtaskInfo, next: BoxStage<S::Out>) -> Self {
        SourceDriver {
            source,
            info,
            next,
            watermark: i64::MIN,
            chunk: Vec::new(),
        }
    }

    /// Commits a successful call's output, then sends the watermark the source emitted.
    fn commit(&mut self, cx: &mut StageCx, watermark: Option<i64>) -> Result<(), StageError> {
        self.next.commit(cx)?;
        match watermark {
            Some(w) if w > self.watermark => {
                self.watermark = w;
                self.next.on_watermark(w, cx)
            }
            _ => Ok(()),
        }
    }
}

impl<S: Source> ErasedSource for SourceDriver<S> {
    fn produce(&mut self, cx: &mut StageCx, skip: Option<u64>) -> Result<Produced, BatchFailure> {
        let name = &self.info.operator;
        cx.chaos_hook(name).map_err(|error| BatchFailure {
            error,
            index: usize::MAX,
        })?;
        let source = &mut self.source;
        let mut out = Output::new(&mut *self.next, cx)
            .skipping(skip)
            .for_source(&mut self.chunk);
        let r = catch_unwind(AssertUnwindSafe(|| source.produce(&mut out)));
        out.finish();
        let watermark = out.take_watermark();
        let emitted = out.emitted();
        let (failed_at, skipped) = (out.failed_at(), out.take_skipped());
        let result = match (out.take_failure(), r) {
            (Some(e), _) => Err(e),
            (None, Ok(Ok(status))) => Ok(status),
            (None, Ok(Err(e))) => Err(StageError::from_error(name, e)),
            (None, Err(p)) => Err(StageError::from_panic(name, p)),
        };
        match result.and_then(|status| self.commit(cx, watermark).map(|()| status)) {
            Ok(status) => Ok(Produced {
                status,
                emitted,
                skipped: skipped.and_then(|r| rmp_serde::to_vec(&r).ok()),
            }),
            Err(error) => {
                self.next.rollback();
                // `usize::MAX`: the source itself failed, not the processing of one record.
                let index = failed_at.map_or(usize::MAX, |i| i as usize);
                Err(BatchFailure { error, index })
            }
        }
    }
    fn position(&self) -> Result<Option<Position>, StageError> {
        guarded(&self.info.operator, || self.source.position())
    }
    fn seek(&mut self, pos: &Position) -> Result<(), StageError> {
        let source = &mut self.source;
        guarded(&self.info.operator, || source.seek(pos))
    }
}

impl<S: Source> ChainHead for SourceDriver<S> {
    forward_to_chain!();
    fn open(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let (source, info) = (&mut self.source, &self.info);
        guarded(&info.operator, || source.on_start(info))?;
        self.next.open(cx)
    }
    fn close(&mut self, cx: &mut StageCx) -> Result<(), StageError> {
        let source = &mut self.source;
        guarded(&self.info.operator, || source.on_close())?;
        self.next.close(cx).inspect_err(|_| self.next.rollback())
    }
}
