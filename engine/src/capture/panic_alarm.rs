//! Turning a panic in one of a capture's threads or tasks into the capture's fatal error,
//! so the application hears of it instead of waiting on a task that is gone.

use tokio::sync::watch;

/// Reports a panic of the thread or task it lives in when dropped while unwinding.
pub(super) struct PanicAlarm {
    pub(super) what: &'static str,
    pub(super) fatal: watch::Sender<Option<String>>,
}

impl Drop for PanicAlarm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.fatal
                .send_replace(Some(format!("the {} panicked", self.what)));
        }
    }
}
