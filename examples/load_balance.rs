//! The classic load-balancing job: 100 records `data-0..data-99`, parallelism 4, key by the
//! record, map to `"Processed: " + value`, print.
//!
//! ```text
//! cargo run --release --example load_balance
//! ```
//!
//! The print sink prefixes each line with the subtask that handled the key (`3> ...`, as
//! Flink does). Then it shows, for the same 100 keys, which subtask owns each key at 4 and at 5
//! subtasks with Riffle's consistent-hash ring and with `hash mod N`, and how many keys move.

use riffle::prelude::*;
use riffle::routing::{KeyRing, ModuloPartitioner, Partitioner};

/// Tags each record with the subtask that processed it.
struct Process {
    subtask: usize,
}

impl KeyedOperator for Process {
    type Key = String;
    type In = String;
    type Out = String;
    type State = ();
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        self.subtask = info.index;
        Ok(())
    }
    fn process(
        &mut self,
        _key: &String,
        _state: &mut (),
        value: String,
        out: &mut Output<'_, String>,
    ) -> Result<(), UserError> {
        out.emit(format!("Processed: {value}"));
        Ok(())
    }
}

fn owners(p: &dyn Partitioner, keys: &[String]) -> Vec<usize> {
    keys.iter().map(|k| p.route(k.key_hash())).collect()
}

/// How keys spread over subtasks: the consistent-hash ring against `hash % n`.
#[derive(clap::Parser)]
#[command(name = "load_balance")]
struct Args {}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let Args {} = <Args as clap::Parser>::parse();
    riffle::cli::exit(run())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let keys: Vec<String> = (0..100).map(|i| format!("data-{i}")).collect();

    let env = StreamEnv::new();
    env.set_parallelism(4);
    env.from_collection(keys.clone())
        .parallelism(1)
        .key_by(|v: &String| v.clone())
        .process(|_: &SubtaskInfo| Process { subtask: 0 })
        .print();
    let result = env.execute()?;
    println!("\nrecords per subtask:");
    for m in result.chain("keyed_process") {
        println!("  subtask {}: {} keys", m.subtask + 1, m.records_in);
    }

    let (ring4, ring5) = (KeyRing::new(4), KeyRing::new(5));
    let (mod4, mod5) = (ModuloPartitioner::new(4), ModuloPartitioner::new(5));
    let (r4, r5) = (owners(&ring4, &keys), owners(&ring5, &keys));
    let (m4, m5) = (owners(&mod4, &keys), owners(&mod5, &keys));
    println!("\nkey owner (subtask index) at 4 -> 5 subtasks; * marks a key that moves");
    println!("{:<9} {:>9} {:>11}", "key", "ring", "hash mod N");
    for (i, k) in keys.iter().enumerate() {
        let mark = |a: usize, b: usize| if a == b { ' ' } else { '*' };
        println!(
            "{k:<9} {:>3} -> {}{} {:>5} -> {}{}",
            r4[i],
            r5[i],
            mark(r4[i], r5[i]),
            m4[i],
            m5[i],
            mark(m4[i], m5[i])
        );
    }
    let moved = |a: &[usize], b: &[usize]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let per = |v: &[usize], n: usize| {
        (0..n)
            .map(|s| v.iter().filter(|&&o| o == s).count())
            .collect::<Vec<_>>()
    };
    println!(
        "\nkeys per subtask at 4: ring {:?}, hash mod N {:?}",
        per(&r4, 4),
        per(&m4, 4)
    );
    println!(
        "keys per subtask at 5: ring {:?}, hash mod N {:?}",
        per(&r5, 5),
        per(&m5, 5)
    );
    println!(
        "keys moved 4 -> 5: ring {} of 100 (ideal 1/5 = 20), hash mod N {} of 100 (expected 4/5 = 80)",
        moved(&r4, &r5),
        moved(&m4, &m5)
    );
    // What a ring costs to build (once per keyed edge when a job starts or is rescaled).
    for p in [2usize, 16, 64, 128] {
        let started = std::time::Instant::now();
        let ring = KeyRing::new(p);
        println!(
            "a ring of {p} subtasks x {} virtual nodes ({} ranges) built in {:.1} ms",
            ring.vnodes(),
            ring.ranges(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
