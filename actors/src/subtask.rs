//! The subtask actor: one per parallel instance of a chain.
//!
//! # Lifecycle
//! `Running` → (`EndOfInput` on every input, or the source finished) → `Draining` (hooks
//! closed, end-of-input queued on every output) → `Done` once every queued message has been
//! sent; or `Failed` at the first error. Transitions only go forward
//! ([`Lifecycle::can_become`]).
//!
//! # Backpressure
//! Each output channel has a semaphore of `credits` permits. A message is sent only with a
//! permit, which it carries and which returns when the receiver dropped the message. When a
//! channel has queued messages and no permit, the actor waits (`ctx.wait`) for one: while it
//! waits it handles no input, so its own upstream runs out of credits in turn. Records in
//! flight per channel are therefore bounded by `credits × batch_size` plus what the sender
//! buffers (one partial batch per channel and the output of the input batch at hand).

use crate::message::{DataMessage, Event, SubtaskMetrics, TaskFailed, TaskFinished};
use actix::prelude::*;
use riffle_framework::exec::{OutEvent, StageCx};
use riffle_framework::{FailureCause, SourceStatus, StageError, TaskChain, TaskId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long an idle source (nothing ready) waits before it is asked again.
const IDLE_SOURCE_PAUSE: Duration = Duration::from_millis(1);

/// Where a subtask is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Processing input.
    Running,
    /// Input ended; sending what is still queued, then end-of-input.
    Draining,
    /// Everything sent; reported to the job.
    Done,
    /// Failed; reported to the job.
    Failed,
}

impl Lifecycle {
    /// Whether moving from `self` to `next` is allowed.
    pub fn can_become(self, next: Lifecycle) -> bool {
        use Lifecycle::*;
        matches!(
            (self, next),
            (Running, Draining) | (Draining, Done) | (Running, Failed) | (Draining, Failed)
        )
    }
}

/// One output channel of a subtask.
pub(crate) struct OutChannel {
    pub to: Recipient<DataMessage>,
    pub in_channel: u32,
    pub credits: Arc<Semaphore>,
}

/// The actor running one subtask of a chain.
pub(crate) struct SubtaskActor {
    task: TaskId,
    chain_name: String,
    head: TaskChain,
    cx: StageCx,
    outs: Vec<OutChannel>,
    open_inputs: usize,
    state: Lifecycle,
    job: Recipient<TaskFinished>,
    failures: Recipient<TaskFailed>,
    metrics: SubtaskMetrics,
    flush_interval: Duration,
    epoch: u64,
}

pub(crate) struct SubtaskSetup {
    pub task: TaskId,
    pub chain_name: String,
    pub head: TaskChain,
    pub outs: Vec<OutChannel>,
    pub in_channels: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub job: Recipient<TaskFinished>,
    pub failures: Recipient<TaskFailed>,
}

impl SubtaskActor {
    pub(crate) fn new(s: SubtaskSetup) -> Self {
        let channels = s.outs.len();
        SubtaskActor {
            metrics: SubtaskMetrics {
                chain: s.chain_name.clone(),
                subtask: s.task.subtask,
                ..SubtaskMetrics::default()
            },
            task: s.task,
            chain_name: s.chain_name,
            head: s.head,
            cx: StageCx::new(channels, s.batch_size),
            outs: s.outs,
            open_inputs: s.in_channels,
            state: Lifecycle::Running,
            job: s.job,
            failures: s.failures,
            flush_interval: s.flush_interval,
            epoch: 0,
        }
    }

    fn become_(&mut self, next: Lifecycle) -> bool {
        if self.state.can_become(next) {
            self.state = next;
            true
        } else {
            false
        }
    }

    fn fail(&mut self, error: StageError, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Failed) {
            return;
        }
        tracing::error!(chain = %self.chain_name, subtask = self.task.subtask, %error, "subtask failed");
        self.failures.do_send(TaskFailed {
            task: self.task,
            chain: self.chain_name.clone(),
            error,
        });
        ctx.stop();
    }

    fn internal(&mut self, what: &'static str, ctx: &mut Context<Self>) {
        let error = StageError {
            operator: self.chain_name.clone(),
            cause: FailureCause::Internal(what),
        };
        self.fail(error, ctx);
    }

    /// End of all input: close the chain's hooks, queue end-of-input everywhere, drain.
    fn finish_input(&mut self, ctx: &mut Context<Self>) {
        if !self.become_(Lifecycle::Draining) {
            return;
        }
        let closed = match &mut self.head {
            TaskChain::Source(s) => s.close(&mut self.cx),
            TaskChain::Input(i) => i.close(&mut self.cx),
        };
        if let Err(e) = closed {
            return self.fail(e, ctx);
        }
        self.cx.end_all();
        self.drain(ctx);
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        match &mut self.head {
            TaskChain::Source(s) => s.flush(&mut self.cx),
            TaskChain::Input(i) => i.flush(&mut self.cx),
        }
        self.drain(ctx);
    }

    /// Sends queued messages while credits last; waits for a credit when a channel runs out.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.state == Lifecycle::Failed {
            return;
        }
        for i in 0..self.outs.len() {
            while let Some(front) = self.cx.queues[i].front() {
                let _ = front;
                let out = &self.outs[i];
                let Ok(permit) = out.credits.clone().try_acquire_owned() else {
                    self.metrics.credit_stalls += 1;
                    let sem = out.credits.clone();
                    let wait = async move { sem.acquire_owned().await.ok() };
                    ctx.wait(fut::wrap_future::<_, Self>(wait).map(|permit, act, ctx| {
                        drop(permit);
                        act.drain(ctx);
                    }));
                    return;
                };
                let Some(ev) = self.cx.queues[i].pop_front() else {
                    break;
                };
                let event = match ev {
                    OutEvent::Batch { payload, len } => {
                        self.metrics.batches_out += 1;
                        Event::Batch { payload, len }
                    }
                    OutEvent::EndOfInput => Event::EndOfInput,
                };
                let msg = DataMessage {
                    epoch: self.epoch,
                    channel: out.in_channel,
                    event,
                    credit: Some(permit),
                };
                if let Err(e) = out.to.try_send(msg) {
                    let what = match e {
                        SendError::Full(_) => "downstream mailbox full despite credits",
                        SendError::Closed(_) => "downstream subtask is gone",
                    };
                    return self.internal(what, ctx);
                }
            }
        }
        if self.state == Lifecycle::Draining && self.become_(Lifecycle::Done) {
            self.metrics.records_out = self.cx.records_out;
            self.job.do_send(TaskFinished {
                task: self.task,
                metrics: self.metrics.clone(),
            });
            ctx.stop();
        }
    }

    /// Asks the source for one batch, then yields so other actors on the thread run.
    fn produce(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        let TaskChain::Source(source) = &mut self.head else {
            return;
        };
        let status = source.produce(&mut self.cx).map(|(status, emitted)| {
            self.metrics.records_in += emitted;
            status
        });
        match status {
            Err(e) => self.fail(e, ctx),
            Ok(SourceStatus::Finished) => self.finish_input(ctx),
            Ok(SourceStatus::More) => {
                self.drain(ctx);
                ctx.spawn(
                    fut::wrap_future::<_, Self>(tokio::task::yield_now())
                        .map(|_, act, ctx| act.produce(ctx)),
                );
            }
            Ok(SourceStatus::Idle) => {
                self.drain(ctx);
                ctx.run_later(IDLE_SOURCE_PAUSE, |act, ctx| act.produce(ctx));
            }
        }
    }
}

impl Actor for SubtaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let opened = match &mut self.head {
            TaskChain::Source(s) => s.open(&mut self.cx),
            TaskChain::Input(i) => i.open(&mut self.cx),
        };
        if let Err(e) = opened {
            return self.fail(e, ctx);
        }
        ctx.run_interval(self.flush_interval, |act, ctx| act.flush(ctx));
        match self.head {
            TaskChain::Source(_) => self.produce(ctx),
            TaskChain::Input(_) if self.open_inputs == 0 => self.finish_input(ctx),
            TaskChain::Input(_) => {}
        }
    }
}

impl Drop for SubtaskActor {
    fn drop(&mut self) {
        // A runtime bug that unwinds through a handler must not leave the job hanging.
        if matches!(self.state, Lifecycle::Running | Lifecycle::Draining) {
            self.failures.do_send(TaskFailed {
                task: self.task,
                chain: self.chain_name.clone(),
                error: StageError {
                    operator: self.chain_name.clone(),
                    cause: FailureCause::Internal("subtask actor dropped before it finished"),
                },
            });
        }
    }
}

impl Handler<DataMessage> for SubtaskActor {
    type Result = ();

    fn handle(&mut self, msg: DataMessage, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running || msg.epoch != self.epoch {
            return;
        }
        match msg.event {
            Event::Batch { payload, len } => {
                let TaskChain::Input(input) = &mut self.head else {
                    return self.internal("a source subtask received a batch", ctx);
                };
                self.metrics.batches_in += 1;
                self.metrics.records_in += len as u64;
                if let Err(e) = input.push_batch(payload, &mut self.cx) {
                    return self.fail(e, ctx);
                }
                self.drain(ctx);
            }
            Event::EndOfInput => {
                self.open_inputs = self.open_inputs.saturating_sub(1);
                if self.open_inputs == 0 {
                    self.finish_input(ctx);
                }
            }
        }
        // `msg.credit` drops here: the sender gets its credit back.
    }
}

#[cfg(test)]
mod tests {
    use super::Lifecycle::{self, *};

    #[test]
    fn lifecycle_only_moves_forward() {
        let all = [Running, Draining, Done, Failed];
        let allowed: Vec<(Lifecycle, Lifecycle)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Running, Draining),
                (Running, Failed),
                (Draining, Done),
                (Draining, Failed)
            ]
        );
    }
}
