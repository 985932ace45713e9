//! etcd outages against an etcd with its default settings: SIGSTOPped for 0.5×, 1.5× and 3×
//! the lease TTL it granted, or SIGKILLed and restarted on its data directory — while a
//! 3-node job runs, and while it ends. The job's output must equal the single-process run,
//! every node must report the same agreed outcome within the deadline, and nothing may hang;
//! each trial says whether the leader kept leading or another node continued the job, and
//! how long after the fault records flowed again.
//!
//! A stock etcd raises a lease TTL below its minimum (1.5 × its 1 s election timeout): the
//! nodes ask for 1 s and must work with the 2 s etcd grants.
//!
//! `RIFFLE_ETCD_OUTAGE_TRIALS=N` runs N trials of each of the 8 cases (default 1);
//! `RIFFLE_ETCD_OUTAGE_ONLY=TEXT` only the cases whose name (`Pause(15) Running`,
//! `Restart Ending`, …) contains TEXT.

use crate::common;

use common::etcd::Etcd;
use common::proxied::{Cluster, NAMES};
use std::time::{Duration, Instant};

/// What the nodes ask for; a stock etcd grants its minimum, 2 s.
const ASKED_TTL: Duration = Duration::from_secs(1);
const GRANTED_TTL: Duration = Duration::from_secs(2);
/// Every node reports the job's agreed end within this, whatever the fault.
const DEADLINE: Duration = Duration::from_secs(90);

fn sum_job() -> common::SumJob {
    common::SumJob::paced_trial()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGSTOP for this many tenths of the granted TTL, then SIGCONT.
    Pause(u32),
    /// SIGKILL, and a restart on the same data directory a second later.
    Restart,
}

#[derive(Clone, Copy, Debug)]
enum When {
    /// Once a checkpoint was committed.
    Running,
    /// Once a source has read all its input (the last checkpoints, the commits and the
    /// recorded end follow).
    Ending,
}

/// Runs one trial; what it ended in, for the report.
fn trial(fault: Fault, when: When, expected: &[String]) -> Option<String> {
    let mut etcd = Etcd::stock()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let cluster = Cluster::start(|b| {
        let d = d.clone();
        b.register_job("sum", move || sum_job().build(&d))
            .etcd([etcd.url.clone()])
            .lease_ttl(ASKED_TTL)
    });
    let nodes = &cluster.nodes;
    let leader = nodes[0]
        .wait_leader(Duration::from_secs(30))
        .expect("a leader is elected");
    let l = NAMES.iter().position(|n| *n == leader).expect("a node");
    assert!(nodes[l].wait_leads(Duration::from_secs(10)).is_some());
    assert_eq!(
        nodes[l].lease_ttl(),
        Some(GRANTED_TTL),
        "the leader works with the TTL etcd granted, not the one it asked for"
    );
    let job = nodes[l].run_job("sum").expect("job starts");
    match when {
        When::Running => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !common::checkpoint_published(dir.path()) {
                assert!(Instant::now() < deadline, "no checkpoint was committed");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        When::Ending => {
            job.wait_until(|p| p.ended || p.draining.first().copied().unwrap_or(false));
        }
    }
    let watchdog = common::watchdog(format!("{fault:?} {when:?}"), DEADLINE * 2);
    let struck = std::time::SystemTime::now();
    match fault {
        Fault::Pause(tenths) => {
            etcd.pause();
            // The fault itself lasts this long.
            std::thread::sleep(GRANTED_TTL * tenths / 10);
            etcd.resume();
        }
        Fault::Restart => etcd.kill_and_restart(Duration::from_secs(1)),
    }
    let healed = Instant::now();
    let own = std::thread::spawn(move || job.wait().map(|_| ()).map_err(|e| e.to_string()));
    let mut ends = Vec::new();
    for n in nodes {
        let end = n
            .wait_job_end("sum", DEADLINE)
            .unwrap_or_else(|e| panic!("{fault:?} {when:?}: {} has no outcome: {e}", n.name()));
        ends.push(end);
    }
    let ended = healed.elapsed();
    assert!(
        ends.iter().all(|e| *e == Ok(())),
        "{fault:?} {when:?}: every node reports success: {ends:?}"
    );
    let own = own.join().expect("the leader's wait");
    common::assert_same_output(common::published_output(dir.path()), expected.to_vec());
    let failovers: Vec<_> = nodes
        .iter()
        .flat_map(|n| {
            let name = n.name().to_string();
            n.wait_failovers(Duration::ZERO)
                .into_iter()
                .map(move |f| (name.clone(), f))
        })
        .collect();
    let how = match failovers.iter().max_by_key(|(_, f)| f.epoch) {
        None => format!("{leader} kept leading (its own wait: {own:?})"),
        Some((node, f)) => {
            let flowing = f.flowing_at.and_then(|t| t.duration_since(struck).ok());
            format!(
                "{node} continued the job (epoch {}); records flowed again {} after the fault began; {leader}'s own wait: {own:?}",
                f.epoch,
                flowing.map_or("—".to_string(), |d| format!("{} ms", d.as_millis()))
            )
        }
    };
    for n in cluster.nodes {
        n.shutdown();
    }
    let _ = watchdog.send(());
    Some(format!(
        "{how}; every node agreed {} ms after the fault ended",
        ended.as_millis()
    ))
}

#[test]
fn etcd_paused_or_restarted_during_a_job_or_its_end_leaves_one_exact_outcome() {
    common::init_logging();
    let trials = common::trials("RIFFLE_ETCD_OUTAGE_TRIALS");
    let only = std::env::var("RIFFLE_ETCD_OUTAGE_ONLY").ok();
    let expected = sum_job().single_process_output();
    for when in [When::Running, When::Ending] {
        for fault in [
            Fault::Pause(5),
            Fault::Pause(15),
            Fault::Pause(30),
            Fault::Restart,
        ] {
            let name = format!("{fault:?} {when:?}");
            if !only.as_deref().is_none_or(|o| name.contains(o)) {
                continue;
            }
            for t in 0..trials {
                let Some(how) = trial(fault, when, &expected) else {
                    return;
                };
                println!("etcd {fault:?} while {when:?}, trial {t}: exact; {how}");
            }
        }
    }
}
