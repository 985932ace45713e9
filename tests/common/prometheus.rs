//! A real Prometheus server for a test: Debian's `prometheus` binary (installed by
//! `.ci/run`), started on a free 127.0.0.1 port with a scrape config written by the test and
//! a temporary data directory, and stopped by process id when dropped.
//!
//! Outside CI, a machine without Prometheus skips the tests that need it and says why; with
//! `RIFFLE_REQUIRE_SERVICES=1` (set by `.ci/run`) a missing one is a failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Prometheus server (stopped on drop).
pub struct Prometheus {
    child: Child,
    /// Its base URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Finds `name` on the `PATH`.
pub fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every 100 ms, with `honor_labels`
    /// (Riffle's `job` label is the Riffle job's name), and waits until it is ready. `None`
    /// — with the reason printed — if it is missing and services are not required.
    ///
    /// # Panics
    /// If it is required and missing, or not ready within 30 s.
    pub fn start(target: &str) -> Option<Prometheus> {
        let Some(bin) = which("prometheus") else {
            let required = std::env::var("RIFFLE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "prometheus is required (RIFFLE_REQUIRE_SERVICES=1) but not installed: apt-get install prometheus"
            );
            println!("SKIPPED: no prometheus binary here (install Debian's prometheus)");
            return None;
        };
        let dir = tempfile::tempdir().expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 100ms\n  scrape_timeout: 90ms\nscrape_configs:\n  \
                 - job_name: riffle\n    honor_labels: true\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus config");
        let port = super::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let p = Prometheus {
            child,
            url,
            _dir: dir,
        };
        let ready = p.poll(Duration::from_secs(30), || {
            ureq::get(&format!("{}/-/ready", p.url))
                .call()
                .ok()
                .map(|_| ())
        });
        assert!(ready.is_some(), "prometheus did not become ready in 30 s");
        Some(p)
    }

    /// Asks `f` until it answers (every 50 ms) or `limit` passed: Prometheus has no way to
    /// signal a scrape, so its API is asked again.
    pub fn poll<T>(&self, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let until = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of the instant query `q` (the first series), if it has one.
    pub fn query(&self, q: &str) -> Option<f64> {
        let body: serde_json::Value = ureq::get(&format!("{}/api/v1/query", self.url))
            .query("query", q)
            .call()
            .ok()?
            .into_json()
            .ok()?;
        let v = body["data"]["result"].get(0)?["value"]
            .get(1)?
            .as_str()?
            .to_string();
        v.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
