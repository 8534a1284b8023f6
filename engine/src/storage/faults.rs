//! Fault injection: an `ObjectStore` wrapper that makes chosen requests fail, stall, lose
//! their object or return damaged bytes, for testing how callers cope.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

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

/// Adds faults to a [`FaultStore`] while it is in use.
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

/// Wraps a store and injects the [`Faults`] registered on its handle.
#[derive(Debug)]
pub struct FaultStore<T> {
    inner: T,
    faults: Faults,
}

impl<T: ObjectStore> FaultStore<T> {
    /// A store that behaves like `inner` until faults are injected through the handle.
    pub fn new(inner: T) -> (FaultStore<T>, Faults) {
        let faults = Faults::default();
        (
            FaultStore {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }
}

impl<T: ObjectStore> fmt::Display for FaultStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faults({})", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        // Worded as a timeout so it is classed as transient, like the failures it stands for.
        source: format!("injected fault: {what} (timed out)").into(),
    }
}

async fn delay(faults: &[Fault]) {
    for f in faults {
        if let Fault::Delay(d) = f {
            tokio::time::sleep(*d).await;
        }
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for FaultStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let hit = self
            .faults
            .take(location, |f| matches!(f, Fault::FailPut | Fault::Delay(_)));
        delay(&hit).await;
        if hit.iter().any(|f| matches!(f, Fault::FailPut)) {
            return Err(injected("PUT failed"));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let hit = self.faults.take(location, |f| {
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
                Fault::VanishOnGet => self.inner.delete(location).await?,
                _ => {}
            }
        }
        let mut result = self.inner.get_opts(location, options).await?;
        let start = result.range.start;
        for f in hit {
            let body = match f {
                Fault::BreakGetAfter(n) => break_after(take_body(&mut result), n),
                Fault::CorruptGetAt(at) => corrupt_at(take_body(&mut result), start, at),
                _ => continue,
            };
            result.payload = GetResultPayload::Stream(body);
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let opts = GetOptions {
                range: Some(r.clone().into()),
                ..Default::default()
            };
            out.push(self.get_opts(location, opts).await?.bytes().await?);
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        if self
            .faults
            .take(&at, |f| matches!(f, Fault::FailList))
            .is_empty()
        {
            self.inner.list(prefix)
        } else {
            stream::once(async { Err(injected("LIST failed")) }).boxed()
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        if self
            .faults
            .take(&at, |f| matches!(f, Fault::FailList))
            .is_empty()
        {
            self.inner.list_with_offset(prefix, offset)
        } else {
            stream::once(async { Err(injected("LIST failed")) }).boxed()
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        if !self
            .faults
            .take(&at, |f| matches!(f, Fault::FailList))
            .is_empty()
        {
            return Err(injected("LIST failed"));
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The body as a stream (a local file becomes a chunked read), leaving a placeholder.
fn take_body(result: &mut GetResult) -> BoxStream<'static, Result<Bytes>> {
    let placeholder = GetResultPayload::Stream(stream::empty().boxed());
    let payload = std::mem::replace(&mut result.payload, placeholder);
    GetResult {
        payload,
        meta: result.meta.clone(),
        range: result.range.clone(),
        attributes: result.attributes.clone(),
        extensions: Default::default(),
    }
    .into_stream()
}

/// Passes `n` bytes of the body, then fails as a dropped connection does.
fn break_after(
    body: BoxStream<'static, Result<Bytes>>,
    n: u64,
) -> BoxStream<'static, Result<Bytes>> {
    let mut left = n;
    body.flat_map(move |chunk| {
        let out: Vec<Result<Bytes>> = match chunk {
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
fn corrupt_at(
    body: BoxStream<'static, Result<Bytes>>,
    start: u64,
    at: u64,
) -> BoxStream<'static, Result<Bytes>> {
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
