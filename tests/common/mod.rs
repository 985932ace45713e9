//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod browser;
pub mod etcd;
pub mod gated;
pub mod insider;
pub mod prometheus;
pub mod proxied;
pub mod proxy;

use riffle::prelude::*;
use std::time::Duration;

/// A restart strategy for chaos runs: many restarts allowed, short backoff.
pub fn chaos_restarts(kind: RestartKind) -> RestartStrategy {
    let mut s = RestartStrategy {
        kind,
        max_restarts: 10_000,
        window: Duration::from_secs(600),
        ..RestartStrategy::default()
    };
    s.backoff.initial = Duration::from_micros(200);
    s.backoff.max = Duration::from_millis(5);
    s
}

/// The seed for a chaos test: `RIFFLE_CHAOS_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("RIFFLE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `body` in a child process of this test binary in which only the test `name` (its
/// path, e.g. `cluster_bad_input::garbage_during_a_job_touches_only_its_own_link`) runs: for
/// tests that measure their own process (its resident memory) and so must not share it with
/// the tests running beside them. Fails if the child fails.
pub fn isolated(name: &str, body: impl FnOnce()) {
    const ENV: &str = "RIFFLE_ISOLATED_TEST";
    if std::env::var(ENV).as_deref() == Ok(name) {
        return body();
    }
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(ENV, name)
        .status()
        .expect("start the isolated test");
    assert!(
        status.success(),
        "{name} failed in its own process: {status}"
    );
}

/// A port of 127.0.0.1 that is free now (for a node process to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sorted copy.
pub fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Logs to stderr when `RIFFLE_LOG` is set (a level, e.g. `RIFFLE_LOG=debug`, or
/// `target=level` directives, e.g. `RIFFLE_LOG=riffle_cluster=debug,info`).
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let Ok(filter) = std::env::var("RIFFLE_LOG") else {
        return;
    };
    match filter.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) => {
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            let _ = tracing_subscriber::registry()
                .with(fmt.with_filter(targets))
                .try_init();
        }
        Err(e) => eprintln!("RIFFLE_LOG={filter}: {e}"),
    }
}

/// A keyed running sum over `0..records` for the cluster tests: `sources` source subtasks
/// split the sequence into contiguous shares and each key's records come from one share, so
/// the running sums are the same in every run however subtasks interleave (and whatever the
/// keyed operator's parallelism, the job's default `parallelism`). Every `pace`-th record
/// sleeps `pace_ms` (0: never) so that faults can land mid-run. Output goes to `dir/output`
/// through the transactional file sink; checkpoints every `checkpoint_ms` to
/// `dir/checkpoints`.
#[derive(Clone, Copy, Debug)]
pub struct SumJob {
    pub records: u64,
    pub sources: usize,
    pub parallelism: usize,
    pub workers: usize,
    pub keys: u64,
    pub checkpoint_ms: u64,
    pub pace: u64,
    pub pace_ms: u64,
}

impl SumJob {
    /// The job of the fault trials: 600,000 records from 4 sources, paced (1 ms every 100
    /// records per source), summed over 4,000 keys at parallelism 4 with checkpoints every
    /// 50 ms, one worker per node: a second or two undisturbed, long enough to take a fault
    /// in the middle.
    pub fn paced_trial() -> SumJob {
        SumJob {
            records: 600_000,
            sources: 4,
            parallelism: 4,
            workers: 1,
            keys: 1_000,
            checkpoint_ms: 50,
            pace: 100,
            pace_ms: 1,
        }
    }

    /// The key of record `x`.
    pub fn key(&self, x: u64) -> u64 {
        let p = self.sources as u64;
        let share = (0..p)
            .rev()
            .find(|j| self.records * j / p <= x)
            .unwrap_or(0);
        share * self.keys + x % self.keys
    }

    /// The job, writing under `dir`.
    pub fn build(&self, dir: &std::path::Path) -> StreamEnv {
        let env = StreamEnv::new();
        env.set_parallelism(self.parallelism);
        let checkpoints = dir.join("checkpoints");
        let (workers, every) = (self.workers, Duration::from_millis(self.checkpoint_ms));
        env.configure(|c| {
            c.name = "cluster-sum".to_string();
            c.workers = Some(workers);
            // A source call of 1,024 records (the byte limit alone would make it 4,096 of
            // these `u64`s): the paced map sleeps within the call, and the tests' steps are
            // timed for calls of this length.
            c.batch_size = 1024;
            c.checkpoint =
                Some(riffle::prelude::CheckpointConfig::every(every).in_dir(&checkpoints));
        });
        let (pace, pace_ms) = (self.pace.max(1), self.pace_ms);
        let me = *self;
        env.sequence(0..self.records)
            .parallelism(self.sources)
            .map(move |x: u64| {
                if pace_ms > 0 && x % pace == 0 {
                    std::thread::sleep(Duration::from_millis(pace_ms));
                }
                x
            })
            .parallelism(self.sources)
            .key_by(move |x: &u64| me.key(*x))
            .sum(|x: &u64| *x)
            .name("sum")
            .map(|(k, s): (u64, u64)| format!("{k} {s}"))
            .write_text_file(dir.join("output"));
        env
    }

    /// The output of the job run in one process, sorted.
    pub fn single_process_output(&self) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let quick = SumJob {
            pace_ms: 0,
            ..*self
        };
        quick
            .build(dir.path())
            .execute()
            .expect("single-process run");
        published_output(dir.path())
    }
}

/// Every published line under `dir/output`, sorted.
pub fn published_output(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir.join("output")).expect("output dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("part-") && !name.ends_with(".inprogress") {
            let text = std::fs::read_to_string(&path).expect("read part");
            lines.extend(text.lines().map(String::from));
        }
    }
    lines.sort_unstable();
    lines
}

/// Whether a checkpoint's output was published (`part-{subtask}-{checkpoint}` exists).
pub fn checkpoint_published(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir.join("output"))
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("part-") && n.matches('-').count() == 2 && !n.ends_with(".inprogress")
            })
        })
        .unwrap_or(false)
}

/// Equal sorted outputs; on a difference, says what is missing and what is extra.
pub fn assert_same_output(got: Vec<String>, want: Vec<String>) {
    if got == want {
        return;
    }
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < got.len() || j < want.len() {
        match (got.get(i), want.get(j)) {
            (Some(g), Some(w)) if g == w => (i, j) = (i + 1, j + 1),
            (Some(g), Some(w)) if g < w => (extra.push(g.clone()), i += 1).1,
            (Some(_), Some(w)) => (missing.push(w.clone()), j += 1).1,
            (Some(g), None) => (extra.push(g.clone()), i += 1).1,
            (None, Some(w)) => (missing.push(w.clone()), j += 1).1,
            (None, None) => break,
        }
    }
    panic!(
        "output differs: {} lines, {} expected; {} missing (first {:?}), {} extra (first {:?})",
        got.len(),
        want.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
}

/// The final value of each key of a running sum's output: the largest seen (sums only grow).
pub fn final_sums(out: Vec<(u64, u64)>) -> std::collections::HashMap<u64, u64> {
    let mut finals = std::collections::HashMap::new();
    for (k, s) in out {
        let e = finals.entry(k).or_insert(0);
        *e = s.max(*e);
    }
    finals
}

/// Ends the test process (status 1, naming `what`) unless told within `limit` that the trial
/// ended (send on the returned channel, or drop it on a panic): a trial that hangs fails
/// instead of holding the suite.
pub fn watchdog(what: String, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("{what}: the trial hung for {limit:?} (no outcome); failing");
            std::process::exit(1);
        }
    });
    done
}

/// The number of trials environment variable `var` asks for (1 if unset).
pub fn trials(var: &str) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
