//! Fault injection: a [`Backend`] wrapper that makes chosen requests fail, stall, lose their
//! object or return damaged bytes, for testing how callers cope. Built for tests only
//! (the `test-support` feature).

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;

use super::backend::{Backend, Body, Capabilities, Listed};
use super::error::BackendError;
use super::error::ErrorKind;
use super::multipart::UploadLimits;

/// One kind of failure.
#[derive(Clone, Debug)]
pub enum Fault {
    /// GETs fail at once with a transient error (as a timeout or a 503 would).
    FailGet,
    /// LISTs fail at once with a transient error.
    FailList,
    /// PUTs fail at once with a transient error.
    FailPut,
    /// GET bodies break after this many bytes (a connection dropped mid-transfer).
    BreakGetAfter(u64),
    /// The object is deleted just before the GET reaches it (retention racing a reader).
    VanishOnGet,
    /// The byte at this object offset is flipped in GET bodies (corruption at rest).
    CorruptGetAt(u64),
    /// Requests wait this long first.
    Delay(Duration),
}

#[derive(Debug)]
struct Rule {
    path_contains: String,
    fault: Fault,
    /// Matching requests to let through before the fault applies.
    skip: u32,
    remaining: u32,
}

/// Adds faults to a [`FaultyBackend`] while it is in use.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<Vec<Rule>>>);

impl Faults {
    /// Injects `fault` into the next `times` matching requests whose path contains
    /// `path_contains` (empty matches every path). `u32::MAX` means always.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: u32) {
        self.inject_after(path_contains, 0, fault, times);
    }

    /// Like [`Faults::inject`], but lets the first `skip` matching requests through.
    pub fn inject_after(&self, path_contains: &str, skip: u32, fault: Fault, times: u32) {
        self.0.lock().unwrap().push(Rule {
            path_contains: path_contains.to_owned(),
            fault,
            skip,
            remaining: times,
        });
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    /// The faults that apply to one request, each used up once.
    fn take(&self, path: &Path, applies: impl Fn(&Fault) -> bool) -> Vec<Fault> {
        let mut rules = self.0.lock().unwrap();
        let mut hit = Vec::new();
        for rule in rules.iter_mut() {
            if rule.remaining > 0
                && path.as_ref().contains(&rule.path_contains)
                && applies(&rule.fault)
            {
                if rule.skip > 0 {
                    rule.skip -= 1;
                    continue;
                }
                if rule.remaining != u32::MAX {
                    rule.remaining -= 1;
                }
                hit.push(rule.fault.clone());
            }
        }
        rules.retain(|r| r.remaining > 0);
        hit
    }
}

/// Wraps a backend and injects the [`Faults`] registered on its handle.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
}

impl FaultyBackend {
    /// A backend that behaves like `inner` until faults are injected through the handle.
    pub fn new(inner: Arc<dyn Backend>) -> (FaultyBackend, Faults) {
        let faults = Faults::default();
        (
            FaultyBackend {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }

    /// The read faults for one request: fails, delays or deletes now, and returns the
    /// faults left to apply to the bytes.
    async fn before_read(&self, path: &Path) -> Result<Vec<Fault>, BackendError> {
        let hit = self.faults.take(path, |f| {
            matches!(
                f,
                Fault::FailGet
                    | Fault::BreakGetAfter(_)
                    | Fault::VanishOnGet
                    | Fault::CorruptGetAt(_)
                    | Fault::Delay(_)
            )
        });
        delay(&hit).await;
        for f in &hit {
            match f {
                Fault::FailGet => return Err(injected("GET failed")),
                Fault::VanishOnGet => self.inner.delete(vec![path.clone()]).await?,
                _ => {}
            }
        }
        Ok(hit)
    }

    fn fail_list(&self, prefix: &Path) -> bool {
        !self
            .faults
            .take(prefix, |f| matches!(f, Fault::FailList))
            .is_empty()
    }

    async fn before_put(&self, path: &Path) -> Result<(), BackendError> {
        let hit = self
            .faults
            .take(path, |f| matches!(f, Fault::FailPut | Fault::Delay(_)));
        delay(&hit).await;
        if hit.iter().any(|f| matches!(f, Fault::FailPut)) {
            return Err(injected("PUT failed"));
        }
        Ok(())
    }
}

/// A transient failure, as a timeout or a 503 would be.
fn injected(what: &str) -> BackendError {
    BackendError::new(
        ErrorKind::Unavailable,
        format!("injected fault: {what} (timed out)"),
    )
}

async fn delay(faults: &[Fault]) {
    for f in faults {
        if let Fault::Delay(d) = f {
            tokio::time::sleep(*d).await;
        }
    }
}

// A wrapper forwards every method, so it sees all I/O.
#[warn(clippy::missing_trait_methods)]
#[async_trait]
impl Backend for FaultyBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn list(
        &self,
        prefix: &Path,
        after: Option<&Path>,
    ) -> BoxStream<'static, Result<Listed, BackendError>> {
        if self.fail_list(prefix) {
            return stream::once(async { Err(injected("LIST failed")) }).boxed();
        }
        self.inner.list(prefix, after)
    }

    async fn list_dirs(&self, prefix: &Path) -> Result<Vec<String>, BackendError> {
        if self.fail_list(prefix) {
            return Err(injected("LIST failed"));
        }
        self.inner.list_dirs(prefix).await
    }

    async fn get(&self, path: &Path, range: Option<Range<u64>>) -> Result<Body, BackendError> {
        let hit = self.before_read(path).await?;
        let start = range.as_ref().map_or(0, |r| r.start);
        let mut body = self.inner.get(path, range).await?;
        for f in hit {
            body = match f {
                Fault::BreakGetAfter(n) => break_after(body, n),
                Fault::CorruptGetAt(at) => corrupt_at(body, start, at),
                _ => continue,
            };
        }
        Ok(body)
    }

    async fn read_into(
        &self,
        path: &Path,
        range: Range<u64>,
        buf: Vec<u8>,
    ) -> Result<Vec<u8>, BackendError> {
        let hit = self.before_read(path).await?;
        let start = range.start;
        let mut buf = self.inner.read_into(path, range, buf).await?;
        for f in hit {
            match f {
                Fault::BreakGetAfter(n) if n < buf.len() as u64 => {
                    return Err(injected("connection reset mid-body"));
                }
                Fault::CorruptGetAt(at) if (start..start + buf.len() as u64).contains(&at) => {
                    buf[(at - start) as usize] ^= 0xff;
                }
                _ => {}
            }
        }
        Ok(buf)
    }

    async fn exists(&self, path: &Path) -> Result<bool, BackendError> {
        self.inner.exists(path).await
    }

    async fn create(
        &self,
        path: &Path,
        bytes: Bytes,
        timestamp: jiff::Timestamp,
    ) -> Result<(), BackendError> {
        self.before_put(path).await?;
        self.inner.create(path, bytes, timestamp).await
    }

    async fn create_from_file(
        &self,
        path: &Path,
        source: &FsPath,
        timestamp: jiff::Timestamp,
        limits: UploadLimits,
    ) -> Result<u64, BackendError> {
        self.before_put(path).await?;
        self.inner
            .create_from_file(path, source, timestamp, limits)
            .await
    }

    async fn delete(&self, paths: Vec<Path>) -> Result<(), BackendError> {
        self.inner.delete(paths).await
    }
}

/// Passes `n` bytes of the body, then fails as a dropped connection does.
fn break_after(body: Body, n: u64) -> Body {
    let mut left = n;
    body.flat_map(move |chunk| {
        let out: Vec<Result<Bytes, BackendError>> = match chunk {
            Ok(c) if left == u64::MAX => vec![Ok(c)],
            Ok(c) if (c.len() as u64) <= left => {
                left -= c.len() as u64;
                vec![Ok(c)]
            }
            Ok(c) => {
                let head = c.slice(..left as usize);
                left = u64::MAX;
                vec![Ok(head), Err(injected("connection reset mid-body"))]
            }
            Err(e) => vec![Err(e)],
        };
        stream::iter(out)
    })
    .take_while({
        let mut failed = false;
        move |item| {
            let go = !failed;
            failed |= item.is_err();
            futures::future::ready(go)
        }
    })
    .boxed()
}

/// Flips the byte at object offset `at` if it passes through a body starting at `start`.
fn corrupt_at(body: Body, start: u64, at: u64) -> Body {
    let mut pos = start;
    body.map(move |chunk| {
        let c = chunk?;
        let end = pos + c.len() as u64;
        let out = if (pos..end).contains(&at) {
            let mut m = BytesMut::from(&c[..]);
            m[(at - pos) as usize] ^= 0xff;
            m.freeze()
        } else {
            c
        };
        pos = end;
        Ok(out)
    })
    .boxed()
}
