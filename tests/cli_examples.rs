//! The examples' command lines as a new user meets them: `--help`, bad numbers, a missing
//! file, zero nodes, an unreachable seed, deliberate panics under `RUST_BACKTRACE=1`, and a
//! graceful stop by SIGTERM (a savepoint, exit 0, and `--resume` finishing exactly). Each
//! case checks the exit code and that the message names the problem in one line, with no
//! `Debug` dump and no backtrace.
//!
//! The examples are built by `cargo test` (next to this test binary, in `examples/`); a
//! filtered run (`--test riffle_tests cli_examples`) does not rebuild them, so run
//! `cargo build --release --examples` first after changing one.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built (cargo test builds the examples)",
        path.display()
    );
    path
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the example runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// No Debug dump (`Os { code: .. }`, `Custom {`, `kind: NotFound`) and no backtrace.
fn assert_readable(err: &str) {
    for bad in [
        "Os {",
        "Custom {",
        "kind: ",
        "stack backtrace",
        "panicked at",
    ] {
        assert!(!err.contains(bad), "`{bad}` in:\n{err}");
    }
}

/// Sends SIGTERM to process `pid`.
fn sigterm(pid: u32) {
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success(), "kill -TERM {pid}");
}

/// Reads `child`'s stdout until a line starts with `prefix`, sends it SIGTERM, and returns
/// the rest of its stdout (until it closes); `Err` with the lines read if stdout closed
/// before such a line.
fn sigterm_after(
    child: &mut std::process::Child,
    prefix: &str,
) -> Result<Vec<String>, Vec<String>> {
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let seen = line.starts_with(prefix);
        before.push(line);
        if seen {
            sigterm(child.id());
            return Ok(lines.map_while(Result::ok).collect());
        }
    }
    Err(before)
}

/// The `error: ` line a failed example ends with.
fn error_line(err: &str) -> &str {
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line in:\n{err}");
    errors[0]
}

#[test]
fn help_is_usage_text_and_exits_zero() {
    let out = run("wordcount", &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("Usage: wordcount [OPTIONS] [FILE]"), "{help}");
    assert!(help.contains("--parallelism"), "{help}");
    let out = run("cluster_wordcount", &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--local-cluster <N>"));
}

#[test]
fn a_bad_number_is_a_usage_error_naming_it() {
    for (name, args, names) in [
        ("wordcount", &["-p", "many"][..], "'many'"),
        ("wordcount", &["-p", "0"][..], "'0'"),
        ("exactly_once", &["--kill-after", "x"][..], "'x'"),
        ("cluster_wordcount", &["--local-cluster", "0"][..], "'0'"),
        (
            "cluster_wordcount",
            &["--local-cluster", "three"][..],
            "'three'",
        ),
    ] {
        let out = run(name, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(names),
            "{err}"
        );
        assert_readable(&err);
    }
    let out = run("cluster_wordcount", &[]);
    assert_eq!(out.status.code(), Some(2), "no mode is a usage error");
}

#[test]
fn a_missing_file_fails_at_once_in_one_line() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("no-such-file.txt");
    let started = Instant::now();
    let out = run("wordcount", &[missing.to_str().expect("path"), "-p", "1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = error_line(&err);
    assert!(
        line.contains("no-such-file.txt") && line.contains("No such file"),
        "{line}"
    );
    assert_readable(&err);
    // Not retried: the one subtask failed once.
    assert_eq!(err.matches("subtask failed").count(), 1, "{err}");
    println!("failed in {:?}", started.elapsed());
}

#[test]
fn an_unreachable_seed_is_logged_with_its_address_and_the_node_gives_up() {
    let out = Command::new(example("cluster_wordcount"))
        .args(["--node", "n2", "--seed", "127.0.0.1:1", "--expect", "2"])
        .args(["--join-timeout", "2", "--http", "off"])
        .env("RIFFLE_CLUSTER_SECRET", "0123456789abcdef0123456789abcdef")
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("cannot reach a peer") && l.contains("127.0.0.1:1")),
        "the failed dial is logged at warn with its address:\n{err}"
    );
    let line = error_line(&err);
    assert!(line.contains("only 1 of 2 nodes joined"), "{line}");
    assert_readable(&err);
}

#[test]
fn deliberate_panics_are_one_line_each_without_backtraces() {
    let out = run("supervised", &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_readable(&err);
    let failed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("subtask failed"))
        .collect();
    assert!(!failed.is_empty(), "the caught panics are reported:\n{err}");
    for l in &failed {
        assert!(
            l.contains("operator=") && l.contains("subtask=") && l.contains("cause="),
            "{l}"
        );
    }
    let corrupt = failed
        .iter()
        .filter(|l| l.contains("corrupt record"))
        .count();
    assert_eq!(corrupt, 9, "3 corrupt records, 3 attempts each:\n{err}");
}

#[test]
fn sigterm_stops_with_a_savepoint_and_resume_finishes_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("path");
    let mut child = Command::new(example("exactly_once"))
        .args(["--dir", d, "--no-chaos", "--lines", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let rest = sigterm_after(&mut child, "job running");
    let out = child.wait_with_output().expect("exits");
    let rest = rest.unwrap_or_else(|before| {
        panic!(
            "no \"job running\" line; {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            before.join("\n"),
            text(&out.stderr)
        )
    });
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{rest:?}\n{err}");
    assert!(
        rest.iter().any(|l| l.starts_with("stopped at savepoint")),
        "stopped before the end (raise --lines if this machine is that fast): {rest:?}"
    );
    assert!(
        err.contains("savepoint") && err.contains("written to"),
        "{err}"
    );
    assert_readable(&err);

    let started = Instant::now();
    let out = Command::new(example("exactly_once"))
        .args(["--dir", d, "--resume"])
        .output()
        .expect("resumes");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("equal to a clean run"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(600));
}

/// `GET url` as JSON.
fn get_json(url: &str) -> serde_json::Value {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_json()
        .expect("JSON")
}

#[test]
fn every_node_of_a_local_cluster_serves_the_endpoints() {
    let dir = tempfile::tempdir().expect("dir");
    let mut parent = Command::new(example("cluster_wordcount"))
        .args(["--local-cluster", "3", "--linger", "120"])
        .arg("--dir")
        .arg(dir.path().join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    // "nK: HTTP at URL (console: ..)" from each node, then the coordinator's report.
    let mut lines = BufReader::new(parent.stdout.take().expect("stdout")).lines();
    let mut urls = std::collections::BTreeMap::new();
    let mut lingering = 0;
    for l in lines.by_ref().map_while(Result::ok) {
        if let Some((node, rest)) = l.split_once(": HTTP at ") {
            let url = rest.split_whitespace().next().expect("url").to_string();
            urls.insert(node.to_string(), url);
        }
        lingering += usize::from(l.contains(": lingering"));
        if lingering == 3 {
            break;
        }
    }
    assert_eq!(urls.len(), 3, "{urls:?}");
    let names: Vec<&String> = urls.keys().collect();
    assert_eq!(names, ["n1", "n2", "n3"]);

    // The coordinator (n1, the lowest id) shows where each subtask ran.
    let jobs = get_json(&format!("{}/jobs", urls["n1"]));
    let job = jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["name"] == "cluster-wordcount"))
        .unwrap_or_else(|| panic!("the coordinator lists the job: {jobs}"));
    assert_eq!(job["state"], "finished", "{job}");
    let id = job["id"].as_str().expect("id");
    assert_eq!(
        (&job["coordinator"], &job["part"]),
        (&"n1".into(), &false.into()),
        "{job}"
    );
    // The other nodes list it under the same id, as run there in part, and send a request
    // for it to the coordinator by name.
    for node in ["n2", "n3"] {
        let jobs = get_json(&format!("{}/jobs", urls[node]));
        let part = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == id))
            .unwrap_or_else(|| panic!("{node} lists the job it ran in part: {jobs}"));
        assert_eq!(part["part"], true, "{node}: {part}");
        assert_eq!(part["coordinator"], "n1", "{node}: {part}");
        assert_eq!(part["name"], "cluster-wordcount", "{node}: {part}");
        assert_eq!(part["state"], "finished", "{node}: {part}");
        match ureq::get(&format!("{}/jobs/{id}", urls[node])).call() {
            Err(ureq::Error::Status(404, r)) => {
                let body: serde_json::Value = r.into_json().expect("JSON");
                let message = body["error"].as_str().unwrap_or_default();
                assert!(message.contains("coordinator `n1`"), "{node}: {message}");
            }
            other => panic!("{node}: /jobs/{id} should be a 404 naming n1: {other:?}"),
        }
    }
    // Every subtask's figures, those of other nodes sent on their heartbeats (the last ones
    // may be a heartbeat away): 200,000 lines of 3 to 7 words (3 + i % 5), 1,000,000 words.
    let counted = |plan: &serde_json::Value| -> u64 {
        plan["subtasks"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["chain"].as_str().is_some_and(|c| c.starts_with("count")))
                    .filter_map(|s| s["figures"]["records_in"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    let until = Instant::now() + Duration::from_secs(10);
    let plan = loop {
        let plan = get_json(&format!("{}/jobs/{id}", urls["n1"]));
        if counted(&plan) == 1_000_000 || Instant::now() > until {
            break plan;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        counted(&plan),
        1_000_000,
        "every word reached `count`: {plan}"
    );
    let nodes: std::collections::BTreeSet<&str> = plan["subtasks"]
        .as_array()
        .expect("subtasks")
        .iter()
        .filter_map(|s| s["node"].as_str())
        .collect();
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        ["n1", "n2", "n3"],
        "{plan}"
    );

    for (name, url) in &urls {
        let members = get_json(&format!("{url}/cluster/nodes"));
        let list = members.as_array().expect("nodes");
        let seen: Vec<(&str, &str, bool, bool)> = list
            .iter()
            .map(|n| {
                let s = |k: &str| n[k].as_str().unwrap_or_default();
                (
                    s("name"),
                    s("state"),
                    n["this"] == true,
                    n["coordinator"] == true,
                )
            })
            .collect();
        let want: Vec<(&str, &str, bool, bool)> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| (*n, "up", n == name, *n == "n1"))
            .collect();
        assert_eq!(seen, want, "{name}: {members}");
        let metrics = ureq::get(&format!("{url}/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        let mine = format!("node=\"{name}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("riffle_records_in_total{") && l.contains(&mine)),
            "{name} counts its own subtasks' records"
        );
        for name_of in [
            "riffle_remote_bytes_in_total{",
            "riffle_remote_bytes_out_total{",
        ] {
            let bytes: f64 = metrics
                .lines()
                .filter(|l| l.starts_with(name_of) && l.contains(&mine))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(
                bytes > 0.0,
                "{name}: {name_of}..}} counts what crossed nodes"
            );
        }
    }
    // A stop signal to the parent goes on to the nodes; all exit 0 and the result is checked.
    sigterm(parent.id());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = parent.wait().expect("exits");
    assert!(status.success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("checked:")), "{rest:?}");
}

#[test]
fn long_runs_show_progress_on_a_terminal_and_nothing_otherwise() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().to_str().expect("path");
    let args = ["--dir", d, "--no-chaos", "--lines", "600000"];
    // Not a terminal: no progress line.
    let out = run("exactly_once", &args);
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(!err.contains('\r') && !err.contains("records/s"), "{err}");
    // A terminal (util-linux's `script` gives the example one): a bar with a rate.
    let Some(script) = crate::common::prometheus::which("script") else {
        let required = std::env::var("RIFFLE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "`script` (bsdutils) is required to give the example a terminal"
        );
        println!("SKIPPED: no `script` here to run the example on a terminal");
        return;
    };
    let cmd = format!("{} {}", example("exactly_once").display(), args.join(" "));
    let out = Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("script runs");
    let tty = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{tty}");
    assert!(
        tty.contains("/3,600,000 records"),
        "a bar over the known total:\n{tty}"
    );
    assert!(tty.contains("M records/s"), "a rate:\n{tty}");
}

#[test]
fn a_node_takes_its_settings_from_a_toml_file_and_flags_win() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "node = \"from-file\"\nseed = [\"127.0.0.1:1\"]\nexpect = 2\njoin-timeout = 1\nhttp = \"off\"\n",
    )
    .expect("write");
    let node = |args: &[&str]| {
        Command::new(example("cluster_wordcount"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RIFFLE_CLUSTER_SECRET", "0123456789abcdef0123456789abcdef")
            .env_remove("RUST_LOG")
            .output()
            .expect("runs")
    };
    // The file's name, seed and timeout; the command line's --expect.
    let out = node(&["--expect", "3"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = error_line(&err);
    assert!(
        line.contains("from-file: only 1 of 3 nodes joined within 1 s"),
        "{line}"
    );
    assert!(
        err.contains("127.0.0.1:1"),
        "the file's seed was dialled:\n{err}"
    );
    // A mistyped key is a usage error naming the file, the line and the key.
    std::fs::write(&config, "node = \"n1\"\nsed = [\"127.0.0.1:1\"]\n").expect("write");
    let out = node(&[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = error_line(&err);
    assert!(
        line.contains("node.toml, line 2") && line.contains("sed"),
        "{line}"
    );
    assert_readable(&err);
}

#[test]
fn sigterm_stops_a_local_cluster_at_a_savepoint_and_resume_finishes_exactly() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().join("run");
    let d = d.to_str().expect("path");
    let args = [
        "--local-cluster",
        "3",
        "--dir",
        d,
        "--lines",
        "2000000",
        "--http",
        "off",
    ];
    // The parent's stderr goes to a file: a pipe nobody reads could fill and stall it, and
    // a failure shows why (for instance why no placement was printed).
    let err_path = dir.path().join("parent.stderr");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut parent = Command::new(example("cluster_wordcount"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(err_file)
        .spawn()
        .expect("starts");
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let rest = match sigterm_after(&mut parent, "placement") {
        Ok(rest) => rest,
        Err(before) => {
            let _ = parent.kill();
            let status = parent.wait();
            panic!(
                "no placement line; exit {status:?}\nstdout:\n{}\nstderr:\n{}",
                before.join("\n"),
                stderr()
            );
        }
    };
    let status = parent.wait().expect("exits");
    assert!(status.success(), "{rest:?}\nstderr:\n{}", stderr());
    assert!(
        rest.iter().any(|l| l.starts_with("n1: stopped the job at savepoint")),
        "the coordinator stopped the job with a savepoint (raise --lines if it ended first): {rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopped; continue with --resume")),
        "{rest:?}"
    );

    let out = Command::new(example("cluster_wordcount"))
        .args(args)
        .arg("--resume")
        .output()
        .expect("resumes");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("checked: the 3-node result equals"),
        "{stdout}"
    );
}

/// A run that ends normally says nothing alarming: nodes that shut down say so (`Leave`), so
/// their peers log no closed links, no dials to them and no down peers, and a checkpoint the
/// final one replaces is no warning either.
#[test]
fn a_local_cluster_that_ends_normally_logs_no_warning() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path().join("run");
    let args = ["--local-cluster", "3", "--lines", "20000", "--http", "off"];
    let out = run(
        "cluster_wordcount",
        &[&args[..], &["--dir", d.to_str().expect("path")]].concat(),
    );
    let (stdout, err) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{err}");
    assert!(
        stdout.contains("checked: the 3-node result equals"),
        "{stdout}"
    );
    let alarming: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(alarming.is_empty(), "{}", alarming.join("\n"));
}

#[test]
fn a_local_cluster_elects_its_leader_on_an_etcd_with_tls_and_a_password() {
    let Some(secure) = crate::common::etcd::Etcd::start_secure() else {
        return;
    };
    let password = "the example's etcd password";
    secure.enable_auth(password);
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("etcd.password");
    std::fs::write(&pw, format!("{password}\n")).expect("password file");
    let path = |p: &std::path::Path| p.to_str().expect("path").to_string();
    let out = Command::new(example("cluster_wordcount"))
        .args(["--local-cluster", "3", "--lines", "20000", "--http", "off"])
        .args(["--dir", &path(&dir.path().join("run"))])
        .args(["--etcd", &secure.etcd.url])
        .args(["--etcd-ca", &path(&secure.pem("ca.pem"))])
        .args(["--etcd-cert", &path(&secure.pem("client.pem"))])
        .args(["--etcd-key", &path(&secure.pem("client.key"))])
        .args(["--etcd-user", "root", "--etcd-password-file", &path(&pw)])
        .output()
        .expect("runs");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("leads the cluster (elected on etcd)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("checked: the 3-node result equals"),
        "{stdout}"
    );

    // Half of a pair is a usage error naming it.
    let out = run(
        "cluster_wordcount",
        &[
            "--local-cluster",
            "1",
            "--etcd",
            &secure.etcd.url,
            "--etcd-user",
            "root",
        ],
    );
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("--etcd-password-file"), "{err}");
    assert_readable(&err);
}
