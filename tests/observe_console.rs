//! The web console in a real browser: headless Chromium loads the console of a running job;
//! the test reads the rendered DOM (operator names, a positive rate), clicks rescale and sees
//! the new parallelism, saves a screenshot, and checks the job's output stays exact.

use crate::common;

use riffle::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const N: u64 = 200_000;
const KEYS: u64 = 100;
/// Records per second per source subtask until the test lets it run free.
const PACE: u64 = 2_000;

/// Emits `(i % KEYS, 1)` for its share of `0..N` at `PACE` records per second, at full
/// speed once `free` is set.
struct Paced {
    next: u64,
    end: u64,
    started: Option<(Instant, u64)>,
    free: &'static AtomicBool,
}

impl Source for Paced {
    type Out = (u64, u64);
    fn on_start(&mut self, info: &SubtaskInfo) -> Result<(), UserError> {
        let (i, p) = (info.index as u64, info.parallelism as u64);
        (self.next, self.end) = (N * i / p, N * (i + 1) / p);
        Ok(())
    }
    fn produce(&mut self, out: &mut Output<'_, (u64, u64)>) -> Result<SourceStatus, UserError> {
        let (since, from) = *self.started.get_or_insert((Instant::now(), self.next));
        let allowed = if self.free.load(Ordering::SeqCst) {
            u64::MAX
        } else {
            from + since.elapsed().as_millis() as u64 * PACE / 1000
        };
        if self.next >= allowed {
            return Ok(SourceStatus::Idle);
        }
        for _ in 0..out.budget() {
            if self.next == self.end {
                return Ok(SourceStatus::Finished);
            }
            if self.next >= allowed {
                break;
            }
            out.emit((self.next % KEYS, 1));
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
    fn position(&self) -> Result<Option<Position>, UserError> {
        Position::encode(&self.next).map(Some)
    }
    fn seek(&mut self, p: &Position) -> Result<(), UserError> {
        self.next = p.decode()?;
        self.started = None;
        Ok(())
    }
}

/// The operators the console draws: (name, parallelism, rate).
fn operators(b: &common::browser::Browser) -> Vec<(String, u64, f64)> {
    let v = b.eval(
        "return [...document.querySelectorAll('#graph g.op')].map(g => \
         [g.dataset.name, Number(g.dataset.parallelism), Number(g.dataset.rate)]);",
    );
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    let name = o[0].as_str().unwrap_or_default().to_string();
                    (
                        name,
                        o[1].as_u64().unwrap_or(0),
                        o[2].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_console_shows_a_running_job_and_rescales_it() {
    common::init_logging();
    let Some(browser) = common::browser::Browser::start() else {
        return;
    };
    static FREE: AtomicBool = AtomicBool::new(false);
    let http = riffle::http::serve("127.0.0.1:0".parse().expect("addr")).expect("HTTP");
    let dir = tempfile::tempdir().expect("dir");
    let env = StreamEnv::new();
    env.configure(|c| {
        c.name = "console-job".to_string();
        c.checkpoint = Some(CheckpointConfig::every(Duration::from_millis(50)).in_dir(dir.path()));
    });
    let out = env
        .source(|_: &SubtaskInfo| Paced {
            next: 0,
            end: 0,
            started: None,
            free: &FREE,
        })
        .name("numbers")
        .parallelism(2)
        .key_by(|r: &(u64, u64)| r.0)
        .sum(|r| r.1)
        .name("count")
        .parallelism(2)
        .collect();
    let handle = env.start().expect("start");
    let id = handle.id().to_string();

    browser.goto(&format!("{}/console/#job={id}", http.url()));
    // The graph names both operators and the source's rate is positive (published each s).
    let seen = browser.wait_for(Duration::from_secs(20), |b| {
        let ops = operators(b);
        let rate = ops.iter().find(|o| o.0 == "numbers").map_or(0.0, |o| o.2);
        (ops.len() == 2 && rate > 0.0).then_some(ops)
    });
    let ops = seen.unwrap_or_else(|| panic!("the console showed {:?}", operators(&browser)));
    let names: Vec<&str> = ops.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(names, ["numbers", "count -> collect"], "{ops:?}");
    assert_eq!(ops[1].1, 2, "{ops:?}");
    let rows = browser.eval("return document.querySelectorAll('#subtasks tbody tr').length;");
    assert_eq!(rows, 4, "a row per subtask");

    // Rescale `count` to 3 through the page.
    browser.click("#rescale-op option[value='count']");
    browser.type_into("#rescale-n", "3");
    browser.click("#rescale-btn");
    let rescaled = browser.wait_for(Duration::from_secs(30), |b| {
        let msg = b.eval("return document.getElementById('message').textContent;");
        let p = operators(b)
            .iter()
            .find(|o| o.0.starts_with("count"))
            .map(|o| o.1);
        // The graph may show the new parallelism (a periodic refresh) before the answer to
        // the rescale request has replaced the "rescale…" message: wait for both.
        let done = msg.as_str().is_some_and(|m| !m.ends_with('…'));
        (p == Some(3) && done).then_some(msg)
    });
    let msg = rescaled.unwrap_or_else(|| {
        let msg = browser.eval("return document.getElementById('message').textContent;");
        panic!("no rescale shown: {:?}, message {msg}", operators(&browser))
    });
    assert!(
        msg.as_str().is_some_and(|m| m.contains("count now runs 3")),
        "{msg}"
    );
    let shot = browser.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::write(&path, &shot).expect("write the screenshot");
    println!("screenshot: {} ({} bytes)", path.display(), shot.len());

    FREE.store(true, Ordering::SeqCst);
    let result = handle.wait().expect("the job finishes");
    assert!(
        result.recoveries.is_empty(),
        "rescaled in place, no recovery"
    );
    let last = common::final_sums(out.take());
    assert_eq!(last.len() as u64, KEYS);
    assert!(
        last.values().all(|&n| n == N / KEYS),
        "every key counted exactly once"
    );
}
