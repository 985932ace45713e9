//! Deadlines on what depends on another process: nothing a job waits for from another node
//! waits for ever.
//!
//! A member that accepts a job's start and never hosts it — an insider that holds the secret,
//! links, sends heartbeats and ignores every job frame — keeps its subtasks from ever
//! reporting ready: the job fails with `JobError::NotReady` naming them once
//! `JobConfig::ready_timeout` passed, instead of waiting for ever with its sources held.

use crate::common;
use crate::common::insider::{insider, send};

use riffle::cluster::{Node, Secret, Status};
use riffle::errors::JobError;
use riffle::internals::cluster::wire::{read_frame, Message};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"cluster deadlines test";
const READY_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn a_node_that_accepts_a_job_and_never_hosts_it_fails_the_start_in_time() {
    common::init_logging();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let n1 = Node::builder()
        .name("n1")
        .secret(Secret::new(SECRET).expect("secret"))
        .heartbeat(Duration::from_millis(50))
        .failure_timeout(Duration::from_secs(2))
        .register_job("sum", move || {
            let env = common::SumJob {
                records: 100_000,
                sources: 2,
                parallelism: 4,
                workers: 1,
                keys: 100,
                checkpoint_ms: 100,
                pace: 1_000,
                pace_ms: 0,
            }
            .build(&d);
            env.configure(|c| c.ready_timeout = READY_TIMEOUT);
            env
        })
        .start()
        .expect("n1 starts");
    // "n2": links as a member and stays alive (heartbeats), reads everything, does nothing.
    let addr = n1.local_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (s, f) = (stop.clone(), frames.clone());
    let silent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let nobody = format!("127.0.0.1:{}", common::free_port());
            let link = insider(&addr, "n2", &nobody, SECRET).await;
            let (mut r, mut w) = link.into_split();
            let reader = tokio::spawn(async move {
                while read_frame(&mut r, 1 << 24).await.is_ok() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            });
            let mut seq = 0;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let beat = Message::Heartbeat {
                    seq,
                    members: Vec::new(),
                    figures: Vec::new(),
                };
                send(&mut w, &beat).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reader.abort();
        });
    });
    let m = n1.wait_members(Duration::from_secs(10), |m| {
        m.iter().any(|x| x.node == "n2" && x.status == Status::Up)
    });
    assert!(m.iter().any(|x| x.node == "n2"), "n2 is a member: {m:?}");
    let started = Instant::now();
    let job = n1.run_job("sum").expect("the job is submitted");
    let on_n2: Vec<String> = job
        .placement
        .get("n2")
        .map(|ts| {
            ts.iter()
                .map(|t| format!("{}[{}]", job.chains[t.chain], t.subtask))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !on_n2.is_empty(),
        "subtasks were placed on n2: {:?}",
        job.placement
    );
    let err = job
        .wait()
        .expect_err("the job cannot start without n2's subtasks");
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = silent.join();
    println!(
        "the start failed after {} ms (ready timeout {} ms; n2 got {} frames and ignored them): {err}",
        waited.as_millis(),
        READY_TIMEOUT.as_millis(),
        frames.load(Ordering::Relaxed)
    );
    match &err {
        JobError::NotReady { subtasks, .. } => {
            let mut named = subtasks.clone();
            named.sort();
            let mut want = on_n2.clone();
            want.sort();
            assert_eq!(named, want, "the error names n2's subtasks");
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(
        frames.load(Ordering::Relaxed) > 0,
        "n2 was told to host the job"
    );
    // A deadline, not a hang: generous for a loaded machine, far from "for ever".
    assert!(
        waited < READY_TIMEOUT + Duration::from_secs(30),
        "{waited:?}"
    );
}
