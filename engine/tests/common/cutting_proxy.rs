//! An HTTP proxy in front of the test S3 server that drops chosen GET responses partway
//! through their bodies, as a connection reset mid-transfer does: what the network client's
//! retries must cope with, on a real HTTP connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// (the target contains this, body bytes to pass, responses left to cut).
    rules: Vec<(String, u64, u32)>,
    /// The targets of the GETs seen.
    gets: Vec<String>,
}

/// The proxy; it runs until the test process ends.
pub struct CuttingProxy {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl CuttingProxy {
    /// Starts a proxy to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> CuttingProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, state) = (upstream.clone(), shared.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &state);
                });
            }
        });
        CuttingProxy { port, state }
    }

    /// The endpoint to give a client instead of the upstream.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts the next `times` GET responses whose target contains `path_contains` after
    /// `after` bytes of body. A response several rules match is cut at the first of their
    /// offsets and uses each of them up once.
    pub fn cut(&self, path_contains: &str, after: u64, times: u32) {
        let mut state = self.state.lock().unwrap();
        state.rules.push((path_contains.to_owned(), after, times));
    }

    /// Forgets the cuts not made yet.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// How many GETs whose target contains `path_contains` went through.
    pub fn gets(&self, path_contains: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .gets
            .iter()
            .filter(|t| t.contains(path_contains))
            .count()
    }
}

/// One request per connection: the request goes upstream with `Connection: close`, the
/// response comes back whole (told to close too) or cut.
fn serve(client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.clone();
            head.extend_from_slice(line.as_bytes());
            continue;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;

    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let cut = if method == "GET" {
        let mut state = state.lock().unwrap();
        state.gets.push(target.to_owned());
        let mut cut: Option<u64> = None;
        for rule in state.rules.iter_mut() {
            if rule.2 > 0 && target.contains(&rule.0) {
                rule.2 -= 1;
                cut = Some(cut.map_or(rule.1, |c| c.min(rule.1)));
            }
        }
        cut
    } else {
        None
    };

    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&head)?;
    server.write_all(&body)?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    let (response_head, response_body) = response.split_at(split);
    let mut out = Vec::with_capacity(response.len() + 20);
    for line in String::from_utf8_lossy(response_head).split_inclusive("\r\n") {
        if line == "\r\n" || line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut client = client;
    client.write_all(&out)?;
    let passed = cut.map_or(response_body.len(), |after| {
        (after as usize).min(response_body.len())
    });
    client.write_all(&response_body[..passed])?;
    client.flush()?;
    client.shutdown(Shutdown::Both)
}
