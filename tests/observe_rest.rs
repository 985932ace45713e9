//! The REST API end to end: every route and each error status, a rescale and a savepoint
//! through HTTP with the job's output still exact, and stopping a job (with a savepoint, and
//! cancelling) through HTTP.

use crate::common;

use riffle::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const N: u64 = 400_000;
const KEYS: u64 = 500;

/// (status, JSON body) of a request.
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let req = ureq::request(method, url);
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = res.status();
    let text = res.into_string().expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {text}"));
    (status, json)
}

fn counting_job(
    name: &str,
    dir: &std::path::Path,
    gate: &'static AtomicBool,
) -> (StreamEnv, CollectHandle<(u64, u64)>) {
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = name.to_string();
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(20)).in_dir(dir));
    });
    let out = env
        .source(move |_: &SubtaskInfo| common::gated::Gated::new(N, KEYS, gate))
        .name("numbers")
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(2)
        .collect();
    (env, out)
}

#[test]
fn every_route_with_a_rescale_and_a_savepoint_keeps_the_output_exact() {
    common::init_logging();
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let base = http.url();
    let dir = tempfile::tempdir().expect("dir");
    static GATE: AtomicBool = AtomicBool::new(false);
    let (env, out) = counting_job("rest-job", dir.path(), &GATE);
    let handle = env.start().expect("start");
    let id = handle.id().to_string();
    let job = format!("{base}/jobs/{id}");

    let (s, jobs) = call("GET", &format!("{base}/jobs"), None);
    assert_eq!(s, 200);
    let me = jobs
        .as_array()
        .expect("list")
        .iter()
        .find(|j| j["id"] == id.as_str())
        .expect("listed");
    assert_eq!(me["name"], "rest-job");
    assert_eq!(me["state"], "running");

    let (s, plan) = call("GET", &job, None);
    assert_eq!(s, 200);
    let count = plan["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("count")))
        .expect("count chain")
        .clone();
    assert_eq!(count["parallelism"], 2);
    assert!(count["inputs"][0]
        .as_str()
        .is_some_and(|n| n.starts_with("numbers")));
    assert_eq!(plan["subtasks"].as_array().expect("subtasks").len(), 4);
    assert!(plan["subtasks"][0]["node"].is_string());

    handle.wait_until(|p| p.checkpoints >= 2);
    let (s, cps) = call("GET", &format!("{job}/checkpoints"), None);
    assert_eq!(s, 200);
    assert!(cps.as_array().is_some_and(|c| !c.is_empty()), "{cps}");

    let (s, sp) = call("POST", &format!("{job}/savepoints"), None);
    assert_eq!(s, 201, "{sp}");
    assert!(sp["savepoint"].as_u64().is_some());

    // The rescale answers once the rescaled operator processed a record, so the sources
    // are let go (the gate opens) once the rescale has held them.
    let url = format!("{job}/rescale");
    let rescale = std::thread::spawn(move || {
        call(
            "POST",
            &url,
            Some(r#"{"operator": "count", "parallelism": 3}"#),
        )
    });
    handle.wait_until(|p| p.rescales_held >= 1);
    GATE.store(true, Ordering::SeqCst);
    let (s, r) = rescale.join().expect("rescale thread");
    assert_eq!(s, 200, "{r}");
    println!("rescale through HTTP: {r}");
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "riffle_rescales_total{{job=\"rest-job\",job_id=\"{id}\"}} 1"
        )),
        "the rescale is counted"
    );
    // `count` has two inputs: its subtasks align each checkpoint's barriers.
    let aligned = metrics.lines().find(|l| {
        l.starts_with("riffle_checkpoint_alignment_seconds{")
            && l.contains("job=\"rest-job\"")
            && l.contains("operator=\"count")
    });
    let seconds: f64 = aligned
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("an alignment time for count: {aligned:?}"));
    assert!((0.0..5.0).contains(&seconds), "{seconds}");
    let (_, plan) = call("GET", &job, None);
    let count = plan["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("count")))
        .expect("count")
        .clone();
    assert_eq!(
        count["parallelism"], 3,
        "the plan shows the new parallelism"
    );
    assert_eq!(plan["subtasks"].as_array().expect("subtasks").len(), 5);

    // Errors: unknown job, unknown route, bad bodies, unknown operator, bad parallelism, a
    // source (which cannot be rescaled).
    assert_eq!(call("GET", &format!("{base}/jobs/nope"), None).0, 404);
    assert_eq!(call("GET", &format!("{base}/nowhere"), None).0, 404);
    assert_eq!(
        call("POST", &format!("{base}/jobs/nope/savepoints"), None).0,
        404
    );
    assert_eq!(
        call("POST", &format!("{job}/rescale"), Some("{not json")).0,
        400
    );
    assert_eq!(
        call(
            "POST",
            &format!("{job}/rescale"),
            Some(r#"{"operator": "count"}"#)
        )
        .0,
        400
    );
    let (s, e) = call(
        "POST",
        &format!("{job}/rescale"),
        Some(r#"{"operator": "nope", "parallelism": 2}"#),
    );
    assert_eq!(s, 404, "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("nope")));
    assert_eq!(
        call(
            "POST",
            &format!("{job}/rescale"),
            Some(r#"{"operator": "count", "parallelism": 0}"#)
        )
        .0,
        400
    );
    assert_eq!(
        call(
            "POST",
            &format!("{job}/rescale"),
            Some(r#"{"operator": "numbers", "parallelism": 3}"#)
        )
        .0,
        409
    );

    let result = handle.wait().expect("the job finishes");
    assert!(result.recoveries.is_empty());
    let finals = common::final_sums(out.take());
    assert_eq!(finals.len() as u64, KEYS);
    assert!(
        finals.values().all(|&c| c == N / KEYS),
        "every key counted exactly once"
    );
    let (_, plan) = call("GET", &job, None);
    assert_eq!(plan["state"], "finished");
    // The job ended: actions on it conflict.
    assert_eq!(call("POST", &format!("{job}/savepoints"), None).0, 409);
    assert_eq!(call("POST", &format!("{job}/stop"), None).0, 409);
}

#[test]
fn a_job_is_stopped_through_http_with_a_savepoint_or_at_once() {
    common::init_logging();
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let base = http.url();
    let dir = tempfile::tempdir().expect("dir");
    static HOLD: AtomicBool = AtomicBool::new(false);
    let (env, _out) = counting_job("rest-stop", dir.path(), &HOLD);
    let handle = env.start().expect("start");
    handle.wait_until(|p| p.checkpoints >= 1);
    let (s, r) = call(
        "POST",
        &format!("{base}/jobs/{}/stop", handle.id()),
        Some(r#"{"savepoint": true}"#),
    );
    assert_eq!(s, 200, "{r}");
    let sp = r["savepoint"].as_u64().expect("savepoint id");
    let result = handle.wait().expect("stopped at a savepoint");
    assert_eq!(result.stopped_at_savepoint, Some(sp));

    let (env, _out) = counting_job("rest-cancel", dir.path(), &HOLD);
    let handle = env.start().expect("start");
    let id = handle.id().to_string();
    let (s, r) = call("POST", &format!("{base}/jobs/{id}/stop"), None);
    assert_eq!(s, 200, "{r}");
    let err = handle.wait().expect_err("cancelled");
    assert!(err.to_string().contains("cancelled"), "{err}");
    let (_, job) = call("GET", &format!("{base}/jobs/{id}"), None);
    assert_eq!(job["state"], "failed");
    assert!(job["failure"]
        .as_str()
        .is_some_and(|f| f.contains("cancelled")));
}

#[test]
fn the_server_describes_itself_and_serves_the_console_and_its_nodes() {
    common::init_logging();
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let base = http.url();
    // The OpenAPI document is JSON and names every route the server has.
    let (s, doc) = call("GET", &format!("{base}/openapi.json"), None);
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let routes = [
        ("/metrics", "get"),
        ("/jobs", "get"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}/checkpoints", "get"),
        ("/jobs/{id}/savepoints", "post"),
        ("/jobs/{id}/rescale", "post"),
        ("/jobs/{id}/stop", "post"),
        ("/cluster/nodes", "get"),
        ("/console/", "get"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} described"
        );
    }
    // Nodes: exactly one answers as this one.
    let (s, nodes) = call("GET", &format!("{base}/cluster/nodes"), None);
    assert_eq!(s, 200);
    let this = nodes
        .as_array()
        .expect("a list")
        .iter()
        .filter(|n| n["this"] == true)
        .count();
    assert_eq!(this, 1, "{nodes}");
    // The console: `/` redirects to it; its files are built in; an unknown one is a 404.
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(&format!("{base}/")).call().expect("redirect");
    assert_eq!((r.status(), r.header("Location")), (302, Some("/console/")));
    let page = ureq::get(&format!("{base}/console/"))
        .call()
        .expect("console");
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.into_string().expect("html").contains("console.js"));
    let js = ureq::get(&format!("{base}/console/console.js"))
        .call()
        .expect("js");
    assert!(js.content_type().contains("javascript"));
    let (s, e) = call("GET", &format!("{base}/console/nope.js"), None);
    assert_eq!(s, 404, "{e}");
}

/// Two jobs of one name running side by side: each one's figures (REST and Prometheus) are
/// its own. They used to be kept under the job's name, so one job showed the other's.
#[test]
fn jobs_of_one_name_keep_their_figures_apart() {
    common::init_logging();
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let base = http.url();
    let twin = |n: u64| {
        let env = StreamEnv::new();
        env.configure(|c| c.name = "twin".to_string());
        env.generate(n, |i| (i % 7, 1u64))
            .name("numbers")
            .parallelism(1)
            .key_by(|r: &(u64, u64)| r.0)
            .sum(|r| r.1)
            .parallelism(2)
            .discard();
        env.start().expect("start")
    };
    let jobs = [(twin(1_000), 1_000u64), (twin(3_000), 3_000u64)];
    let ids: Vec<String> = jobs.iter().map(|(h, _)| h.id().to_string()).collect();
    assert_ne!(ids[0], ids[1], "two jobs, two ids");
    for ((handle, n), id) in jobs.into_iter().zip(&ids) {
        let result = handle.wait().expect("job");
        let emitted: u64 = result
            .subtasks
            .iter()
            .filter(|m| m.chain.contains("numbers"))
            .map(|m| m.records_out)
            .sum();
        assert_eq!(emitted, n, "job {id}");
    }
    let metrics = ureq::get(&format!("{base}/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    for (id, n) in ids.iter().zip([1_000u64, 3_000]) {
        let (s, job) = call("GET", &format!("{base}/jobs/{id}"), None);
        assert_eq!(s, 200, "{job}");
        let source = job["chains"]
            .as_array()
            .expect("chains")
            .iter()
            .find(|c| c["source"] == true)
            .expect("a source chain");
        assert_eq!(source["records_out"], n, "job {id}: {source}");
        // Its series in Prometheus, told apart by `job_id`.
        let chain = source["name"].as_str().expect("name");
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("riffle_records_out_total{")
                    && l.contains(&format!("job_id=\"{id}\""))
                    && l.contains(&format!("operator=\"{chain}\""))
            })
            .unwrap_or_else(|| panic!("no series of job {id}:\n{metrics}"));
        assert!(line.contains("job=\"twin\""), "{line}");
        assert!(line.ends_with(&format!(" {n}")), "{line}");
    }
}
