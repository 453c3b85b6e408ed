//! When to look at files a node reloads while it runs (its HTTPS certificate, its token file):
//! on SIGHUP, and on a timer that checks whether they changed.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// A file's modification time, `None` when it cannot be read: compared between checks to
/// tell a changed file.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// SIGHUP (where there are signals) and a periodic check, as one stream of triggers.
pub struct ReloadTriggers {
    #[cfg(unix)]
    hangups: Option<tokio::signal::unix::Signal>,
    ticks: tokio::time::Interval,
}

impl ReloadTriggers {
    /// Triggers on SIGHUP and every `every`. Needs a tokio runtime.
    pub fn new(every: Duration) -> Self {
        ReloadTriggers {
            #[cfg(unix)]
            hangups: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            ticks: tokio::time::interval(every),
        }
    }

    /// Waits for the next trigger; `true` when an operator asked (SIGHUP), so the files are
    /// loaded again even if they look unchanged, `false` for a periodic check.
    pub async fn next(&mut self) -> bool {
        #[cfg(unix)]
        let hangup = async {
            match self.hangups.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = hangup => true,
            _ = self.ticks.tick() => false,
        }
    }
}
