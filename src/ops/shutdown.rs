//! The shutdown flag: raised once (by the signal thread, or a thread the
//! service cannot do without), waited on by the daemon's threads.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A shutdown request that any thread can raise and others wait on.
/// Cloning gives another handle to the same flag.
#[derive(Clone, Default)]
pub struct Shutdown {
    state: Arc<(Mutex<bool>, Condvar)>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl Shutdown {
    /// A flag not yet raised.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Raise the flag and wake every waiter.
    pub fn request(&self) {
        let (flag, cond) = &*self.state;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cond.notify_all();
    }

    /// Whether shutdown was requested.
    pub fn is_requested(&self) -> bool {
        *self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `timeout` for the flag; returns whether it is raised.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (flag, cond) = &*self.state;
        let deadline = Instant::now() + timeout;
        let mut raised = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*raised {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            raised = cond
                .wait_timeout(raised, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *raised
    }

    /// Wait until the flag is raised.
    pub fn wait(&self) {
        let (flag, cond) = &*self.state;
        let mut raised = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*raised {
            raised = cond.wait(raised).unwrap_or_else(|p| p.into_inner());
        }
    }
}
