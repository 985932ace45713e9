//! What a program built on Riffle needs around its jobs on a command line (the examples and
//! the `riffle` tool use it): logging set up from `RUST_LOG`, errors printed as one line with
//! their causes and an exit code that tells a usage error from a failed job, panics in user
//! code reported once by the runtime instead of as backtraces, and a graceful stop on
//! SIGTERM or Ctrl-C.

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

/// The exit code of a program whose job (or its setup) failed.
pub const EXIT_FAILED: u8 = 1;
/// The exit code of a bad command line (as clap uses).
pub const EXIT_USAGE: u8 = 2;
/// The exit code when a second stop signal ends the process at once (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Logs to stderr as `RUST_LOG` says (a level, or `target=level` directives such as
/// `riffle_cluster=debug,warn`), `warn` without it; a bad `RUST_LOG` is reported and the
/// default used.
///
/// It also installs a panic hook: a panic on one of the runtime's threads is user code that
/// the runtime catches and reports itself (one `subtask failed` line naming the operator,
/// the subtask and the message, then a restart as the strategy says), so the hook prints
/// nothing for it — only at `debug` it logs the panic with its backtrace. Panics elsewhere
/// go to the previous hook as usual.
pub fn init_logging() {
    use tracing_subscriber::prelude::*;
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    let (targets, bad) = match wanted.parse::<tracing_subscriber::filter::Targets>() {
        Ok(t) if !wanted.is_empty() => (t, None),
        Ok(_) => (default_targets(), None),
        Err(e) => (default_targets(), Some(e)),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(targets))
        .try_init();
    if let Some(e) = bad {
        tracing::warn!("ignoring RUST_LOG={wanted:?} ({e}); logging at warn");
    }
    quiet_caught_panics();
}

fn default_targets() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN)
}

/// Whether the current thread is one of the runtime's workers (they run user code, under
/// `catch_unwind`; a panic that escapes ends the worker, and the job supervisor reports that
/// and recovers).
fn on_runtime_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|n| n.starts_with("actix-rt|"))
}

fn quiet_caught_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !on_runtime_thread() {
            return previous(info);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let message = riffle_framework::panic_message(info.payload());
            let at = info.location().map(|l| l.to_string()).unwrap_or_default();
            let backtrace = std::backtrace::Backtrace::force_capture();
            tracing::debug!(%at, "panic in user code: {message}\n{backtrace}");
        }
    }));
}

/// `e` and its causes on one line, `: `-separated, leaving out a cause whose text the line
/// already holds (errors that print their source in their own message).
pub fn one_line(e: &dyn Error) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line.replace('\n', " ")
}

/// The end of `main`: nothing for `Ok`; for an error, `error: ` and [`one_line`] on stderr
/// and [`EXIT_FAILED`].
pub fn exit(result: Result<(), Box<dyn Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(e.as_ref()));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Starts the HTTP server (metrics, REST API, web console) as an `--http ADDR|off` flag
/// says, and says on stderr where the console is.
///
/// # Errors
/// `addr` is neither `off` nor an address, or the server cannot start there.
pub fn serve_http(addr: &str) -> Result<Option<riffle_actors::http::HttpServer>, Box<dyn Error>> {
    if addr == "off" {
        return Ok(None);
    }
    let at = addr
        .parse()
        .map_err(|e| format!("--http {addr}: not an address ({e})"))?;
    let server = riffle_actors::http::serve(at)?;
    eprintln!("console: {}/console/", server.url());
    Ok(Some(server))
}

static SIGNALS: AtomicU32 = AtomicU32::new(0);

/// Runs `on_first` (in a thread of its own) at the first SIGTERM or Ctrl-C — typically
/// stopping the program's jobs with a savepoint — and ends the process at once with
/// [`EXIT_INTERRUPTED`] at the second. One handler per process.
///
/// # Errors
/// A handler was installed already, or the system refused one.
pub fn on_stop_signal(on_first: impl FnOnce() + Send + 'static) -> Result<(), ctrlc::Error> {
    let first = std::sync::Mutex::new(Some(on_first));
    ctrlc::set_handler(move || {
        if SIGNALS.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("second stop signal: exiting now");
            std::process::exit(EXIT_INTERRUPTED);
        }
        let f = first.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = f {
            eprintln!("stop signal: stopping (a second one exits at once)");
            let _ = std::thread::Builder::new()
                .name("stop-signal".to_string())
                .spawn(f);
        }
    })
}

/// Whether a stop signal arrived.
pub fn stop_requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// A running job's progress on stderr; the line is cleared when it is dropped (or the job
/// ended).
pub struct ProgressLine {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Records the job's sources emitted so far, as their subtasks last published it.
fn source_records(control: &riffle_actors::registry::JobControl) -> u64 {
    let plan = control.plan();
    let job = plan.instance();
    (0..plan.chain_count())
        .filter(|&c| plan.is_source(c))
        .flat_map(|c| {
            let name = plan.chain_name(c);
            (0..plan.parallelism(c))
                .filter_map(move |s| riffle_actors::telemetry::live(job, name, s))
        })
        .map(|f| f.records_out)
        .sum()
}

/// Shows the progress of the job `control` acts on, if stderr is a terminal (and nothing
/// otherwise): the records its source chains handed on (a source and the operators chained
/// to it) and their rate, with a bar when `total` — the records they hand on in all — is
/// known. The figures are the subtasks' own, published once a second.
pub fn show_progress(
    control: riffle_actors::registry::JobControl,
    total: Option<u64>,
) -> ProgressLine {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressLine { stop, thread: None };
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {percent:>3}%  {human_pos}/{human_len} records  {msg}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {human_pos} records  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    let quit = stop.clone();
    let thread = std::thread::Builder::new()
        .name("progress".to_string())
        .spawn(move || {
            let mut last = (std::time::Instant::now(), 0u64);
            while !quit.load(Ordering::SeqCst) && !control.progress().ended {
                let n = source_records(&control);
                if n != last.1 {
                    let rate = (n - last.1.min(n)) as f64 / last.0.elapsed().as_secs_f64();
                    bar.set_message(format!("{:.2} M records/s", rate / 1e6));
                    last = (std::time::Instant::now(), n);
                }
                bar.set_position(n);
                bar.tick();
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            bar.finish_and_clear();
        })
        .ok();
    ProgressLine { stop, thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read input file a.txt: {0}")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("the job failed")]
    struct Top(#[source] Outer);

    #[test]
    fn one_line_keeps_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = Top(Outer(io));
        assert_eq!(
            one_line(&e),
            "the job failed: cannot read input file a.txt: No such file"
        );
    }
}
