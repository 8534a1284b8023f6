//! A TCP proxy that adds a fixed delay to every HTTP request, to measure restores as if the
//! object store were across a network.
//!
//! `latency_proxy LISTEN UPSTREAM DELAY_MS`, e.g. `latency_proxy 127.0.0.1:9100 127.0.0.1:9000 20`.
//!
//! On each connection, the first bytes the client sends after the server last answered (the
//! start of a new request) wait `DELAY_MS` before going upstream; everything else is copied
//! straight through, so throughput is not throttled, only round trips lengthened.
//!
//! Each request's first line is printed on standard output after the Unix time in seconds
//! (`1764769234.123456 GET /bucket/key?... HTTP/1.1`), so a harness can count requests by
//! kind and attribute them to what it was doing at the time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, delay_ms] = &args[..] else {
        eprintln!("usage: latency_proxy LISTEN UPSTREAM DELAY_MS");
        std::process::exit(2);
    };
    let delay = Duration::from_millis(
        delay_ms
            .parse()
            .expect("DELAY_MS is a number of milliseconds"),
    );
    let listener = TcpListener::bind(listen).await?;
    eprintln!("latency_proxy: {listen} -> {upstream}, +{delay:?} per request");
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(&upstream).await {
                let _ = pipe(client, server, delay).await;
            }
        });
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let new_request = Arc::new(AtomicBool::new(true));
    let upstream = {
        let new_request = new_request.clone();
        async move {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = client_rd.read(&mut buf).await?;
                if n == 0 {
                    return server_wr.shutdown().await;
                }
                if new_request.swap(false, Ordering::AcqRel) {
                    print_request_line(&buf[..n]);
                    tokio::time::sleep(delay).await;
                }
                server_wr.write_all(&buf[..n]).await?;
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = server_rd.read(&mut buf).await?;
            if n == 0 {
                return client_wr.shutdown().await;
            }
            client_wr.write_all(&buf[..n]).await?;
            new_request.store(true, Ordering::Release);
        }
    };
    let (a, b) = tokio::join!(upstream, downstream);
    a.and(b)
}

/// Prints the request line at the start of `bytes`, if they start one.
fn print_request_line(bytes: &[u8]) {
    let line = bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let methods = ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "];
    if methods.iter().any(|m| line.starts_with(m)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        println!("{:.6} {line}", now.as_secs_f64());
    }
}
