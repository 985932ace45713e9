//! A replayable source for tests that must act on a running job: it holds (idle, so that
//! checkpoints still pass) at the middle of its share until the test opens its gate.

use riffle::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Emits `(i % keys, 1)` for its share of `0..n`, holding at the middle until `gate` opens.
pub struct Gated {
    next: u64,
    end: u64,
    hold_at: u64,
    n: u64,
    keys: u64,
    gate: &'static AtomicBool,
    /// Counts the subtasks that reached the hold (each once), if given.
    held: Option<&'static AtomicUsize>,
    counted: bool,
}

impl Gated {
    /// A source over `0..n` with `keys` keys, held until `gate` opens.
    pub fn new(n: u64, keys: u64, gate: &'static AtomicBool) -> Self {
        Gated {
            next: 0,
            end: 0,
            hold_at: 0,
            n,
            keys,
            gate,
            held: None,
            counted: false,
        }
    }

    /// Each subtask adds one to `held` when it first holds (so a test knows when every
    /// subtask has emitted the first half of its share).
    pub fn counting_holds(mut self, held: &'static AtomicUsize) -> Self {
        self.held = Some(held);
        self
    }
}

impl Source for Gated {
    type Out = (u64, u64);
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        let (i, p, n) = (info.index as u64, info.parallelism as u64, self.n);
        (self.next, self.end) = (n * i / p, n * (i + 1) / p);
        self.hold_at = (self.next + self.end) / 2;
        Ok(())
    }
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
        if self.next >= self.hold_at && !self.gate.load(Ordering::SeqCst) {
            if let Some(held) = self
                .held
                .filter(|_| !std::mem::replace(&mut self.counted, true))
            {
                held.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(SourceStatus::Idle);
        }
        for _ in 0..out.budget() {
            if self.next == self.end {
                return Ok(SourceStatus::Finished);
            }
            out.emit((self.next % self.keys, 1));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.next).map(Some)
    }
    fn seek(&mut self, p: &Position) -> Result<(), UserError> {
        self.next = p.decode()?;
        Ok(())
    }
}
