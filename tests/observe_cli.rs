//! The `riffle` command line against a running job: its tables parsed, its JSON read, and
//! its errors (an unknown job, an unreachable server, a bad number) checked for exit code
//! and a one-line message.

use crate::common;

use riffle::prelude::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Runs `riffle --url URL ARGS`; returns (exit code, stdout, stderr).
fn riffle(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_riffle"))
        .arg("--url")
        .arg(url)
        .args(args)
        .output()
        .expect("the riffle binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_lists_shows_rescales_and_stops_a_running_job() {
    common::init_logging();
    static GATE: AtomicBool = AtomicBool::new(false);
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let url = http.url();
    let dir = tempfile::tempdir().expect("dir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "cli-job".to_string();
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir.path()));
    });
    env.source(|_: &SubtaskInfo| common::gated::Gated::new(200_000, 100, &GATE))
        .name("numbers")
        .parallelism(1)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(2)
        .collect();
    let handle = env.start().expect("start");
    let id = handle.id().to_string();
    handle.wait_until(|p| p.checkpoints >= 2);

    // jobs: a table whose row for the job names it and says it runs.
    let (code, out, _) = riffle(&url, &["jobs"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().next().is_some_and(|h| h.starts_with("ID")),
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(&id))
        .expect("the job's row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..3], ["cli-job", "running"], "{out}");

    // job: chains and subtasks.
    let (code, out, _) = riffle(&url, &["job", &id]);
    assert_eq!(code, 0);
    let count_row = out
        .lines()
        .find(|l| l.starts_with("count"))
        .expect("count chain row");
    // CHAIN (may hold spaces)  PARALLELISM  INPUTS  IN/S  OUT/S  BUSY  BACKPRESSURED
    let cells: Vec<&str> = count_row.split_whitespace().rev().collect();
    assert_eq!((cells[5], cells[4]), ("2", "numbers"), "{out}");
    assert!(cells[0].ends_with('%') && cells[1].ends_with('%'), "{out}");
    let (code, json, _) = riffle(&url, &["--json", "job", &id]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(v["subtasks"].as_array().map(Vec::len), Some(3));

    // nodes: this process (other tests of this binary may run cluster nodes meanwhile, so
    // only "exactly one node answers as this one" is certain).
    let (code, out, _) = riffle(&url, &["nodes"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NODE"), "{out}");
    let (code, json, _) = riffle(&url, &["--json", "nodes"]);
    assert_eq!(code, 0);
    let nodes: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let this: Vec<_> = nodes
        .as_array()
        .expect("a list")
        .iter()
        .filter(|n| n["this"] == true)
        .collect();
    assert_eq!(this.len(), 1, "{json}");
    assert_eq!(this[0]["state"], "up", "{json}");

    let (code, out, _) = riffle(&url, &["checkpoints", &id]);
    assert_eq!(code, 0);
    assert!(out.lines().count() >= 3, "a header and checkpoints: {out}");
    let (code, out, _) = riffle(&url, &["savepoint", &id]);
    assert_eq!(code, 0);
    assert!(out.starts_with("savepoint "), "{out}");

    // rescale: answered once the operator processed a record, so the gate opens once the
    // sources are held for it.
    static ANSWERED: AtomicBool = AtomicBool::new(false);
    let (u, i) = (url.clone(), id.clone());
    let rescale = std::thread::spawn(move || {
        let r = riffle(&u, &["rescale", &i, "count", "3"]);
        ANSWERED.store(true, Ordering::SeqCst);
        r
    });
    // (A refusal answers at once; the checkpoints every 20 ms wake this wait.)
    handle.wait_until(|p| p.rescales_held >= 1 || ANSWERED.load(Ordering::SeqCst));
    GATE.store(true, Ordering::SeqCst);
    let (code, out, err) = rescale.join().expect("rescale");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("rescaled count to 3"), "{out}");

    // Errors: one line, the right exit code, no Debug dump.
    let (code, _, err) = riffle(&url, &["job", "nope"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no job with id nope"), "{err}");
    let (code, _, err) = riffle(&url, &["rescale", &id, "count", "zero"]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("zero"), "{err}");
    let (code, _, err) = riffle("http://127.0.0.1:1", &["jobs"]);
    assert_eq!(code, 3);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach"), "{err}");

    let result = handle.wait().expect("finishes");
    assert!(result.recoveries.is_empty());
    let (code, out, _) = riffle(&url, &["stop", &id]);
    assert_eq!(code, 1, "the job ended: {out}");
}
