//! Panics in long-lived threads (session event threads and finishers, the
//! heartbeat, the reaper, the watchdog, the signal thread): [`guard`] runs a
//! thread's body under `catch_unwind`, so a panic is logged at error level
//! with the thread's role and message instead of ending the thread
//! silently, and the caller decides how its session or the service ends.
//! Panic messages in this code base never carry passwords or keys, so the
//! message is logged as it is.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::shutdown::Shutdown;

/// Set once a thread the whole service depends on has panicked.
static SERVICE_THREAD_FAILED: AtomicBool = AtomicBool::new(false);

/// Runs `body`; `None` if it panicked (logged at error level as a panic of
/// `what`).
pub fn guard<T>(what: &str, body: impl FnOnce() -> T) -> Option<T> {
    guard_named(|| what.to_string(), body)
}

/// [`guard`] with the name made only if `body` panics (a session's event
/// thread waits under this frame for hours; its name need not be there).
#[inline(always)]
pub fn guard_named<T>(what: impl FnOnce() -> String, body: impl FnOnce() -> T) -> Option<T> {
    // AssertUnwindSafe: after a panic the callers only end the session or
    // the service; shared state behind mutexes is read poison-tolerantly.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => Some(value),
        Err(payload) => {
            report(&what(), payload.as_ref());
            None
        }
    }
}

/// Out of line: the formatting stays out of the guarding frame.
#[cold]
#[inline(never)]
fn report(what: &str, payload: &(dyn Any + Send)) {
    log::error!("{what} panicked: {}", message(payload));
}

/// Runs the body of a thread the whole service depends on (heartbeat,
/// reaper, watchdog). If it panics (logged), the service stops cleanly
/// through `shutdown` and [`service_thread_failed`] turns true, so that
/// the daemon exits with a failure status and its supervisor restarts it.
pub fn guard_service_thread(what: &str, shutdown: &Shutdown, body: impl FnOnce()) {
    if guard(what, body).is_none() {
        SERVICE_THREAD_FAILED.store(true, Ordering::SeqCst);
        log::error!("stopping the service: {what} is gone");
        shutdown.request();
    }
}

/// Whether a thread run by [`guard_service_thread`] has panicked.
pub fn service_thread_failed() -> bool {
    SERVICE_THREAD_FAILED.load(Ordering::SeqCst)
}

/// The text of a panic payload (`panic!` with a message gives a `&str` or
/// a `String`).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_none_and_a_value_passes_through() {
        assert_eq!(guard("test body", || 5), Some(5));
        assert_eq!(guard_named(|| "named".into(), || 6), Some(6));
        let got: Option<u32> = guard_named(|| "named".into(), || panic!("boom"));
        assert_eq!(got, None);
        let got: Option<u32> = guard("test body", || panic!("boom {}", 7));
        assert_eq!(got, None);
        let payload = catch_unwind(|| panic!("static text")).unwrap_err();
        assert_eq!(message(payload.as_ref()), "static text");
        let payload = catch_unwind(|| panic!("formatted {}", 1)).unwrap_err();
        assert_eq!(message(payload.as_ref()), "formatted 1");
        let payload = catch_unwind(|| std::panic::panic_any(3u8)).unwrap_err();
        assert_eq!(message(payload.as_ref()), "(no message)");
    }
}
