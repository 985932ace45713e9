//! A real etcd server for a test: Debian's `etcd` binary (package `etcd-server`, installed by
//! `.ci/run`), started on free 127.0.0.1 ports with a temporary data directory and stopped
//! by process id when dropped. Its heartbeat is 50 ms and its election timeout 500 ms, so
//! leases as short as 1 s are honoured.
//!
//! Outside CI, a machine without etcd skips the tests that need it and says why; with
//! `RIFFLE_REQUIRE_SERVICES=1` (set by `.ci/run`) a missing etcd is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd server (stopped on drop).
pub struct Etcd {
    child: Child,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    _dir: tempfile::TempDir,
}

/// The etcd binary: `RIFFLE_ETCD` or `etcd` on the `PATH`.
fn binary() -> Option<String> {
    if let Ok(b) = std::env::var("RIFFLE_ETCD") {
        return Some(b);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

impl Etcd {
    /// Starts etcd and waits until it serves clients (it says so on its log). `None` — with
    /// the reason printed — if there is no etcd here and services are not required.
    ///
    /// # Panics
    /// If etcd is required and missing, or does not become ready within 30 s.
    pub fn start() -> Option<Etcd> {
        let Some(bin) = binary() else {
            let required = std::env::var("RIFFLE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "etcd is required (RIFFLE_REQUIRE_SERVICES=1) but not installed: apt-get install etcd-server"
            );
            println!(
                "SKIPPED: no etcd binary here (install Debian's etcd-server, or set RIFFLE_ETCD)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("etcd data dir");
        let (client, peer) = (super::free_port(), super::free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut child = Command::new(&bin)
            .args(["--name", "riffle-test"])
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("riffle-test={peer_url}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stderr = child.stderr.take().expect("etcd's stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("ready to serve client requests") {
                    let _ = tx.send(());
                    told = true;
                }
                if std::env::var("RIFFLE_ETCD_LOG").is_ok() {
                    eprintln!("etcd: {line}");
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("etcd did not become ready within 30 s");
        }
        Some(Etcd {
            child,
            url,
            _dir: dir,
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
