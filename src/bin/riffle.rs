//! `riffle`: the command line for running Riffle jobs, over their process's REST API.
//!
//! ```text
//! riffle [--url URL] [--json] jobs
//! riffle job ID
//! riffle checkpoints ID
//! riffle savepoint ID
//! riffle rescale ID OPERATOR N
//! riffle stop ID [--savepoint]
//! riffle nodes
//! ```
//!
//! Exit codes: 0 done, 1 the server refused or failed (its message is printed), 2 a usage
//! error (clap's), 3 the server could not be reached.

use clap::{Parser, Subcommand};
use serde_json::Value;
use std::process::ExitCode;

/// Operate running Riffle jobs through their process's REST API.
#[derive(Parser)]
#[command(name = "riffle", version, about)]
struct Cli {
    /// Base URL of the process's HTTP server.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8081",
        env = "RIFFLE_URL"
    )]
    url: String,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the jobs.
    Jobs,
    /// Show a job's chains and subtasks.
    Job {
        /// The job's id (see `riffle jobs`).
        id: String,
    },
    /// List a job's completed checkpoints.
    Checkpoints {
        /// The job's id.
        id: String,
    },
    /// Take a savepoint.
    Savepoint {
        /// The job's id.
        id: String,
    },
    /// Change an operator's parallelism in place.
    Rescale {
        /// The job's id.
        id: String,
        /// The operator's name.
        operator: String,
        /// The new parallelism (at least 1).
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        parallelism: u32,
    },
    /// Stop a job: at once, or with a savepoint.
    Stop {
        /// The job's id.
        id: String,
        /// Take a savepoint and stop there.
        #[arg(long)]
        savepoint: bool,
    },
    /// List the cluster's nodes (as the node at --url sees them).
    Nodes,
}

/// Why a command failed.
enum Failure {
    /// The server answered with an error.
    Refused(u16, String),
    /// The server could not be reached.
    Unreachable(String),
}

fn request(method: &str, url: &str, body: Option<Value>) -> Result<Value, Failure> {
    let req = ureq::request(method, url);
    let res = match body {
        Some(b) => req.send_json(b),
        None if method == "POST" => req.send_string(""),
        None => req.call(),
    };
    match res {
        Ok(r) => r
            .into_json()
            .map_err(|e| Failure::Unreachable(format!("{url}: not JSON: {e}"))),
        Err(ureq::Error::Status(code, r)) => {
            let msg = r
                .into_json::<Value>()
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| "no message".to_string());
            Err(Failure::Refused(code, msg))
        }
        Err(e) => Err(Failure::Unreachable(format!("{url}: {e}"))),
    }
}

/// Prints rows as a table with a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        Value::Array(a) if a.is_empty() => "-".to_string(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// The rows of a JSON list: the fields `keys` of each element, as text.
fn rows(list: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|x| keys.iter().map(|k| text(&x[*k])).collect())
                .collect()
        })
        .unwrap_or_default()
}

fn show(cli: &Cli, v: &Value) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match &cli.command {
        Command::Jobs => {
            let keys = ["id", "name", "state", "started_ms", "coordinator"];
            table(
                &["ID", "NAME", "STATE", "STARTED (ms)", "COORDINATOR"],
                &rows(v, &keys),
            );
        }
        Command::Job { .. } => show_job(v),
        Command::Checkpoints { .. } => {
            let keys = ["id", "duration_ms", "bytes", "savepoint"];
            table(
                &["ID", "DURATION (ms)", "BYTES", "SAVEPOINT"],
                &rows(v, &keys),
            );
        }
        Command::Savepoint { .. } => println!("savepoint {}", text(&v["savepoint"])),
        Command::Rescale { .. } => println!(
            "rescaled {} to {}: {} of {} keys moved, paused {:.1} ms",
            text(&v["operator"]),
            text(&v["parallelism"]),
            text(&v["keys_moved"]),
            text(&v["keys"]),
            v["pause_ms"].as_f64().unwrap_or(0.0)
        ),
        Command::Stop { .. } => match v["savepoint"].as_u64() {
            Some(sp) => println!("stopped at savepoint {sp}"),
            None => println!("stopped"),
        },
        Command::Nodes => {
            let keys = ["name", "address", "state", "this", "coordinator"];
            table(
                &["NODE", "ADDRESS", "STATE", "THIS", "COORDINATOR"],
                &rows(v, &keys),
            );
        }
    }
}

/// A job: its summary, its chains and its subtasks.
fn show_job(v: &Value) {
    println!(
        "{}  {}  {}  (epoch {}, {} checkpoints)",
        text(&v["id"]),
        text(&v["name"]),
        text(&v["state"]),
        text(&v["epoch"]),
        text(&v["checkpoints"])
    );
    if let Some(f) = v["failure"].as_str() {
        println!("failure: {f}");
    }
    println!();
    let chains: Vec<Vec<String>> = v["chains"]
        .as_array()
        .map(|a| a.iter().map(chain_row).collect())
        .unwrap_or_default();
    table(
        &[
            "CHAIN",
            "PARALLELISM",
            "INPUTS",
            "IN/S",
            "OUT/S",
            "BUSY",
            "BACKPRESSURED",
        ],
        &chains,
    );
    println!();
    let keys = ["chain", "subtask", "node", "state"];
    table(
        &["CHAIN", "SUBTASK", "NODE", "STATE"],
        &rows(&v["subtasks"], &keys),
    );
}

/// A chain's row: name, parallelism, inputs, rates (records/s) and its busiest subtask's
/// busy and backpressured share (in %).
fn chain_row(c: &Value) -> Vec<String> {
    let num = |k: &str| c[k].as_f64().unwrap_or(0.0);
    vec![
        text(&c["name"]),
        text(&c["parallelism"]),
        text(&c["inputs"]),
        format!("{:.0}", num("rate_in")),
        format!("{:.0}", num("rate_out")),
        format!("{:.0}%", 100.0 * num("busy")),
        format!("{:.0}%", 100.0 * num("backpressured")),
    ]
}

fn run(cli: &Cli) -> Result<Value, Failure> {
    let base = cli.url.trim_end_matches('/');
    let job = |id: &str| format!("{base}/jobs/{id}");
    match &cli.command {
        Command::Jobs => request("GET", &format!("{base}/jobs"), None),
        Command::Job { id } => request("GET", &job(id), None),
        Command::Checkpoints { id } => request("GET", &format!("{}/checkpoints", job(id)), None),
        Command::Savepoint { id } => request("POST", &format!("{}/savepoints", job(id)), None),
        Command::Rescale {
            id,
            operator,
            parallelism,
        } => request(
            "POST",
            &format!("{}/rescale", job(id)),
            Some(serde_json::json!({"operator": operator, "parallelism": parallelism})),
        ),
        Command::Stop { id, savepoint } => request(
            "POST",
            &format!("{}/stop", job(id)),
            Some(serde_json::json!({ "savepoint": savepoint })),
        ),
        Command::Nodes => request("GET", &format!("{base}/cluster/nodes"), None),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(v) => {
            show(&cli, &v);
            ExitCode::SUCCESS
        }
        Err(Failure::Refused(code, msg)) => {
            eprintln!("riffle: the server refused ({code}): {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(msg)) => {
            eprintln!("riffle: cannot reach the server: {msg}");
            ExitCode::from(3)
        }
    }
}
