//! The client of a primary's live stream: one HTTP request for the frames after a TXID,
//! read as they come. Followers (`crate::follow`) and the VFS both read it.

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ltx::{Txid, TxidRange};
use tokio::sync::mpsc;

use super::wire::{Head, SILENCE};

/// The most of an error answer's body that is read (it is shown in the error).
const ERROR_TEXT_MAX: usize = 4 << 10;

/// A primary's stream address: `http://HOST:PORT/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryUrl {
    /// `HOST:PORT`.
    authority: String,
    /// `/NAME`, as given (percent-encoded).
    path: String,
}

impl PrimaryUrl {
    /// Parses `http://HOST:PORT/NAME`.
    pub fn parse(url: &str) -> Result<PrimaryUrl, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!(
                "{url}: a primary's stream is http://HOST:PORT/NAME (no TLS: use it on a private network or a tunnel)"
            ));
        }
        let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let path = parsed.path().to_owned();
        if path.trim_start_matches('/').is_empty() {
            return Err(format!(
                "{url}: name the database: http://HOST:PORT/NAME (its file name on the primary)"
            ));
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(PrimaryUrl {
            authority: format!("{host}:{port}"),
            path,
        })
    }
}

impl std::fmt::Display for PrimaryUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// An open stream.
pub struct StreamConnection {
    body: Incoming,
    /// Bytes received and not yet taken.
    buf: BytesMut,
}

impl std::fmt::Debug for StreamConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConnection")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl StreamConnection {
    /// Asks `url` for the frames after `txid`.
    pub async fn open(url: &PrimaryUrl, txid: Txid) -> Result<StreamConnection, String> {
        let tcp = tokio::time::timeout(SILENCE, tokio::net::TcpStream::connect(&url.authority))
            .await
            .map_err(|_| format!("connecting to {url}: no answer in {SILENCE:?}"))?
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = hyper::Request::get(format!("{}?txid={txid}", url.path))
            .header(hyper::header::HOST, &url.authority)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let response = tokio::time::timeout(SILENCE, sender.send_request(request))
            .await
            .map_err(|_| format!("{url}: no answer in {SILENCE:?}"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            let status = response.status();
            // What a server says with an error is read up to a few KiB, whatever it sends.
            let text = tokio::time::timeout(
                SILENCE,
                http_body_util::Limited::new(response.into_body(), ERROR_TEXT_MAX).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
            return Err(format!("{url}: {status}: {text}"));
        }
        let is_stream = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|v| v == super::CONTENT_TYPE);
        if !is_stream {
            return Err(format!("{url}: the answer is not a strata stream"));
        }
        Ok(StreamConnection {
            body: response.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// Reads more of the body into `buf`; `false` at its end. Silence for [`SILENCE`]
    /// (heartbeats come every second) is a dead connection.
    async fn fill(&mut self) -> Result<bool, String> {
        loop {
            let frame = tokio::time::timeout(SILENCE, self.body.frame())
                .await
                .map_err(|_| format!("the primary said nothing for {SILENCE:?}"))?;
            match frame {
                None => return Ok(false),
                Some(Err(e)) => return Err(format!("the stream broke: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Reads what has arrived already, without waiting, until `buf` holds `max_bytes`. An
    /// end or an error is left for the next [`Self::fill`] to meet.
    fn fill_ready(&mut self, max_bytes: u64) {
        while (self.buf.len() as u64) < max_bytes {
            match self.body.frame().now_or_never() {
                Some(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                _ => return,
            }
        }
    }

    /// The next frame's head; `None` where the stream ends cleanly between frames.
    pub async fn next_head(&mut self) -> Result<Option<Head>, String> {
        loop {
            if let Some((head, used)) = Head::parse(&self.buf)? {
                self.buf.advance(used);
                return Ok(Some(head));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err("the stream ended inside a frame".to_owned())
                };
            }
        }
    }

    /// The file of `range` whose head was just read (`len` bytes), and the files after it
    /// that continue it, if all of them are here whole already, up to `max_bytes` in all:
    /// what a reader that fell behind can take at once. `None`, with nothing taken, if the
    /// first file is not here whole.
    pub fn take_whole_files(
        &mut self,
        range: TxidRange,
        len: u64,
        max_bytes: u64,
    ) -> Option<Vec<(TxidRange, Bytes)>> {
        self.fill_ready(max_bytes);
        let first = usize::try_from(len).ok().filter(|&n| n <= self.buf.len())?;
        let mut files = vec![(range, self.buf.split_to(first).freeze())];
        let mut total = len;
        while let Ok(Some((Head::File { range: next, len }, head))) = Head::parse(&self.buf) {
            let whole = usize::try_from(len)
                .ok()
                .and_then(|n| n.checked_add(head))
                .filter(|&n| n <= self.buf.len());
            let continues = next.min == files.last().expect("one").0.max.next();
            let (Some(whole), true) = (whole, continues && total + len <= max_bytes) else {
                break;
            };
            self.buf.advance(head);
            files.push((next, self.buf.split_to(whole - head).freeze()));
            total += len;
        }
        Some(files)
    }

    /// The next `len` bytes (a file's), whole: the caller bounds `len`.
    pub async fn read_file(&mut self, len: u64) -> Result<Bytes, String> {
        let len = usize::try_from(len).map_err(|_| format!("a file of {len} bytes"))?;
        self.buf.reserve(len.saturating_sub(self.buf.len()));
        while self.buf.len() < len {
            if !self.fill().await? {
                return Err(format!(
                    "the stream ended {} bytes before the file's end",
                    len - self.buf.len()
                ));
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }

    /// Hands the next `len` bytes (a file's) to `tx`, a chunk at a time; an error if the
    /// stream ends first or the reader went away.
    pub async fn pass_file(&mut self, len: u64, tx: &mpsc::Sender<Bytes>) -> Result<(), String> {
        let mut left = len;
        while left > 0 {
            if self.buf.is_empty() && !self.fill().await? {
                return Err(format!(
                    "the stream ended {left} bytes before the file's end"
                ));
            }
            let n = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let chunk = self.buf.split_to(n).freeze();
            left -= n as u64;
            tx.send(chunk)
                .await
                .map_err(|_| "the file's reader stopped".to_owned())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_urls_name_a_database_over_plain_http() {
        let u = PrimaryUrl::parse("http://127.0.0.1:9090/app.db").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9090/app.db");
        assert_eq!(
            PrimaryUrl::parse("http://h/a%20b/c.db")
                .unwrap()
                .to_string(),
            "http://h:80/a%20b/c.db"
        );
        for bad in ["https://h:1/app.db", "http://h:1/", "s3://b/p", "nonsense"] {
            assert!(PrimaryUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
