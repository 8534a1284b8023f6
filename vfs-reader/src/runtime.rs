//! The VFS's own tokio runtime: SQLite calls the VFS from its caller's thread, which may be
//! anything (a tokio worker included), so object-store requests are spawned here and waited
//! for without entering the caller's runtime.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use crate::state::VfsError;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Local reads run on the blocking pool: a few threads are plenty, and each
            // thread that allocates may hold an allocator arena of its own, which a scan's
            // buffers, freed on SQLite's thread, would otherwise spread over.
            .max_blocking_threads(4)
            .thread_name("strata-vfs")
            .enable_all()
            .build()
            .expect("cannot start the strata VFS runtime")
    })
}

/// Runs `fut` on the VFS runtime and waits for it, for at most `timeout`.
pub(crate) fn run<T, F>(timeout: Duration, fut: F) -> Result<T, VfsError>
where
    F: Future<Output = Result<T, VfsError>> + Send + 'static,
    T: Send + 'static,
{
    // A plain channel, not the task's JoinHandle: polled on a thread of another tokio
    // runtime (an async caller), a JoinHandle would defer its wake-up to that runtime's
    // scheduler, which this blocked thread is, and spin.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(VfsError::Timeout(timeout)),
        };
        let _ = tx.send(r);
    });
    rx.recv()
        .unwrap_or_else(|_| Err(VfsError::Config("the VFS task failed".to_owned())))
}

/// Starts `fut` on the VFS runtime without waiting for it.
pub(crate) fn spawn<F>(fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    runtime().spawn(fut);
}
