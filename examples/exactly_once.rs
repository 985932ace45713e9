//! Exactly-once wordcount through crashes and process kills.
//!
//! ```text
//! cargo run --release --example exactly_once                       # chaos run, checked
//! cargo run --release --example exactly_once -- --kill-after 3     # dies after checkpoint 3
//! cargo run --release --example exactly_once -- --resume           # finishes the killed run
//! ```
//! Options (`--help`): `--dir DIR` (state, input and output; default: a `riffle-exactly-once`
//! folder in the system's temp dir), `--input FILE` (default: a generated text of `--lines N`
//! lines), `--seed N`, `--no-chaos`.
//!
//! The console of the running job is at the URL it prints (`--http ADDR`, `off` for none).
//! SIGTERM or Ctrl-C stops the job with a savepoint (it says where) and exits 0; `--resume`
//! continues from it and the output is still exact. A second signal exits at once.
//!
//! The job counts the words of a text file with checkpoints every 20 ms into `DIR/checkpoints`
//! and a transactional file sink into `DIR/out`. Without flags a chaos monkey crashes subtasks
//! and stops a worker thread while it runs; every recovery is printed with the checkpoint it
//! restored and its restore time, and the committed output is compared with a clean run.

use riffle::chaos::{ChaosMonkey, FaultKind};
use riffle::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const JOB: &str = "exactly-once-wordcount";

/// Exactly-once word count through crashes and process kills: checkpoints into DIR, a
/// transactional file sink, output checked against a clean run.
#[derive(clap::Parser)]
#[command(name = "exactly_once")]
struct Args {
    /// State, input and output (default: `riffle-exactly-once` in the temp dir).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("riffle-exactly-once"))]
    dir: PathBuf,
    /// The text to count (default: a generated one, `DIR/input.txt`).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Lines of the generated text.
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(1..))]
    lines: u64,
    /// Abort the process once this checkpoint completed (then run with --resume).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    kill_after: Option<u64>,
    /// Continue from the latest checkpoint or savepoint in DIR instead of starting over.
    #[arg(long)]
    resume: bool,
    /// Without the chaos monkey (it runs on a fresh start otherwise).
    #[arg(long)]
    no_chaos: bool,
    /// The HTTP server (metrics, REST API, web console); `off` for none.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR|off")]
    http: String,
    /// Seed of the chaos monkey and of the job.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// A generated text: 300,000 lines of words from a small vocabulary.
fn generate_input(path: &Path, lines: u64) -> Result<(), UserError> {
    const WORDS: [&str; 12] = [
        "stream",
        "actor",
        "barrier",
        "checkpoint",
        "ring",
        "key",
        "state",
        "sink",
        "source",
        "epoch",
        "credit",
        "riffle",
    ];
    let mut text = String::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..lines {
        for _ in 0..6 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
            text.push(' ');
        }
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn wordcount(env: &StreamEnv, input: &Path) -> DataStream<(String, u64)> {
    env.set_parallelism(2);
    env.read_text_file(input)
        .flat_map(|line: String| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .key_by(|w: &String| w.clone())
        .sum(|_| 1u64)
}

fn checkpointed(a: &Args, input: &Path, resume: bool) -> StreamEnv {
    let env = StreamEnv::new();
    let dir = a.dir.join("checkpoints");
    env.configure(|c| {
        c.name = JOB.to_string();
        c.seed = a.seed;
        c.batch_size = 256;
        c.workers = Some(3);
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(&dir));
        c.restart.max_restarts = 1_000;
        c.restart.backoff.max = Duration::from_millis(20);
        if resume {
            c.restore = Some(RestoreFrom::Latest(dir.clone()));
        }
    });
    wordcount(&env, input)
        .map(|(w, n)| format!("{w} {n}"))
        .write_text_file(a.dir.join("out"));
    env
}

/// The final count per word in the committed (published) output.
fn committed(dir: &Path) -> Result<HashMap<String, u64>, UserError> {
    let mut counts = HashMap::new();
    for e in std::fs::read_dir(dir.join("out"))?.flatten() {
        if e.file_name().to_string_lossy().ends_with(".inprogress") {
            continue;
        }
        for line in std::fs::read_to_string(e.path())?.lines() {
            if let Some((w, n)) = line.split_once(' ') {
                let n: u64 = n.parse()?;
                let c = counts.entry(w.to_string()).or_insert(0);
                *c = n.max(*c);
            }
        }
    }
    Ok(counts)
}

fn clean_counts(input: &Path) -> Result<HashMap<String, u64>, UserError> {
    let env = StreamEnv::new();
    let out = wordcount(&env, input).collect();
    env.execute()?;
    let mut counts = HashMap::new();
    for (w, n) in out.take() {
        let c = counts.entry(w).or_insert(0);
        *c = n.max(*c);
    }
    Ok(counts)
}

/// At SIGTERM or Ctrl-C: stop the job with a savepoint and say where it is (a second signal
/// exits at once).
fn stop_on_signal(control: JobControl) -> Result<(), UserError> {
    riffle::cli::on_stop_signal(move || match control.savepoint_blocking(true) {
        Ok(id) => {
            let at = control.savepoint_dir(id).unwrap_or_default();
            eprintln!("savepoint {id} written to {}", at.display());
        }
        Err(e) => eprintln!("could not stop with a savepoint: {e}"),
    })?;
    Ok(())
}

fn report(result: &JobResult) {
    for r in &result.recoveries {
        println!(
            "  recovery (epoch {}): {}; restored checkpoint {}; restore time {}",
            r.epoch,
            r.cause,
            r.restored_from
                .map_or("none (start)".to_string(), |c| c.to_string()),
            r.restore_time.map_or("-".to_string(), |t| format!(
                "{:.2} ms",
                t.as_secs_f64() * 1e3
            ))
        );
    }
    let mut times: Vec<Duration> = result
        .recoveries
        .iter()
        .filter_map(|r| r.restore_time)
        .collect();
    times.sort();
    println!(
        "{} checkpoints, {} faults injected, {} worker threads stopped, {} recoveries, median restore {:?}",
        result.checkpoints.len(),
        result.faults_injected,
        result.workers_stopped,
        result.recoveries.len(),
        times.get(times.len() / 2)
    );
}

fn main() -> std::process::ExitCode {
    riffle::cli::init_logging();
    let a = <Args as clap::Parser>::parse();
    riffle::cli::exit(run(a).map_err(|e| -> Box<dyn std::error::Error> { e }))
}

fn run(a: Args) -> Result<(), UserError> {
    std::fs::create_dir_all(&a.dir)?;
    let input = match &a.input {
        Some(p) => p.clone(),
        None => {
            let p = a.dir.join("input.txt");
            if !p.exists() {
                generate_input(&p, a.lines)?;
            }
            p
        }
    };
    riffle::chaos::silence_injected_panics();
    if !a.resume {
        // A fresh run: forget earlier checkpoints and output.
        let _ = std::fs::remove_dir_all(a.dir.join("checkpoints"));
        let _ = std::fs::remove_dir_all(a.dir.join("out"));
    }
    let _http = riffle::cli::serve_http(&a.http).map_err(|e| e.to_string())?;
    let job = checkpointed(&a, &input, a.resume).start()?;
    stop_on_signal(job.control())?;
    println!("job running (SIGTERM or Ctrl-C stops it with a savepoint)");
    let chaos = job.chaos();
    if let Some(n) = a.kill_after {
        chaos.wait_until(|p| p.checkpoints >= n);
        println!("checkpoint {n} completed: killing the process now; run again with --resume");
        std::process::abort();
    }
    let monkey = (!a.resume && !a.no_chaos).then(|| {
        let chaos = chaos.clone();
        let seed = a.seed;
        std::thread::spawn(move || {
            ChaosMonkey::new(seed)
                .faults(30)
                .kinds(&[FaultKind::Panic, FaultKind::Error, FaultKind::Stop])
                .drive(&chaos, 3, 1)
        })
    });
    // Records/s and a bar on a terminal: the source chain (file lines split into words)
    // hands on 6 words per line of a generated input.
    let total = a.input.is_none().then_some(a.lines * 6);
    let progress = riffle::cli::show_progress(job.control(), total);
    let result = job.wait()?;
    drop(progress);
    if let Some(m) = monkey {
        let _ = m.join();
    }
    if let Some(sp) = result.stopped_at_savepoint {
        println!("stopped at savepoint {sp}; run again with --resume to finish exactly");
        return Ok(());
    }
    println!(
        "{} finished in {:?}",
        if a.resume { "resumed run" } else { "chaos run" },
        result.elapsed
    );
    report(&result);
    let expect = clean_counts(&input)?;
    let got = committed(&a.dir)?;
    let words: u64 = got.values().sum();
    if got == expect {
        println!(
            "committed output: {} distinct words, {words} words — equal to a clean run",
            got.len()
        );
        Ok(())
    } else {
        Err(format!(
            "committed output differs from a clean run ({} vs {} words)",
            got.len(),
            expect.len()
        )
        .into())
    }
}
