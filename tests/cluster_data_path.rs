//! The data path between two nodes: batches to the other node are `remote_batch_scale` times
//! larger than local ones, and the receiving node returns their credits in groups, so a
//! job's records cross in a quarter of the frames, with fewer credit frames than data frames.
//!
//! Two nodes run in this process; each keeps its own directory of subtasks, so the channels
//! between them go through remote mailboxes and the link as between two processes. The job:
//! `sequence(0..N) → key_by → sum → discard`, parallelism 2, one subtask of each operator on
//! each node; the flush interval is long, so that every batch is sent full.

use crate::common;

use riffle::cluster::{Node, Secret};
use riffle::prelude::*;
use std::time::Duration;

const SECRET: &[u8] = b"data path test secret";
const N: u64 = 1_000_000;

fn job(scale: usize) -> StreamEnv {
    let env = StreamEnv::new();
    env.set_parallelism(2);
    env.configure(move |c| {
        c.name = "data-path".to_string();
        c.workers = Some(1);
        // Batches of 1,024 records (the byte limit would make them 4,096 of these `u64`s).
        c.batch_size = 1024;
        c.flush_interval = Duration::from_secs(10);
        c.remote_batch_scale = scale;
        // Credits return in groups of a quarter of the window: 4 here.
        c.remote_credits = 16;
    });
    env.sequence(0..N)
        .key_by(|x: &u64| x % 1000)
        .sum(|x: &u64| *x)
        .name("sum")
        .discard();
    env
}

/// What one run moved across: data frames and credit frames (both directions).
struct Crossing {
    data_frames: u64,
    credit_frames: u64,
}

fn run(scale: usize) -> Crossing {
    let n1 = Node::builder()
        .name("n1")
        .secret(Secret::new(SECRET).expect("secret"))
        .register_job("sum", move || job(scale))
        .start()
        .expect("n1 starts");
    let n2 = Node::builder()
        .name("n2")
        .seeds([n1.local_addr().to_string()])
        .secret(Secret::new(SECRET).expect("secret"))
        .register_job("sum", move || job(scale))
        .start()
        .expect("n2 starts");
    let up = n1.wait_members(Duration::from_secs(30), |m| !m.is_empty());
    assert!(!up.is_empty(), "n2 joined");
    let j = n1.run_job("sum").expect("the job starts");
    let sums_on = |node: &str| {
        j.placement
            .get(node)
            .map_or(0, |v| v.iter().filter(|t| t.chain == 1).count())
    };
    assert_eq!(
        (sums_on("n1"), sums_on("n2")),
        (1, 1),
        "one sum subtask per node, so that half the records cross: {:?}",
        j.placement
    );
    let r = j.wait().expect("the job finishes");
    let summed: u64 = r
        .subtasks
        .iter()
        .filter(|s| s.chain.starts_with("sum"))
        .map(|s| s.records_in)
        .sum();
    assert_eq!(summed, N, "every record was summed once: {:?}", r.subtasks);
    let data_frames = r.links.iter().map(|l| l.data_frames).sum();
    let credit_frames = r.links.iter().map(|l| l.credit_frames).sum();
    n2.shutdown();
    n1.shutdown();
    Crossing {
        data_frames,
        credit_frames,
    }
}

#[test]
fn batches_to_another_node_are_larger_and_their_credits_return_in_groups() {
    common::init_logging();
    let plain = run(1);
    let scaled = run(4);
    println!(
        "{N} records, half of them across: scale 1: {} data frames, {} credit frames; scale 4: {}, {}",
        plain.data_frames, plain.credit_frames, scaled.data_frames, scaled.credit_frames
    );
    // 500,000 records cross in batches of 1,024: about 490 frames (and a few ends of input).
    assert!(
        plain.data_frames >= 480,
        "full batches crossed: {}",
        plain.data_frames
    );
    assert!(
        scaled.data_frames * 3 < plain.data_frames,
        "batches of 4 × 1024 records need a quarter of the frames: {} vs {}",
        scaled.data_frames,
        plain.data_frames
    );
    assert!(
        plain.credit_frames * 2 < plain.data_frames,
        "credits return in groups: {} credit frames for {} data frames",
        plain.credit_frames,
        plain.data_frames
    );
}
