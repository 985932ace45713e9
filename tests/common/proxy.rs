//! A fault-injecting TCP proxy on 127.0.0.1 that a test controls: pass-through, added delay,
//! blackhole (accepts and forwards nothing) or reset (closes every connection), and, apart
//! from the mode, a *hold* of one direction or both ([`Proxy::hold`]): what is sent that way
//! is delivered to nobody until the hold ends, as on a network that drops every packet of a
//! link while the TCP connections on it stay open (their senders retransmit; nothing is
//! reset, nobody is told). It also records the first bytes each connection's client sent, as
//! an eavesdropper would.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
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

/// For [`Proxy::hold`]: what the connections' clients send (client → upstream).
pub const UP: u8 = 1;
/// For [`Proxy::hold`]: what the upstream answers (upstream → client).
pub const DOWN: u8 = 2;

/// Bytes of each connection's client side that are recorded.
const RECORDED: usize = 4096;

/// A TCP proxy in front of `upstream` whose behaviour the test switches at any time.
pub struct Proxy {
    /// Where it listens.
    pub addr: String,
    mode: Arc<AtomicU8>,
    held: Arc<AtomicU8>,
    waited: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`.
    pub fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let held = Arc::new(AtomicU8::new(0));
        let waited = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let recorded: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (m, h, c, r) = (mode.clone(), held.clone(), conns.clone(), recorded.clone());
        let w = waited.clone();
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
                let up = Direction {
                    mode: m.clone(),
                    held: h.clone(),
                    waited: w.clone(),
                    bit: UP,
                };
                pump(&client, &server, up, Some((r.clone(), slot)));
                let down = Direction {
                    mode: m.clone(),
                    held: h.clone(),
                    waited: w.clone(),
                    bit: DOWN,
                };
                pump(&server, &client, down, None);
            }
        });
        Proxy {
            addr,
            mode,
            held,
            waited,
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

    /// Holds the directions in `dirs` (`UP`, `DOWN`, both, or 0 to release them): bytes sent
    /// that way wait in the proxy and the senders' sockets until released, for connections
    /// open now and those made meanwhile.
    pub fn hold(&self, dirs: u8) {
        self.held.store(dirs, Ordering::SeqCst);
    }

    /// Pieces of traffic that a hold kept back (read, and delivered only once released).
    pub fn held_back(&self) -> u64 {
        self.waited.load(Ordering::SeqCst)
    }

    /// The first bytes the client of connection `i` sent (in the order connections came).
    pub fn recorded(&self, i: usize) -> Option<Vec<u8>> {
        self.recorded.lock().expect("recorded").get(i).cloned()
    }
}

type Recording = Option<(Arc<Mutex<Vec<Vec<u8>>>>, usize)>;

/// One direction of a proxied connection: the proxy's mode, and the hold of this direction.
struct Direction {
    mode: Arc<AtomicU8>,
    held: Arc<AtomicU8>,
    waited: Arc<AtomicU64>,
    bit: u8,
}

impl Direction {
    /// Waits while this direction is held (what was read waits with it).
    fn wait_while_held(&self) {
        if self.held.load(Ordering::SeqCst) & self.bit != 0 {
            self.waited.fetch_add(1, Ordering::SeqCst);
        }
        while self.held.load(Ordering::SeqCst) & self.bit != 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Copies `from` → `to` as the proxy's mode and the direction's hold say.
fn pump(from: &TcpStream, to: &TcpStream, dir: Direction, record: Recording) {
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
            dir.wait_while_held();
            match dir.mode.load(Ordering::SeqCst) {
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
