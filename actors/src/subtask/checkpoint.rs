//! Checkpoints inside a subtask: barrier alignment, snapshots, commits, resets.
//!
//! A subtask with several inputs that receives `Barrier(n)` on one channel holds back that
//! channel's later messages (inside the actor, not by blocking its mailbox; the held messages
//! keep their credits, so the sender of an aligned channel soon waits) until every open input
//! delivered `Barrier(n)` or ended. Then it snapshots its chain, acknowledges to the job's
//! coordinator, queues `Barrier(n)` on every output after the records that precede it, and
//! handles the held messages. Sources snapshot on a direct trigger; so do subtasks whose input
//! has ended, which no barrier can reach any more.

use super::{Lifecycle, RestoreState, SubtaskActor};
use crate::message::{CheckpointAck, Committed, FirstRecord, ResetOrder, TaskDraining, ToJob};
use actix::prelude::*;
use riffle_framework::{StageError, TaskSnapshot};
use std::sync::Arc;
use tokio::sync::Semaphore;

impl SubtaskActor {
    pub(super) fn on_barrier(&mut self, ch: usize, n: u64, ctx: &mut Context<Self>) {
        match self.aligning {
            Some(a) if n < a => return, // a barrier of a checkpoint already given up
            Some(a) if n == a => {}
            _ => {
                // A newer checkpoint supersedes one that never aligned (it timed out).
                self.release_held(ctx);
                self.aligning = Some(n);
                self.align_started = Some(std::time::Instant::now());
                self.barrier_seen.iter_mut().for_each(|b| *b = false);
            }
        }
        if let Some(b) = self.barrier_seen.get_mut(ch) {
            *b = true;
        }
        self.try_complete_alignment(ctx);
    }

    /// Completes the alignment once every open input delivered the barrier.
    pub(super) fn try_complete_alignment(&mut self, ctx: &mut Context<Self>) {
        let Some(n) = self.aligning else { return };
        let aligned = self
            .barrier_seen
            .iter()
            .zip(&self.closed)
            .all(|(b, c)| *b || *c);
        if !aligned || self.state != Lifecycle::Running {
            return;
        }
        self.aligning = None;
        self.barrier_seen.iter_mut().for_each(|b| *b = false);
        if let Some(t) = self.align_started.take() {
            self.telemetry.aligned(t.elapsed());
        }
        if n > self.last_acked {
            if let Err(e) = self.snapshot_and_ack(n, false) {
                let f = self.stage_failure(e);
                return self.fail(f, ctx);
            }
            self.cx.barrier_all(n);
        }
        self.release_held(ctx);
        self.drain(ctx);
    }

    fn release_held(&mut self, ctx: &mut Context<Self>) {
        let mut held = std::mem::take(&mut self.held);
        while let Some(msg) = held.pop_front() {
            if self.blocked() {
                // Blocked on a credit: the rest waits with the deferred data, ahead of it
                // (everything deferred arrived after what was held).
                held.push_front(msg);
                held.append(&mut self.deferred);
                self.deferred = held;
                return;
            }
            self.on_data(msg, ctx);
        }
    }

    /// Snapshots the chain for checkpoint `n` and acknowledges it.
    fn snapshot_and_ack(&mut self, n: u64, finished: bool) -> Result<(), StageError> {
        let states = match &mut self.head {
            Some(h) => {
                let h = h.head();
                if !finished {
                    h.flush(&mut self.cx);
                }
                h.snapshot(n)?
            }
            None => Vec::new(),
        };
        let position = self
            .position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.last_acked = n;
        self.fired_at_snapshot = self.cx.processing_fired();
        self.job.do_send(ToJob::Ack(CheckpointAck {
            task: self.task,
            epoch: self.epoch,
            id: n,
            snapshot: TaskSnapshot {
                chain: self.task.chain,
                subtask: self.task.subtask,
                finished,
                position,
                states,
                watermark: (self.clock.current() > i64::MIN).then(|| self.clock.current()),
            },
        }));
        Ok(())
    }

    /// A direct trigger: sources emit the barrier; finished subtasks snapshot their final state.
    pub(super) fn on_trigger(&mut self, n: u64, ctx: &mut Context<Self>) {
        if n <= self.last_acked || self.paused {
            return;
        }
        let result = match self.state {
            Lifecycle::Running if self.is_source() => self.snapshot_and_ack(n, false).map(|()| {
                self.cx.barrier_all(n);
            }),
            Lifecycle::Draining | Lifecycle::Done => self.snapshot_and_ack(n, true),
            _ => Ok(()),
        };
        match result {
            Ok(()) => self.drain(ctx),
            Err(e) if self.state == Lifecycle::Running => {
                let f = self.stage_failure(e);
                self.fail(f, ctx);
            }
            Err(e) => {
                tracing::error!(task = ?self.task, error = %e, "snapshot of a finished subtask failed")
            }
        }
    }

    /// Checkpoint `id` completed: sinks commit.
    pub(super) fn on_complete(&mut self, id: u64, ack: bool, ctx: &mut Context<Self>) {
        let result = match &mut self.head {
            Some(h) => h.head().checkpoint_complete(id),
            None => Ok(()),
        };
        match result {
            Ok(()) if ack => self.job.do_send(ToJob::Committed(Committed {
                task: self.task,
                id,
            })),
            Ok(()) => {}
            // The next recovery commits again (`Sink::recover`).
            Err(e) if self.state == Lifecycle::Running => {
                let f = self.stage_failure(e);
                self.fail(f, ctx);
            }
            Err(e) => tracing::error!(task = ?self.task, error = %e, "commit failed"),
        }
    }

    /// Tells the coordinator that no barrier will reach this subtask any more.
    pub(super) fn notify_draining(&mut self) {
        if self.checkpointing {
            self.job.do_send(ToJob::Draining(TaskDraining {
                task: self.task,
                epoch: self.epoch,
            }));
        }
    }

    pub(super) fn note_first_record(&mut self) {
        if std::mem::take(&mut self.first_record_pending) {
            self.job
                .do_send(ToJob::FirstRecord(FirstRecord { epoch: self.epoch }));
        }
    }

    /// Forgets the current epoch and prepares to restore `order`'s snapshot.
    pub(super) fn apply_reset(&mut self, order: ResetOrder) {
        self.epoch = order.epoch;
        self.attempt = order.attempt;
        self.cx.clear();
        self.held.clear();
        self.deferred.clear();
        self.produce_parked = false;
        self.aligning = None;
        self.barrier_seen.iter_mut().for_each(|b| *b = false);
        self.closed.iter_mut().for_each(|c| *c = false);
        self.open_inputs = self.closed.len();
        self.retry = None;
        self.finish_after_restart = false;
        self.source_poison = None;
        self.holding = false;
        self.hold_parked = false;
        self.last_acked = order.last_completed.unwrap_or(0);
        self.metrics.records_in = 0;
        self.metrics.records_out = 0;
        for out in &mut self.outs {
            out.eoi_sent = false;
            out.parked = false;
            if let Some(to) =
                self.directory
                    .resolve(self.task, out.target, out.in_channel, &Arbiter::current())
            {
                // Only a re-created receiver gets fresh credits: the old ones still return
                // from the messages the old epoch left in an unchanged receiver's mailbox.
                if out.to.as_ref() != Some(&to) {
                    out.to = Some(to);
                    let credits = self.directory.credits_to(out.target, self.plan.config());
                    out.credits = Arc::new(Semaphore::new(credits));
                }
            }
        }
        let entries = self.plan.state_entries(self.task.chain);
        let (states, position, finished, watermark) = match order.snapshot {
            Some(s) => (s.states, s.position, s.finished, s.watermark),
            None => (vec![Vec::new(); entries], None, false, None),
        };
        self.clock = riffle_framework::InputClock::resumed(self.closed.len(), watermark);
        *self.position.lock().unwrap_or_else(|e| e.into_inner()) = position;
        self.restore = Some(RestoreState {
            states,
            last_completed: order.last_completed,
            finished,
            watermark,
        });
        self.paused = true;
    }

    /// Every subtask of the epoch is restored: run.
    pub(super) fn on_go(&mut self, epoch: u64, ctx: &mut Context<Self>) {
        if epoch != self.epoch || !self.paused || self.state != Lifecycle::Running {
            return;
        }
        self.paused = false;
        self.first_record_pending = true;
        self.advance(ctx);
    }

    /// A subtask restored as finished: repeat its end-of-input (its hooks already ran).
    pub(super) fn finish_restored(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Draining) {
            return;
        }
        self.cx.end_all();
        self.notify_draining();
        self.drain(ctx);
    }
}
