//! Restart strategies, the intensity limit, poison records, worker-thread loss and isolation.

use crate::common;

use common::{chaos_restarts, sorted};
use riffle::errors::FailureCause;
use riffle::operators::DeadLetter;
use riffle::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

const POISON: u64 = 777;

/// A job of parallelism 2 that restarts one-for-one and treats a record as poison after 3
/// attempts, with `action`.
fn poison_env(action: PoisonAction) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.restart = chaos_restarts(RestartKind::OneForOne);
        c.poison = PoisonPolicy {
            max_attempts: 3,
            action,
        };
    });
    env
}

fn poison_job(
    action: PoisonAction,
) -> (
    StreamEnv,
    riffle::prelude::CollectHandle<u64>,
    riffle::prelude::CollectHandle<DeadLetter>,
) {
    let env = poison_env(action);
    let out = env
        .sequence(0..10_000)
        .rebalance()
        .map(|x| {
            if x == POISON {
                panic!("cannot digest {x}")
            } else {
                x
            }
        })
        .name("digest")
        .collect();
    let letters = env.dead_letters().collect();
    (env, out, letters)
}

#[test]
fn a_poison_record_goes_to_the_dead_letter_output() {
    let (env, out, letters) = poison_job(PoisonAction::DeadLetter);
    let result = env
        .execute()
        .expect("the job completes despite the poison record");
    let letters = letters.take();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(l.operator, "digest");
    assert!(l.cause.contains("cannot digest 777"), "{}", l.cause);
    assert_eq!(l.attempts, 3);
    assert_eq!(l.decode::<u64>().expect("decodes"), POISON);
    let expect: Vec<u64> = (0..10_000).filter(|x| *x != POISON).collect();
    assert_eq!(
        sorted(out.take()),
        expect,
        "every other record exactly once"
    );
    assert_eq!(result.restarts.len(), 3, "one restart per failed attempt");
    assert_eq!(result.dead_letters.len(), 1);
}

/// A key selector right after a source that panics on one record: the failure is the keyed
/// operator's (the selector is its code), and the poison policy sets the record aside after
/// its attempts instead of restarting until the limit.
#[test]
fn a_panicking_key_selector_is_the_keyed_operators_poison() {
    panicking_key_selector_at(2);
}

/// The same with one keyed subtask: its router does not hash (every key goes to the one
/// channel), so the keyed operator's own call of the selector meets the panic.
#[test]
fn a_panicking_key_selector_is_the_keyed_operators_poison_at_parallelism_1() {
    panicking_key_selector_at(1);
}

fn panicking_key_selector_at(parallelism: usize) {
    let env = poison_env(PoisonAction::DeadLetter);
    env.set_parallelism(parallelism);
    let out = env
        .sequence(0..10_000)
        .key_by(|x: &u64| {
            if *x == POISON {
                panic!("no key for {x}")
            }
            x % 10
        })
        .sum(|_| 1u64)
        .name("per_key")
        .collect();
    let letters = env.dead_letters().collect();
    let result = env
        .execute()
        .expect("the job completes despite the poison record");
    let letters = letters.take();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let l = &letters[0];
    assert_eq!(l.operator, "per_key", "blamed on the keyed operator");
    assert!(l.cause.contains("no key for 777"), "{}", l.cause);
    assert_eq!(l.attempts, 3);
    assert_eq!(l.decode::<u64>().expect("decodes"), POISON);
    let counted: u64 = {
        let mut last = std::collections::HashMap::new();
        for (k, n) in out.take() {
            let e = last.entry(k).or_insert(0u64);
            *e = (*e).max(n);
        }
        last.values().sum()
    };
    assert_eq!(counted, 9_999, "every other record counted once");
    assert_eq!(result.restarts.len(), 3, "one restart per failed attempt");
}

#[test]
fn a_poison_record_fails_the_job_when_configured() {
    let (env, _out, _letters) = poison_job(PoisonAction::FailJob);
    match env.execute() {
        Err(JobError::PoisonRecord {
            operator,
            attempts: 3,
            cause: FailureCause::Panic(m),
            ..
        }) => {
            assert_eq!(operator, "digest");
            assert_eq!(m, "cannot digest 777");
        }
        other => panic!("expected a poison record error, got {other:?}"),
    }
}

#[test]
fn an_always_failing_operator_exhausts_the_restart_limit_on_schedule() {
    let env = StreamEnv::new();
    let backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(8),
        multiplier: 2.0,
        jitter: 0.2,
    };
    env.configure(|c| {
        c.restart = RestartStrategy {
            kind: RestartKind::OneForOne,
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff,
        };
        // Poison detection would set the record aside; here every attempt must count.
        c.poison = PoisonPolicy {
            max_attempts: 100,
            action: PoisonAction::FailJob,
        };
    });
    env.sequence(0..100)
        .try_map(|_| -> Result<u64, UserError> { Err("the database is down".into()) })
        .name("lookup")
        .discard();
    match env.execute() {
        Err(JobError::RestartLimit {
            operator,
            restarts,
            backoffs,
            cause: FailureCause::Error(e),
            ..
        }) => {
            assert_eq!(operator, "lookup");
            assert_eq!(e.to_string(), "the database is down");
            assert_eq!(restarts, 5);
            assert_eq!(
                backoffs.len(),
                5,
                "five restarts were made before the sixth failure escalated"
            );
            for (n, d) in backoffs.iter().enumerate() {
                let base = backoff.base_delay(n as u32).as_secs_f64();
                let d = d.as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                    "restart {n}: {d} s vs base {base} s"
                );
            }
            // 1, 2, 4, 8, 8 ms: doubling, capped at the maximum.
            assert_eq!(backoff.base_delay(4), Duration::from_millis(8));
        }
        other => panic!("expected the restart limit, got {other:?}"),
    }
}

/// Two chains of two subtasks; a panic is armed in subtask 0 of the source chain, to fire
/// after its first 20,000 of 500,000 records, while every subtask is still running.
fn strategy_run(kind: RestartKind) -> JobResult {
    const N: u64 = 1_000_000;
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| c.restart = chaos_restarts(kind));
    let out = env
        .sequence(0..N)
        .map(|x| x)
        .key_by(|x: &u64| x % 100)
        .map(|x| x)
        .collect();
    let job = env.start().expect("start");
    let chaos = job.chaos();
    let source0 = chaos.find("sequence", 0).expect("source subtask 0");
    chaos.arm(source0, 20_000, riffle::chaos::FaultKind::Panic);
    let result = job.wait().expect("job completes");
    assert_eq!(sorted(out.take()), (0..N).collect::<Vec<_>>());
    result
}

#[test]
fn one_for_one_restarts_only_the_failed_subtask_one_for_all_restarts_all() {
    let one = strategy_run(RestartKind::OneForOne);
    let restarted: Vec<(String, usize, u32)> = one
        .subtasks
        .iter()
        .map(|m| (m.chain.clone(), m.subtask, m.restarts))
        .collect();
    println!("one-for-one: {restarted:?}");
    assert_eq!(one.faults_injected, 1);
    for m in &one.subtasks {
        let expect = u32::from(m.chain.starts_with("sequence") && m.subtask == 0);
        assert_eq!(
            m.restarts, expect,
            "one-for-one: {} subtask {}",
            m.chain, m.subtask
        );
    }

    let all = strategy_run(RestartKind::OneForAll);
    let restarted: Vec<(String, usize, u32)> = all
        .subtasks
        .iter()
        .map(|m| (m.chain.clone(), m.subtask, m.restarts))
        .collect();
    println!("one-for-all: {restarted:?}");
    assert_eq!(all.faults_injected, 1);
    assert_eq!(all.restarts.len(), 1);
    assert_eq!(all.restarts[0].also_restarted, 3);
    for m in &all.subtasks {
        assert_eq!(
            m.restarts, 1,
            "one-for-all: {} subtask {}",
            m.chain, m.subtask
        );
    }
}

#[test]
fn stopping_a_worker_thread_recreates_its_subtasks_and_the_job_completes() {
    const N: u64 = 2_000_000;
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(|c| {
        c.workers = Some(3);
        c.restart = chaos_restarts(RestartKind::OneForOne);
    });
    let (tx, rx) = mpsc::channel();
    let count = env
        .sequence(0..N)
        .map(move |x| {
            if x == 100_000 {
                let _ = tx.send(());
            }
            x
        })
        .rebalance()
        .map(|x| x)
        .count();
    let job = env.start().expect("start");
    let chaos = job.chaos();
    rx.recv().expect("progress signal");
    chaos.stop_worker(0);
    let result = job.wait().expect("the job completes after losing a worker");
    println!(
        "workers stopped {}, subtasks re-created {}, records counted {} of {N}",
        result.workers_stopped,
        result.recreated,
        count.get()
    );
    assert_eq!(result.workers_stopped, 1);
    assert!(
        result.recreated >= 1,
        "worker 0 hosted subtasks; they must be re-created"
    );
    assert!(result.subtasks.iter().any(|m| m.recreated > 0));
    // Records in the mailboxes of the lost subtasks are lost until checkpoints exist, but
    // nothing is counted twice.
    assert!(count.get() <= N && count.get() > 0);
}

#[test]
fn a_panicking_job_does_not_disturb_another_job() {
    let failing = StreamEnv::new();
    failing.configure(|c| {
        c.restart = RestartStrategy::never();
        c.workers = Some(2);
    });
    failing
        .sequence(0..1_000_000)
        .map(|x| {
            if x == 5_000 {
                panic!("job A breaks")
            } else {
                x
            }
        })
        .discard();
    let healthy = StreamEnv::new();
    healthy.set_parallelism(2);
    healthy.configure(|c| c.workers = Some(2));
    let sum = healthy
        .sequence(0..200_000)
        .key_by(|x: &u64| x % 7)
        .sum(|x| *x)
        .collect();

    let a = failing.start().expect("start A");
    let b = healthy.start().expect("start B");
    let a = a.wait();
    let b = b.wait().expect("job B is unaffected");
    assert!(
        matches!(
            a,
            Err(JobError::SubtaskFailed {
                cause: FailureCause::Panic(_),
                ..
            })
        ),
        "{a:?}"
    );
    assert_eq!(b.total_restarts(), 0);
    let sums = sum.take();
    let total: u64 = (0..7u64)
        .map(|k| {
            sums.iter()
                .filter(|(key, _)| *key == k)
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(total, (0..200_000u64).sum::<u64>());
}
