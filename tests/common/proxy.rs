//! A fault-injecting TCP proxy on 127.0.0.1 that a test controls: pass-through, added delay,
//! blackhole (accepts and forwards nothing) or reset (closes every connection). It also
//! records the first bytes each connection's client sent, as an eavesdropper would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Forward everything.
pub const PASS: u8 = 0;
/// Forward everything, 2 ms late per read.
pub const DELAY: u8 = 1;
/// Accept and forward nothing.
pub const BLACKHOLE: u8 = 2;
/// Close every connection, and new ones at once.
pub const RESET: u8 = 3;

/// Bytes of each connection's client side that are recorded.
const RECORDED: usize = 4096;

/// A TCP proxy in front of `upstream` whose behaviour the test switches at any time.
pub struct Proxy {
    /// Where it listens.
    pub addr: String,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`.
    pub fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let recorded: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (m, c, r) = (mode.clone(), conns.clone(), recorded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if m.load(Ordering::SeqCst) == RESET {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        c.lock().expect("conns").push(s);
                    }
                }
                let slot = {
                    let mut r = r.lock().expect("recorded");
                    r.push(Vec::new());
                    r.len() - 1
                };
                pump(&client, &server, m.clone(), Some((r.clone(), slot)));
                pump(&server, &client, m.clone(), None);
            }
        });
        Proxy {
            addr,
            mode,
            conns,
            recorded,
        }
    }

    /// Switches the proxy's behaviour (a reset closes every open connection).
    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode == RESET {
            for s in self.conns.lock().expect("conns").drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// The first bytes the client of connection `i` sent (in the order connections came).
    pub fn recorded(&self, i: usize) -> Option<Vec<u8>> {
        self.recorded.lock().expect("recorded").get(i).cloned()
    }
}

type Recording = Option<(Arc<Mutex<Vec<Vec<u8>>>>, usize)>;

/// Copies `from` → `to` as the proxy's mode says.
fn pump(from: &TcpStream, to: &TcpStream, mode: Arc<AtomicU8>, record: Recording) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some((r, slot)) = &record {
                let mut r = r.lock().expect("recorded");
                let keep = RECORDED.saturating_sub(r[*slot].len()).min(n);
                r[*slot].extend_from_slice(&buf[..keep]);
            }
            match mode.load(Ordering::SeqCst) {
                BLACKHOLE => continue,
                RESET => break,
                DELAY => std::thread::sleep(Duration::from_millis(2)),
                _ => {}
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
