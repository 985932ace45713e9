//! Output side of a subtask: sending queued messages as credits allow, ends of input,
//! re-wiring after a receiver was re-created.

use super::{Lifecycle, MsgKind, SubtaskActor};
use crate::message::{Credit, DataMessage, TaskFinished, ToJob};
use actix::prelude::*;
use riffle_framework::{ChannelEvent, TaskId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Why a channel stopped sending.
pub(super) enum Blocked {
    /// No credit left: wait for this semaphore.
    Credit(Arc<Semaphore>),
    /// The receiver's mailbox is full (old-epoch messages not yet dropped).
    Full,
}

/// How long a sender waits before retrying a full mailbox.
const FULL_MAILBOX_PAUSE: Duration = Duration::from_millis(1);

impl SubtaskActor {
    /// Sends queued messages while credits last; when a channel runs out, waits for a credit
    /// *beside* the mailbox (a spawned future, not `ctx.wait`): control messages are still
    /// handled while the subtask is blocked, and data messages are deferred until it is not
    /// (see the module docs of `subtask`). A wait already under way is replaced: the
    /// channels may have changed (a re-wire, a reset, a re-plan).
    pub(super) fn drain(&mut self, ctx: &mut Context<Self>) {
        let replaced = self
            .credit_wait
            .take()
            .map(|h| ctx.cancel_future(h))
            .is_some();
        if self.paused || matches!(self.state, Lifecycle::Failed | Lifecycle::Recovering) {
            return;
        }
        self.drain_now(ctx);
        if replaced && !self.blocked() {
            // The cancelled wait would have taken the deferred data and the parked source:
            // do it once this call has returned (it may come from inside `on_data`).
            ctx.spawn(fut::ready(()).map(|_, act: &mut Self, ctx| act.run_deferred(ctx)));
        }
    }

    /// [`Self::drain`]'s work: send, block, or finish.
    fn drain_now(&mut self, ctx: &mut Context<Self>) {
        // Send what every channel has credit for, then wait for the first one that ran out
        // (a blocked channel must not hold back a barrier queued for another).
        let mut blocked = None;
        for i in 0..self.outs.len() {
            if let Some(b) = self.drain_channel(i) {
                blocked.get_or_insert(b);
            }
        }
        match blocked {
            Some(Blocked::Credit(wait)) => {
                self.metrics.credit_stalls += 1;
                self.telemetry.clock().blocked();
                let wait = async move { wait.acquire_owned().await.ok() };
                let h = ctx.spawn(fut::wrap_future::<_, Self>(wait).map(|permit, act, ctx| {
                    drop(permit);
                    act.on_unblocked(ctx);
                }));
                self.credit_wait = Some(h);
                return;
            }
            Some(Blocked::Full) => {
                // The receiver's mailbox still holds messages of an old epoch; retry shortly.
                let pause = fut::wrap_future::<_, Self>(tokio::time::sleep(FULL_MAILBOX_PAUSE));
                let h = ctx.spawn(pause.map(|_, act, ctx| act.on_unblocked(ctx)));
                self.credit_wait = Some(h);
                return;
            }
            None => {}
        }
        let idle = self.outs.iter().all(|o| !o.parked) && self.cx.queues_empty();
        if self.state == Lifecycle::Draining && idle && self.become_(Lifecycle::Done) {
            self.metrics.records_out = self.cx.records_out();
            self.metrics.distinct_keys = self
                .head
                .as_ref()
                .map_or(0, |h| h.head_ref().distinct_keys());
            self.publish();
            self.job.do_send(ToJob::Finished(TaskFinished {
                task: self.task,
                epoch: self.epoch,
                metrics: self.metrics.clone(),
            }));
        }
    }

    /// A credit returned (or a full mailbox's pause passed): send on, then take the data
    /// deferred meanwhile and let a parked source produce again.
    fn on_unblocked(&mut self, ctx: &mut Context<Self>) {
        self.credit_wait = None;
        self.telemetry.clock().unblocked();
        self.drain(ctx);
        self.run_deferred(ctx);
    }

    /// Whether the subtask waits for a credit (and so defers data and parks its source).
    pub(super) fn blocked(&self) -> bool {
        self.credit_wait.is_some()
    }

    /// Handles the data messages deferred while the subtask was blocked, in order, until it
    /// blocks again; then a source parked by the block produces again.
    pub(super) fn run_deferred(&mut self, ctx: &mut Context<Self>) {
        while !self.blocked() && !self.paused && self.state != Lifecycle::Recovering {
            let Some(msg) = self.deferred.pop_front() else {
                break;
            };
            self.on_data(msg, ctx);
        }
        if !self.blocked() && std::mem::take(&mut self.produce_parked) {
            self.produce(ctx);
        }
    }

    /// Sends what channel `i` has credit for; says why it stopped if it could not send all.
    pub(super) fn drain_channel(&mut self, i: usize) -> Option<Blocked> {
        let out = &mut self.outs[i];
        while !out.parked && !self.cx.queue_mut(i).is_empty() {
            let Ok(permit) = out.credits.clone().try_acquire_owned() else {
                return Some(Blocked::Credit(out.credits.clone()));
            };
            let Some(event) = self.cx.queue_mut(i).pop_front() else {
                break;
            };
            let batch = event.is_batch();
            let msg_kind = match event {
                ChannelEvent::EndOfInput => MsgKind::End,
                _ => MsgKind::Other,
            };
            let msg = DataMessage {
                epoch: self.epoch,
                channel: out.in_channel,
                event,
                credit: Some(Credit::Local(permit)),
            };
            let Some(to) = &out.to else {
                // Not resolved yet: hold the channel until a re-wire or reset finds it.
                self.cx.queue_mut(i).push_front(msg.event);
                out.parked = true;
                return None;
            };
            match to.try_send(msg) {
                Ok(()) if batch => self.metrics.batches_out += 1,
                Ok(()) => out.eoi_sent |= matches!(msg_kind, MsgKind::End),
                Err(SendError::Full(msg)) => {
                    self.cx.queue_mut(i).push_front(msg.event);
                    return Some(Blocked::Full);
                }
                Err(SendError::Closed(msg)) => {
                    // The receiver is gone (its worker stopped): keep the message and wait for
                    // a re-wire.
                    self.cx.queue_mut(i).push_front(msg.event);
                    out.parked = true;
                    tracing::warn!(chain = %self.chain_name, subtask = self.task.subtask, target = ?out.target, "receiver gone; holding its channel until it is re-created");
                }
            }
        }
        None
    }

    pub(super) fn close_inputs(&mut self, channels: &[usize], ctx: &mut Context<Self>) {
        let mut advanced = None;
        for &c in channels {
            if let Some(closed) = self.closed.get_mut(c) {
                if !*closed {
                    *closed = true;
                    self.open_inputs -= 1;
                }
            }
            advanced = self.clock.close(c).or(advanced);
        }
        if let Some(now) = advanced {
            if self.state == Lifecycle::Running {
                self.clock_advanced(now, ctx);
            }
        }
        self.try_complete_alignment(ctx);
        if self.open_inputs == 0 && self.state == Lifecycle::Running && !self.is_source() {
            self.finish_input(ctx);
        }
    }

    /// Tells the chain's routers how many records make a full batch on each output channel
    /// (larger to other nodes, see `JobConfig::remote_batch_scale`); again whenever an
    /// output is re-wired.
    pub(super) fn set_batch_limits(&mut self) {
        let cfg = self.plan.config();
        let limits: Vec<usize> = self
            .outs
            .iter()
            .map(|o| self.directory.batch_size_to(o.target, cfg))
            .collect();
        if let Some(h) = &mut self.head {
            h.head().batch_limits(&limits);
        }
    }

    pub(super) fn rewire(&mut self, target: TaskId, ctx: &mut Context<Self>) {
        for (i, out) in self.outs.iter_mut().enumerate() {
            if out.target != target {
                continue;
            }
            let Some(to) =
                self.directory
                    .resolve(self.task, target, out.in_channel, &Arbiter::current())
            else {
                tracing::error!(task = ?self.task, ?target, "re-wired to a subtask nobody knows");
                continue;
            };
            out.to = Some(to);
            let credits = self.directory.credits_to(target, self.plan.config());
            out.credits = Arc::new(Semaphore::new(credits));
            out.parked = false;
            let queued_eoi = self
                .cx
                .queue_mut(i)
                .iter()
                .any(|e| matches!(e, ChannelEvent::EndOfInput));
            if out.eoi_sent && !queued_eoi {
                // The lost receiver had our end-of-input; its successor needs it too.
                self.cx.queue_mut(i).push_back(ChannelEvent::EndOfInput);
            }
        }
        self.set_batch_limits();
        if self.state == Lifecycle::Done {
            // Late re-wire after we finished: send the repeated end-of-input directly.
            for i in 0..self.outs.len() {
                let _ = self.drain_channel(i);
            }
        } else {
            self.drain(ctx);
        }
    }
}
