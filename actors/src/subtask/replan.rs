//! Rescale in place inside a subtask: holding a source after a checkpoint, moving to a new
//! plan (routers, output channels, input channels, keyed state) and retiring.
//!
//! The job supervisor sends [`Control::Replan`](crate::message::Control::Replan) only once
//! the job is quiet: every source is held after a checkpoint whose barriers every subtask has
//! handled, so no record is in flight and every output queue is empty. A subtask then
//! changes its wiring without restarting: output channels to targets that stay keep their
//! credits, routers take their new layouts, and a subtask of the rescaled chain drops the keys
//! it no longer owns and takes in the ones it gains — the rest of its state stays in place.

use super::{Lifecycle, OutChannel, SubtaskActor};
use crate::message::{Failure, ReplanOrder, Replanned, ToJob};
use actix::prelude::*;
use riffle_framework::exec::{RouteLayout, StageCx};
use riffle_framework::ChannelEvent;
use riffle_framework::{FailureCause, Partitioner, StageError, TaskId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Semaphore;

impl SubtaskActor {
    /// Takes checkpoint `n`; a running source then holds until `Control::Release`.
    pub(super) fn on_hold(&mut self, n: u64, ctx: &mut Context<Self>) {
        if n <= self.last_acked || self.paused {
            return;
        }
        if self.state == Lifecycle::Running && self.is_source() {
            self.holding = true;
        }
        self.on_trigger(n, ctx);
    }

    /// Checkpoint `n` is a rescale's: processing-time timers stand still from its snapshot
    /// on. If the snapshot was taken before this order arrived and a timer fired since, the
    /// checkpoint no longer holds this subtask's state: the subtask fails and the job
    /// recovers (only possible when the order overtook no barrier, across nodes).
    pub(super) fn on_hold_timers(&mut self, n: u64, ctx: &mut Context<Self>) {
        self.timers_held = true;
        if self.last_acked >= n && self.cx.processing_fired() != self.fired_at_snapshot {
            let failure = Failure {
                operator: self.chain_name.clone(),
                cause: FailureCause::Internal(
                    "a processing-time timer fired after the rescale's checkpoint",
                ),
                injected: false,
                poison_attempts: None,
            };
            self.fail(failure, ctx);
        }
    }

    /// A held source continues; held timers run again.
    pub(super) fn on_release(&mut self, ctx: &mut Context<Self>) {
        self.timers_held = false;
        self.holding = false;
        if std::mem::take(&mut self.hold_parked) {
            self.produce(ctx);
        }
    }

    /// Leaves the job: the chain and every channel are dropped; nothing is reported.
    pub(super) fn retire(&mut self) {
        self.retired = true;
        self.state = Lifecycle::Done;
        self.head = None;
        self.outs.clear();
        self.held.clear();
        self.cx = StageCx::with_batching(0, self.plan.config().batching());
        tracing::debug!(chain = %self.chain_name, subtask = self.task.subtask, "subtask retired by a rescale");
    }

    /// Moves to the plan the order names (see the module documentation).
    pub(super) fn on_replan(&mut self, order: ReplanOrder, ctx: &mut Context<Self>) {
        self.timers_held = false;
        if order.version > self.plan_version {
            if let Err(e) = self.replan(&order, ctx) {
                let failure = Failure {
                    operator: e.operator,
                    cause: e.cause,
                    injected: false,
                    poison_attempts: None,
                };
                return self.fail(failure, ctx);
            }
        }
        self.job.do_send(ToJob::Replanned(Replanned {
            task: self.task,
            version: self.plan_version,
        }));
        self.drain(ctx);
    }

    fn replan(&mut self, order: &ReplanOrder, ctx: &mut Context<Self>) -> Result<(), StageError> {
        let plan = self
            .directory
            .plan(order.version, &self.plan, self.plan_version, &order.steps)
            .map_err(|e| {
                tracing::error!(task = ?self.task, error = %e, "cannot build the rescaled plan");
                StageError {
                    operator: self.chain_name.clone(),
                    cause: FailureCause::Internal("a rescale step does not apply to the plan"),
                }
            })?;
        let old = std::mem::replace(&mut self.plan, plan.clone());
        self.plan_version = order.version;
        let chain = self.task.chain;
        // Routers: everything committed goes to the queues first, then the new layouts.
        let moves: Vec<(usize, RouteLayout)> = old
            .route_layout(chain)
            .into_iter()
            .zip(plan.route_layout(chain))
            .map(|(was, now)| (was.base, now))
            .collect();
        if let Some(h) = &mut self.head {
            let h = h.head();
            h.flush(&mut self.cx);
            h.reroute(&moves);
        }
        self.rewire_outputs();
        self.set_batch_limits();
        self.rewire_inputs(&old, ctx);
        if let Some(gained) = &order.gained {
            if order.epoch == self.epoch {
                let ring = plan.key_routing(chain);
                let me = self.task.subtask;
                if let Some(h) = &mut self.head {
                    h.head().rekey(&|hash| ring.route(hash) == me, gained)?;
                }
            }
            // The pause of the rescaled operator ends with its first record.
            self.first_record_pending = true;
        }
        tracing::debug!(chain = %self.chain_name, subtask = self.task.subtask, version = order.version, "moved to the rescaled plan");
        Ok(())
    }

    /// Output channels of the new plan: a channel to the same target and input channel keeps
    /// its address, credits and queue; a new one is resolved.
    fn rewire_outputs(&mut self) {
        let mut old: HashMap<(TaskId, u32), (OutChannel, VecDeque<ChannelEvent>)> = self
            .outs
            .drain(..)
            .zip(self.cx.take_queues())
            .map(|(o, q)| ((o.target, o.in_channel), (o, q)))
            .collect();
        for t in self.plan.out_channels(self.task) {
            let in_channel = t.in_channel as u32;
            let (out, queue) = old.remove(&(t.task, in_channel)).unwrap_or_else(|| {
                let to = self
                    .directory
                    .resolve(self.task, t.task, in_channel, &Arbiter::current());
                let out = OutChannel {
                    target: t.task,
                    parked: to.is_none(),
                    to,
                    in_channel,
                    credits: Arc::new(Semaphore::new(
                        self.directory.credits_to(t.task, self.plan.config()),
                    )),
                    eoi_sent: false,
                };
                (out, VecDeque::new())
            });
            self.outs.push(out);
            self.cx.add_queue(queue);
        }
        for ((target, _), (_, queue)) in old {
            if !queue.is_empty() {
                // Cannot happen while the job is quiet; say so loudly if it does.
                tracing::error!(task = ?self.task, ?target, queued = queue.len(), "a rescale dropped a channel that still had messages");
            }
        }
    }

    /// Input channels of the new plan: a channel from the same upstream subtask keeps whether
    /// it ended; the mailbox grows with the channels' credits.
    fn rewire_inputs(&mut self, old: &riffle_framework::ExecutionPlan, ctx: &mut Context<Self>) {
        let mut was: HashMap<TaskId, VecDeque<usize>> = HashMap::new();
        for (up, ch) in old.in_channels(self.task) {
            was.entry(up).or_default().push_back(ch);
        }
        let now = self.plan.in_channels(self.task);
        let mut closed = vec![false; now.len()];
        for (up, ch) in now {
            let ended = was
                .get_mut(&up)
                .and_then(VecDeque::pop_front)
                .and_then(|c| self.closed.get(c).copied())
                .unwrap_or(false);
            if let Some(c) = closed.get_mut(ch) {
                *c = ended;
            }
        }
        self.open_inputs = closed.iter().filter(|c| !**c).count();
        self.barrier_seen = vec![false; closed.len()];
        self.aligning = None;
        let capacity =
            closed.len() * self.plan.config().max_credits() + crate::directory::MAILBOX_SLACK;
        ctx.set_mailbox_capacity(capacity);
        self.directory.inputs_changed(self.task, closed.len());
        self.clock.rewire(&closed);
        self.closed = closed;
    }
}
