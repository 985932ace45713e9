//! Killing the whole process: a child process (this test binary, run again) executes a
//! checkpointed job with a filesystem store and a transactional file sink; the parent SIGKILLs
//! it mid-run, optionally damages the newest checkpoint, and resumes the job from the latest
//! valid checkpoint. The published output must equal a clean run exactly.

use riffle::prelude::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const N: u64 = 1_500_000;
const KEYS: u64 = 5_000;
const CHILD_DIR: &str = "RIFFLE_CHILD_DIR";
const JOB: &str = "killable";

fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

fn job(dir: &Path, resume: bool) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    let checkpoints = dir.join("checkpoints");
    env.configure(|c| {
        c.name = JOB.to_string();
        c.batch_size = 64;
        let mut cp = CheckpointConfig::every(Duration::from_millis(20)).in_dir(&checkpoints);
        cp.keep = 10;
        c.checkpoint = Some(cp);
        if resume {
            c.restore = Some(RestoreFrom::Latest(checkpoints.clone()));
        }
    });
    env.generate(N, |i| (key(i), 1u64))
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .map(|(k, s)| format!("{k},{s}"))
        .write_text_file(dir.join("out"));
    env
}

/// Runs only inside the child process; a no-op in a normal test run.
#[test]
fn child_entry() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let handle = job(Path::new(&dir), false).start().expect("start");
    let chaos = handle.chaos();
    std::thread::spawn(move || {
        let mut seen = 0;
        loop {
            let p = chaos.wait_until(|p| p.checkpoints > seen);
            if p.ended {
                break;
            }
            seen = p.checkpoints;
            println!("CHECKPOINT {seen}");
        }
    });
    handle.wait().expect("job");
    println!("DONE");
}

/// Starts the child and SIGKILLs it once it completed `checkpoints` checkpoints.
fn run_child_and_kill(dir: &Path, checkpoints: u64) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "checkpoint_process::child_entry",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(n) = line.strip_prefix("CHECKPOINT ") {
            if n.trim().parse::<u64>().unwrap_or(0) >= checkpoints {
                break;
            }
        }
        assert_ne!(line, "DONE", "the child finished before it could be killed");
    }
    child.kill().expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die by SIGKILL: {status:?}"
    );
}

/// Every published line of the file sink (staged `.inprogress` files are not output).
fn published(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir.join("out"))
        .expect("out dir")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".inprogress") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("part");
        lines.extend(text.lines().map(String::from));
    }
    lines.sort();
    lines
}

fn expected() -> Vec<String> {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for i in 0..N {
        *counts.entry(key(i)).or_default() += 1;
    }
    let mut lines: Vec<String> = counts
        .iter()
        .flat_map(|(k, c)| (1..=*c).map(move |s| format!("{k},{s}")))
        .collect();
    lines.sort();
    lines
}

fn newest_checkpoint(dir: &Path) -> (u64, PathBuf) {
    let root = dir.join("checkpoints").join(JOB);
    let mut ids: Vec<(u64, PathBuf)> = std::fs::read_dir(&root)
        .expect("checkpoint dir")
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_prefix("chk-")?
                .parse()
                .ok()
                .map(|id| (id, e.path()))
        })
        .filter(|(_, p)| p.join("_metadata").exists())
        .collect();
    ids.sort();
    ids.pop().expect("a completed checkpoint")
}

#[test]
fn a_killed_process_resumes_from_its_latest_checkpoint_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_child_and_kill(dir.path(), 3);
    let before = published(dir.path()).len();
    let (latest, _) = newest_checkpoint(dir.path());
    let result = job(dir.path(), true).execute().expect("resumed run");
    println!(
        "killed after checkpoint {latest} with {before} lines published; resumed run took {:?}",
        result.elapsed
    );
    assert!(before < expected().len(), "the kill came before the end");
    assert_eq!(published(dir.path()), expected());
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_child_and_kill(dir.path(), 4);
    let (latest, path) = newest_checkpoint(dir.path());
    // Truncate one state file of the newest checkpoint.
    let state = std::fs::read_dir(&path)
        .expect("chk dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "state"))
        .expect("a state file");
    let len = std::fs::metadata(&state).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let fallback =
        FsStore::latest_in(dir.path().join("checkpoints"), JOB).expect("a valid checkpoint");
    assert!(
        fallback.id < latest,
        "checkpoint {latest} is damaged; {} must be older",
        fallback.id
    );
    job(dir.path(), true).execute().expect("resumed run");
    println!(
        "newest checkpoint {latest} damaged; resumed from {}",
        fallback.id
    );
    assert_eq!(published(dir.path()), expected());
}
