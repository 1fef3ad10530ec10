//! Process signals and the shutdown flag that threads wait on.
//!
//! The daemon blocks SIGTERM, SIGINT and SIGHUP with `pthread_sigmask` as
//! the first statement of `main`, before any thread exists, so every thread
//! inherits the mask and no signal handler ever runs; one thread then loops
//! on `sigwait(3)` and turns each signal into an ordinary call (see the
//! EXAMPLES of pthread_sigmask(3)). This needs only libc and has none of the
//! async-signal-safety pitfalls of handlers. SIGPIPE is already ignored by
//! the Rust runtime, so writes to a closed peer fail with `BrokenPipe`.
//!
//! [`Shutdown`] is the flag that the signal thread raises and that the
//! daemon's threads (reaper, heartbeat, main) wait on with a timeout.

use std::fmt;
use std::io;
use std::thread::JoinHandle;

pub use super::shutdown::Shutdown;

/// A signal the daemon acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: shut down cleanly (systemd's stop).
    Terminate,
    /// SIGINT: shut down cleanly (Ctrl-C in a terminal).
    Interrupt,
    /// SIGHUP: reload (re-read the instance's settings).
    Hangup,
}

impl Signal {
    fn from_raw(signo: libc::c_int) -> Option<Signal> {
        match signo {
            libc::SIGTERM => Some(Signal::Terminate),
            libc::SIGINT => Some(Signal::Interrupt),
            libc::SIGHUP => Some(Signal::Hangup),
            _ => None,
        }
    }

    /// The signal's number.
    pub fn raw(self) -> libc::c_int {
        match self {
            Signal::Terminate => libc::SIGTERM,
            Signal::Interrupt => libc::SIGINT,
            Signal::Hangup => libc::SIGHUP,
        }
    }

    /// Whether the daemon should stop on this signal.
    pub fn is_shutdown(self) -> bool {
        matches!(self, Signal::Terminate | Signal::Interrupt)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
        })
    }
}

/// The set {SIGTERM, SIGINT, SIGHUP}, blocked in the calling thread.
#[derive(Clone, Copy)]
pub struct BlockedSignals {
    set: libc::sigset_t,
}

impl fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockedSignals(SIGTERM, SIGINT, SIGHUP)")
    }
}

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread. Call it first
/// thing in `main`, before any thread (including the Config DB client's) is
/// started, so that every thread inherits the mask.
pub fn block_signals() -> io::Result<BlockedSignals> {
    // SAFETY: sigemptyset/sigaddset write only into our local set;
    // pthread_sigmask reads it and changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signo in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signo);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(BlockedSignals { set })
    }
}

/// What the signal thread does after a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSignal {
    /// Keep waiting for signals.
    Continue,
    /// Stop the signal thread.
    Stop,
}

/// The running signal thread.
pub struct SignalThread {
    handle: JoinHandle<()>,
}

impl SignalThread {
    /// The thread's pthread id (e.g. to direct a signal at it in tests).
    pub fn pthread(&self) -> libc::pthread_t {
        use std::os::unix::thread::JoinHandleExt;
        self.handle.as_pthread_t()
    }

    /// Wait for the thread to end (after a callback returned `Stop`).
    pub fn join(self) -> std::thread::Result<()> {
        self.handle.join()
    }
}

/// Start the thread that waits for the blocked signals with `sigwait` and
/// calls `on_signal` for each, in order, until it returns
/// [`AfterSignal::Stop`]. The caller's thread must have called
/// [`block_signals`] first (the new thread inherits its mask).
pub fn spawn_signal_thread(
    blocked: BlockedSignals,
    mut on_signal: impl FnMut(Signal) -> AfterSignal + Send + 'static,
) -> io::Result<SignalThread> {
    let handle = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            let mut signo: libc::c_int = 0;
            // SAFETY: `blocked.set` is a valid, initialised sigset_t and
            // `signo` a valid out-pointer.
            let rc = unsafe { libc::sigwait(&blocked.set, &mut signo) };
            if rc != 0 {
                log::error!(
                    "sigwait failed: {}; signals are no longer handled",
                    io::Error::from_raw_os_error(rc)
                );
                return;
            }
            if let Some(signal) = Signal::from_raw(signo) {
                log::info!("received {signal}");
                // A panic while handling one signal (logged) must not leave
                // the process deaf to the next, SIGTERM included.
                let what = format!("handling {signal}");
                let after = crate::ops::panics::guard(&what, || on_signal(signal));
                if after == Some(AfterSignal::Stop) {
                    return;
                }
            }
        })?;
    Ok(SignalThread { handle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn shutdown_flag_wakes_waiters() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.wait_timeout(Duration::from_millis(1)));
        let s = shutdown.clone();
        let waiter = std::thread::spawn(move || {
            s.wait();
            s.is_requested()
        });
        shutdown.request();
        assert!(waiter.join().unwrap());
        assert!(shutdown.wait_timeout(Duration::from_secs(60)));
    }

    #[test]
    fn sigwait_thread_reports_hangup_then_stops_on_terminate() {
        // Block in this test thread only, and direct the signals at the
        // signal thread with pthread_kill: other test threads never see
        // them, so the default action can never kill the test binary.
        let (tx, rx) = mpsc::channel();
        let (started_tx, started_rx) = mpsc::channel();
        let owner = std::thread::spawn(move || {
            let blocked = block_signals().unwrap();
            let thread = spawn_signal_thread(blocked, move |signal| {
                tx.send(signal).unwrap();
                if signal.is_shutdown() {
                    AfterSignal::Stop
                } else {
                    AfterSignal::Continue
                }
            })
            .unwrap();
            started_tx.send(thread.pthread() as usize).unwrap();
            thread.join().unwrap();
        });
        let pthread = started_rx.recv().unwrap() as libc::pthread_t;
        // SAFETY: the thread is alive until it receives SIGTERM below.
        assert_eq!(unsafe { libc::pthread_kill(pthread, libc::SIGHUP) }, 0);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            Signal::Hangup
        );
        // SAFETY: the thread is alive until it has handled this SIGTERM.
        assert_eq!(unsafe { libc::pthread_kill(pthread, libc::SIGTERM) }, 0);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            Signal::Terminate
        );
        owner.join().unwrap();
    }
}
