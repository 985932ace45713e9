//! A real etcd server for a test: Debian's `etcd` binary (package `etcd-server`, installed by
//! `.ci/run`), started on free 127.0.0.1 ports with a temporary data directory and stopped
//! by process id when dropped. [`Etcd::start`] tunes its heartbeat to 50 ms and its election
//! timeout to 500 ms, so leases as short as 1 s are honoured; [`Etcd::stock`] keeps etcd's
//! defaults. A test can pause it (SIGSTOP), let it run again, or kill and restart it on its
//! data directory.
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
    /// The binary and its arguments, to start it again on its data directory.
    command: (String, Vec<String>),
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

/// How an etcd for a test is tuned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// 50 ms heartbeat, 500 ms election timeout: leases as short as 1 s are honoured.
    Quick,
    /// etcd's defaults (100 ms, 1 s): the shortest lease it grants is 2 s.
    Stock,
}

impl Etcd {
    /// Starts etcd and waits until it serves clients (it says so on its log). `None` — with
    /// the reason printed — if there is no etcd here and services are not required.
    ///
    /// # Panics
    /// If etcd is required and missing, or does not become ready within 30 s.
    pub fn start() -> Option<Etcd> {
        Self::start_with("http", &[], None, Timing::Quick)
    }

    /// As [`Etcd::start`], with etcd's default heartbeat and election timeout (its shortest
    /// lease is then 2 s: a 1 s lease asked for is granted as 2 s).
    pub fn stock() -> Option<Etcd> {
        Self::start_with("http", &[], None, Timing::Stock)
    }

    /// Starts etcd serving `scheme` client URLs with `extra` arguments (TLS files); `dir`
    /// is its temporary directory if the caller made one.
    fn start_with(
        scheme: &str,
        extra: &[String],
        dir: Option<tempfile::TempDir>,
        timing: Timing,
    ) -> Option<Etcd> {
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
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("etcd data dir"));
        let (client, peer) = (super::free_port(), super::free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut args: Vec<String> = vec!["--name".into(), "riffle-test".into()];
        args.push("--data-dir".into());
        args.push(dir.path().join("data").display().to_string());
        for (flag, value) in [
            ("--listen-client-urls", url.clone()),
            ("--advertise-client-urls", url.clone()),
            ("--listen-peer-urls", peer_url.clone()),
            ("--initial-advertise-peer-urls", peer_url.clone()),
            ("--initial-cluster", format!("riffle-test={peer_url}")),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        if timing == Timing::Quick {
            args.extend(
                ["--heartbeat-interval", "50", "--election-timeout", "500"].map(String::from),
            );
        }
        args.extend(extra.iter().cloned());
        let child = spawn(&bin, &args);
        Some(Etcd {
            child,
            url,
            command: (bin, args),
            _dir: dir,
        })
    }

    /// Stops the server with SIGSTOP (it answers nothing, and its leases' clocks stand
    /// still, until [`Etcd::resume`]).
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Kills the server (SIGKILL) and starts it again on its data directory, the same
    /// ports, after `down`; returns once it serves clients again.
    pub fn kill_and_restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(&self.command.0, &self.command.1);
    }

    /// Starts etcd serving only TLS (`https://`) and checking client certificates
    /// (`--client-cert-auth`), with certificates made for the test by the `openssl` command
    /// (a CA, the server's for 127.0.0.1, one client's); the PEM files are in
    /// [`SecureEtcd::pem`]. Auth is not enabled yet: see [`SecureEtcd::enable_auth`].
    pub fn start_secure() -> Option<SecureEtcd> {
        binary()?;
        let dir = tempfile::tempdir().expect("etcd dir");
        let d = dir.path().to_path_buf();
        make_certificates(&d);
        let f = |n: &str| d.join(n).display().to_string();
        let extra = [
            "--cert-file".to_string(),
            f("server.pem"),
            "--key-file".to_string(),
            f("server.key"),
            "--trusted-ca-file".to_string(),
            f("ca.pem"),
            "--client-cert-auth".to_string(),
        ];
        let etcd = Self::start_with("https", &extra, Some(dir), Timing::Quick)?;
        Some(SecureEtcd { etcd, dir: d })
    }
}

/// An etcd that wants TLS and client certificates (see [`Etcd::start_secure`]).
pub struct SecureEtcd {
    /// The server (stopped on drop).
    pub etcd: Etcd,
    dir: std::path::PathBuf,
}

impl SecureEtcd {
    /// The PEM file `name` (`ca.pem`, `client.pem`, `client.key`).
    pub fn pem(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// TLS for a client of this etcd: its CA and the client certificate.
    pub fn client_tls(&self) -> etcd_client::TlsOptions {
        let read = |n: &str| std::fs::read(self.pem(n)).expect("pem");
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca.pem")))
            .identity(etcd_client::Identity::from_pem(
                read("client.pem"),
                read("client.key"),
            ))
    }

    /// Enables etcd's auth with user `root` (role `root`) and `password`, connecting with
    /// the client certificate.
    pub fn enable_auth(&self, password: &str) {
        let options = etcd_client::ConnectOptions::new().with_tls(self.client_tls());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = etcd_client::Client::connect([self.etcd.url.as_str()], Some(options))
                .await
                .expect("connect to etcd over TLS");
            c.user_add("root", password, None).await.expect("user root");
            c.user_grant_role("root", "root").await.expect("role root");
            c.auth_enable().await.expect("auth enabled");
        });
    }
}

/// Makes `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1 and localhost) and
/// `client.pem`/`client.key` in `dir`, all P-256, valid for a day. The client's common name
/// is `riffle-client`, which is no etcd user: etcd takes a certificate's common name as the
/// user of a request without a password, so a certificate alone grants nothing here.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=riffle-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("server.ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    for (name, cn) in [("server", "/CN=localhost"), ("client", "/CN=riffle-client")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", cn];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        run(&req);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ]);
    }
}

/// Starts `bin args` and waits until it serves clients (it says so on its log).
///
/// # Panics
/// If it cannot start, or is not ready within 30 s.
fn spawn(bin: &str, args: &[String]) -> Child {
    let mut child = Command::new(bin)
        .args(args)
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
    child
}

/// Sends signal `sig` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
