//! A TCP proxy between followers and a primary that misbehaves on command, as networks do:
//! it stalls (holds every byte, connections open), cuts the connections open now after some
//! more bytes (mid-file), or refuses new connections. Real sockets, real streams.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    stalled: AtomicBool,
    refusing: AtomicBool,
    /// Bumped by each cut: connections made before it close after `cut_after` more bytes.
    cuts: AtomicU64,
    cut_after: AtomicU64,
    /// Connections accepted and passed on.
    connections: AtomicU64,
    /// Bytes passed from the primary to the followers.
    forwarded: AtomicU64,
    /// Open connections' sockets, to cut a stalled one at once.
    open: Mutex<Vec<(u64, TcpStream)>>,
}

/// The proxy; it runs until the test process ends.
pub struct ChaosProxy {
    port: u16,
    state: Arc<State>,
}

impl ChaosProxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if shared.refusing.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let generation = shared.cuts.load(Ordering::SeqCst);
                if let Ok(c) = client.try_clone() {
                    shared.open.lock().unwrap().push((generation, c));
                }
                for (from, to, down) in [
                    (client.try_clone(), server.try_clone(), false),
                    (server.try_clone(), client.try_clone(), true),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let state = shared.clone();
                    std::thread::spawn(move || pump(from, to, down, generation, &state));
                }
            }
        });
        ChaosProxy { port, state }
    }

    /// `host:port` to give the followers instead of the primary's.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Holds every byte (both ways) until [`ChaosProxy::resume`].
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Passes bytes again.
    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Closes every connection open now once `after` more bytes went down it (0: at once,
    /// stalled or not).
    pub fn cut(&self, after: u64) {
        self.state.cut_after.store(after, Ordering::SeqCst);
        let generation = self.state.cuts.fetch_add(1, Ordering::SeqCst) + 1;
        if after == 0 {
            let mut open = self.state.open.lock().unwrap();
            for (made, socket) in open.iter() {
                if *made < generation {
                    let _ = socket.shutdown(Shutdown::Both);
                }
            }
            open.retain(|(made, _)| *made >= generation);
        }
    }

    /// Refuses (closes) new connections while `refuse` holds.
    pub fn refuse(&self, refuse: bool) {
        self.state.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Connections passed on so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Bytes passed from the primary to the followers so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` in small pieces, holding them while stalled, until either side
/// closes or a cut made after the connection was opened has let its bytes through.
fn pump(mut from: TcpStream, mut to: TcpStream, down: bool, generation: u64, state: &State) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 4096];
    let mut cut_seen = generation;
    let mut budget = u64::MAX;
    loop {
        let cuts = state.cuts.load(Ordering::SeqCst);
        if cuts > cut_seen {
            cut_seen = cuts;
            budget = budget.min(state.cut_after.load(Ordering::SeqCst));
        }
        if budget == 0 {
            break;
        }
        if state.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let want = buf.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
        match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                budget = budget.saturating_sub(n as u64);
                if down {
                    state.forwarded.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
