//! Input side of a subtask: the data-plane entry point (`on_data`), batches from upstream, a
//! source's `produce` calls, armed chaos faults and poison records.

use super::{internal, Lifecycle, Retry, SourcePoison, SubtaskActor, IDLE_SOURCE_PAUSE};
use crate::message::{DataMessage, DeadLettered, Failure, PlannedKind, StopDue, ToJob};
use actix::prelude::*;
use riffle_framework::exec::{BatchFailure, Fault};
use riffle_framework::{
    ChannelEvent, DeadLetter, PoisonAction, RecordBatch, SourceStatus, TaskChain, TaskId,
};

impl SubtaskActor {
    /// A data-plane message: drop it if stale, hold it if its channel is aligned, else handle.
    pub(super) fn on_data(&mut self, msg: DataMessage, ctx: &mut Context<Self>) {
        if msg.epoch != self.epoch || self.state != Lifecycle::Running {
            return;
        }
        let ch = msg.channel as usize;
        if self.aligning.is_some() && self.barrier_seen.get(ch).copied().unwrap_or(false) {
            self.held.push_back(msg);
            return;
        }
        match msg.event {
            ChannelEvent::Batch(RecordBatch { payload, len, home }) => {
                self.clock.active(ch);
                let retry = Retry {
                    payload,
                    len,
                    home,
                    skip: Vec::new(),
                    fail_index: usize::MAX,
                    fail_count: 0,
                };
                self.run_batch(retry, ctx);
            }
            ChannelEvent::Barrier(n) => self.on_barrier(ch, n, ctx),
            ChannelEvent::EndOfInput => self.close_inputs(&[ch], ctx),
            ChannelEvent::Watermark(t) => {
                if let Some(now) = self.clock.advance(ch, t) {
                    self.clock_advanced(now, ctx);
                }
            }
            ChannelEvent::Idle => {
                if let Some(now) = self.clock.idle(ch) {
                    self.clock_advanced(now, ctx);
                }
                if self.clock.all_idle() {
                    // Every input is idle: so is this subtask's output.
                    if let Some(h) = &mut self.head {
                        h.head().on_idle(&mut self.cx);
                    }
                    self.drain(ctx);
                }
            }
        }
    }

    /// The event-time clock advanced to `now`: the chain's hooks run, its routers queue the
    /// watermark behind what they hold, and it goes out.
    pub(super) fn clock_advanced(&mut self, now: i64, ctx: &mut Context<Self>) {
        let Some(h) = &mut self.head else { return };
        if let Err(e) = h.head().on_watermark(now, &mut self.cx) {
            let f = self.stage_failure(e);
            return self.fail(f, ctx);
        }
        self.drain(ctx);
    }

    /// Fires armed chaos faults whose record count has been reached (one at a time).
    pub(super) fn fire_armed(&mut self) {
        while !self.cx.armed() {
            match self.armed.last() {
                Some(&(after, kind)) if self.metrics.records_in >= after => {
                    self.armed.pop();
                    match kind {
                        PlannedKind::Panic => self.cx.arm(Fault::Panic),
                        PlannedKind::Error => self.cx.arm(Fault::Error),
                        PlannedKind::Stop => self
                            .job
                            .do_send(ToJob::StopDue(StopDue { task: self.task })),
                        PlannedKind::StopWorker => self.job.do_send(ToJob::StopDue(StopDue {
                            task: TaskId {
                                chain: usize::MAX,
                                subtask: 0,
                            },
                        })),
                    }
                }
                _ => break,
            }
        }
    }

    pub(super) fn run_batch(&mut self, mut r: Retry, ctx: &mut Context<Self>) {
        self.fire_armed();
        let Some(TaskChain::Input(input)) = &mut self.head else {
            return self.report_fatal(internal(
                &self.chain_name,
                "a source subtask received a batch",
            ));
        };
        let started = std::time::Instant::now();
        let result = input.process(&r.payload, &r.skip, &mut self.cx);
        if self.telemetry.worked(started, std::time::Instant::now()) {
            self.publish();
        }
        match result {
            Ok(n) => {
                self.note_first_record();
                self.metrics.batches_in += 1;
                self.metrics.records_in += (n - r.skip.len().min(n)) as u64;
                riffle_framework::recycle(r.payload, r.home);
                self.flush_eagerly();
                self.drain(ctx);
            }
            Err(failure) => {
                let mut f = self.stage_failure(failure.error);
                if !f.injected && failure.index < r.len {
                    self.count_poison(&mut r, failure.index, &mut f);
                }
                self.retry = Some(r);
                self.fail(f, ctx);
            }
        }
    }

    /// Counts a failure of the record at `index`; past the policy's attempts it is poison.
    pub(super) fn count_poison(&mut self, r: &mut Retry, index: usize, f: &mut Failure) {
        if r.fail_index == index {
            r.fail_count += 1;
        } else {
            r.fail_index = index;
            r.fail_count = 1;
        }
        let policy = self.plan.config().poison;
        if r.fail_count < policy.max_attempts {
            return;
        }
        match policy.action {
            PoisonAction::FailJob => f.poison_attempts = Some(r.fail_count),
            PoisonAction::DeadLetter => {
                let record = match &self.head {
                    Some(TaskChain::Input(i)) => i.encode_record(&r.payload, index),
                    _ => None,
                };
                self.job.do_send(ToJob::DeadLettered(DeadLettered {
                    letter: DeadLetter {
                        operator: f.operator.clone(),
                        subtask: self.task.subtask,
                        cause: f.cause.to_string(),
                        attempts: r.fail_count,
                        record: record.unwrap_or_default(),
                    },
                }));
                r.skip.push(index);
                r.fail_index = usize::MAX;
                r.fail_count = 0;
            }
        }
    }

    /// Asks the source for one batch, then yields so other actors on the thread run.
    pub(super) fn produce(&mut self, ctx: &mut Context<Self>) {
        if self.state != Lifecycle::Running {
            return;
        }
        if self.holding {
            // Held after a checkpoint: stop the loop until `Control::Release`.
            self.hold_parked = true;
            return;
        }
        if self.blocked() {
            // Blocked on a credit: the loop goes on when the credit comes.
            self.produce_parked = true;
            return;
        }
        self.fire_armed();
        let skip = self.source_poison.as_ref().and_then(|p| p.skip);
        let Some(TaskChain::Source(source)) = &mut self.head else {
            return;
        };
        let started = std::time::Instant::now();
        let produced = source.produce(&mut self.cx, skip).and_then(|p| {
            let pos = source.position().map_err(|error| BatchFailure {
                error,
                index: usize::MAX,
            })?;
            Ok((p, pos))
        });
        if self.telemetry.worked(started, std::time::Instant::now()) {
            self.publish();
        }
        let status = match produced {
            Ok((p, pos)) => {
                if p.emitted > 0 {
                    self.note_first_record();
                }
                self.metrics.records_in += p.emitted;
                *self.position.lock().unwrap_or_else(|e| e.into_inner()) = pos;
                if let Some(record) = p.skipped {
                    self.dead_letter_source_record(record);
                }
                p.status
            }
            Err(failure) => {
                let mut f = self.stage_failure(failure.error);
                if !f.injected && failure.index != usize::MAX {
                    self.count_source_poison(failure.index as u64, &mut f);
                }
                return self.fail(f, ctx);
            }
        };
        self.flush_eagerly();
        match status {
            SourceStatus::Finished => self.finish_input(ctx),
            SourceStatus::More => {
                self.drain(ctx);
                // Yield to the thread's other actors; at most every `IO_YIELD_EVERY` also
                // through the scheduler's I/O poll (timers, sockets), which costs a system call.
                let through_io = started.duration_since(self.io_yielded) >= IO_YIELD_EVERY;
                if through_io {
                    self.io_yielded = started;
                }
                let yielded = Yield {
                    io: through_io.then(|| Box::pin(tokio::task::yield_now())),
                    woken: false,
                };
                ctx.spawn(fut::wrap_future::<_, Self>(yielded).map(|_, act, ctx| act.produce(ctx)));
            }
            SourceStatus::Idle => {
                self.drain(ctx);
                ctx.run_later(IDLE_SOURCE_PAUSE, |act, ctx| act.produce(ctx));
            }
        }
    }

    /// Counts a failure of the record a source emitted at `index` of the `produce` call that
    /// starts at the current position; past the policy's attempts it is poison.
    pub(super) fn count_source_poison(&mut self, index: u64, f: &mut Failure) {
        let at = self
            .position
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let p = self.source_poison.get_or_insert_with(|| SourcePoison {
            at: at.clone(),
            index,
            count: 0,
            skip: None,
            cause: String::new(),
            operator: String::new(),
        });
        if p.at != at || p.index != index {
            *p = SourcePoison {
                at,
                index,
                count: 0,
                skip: None,
                cause: String::new(),
                operator: String::new(),
            };
        }
        p.count += 1;
        let policy = self.plan.config().poison;
        if p.count < policy.max_attempts {
            return;
        }
        match policy.action {
            PoisonAction::FailJob => f.poison_attempts = Some(p.count),
            PoisonAction::DeadLetter => {
                p.skip = Some(index);
                p.cause = f.cause.to_string();
                p.operator = f.operator.clone();
            }
        }
    }

    pub(super) fn dead_letter_source_record(&mut self, record: Vec<u8>) {
        if let Some(p) = self.source_poison.take() {
            self.job.do_send(ToJob::DeadLettered(DeadLettered {
                letter: DeadLetter {
                    operator: p.operator,
                    subtask: self.task.subtask,
                    cause: p.cause,
                    attempts: p.count,
                    record,
                },
            }));
        }
    }
}

/// How often a busy source loop yields through the scheduler's I/O poll (the other times it
/// yields locally, without a system call): timers and sockets on its thread are served within
/// about 0.1 ms, and the poll costs little (it was one `epoll_wait` per source batch, ~10 % of
/// a keyed job's time; 100 µs against 500 µs made no difference to throughput).
const IO_YIELD_EVERY: std::time::Duration = std::time::Duration::from_micros(100);

/// Lets the other actors of the worker thread run once, then resumes. Without `io`, the task
/// wakes itself and goes to the back of the thread's local run queue, which costs no system
/// call; with it (tokio's `yield_now`), the wake is deferred and the scheduler polls the I/O
/// driver first — an `epoll_wait`, and the only way a thread kept busy by its actors serves
/// its timers and sockets (without it, cluster heartbeats went unanswered).
struct Yield<F> {
    io: Option<std::pin::Pin<Box<F>>>,
    woken: bool,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Yield<F> {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.get_mut();
        if let Some(io) = &mut this.io {
            return io.as_mut().poll(cx);
        }
        if this.woken {
            return std::task::Poll::Ready(());
        }
        this.woken = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
