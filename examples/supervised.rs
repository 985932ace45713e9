//! Supervision in action: an operator that panics on some records, and a chaos monkey that
//! crashes and stops subtasks, yet the job finishes with the right answer.
//!
//! ```text
//! cargo run --release --example supervised [-- SEED]
//! ```
//!
//! Each caught panic is one `subtask failed` log line on stderr (operator, subtask,
//! message); `RUST_LOG=debug` adds its backtrace.
//!
//! The pipeline parses 2,000,000 numbers, keys them by residue and scales them (parallelism 4);
//! the driver sums the output per key. The `parse` operator panics on three "corrupt" records
//! every time it sees them: after 3 attempts each becomes a dead letter. The operators are
//! stateless, so a restart loses nothing (stateful operators need the checkpoints of a later
//! step to keep their state across restarts).
//! A seeded chaos monkey arms 40 faults (panics, errors, stops from outside) across the
//! subtasks. Every restart is printed with its subtask, attempt, cause and backoff; the totals
//! are checked against a sequential computation.

use riffle::chaos::ChaosMonkey;
use riffle::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

const N: u64 = 2_000_000;
const KEYS: u64 = 16;
const CORRUPT: [u64; 3] = [123_456, 1_000_001, 1_999_999];

/// Supervision in action: panicking records become dead letters, a chaos monkey crashes
/// subtasks, and the result is still right.
#[derive(clap::Parser)]
#[command(name = "supervised")]
struct Args {
    /// The chaos monkey's seed.
    #[arg(default_value_t = 7)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let args = <Args as clap::Parser>::parse();
    riffle::cli::exit(run(args.seed).map_err(|e| -> Box<dyn std::error::Error> { e }))
}

fn run(seed: u64) -> Result<(), UserError> {
    riffle::chaos::silence_injected_panics();
    let env = StreamEnv::new();
    env.set_parallelism(4);
    env.configure(|c| {
        c.restart = RestartStrategy {
            kind: RestartKind::OneForOne,
            max_restarts: 200,
            window: Duration::from_secs(60),
            backoff: Backoff {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(50),
                ..Backoff::default()
            },
        };
        c.poison = PoisonPolicy {
            max_attempts: 3,
            action: PoisonAction::DeadLetter,
        };
        c.seed = seed;
    });
    let totals = env
        .generate(N, |i| i)
        .map(|i| {
            if CORRUPT.contains(&i) {
                panic!("corrupt record {i}");
            }
            (i % KEYS, i)
        })
        .name("parse")
        .key_by(|r: &(u64, u64)| r.0)
        .map(|(k, v)| (k, v * 3))
        .name("scale")
        .collect();
    let letters = env.dead_letters().collect();

    let job = env.start()?;
    let plan = ChaosMonkey::new(seed)
        .faults(40)
        .within_records(200_000)
        .arm(&job.chaos());
    println!("chaos monkey (seed {seed}) armed {} faults", plan.len());
    let progress = riffle::cli::show_progress(job.control(), Some(N));
    let result = job.wait()?;
    drop(progress);

    println!("\nrestarts:");
    for r in &result.restarts {
        println!(
            "  {:<24} subtask {} attempt {:>2}  backoff {:>6.2} ms  {}{}",
            r.chain,
            r.subtask,
            r.attempt,
            r.backoff.as_secs_f64() * 1e3,
            if r.injected { "[chaos] " } else { "" },
            r.cause
        );
    }
    println!("\ndead letters:");
    for l in letters.take() {
        println!(
            "  {} (subtask {}): record {} after {} attempts: {}",
            l.operator,
            l.subtask,
            l.decode::<u64>()?,
            l.attempts,
            l.cause
        );
    }

    let mut got: HashMap<u64, (u64, u64)> = HashMap::new();
    for (k, v) in totals.take() {
        let e = got.entry(k).or_insert((0, 0));
        *e = (e.0 + 1, e.1 + v);
    }
    let mut expect: HashMap<u64, (u64, u64)> = HashMap::new();
    for i in (0..N).filter(|i| !CORRUPT.contains(i)) {
        let e = expect.entry(i % KEYS).or_insert((0, 0));
        *e = (e.0 + 1, e.1 + i * 3);
    }
    let correct = got == expect;
    println!(
        "\nsummary: {} faults injected and fired, {} restarts ({} completed), {} dead letters, \
         {} ms; result {}",
        result.faults_injected,
        result.restarts.len(),
        result.restarts_completed,
        result.dead_letters.len(),
        result.elapsed.as_millis(),
        if correct {
            "correct: per key, the same count and sum as a sequential run without the corrupt records"
        } else {
            "WRONG"
        }
    );
    print!("{}", result.load_table());
    if !correct {
        return Err("the supervised job produced a wrong result".into());
    }
    Ok(())
}
