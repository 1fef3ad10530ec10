//! The session table: which device sessions are live in this collabd
//! instance, and the admission rule that decides whether one more may start
//! (the BlackBerry Collaboration Service's rule; see collabd(8), ADMISSION).
//!
//! The table is one `Mutex` behind an `Arc`, bounded by [`Limits`].
//! Admission has two steps, so that a login whose credentials turn out
//! wrong never signs anyone out:
//!
//! 1. [`SessionTable::reserve`], before the CWA sign-in, holds a place:
//!    it is refused when the live sessions plus the places already
//!    reserved fill the limit and too few idle sessions could be signed
//!    out. It ends nobody. A storm of concurrent logins thus reaches CWA
//!    only as often as there is room, and never admits more than the
//!    limit.
//! 2. [`Reservation::commit`], once CWA accepted the credentials, checks
//!    again, replaces the device's own live session and signs out just
//!    enough idle sessions for this one, and inserts it: check, evictions
//!    and insert in **one** critical section. If the room is gone and
//!    nobody can be signed out, the commit is refused and the caller signs
//!    the new CWA session out.
//!
//! Dropping a [`Reservation`] gives its place back. Every admitted session
//! holds a [`SlotGuard`]; dropping it (normally, or while a session thread
//! unwinds from a panic) frees the slot.
//!
//! The table knows nothing about the Config DB, the device protocol or CWA.
//! It only records, per session, what admission and the reaper need: the
//! device's coverage, when it last sent a status message and when it last
//! sent anything at all. Ending a session (eviction, inactivity, logout,
//! shutdown) removes it from the table under the lock, records the reason
//! in its [`SessionHandle`] and then, outside the lock, calls the waker the
//! session thread registered, so that thread signs out of CWA and tells its
//! device.
//!
//! Admission, exactly as the BlackBerry Collaboration Service decides it:
//!
//! 1. `max_sessions` set and fewer sessions than that: admit.
//! 2. `max_sessions` reached and `idle_timeout` set: sessions whose device
//!    is out of coverage, or has sent no status message for `idle_timeout`,
//!    are candidates. Just enough of them are signed out to make room
//!    (normally one), **out-of-coverage sessions first, then the oldest last
//!    status first** (ties: the older session first); then admit. No
//!    candidate: [`Refusal::ServerBusy`].
//! 3. `max_sessions` reached and no `idle_timeout`: [`Refusal::ServerBusy`].
//! 4. `max_sessions` unset and as many sessions as `http_max_connections`
//!    (what the HTTP persistent connections to CWA can carry):
//!    [`Refusal::Failed`].
//!
//! A device has at most one session: a new login from a PIN that already
//! has a live session replaces it ([`EndReason::Replaced`]). The old session
//! is not counted against the limit for that login, and it is only ended
//! when the new login commits.
//!
//! The inactivity timeout is independent of the limit and always applies:
//! [`SessionTable::expire_inactive`] (run by [`spawn_reaper`]) ends every
//! session whose device has sent nothing for that long.
//!
//! The limits and refusals are in [`admission`], the reasons a session ends
//! in [`ending`]. The table imports nothing of the crate but the shutdown
//! flag of `ops` and the device statuses of `wire`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ops::signals::Shutdown;

mod admission;
mod ending;

pub use admission::{Limits, Refusal};
pub use ending::{Coverage, EndReason, EvictionCause};

/// Identifies one session for the life of the process (never reused).
pub type SessionId = u64;

/// Who a session belongs to: the device PIN and the login it signed in as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The device's 32-bit PIN.
    pub pin: u32,
    /// The login (DOMAIN\user or UPN) the session signed in as.
    pub login: String,
}

type Waker = Box<dyn FnOnce() + Send>;

/// Per-session state shared between the table, the session's threads and
/// whoever ends it.
struct SessionControl {
    id: SessionId,
    key: SessionKey,
    started: Instant,
    /// Fast check for the session threads' loops.
    ended: AtomicBool,
    /// Set once, by whoever removed the session from the table first.
    reason: Mutex<Option<EndReason>>,
    /// Called once, outside the table lock, when the session ends.
    waker: Mutex<Option<Waker>>,
}

impl SessionControl {
    /// Record the reason (first one wins) and raise the flag. Returns
    /// whether this call ended the session.
    fn mark_ended(&self, reason: EndReason) -> bool {
        let mut slot = lock(&self.reason);
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        self.ended.store(true, Ordering::Release);
        true
    }

    fn wake(&self) {
        let waker = lock(&self.waker).take();
        if let Some(waker) = waker {
            waker();
        }
    }
}

/// A cheap, clonable view of one session: its id and key, whether and why
/// it ended, and the waker that tells its threads to stop.
#[derive(Clone)]
pub struct SessionHandle(Arc<SessionControl>);

impl SessionHandle {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.0.id
    }

    /// The device PIN and login.
    pub fn key(&self) -> &SessionKey {
        &self.0.key
    }

    /// When the session was admitted.
    pub fn started(&self) -> Instant {
        self.0.started
    }

    /// Whether the session has ended (its slot is already free).
    pub fn is_ended(&self) -> bool {
        self.0.ended.load(Ordering::Acquire)
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        lock(&self.0.reason).clone()
    }

    /// Register what to do when the session is ended from outside (evicted,
    /// reaped, replaced, shut down): typically `shutdown(Both)` on a clone
    /// of the device socket, which unblocks the session's reader. Called
    /// once, never under the table lock. If the session has already ended,
    /// `waker` runs now.
    pub fn set_waker(&self, waker: impl FnOnce() + Send + 'static) {
        *lock(&self.0.waker) = Some(Box::new(waker));
        if self.is_ended() {
            self.0.wake();
        }
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.0.id)
            .field("key", &self.0.key)
            .field("ended", &self.end_reason())
            .finish()
    }
}

/// A session that the table ended, for the caller to audit and record
/// (outside the lock). Its waker has already been called.
#[derive(Clone, Debug)]
pub struct EndedSession {
    /// The ended session.
    pub handle: SessionHandle,
    /// Why it ended.
    pub reason: EndReason,
}

/// An admitted login: the slot (freed when `guard` drops), the new
/// session's handle, and the sessions that were ended to make room for it
/// (evicted at the limit, or replaced because the same device signed in
/// again), for the caller to audit.
#[must_use = "dropping the Admission frees the slot at once"]
pub struct Admission {
    /// Frees the slot when dropped, also while unwinding from a panic.
    pub guard: SlotGuard,
    /// The new session.
    pub handle: SessionHandle,
    /// Sessions ended to admit this one; their wakers have been called.
    pub ended: Vec<EndedSession>,
}

/// A place held for a login whose credentials are being checked (see
/// [`SessionTable::reserve`]). It ends nobody; dropping it gives the place
/// back.
#[must_use = "dropping the Reservation gives the place back at once"]
pub struct Reservation {
    table: Arc<Mutex<Inner>>,
    id: SessionId,
    key: SessionKey,
    committed: bool,
}

impl Reservation {
    /// The login's credentials were accepted: insert the session, replacing
    /// the device's own live session and signing out idle ones at the
    /// limit, in one critical section with the check. Only as many as this
    /// one session needs are signed out. Refused (and nobody ended) when
    /// the room counted at reservation is gone and no idle session can be
    /// signed out for it. Wakers of ended sessions run after the lock is
    /// released.
    pub fn commit(mut self, now: Instant) -> Result<Admission, Refusal> {
        self.committed = true;
        let key = self.key.clone();
        let (control, ended) = {
            let mut inner = lock(&self.table);
            inner.reserved.remove(&self.id);
            // Room is checked against live sessions only: other reservations
            // got theirs when they were made and are re-checked when they
            // commit, so no wrong password can ever sign anyone out early.
            let needed = inner.room_for(key.pin, 0, now)?;
            let mut evict: Vec<(SessionId, EndReason)> = inner
                .eviction_candidates(key.pin, now)
                .into_iter()
                .take(needed)
                .map(|(id, cause)| (id, EndReason::Evicted(cause)))
                .collect();
            if let Some(&old) = inner.by_pin.get(&key.pin) {
                evict.push((old, EndReason::Replaced));
            }
            let mut ended = Vec::with_capacity(evict.len());
            for (id, reason) in evict {
                if let Some(entry) = inner.remove(id) {
                    entry.control.mark_ended(reason.clone());
                    ended.push(EndedSession {
                        handle: SessionHandle(entry.control),
                        reason,
                    });
                }
            }
            let control = Arc::new(SessionControl {
                id: self.id,
                key: key.clone(),
                started: now,
                ended: AtomicBool::new(false),
                reason: Mutex::new(None),
                waker: Mutex::new(None),
            });
            inner.entries.insert(
                self.id,
                Entry {
                    control: Arc::clone(&control),
                    coverage: Coverage::In,
                    last_status: now,
                    last_activity: now,
                },
            );
            inner.by_pin.insert(key.pin, self.id);
            (control, ended)
        };
        for e in &ended {
            e.handle.0.wake();
        }
        Ok(Admission {
            guard: SlotGuard {
                table: Arc::clone(&self.table),
                control: Arc::clone(&control),
            },
            handle: SessionHandle(control),
            ended,
        })
    }

    /// The login this place is held for.
    pub fn key(&self) -> &SessionKey {
        &self.key
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            lock(&self.table).reserved.remove(&self.id);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish()
    }
}

/// RAII ownership of one slot in the table. Dropping it removes the session
/// (if it is still there) and wakes its other threads, so a session thread
/// that returns or panics can never leak a slot.
pub struct SlotGuard {
    table: Arc<Mutex<Inner>>,
    control: Arc<SessionControl>,
}

impl SlotGuard {
    /// The session this slot belongs to.
    pub fn id(&self) -> SessionId {
        self.control.id
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let removed = {
            let mut inner = lock(&self.table);
            inner.remove(self.control.id).is_some()
        };
        if removed && self.control.mark_ended(EndReason::Closed) {
            self.control.wake();
        }
    }
}

struct Entry {
    control: Arc<SessionControl>,
    coverage: Coverage,
    last_status: Instant,
    last_activity: Instant,
}

struct Inner {
    limits: Limits,
    entries: HashMap<SessionId, Entry>,
    by_pin: HashMap<u32, SessionId>,
    /// Open reservations: the id the session will have, and its PIN.
    reserved: HashMap<SessionId, u32>,
    next_id: SessionId,
}

impl Inner {
    fn remove(&mut self, id: SessionId) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if self.by_pin.get(&entry.control.key.pin) == Some(&id) {
            self.by_pin.remove(&entry.control.key.pin);
        }
        Some(entry)
    }

    /// Slots the open reservations will take when they commit: a
    /// reservation for a device that has a live session takes none (it
    /// will replace that session).
    fn reserved_slots(&self) -> usize {
        self.reserved
            .values()
            .filter(|pin| !self.by_pin.contains_key(pin))
            .count()
    }

    /// Live sessions that could be signed out at the limit to admit a
    /// login of `pin` (never that device's own session), in eviction
    /// order: out of coverage first, then the oldest last status, then
    /// the oldest session.
    fn eviction_candidates(&self, pin: u32, now: Instant) -> Vec<(SessionId, EvictionCause)> {
        let Some(idle) = self.limits.idle_timeout else {
            return Vec::new();
        };
        let own = self.by_pin.get(&pin).copied();
        let mut candidates: Vec<(bool, Instant, SessionId, EvictionCause)> = self
            .entries
            .values()
            .filter(|e| Some(e.control.id) != own)
            .filter_map(|e| {
                let silent_for = now.saturating_duration_since(e.last_status);
                let cause = if e.coverage == Coverage::Out {
                    EvictionCause::OutOfCoverage
                } else if silent_for >= idle {
                    EvictionCause::NoStatus { silent_for }
                } else {
                    return None;
                };
                Some((
                    e.coverage != Coverage::Out,
                    e.last_status,
                    e.control.id,
                    cause,
                ))
            })
            .collect();
        // Out of coverage first (false < true), then the oldest last
        // status, then the oldest session (lowest id).
        candidates.sort_unstable_by_key(|&(in_cov, last, id, _)| (in_cov, last, id));
        candidates
            .into_iter()
            .map(|(_, _, id, cause)| (id, cause))
            .collect()
    }

    /// How many sessions must be signed out so that one more session of
    /// `pin` fits, counting `others` slots already promised: `Ok(n)` when
    /// at least `n` candidates exist, the refusal otherwise.
    fn room_for(&self, pin: u32, others: usize, now: Instant) -> Result<usize, Refusal> {
        let own = usize::from(self.by_pin.contains_key(&pin));
        // The device's own previous session does not count against the
        // limit for its new login: it will be replaced.
        let in_use = self.entries.len() - own + others;
        match self.limits.max_sessions {
            Some(max) if in_use >= max as usize => {
                let needed = in_use + 1 - max as usize;
                let busy = Refusal::ServerBusy {
                    in_use,
                    max_sessions: max,
                };
                if self.limits.idle_timeout.is_none()
                    || self.eviction_candidates(pin, now).len() < needed
                {
                    return Err(busy);
                }
                Ok(needed)
            }
            Some(_) => Ok(0),
            None => {
                let ceiling = self.limits.http_max_connections;
                if in_use >= ceiling as usize {
                    return Err(Refusal::Failed {
                        in_use,
                        http_max_connections: ceiling,
                    });
                }
                Ok(0)
            }
        }
    }
}

/// One session as seen by [`SessionTable::snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id.
    pub id: SessionId,
    /// Device PIN and login.
    pub key: SessionKey,
    /// Last known coverage.
    pub coverage: Coverage,
    /// When the session was admitted.
    pub started: Instant,
    /// When the device last sent a status message (admission time if none).
    pub last_status: Instant,
    /// When the device last sent anything (admission time if nothing).
    pub last_activity: Instant,
}

/// A consistent copy of the table for status reports and the heartbeat.
#[derive(Clone, Debug)]
pub struct TableSnapshot {
    /// The limits in force.
    pub limits: Limits,
    /// Live sessions, oldest first.
    pub sessions: Vec<SessionInfo>,
}

/// The bounded table of live sessions. Cloning gives another handle to the
/// same table.
#[derive(Clone)]
pub struct SessionTable {
    inner: Arc<Mutex<Inner>>,
}

/// Lock, tolerating poison: nothing in this module panics while holding a
/// lock, and a slot must be freed even after another thread panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SessionTable {
    /// An empty table with these limits.
    pub fn new(limits: Limits) -> SessionTable {
        SessionTable {
            inner: Arc::new(Mutex::new(Inner {
                limits,
                entries: HashMap::new(),
                by_pin: HashMap::new(),
                reserved: HashMap::new(),
                next_id: 1,
            })),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        lock(&self.inner).limits.clone()
    }

    /// Replace the limits (e.g. after re-reading the instance row). Live
    /// sessions are never ended because a limit went down; the next
    /// admissions and reaper passes apply the new values.
    pub fn set_limits(&self, limits: Limits) {
        lock(&self.inner).limits = limits;
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions in use and the capacity (`Limits::capacity`), for the
    /// heartbeat's `sessions_in_use` and `session_limit`.
    pub fn usage(&self) -> (usize, u32) {
        let inner = lock(&self.inner);
        (inner.entries.len(), inner.limits.capacity())
    }

    /// Decide admission for `key` and, if admitted, insert it at once:
    /// [`SessionTable::reserve`] then [`Reservation::commit`], for callers
    /// with nothing to check in between.
    pub fn admit(&self, key: SessionKey, now: Instant) -> Result<Admission, Refusal> {
        self.reserve(key, now)?.commit(now)
    }

    /// Reserve a place for a login of `key` before its credentials are
    /// checked: refused when the table, counting the places already
    /// reserved, is full and not enough idle sessions could be signed out
    /// to make room. Nothing is ended here; [`Reservation::commit`] ends
    /// what must go, once the login is accepted. Dropping the reservation
    /// gives the place back.
    pub fn reserve(&self, key: SessionKey, now: Instant) -> Result<Reservation, Refusal> {
        let mut inner = lock(&self.inner);
        let others = inner.reserved_slots();
        inner.room_for(key.pin, others, now)?;
        let id = inner.next_id;
        inner.next_id += 1;
        inner.reserved.insert(id, key.pin);
        Ok(Reservation {
            table: Arc::clone(&self.inner),
            id,
            key,
            committed: false,
        })
    }

    /// The places reserved and not yet committed or given back.
    pub fn reserved(&self) -> usize {
        lock(&self.inner).reserved.len()
    }

    /// The device sent a status message: record its coverage and the time
    /// (this is also activity). Returns false if the session is gone.
    pub fn note_status(&self, id: SessionId, coverage: Coverage, now: Instant) -> bool {
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(&id) {
            Some(e) => {
                e.coverage = coverage;
                e.last_status = now;
                e.last_activity = now;
                true
            }
            None => false,
        }
    }

    /// The device sent something other than a status message (a command,
    /// an acknowledgement): it is active. Returns false if the session is
    /// gone.
    pub fn note_activity(&self, id: SessionId, now: Instant) -> bool {
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(&id) {
            Some(e) => {
                e.last_activity = now;
                true
            }
            None => false,
        }
    }

    /// The device's connection went away without a logout: the session
    /// stays, out of coverage, an eviction candidate until the device
    /// re-attaches or the inactivity timeout ends it. Returns false if the
    /// session is gone.
    pub fn mark_out_of_coverage(&self, id: SessionId) -> bool {
        let mut inner = lock(&self.inner);
        match inner.entries.get_mut(&id) {
            Some(e) => {
                e.coverage = Coverage::Out;
                true
            }
            None => false,
        }
    }

    /// End every session whose device has sent nothing for the inactivity
    /// timeout (if one is set). Always applies, whatever the limit. Wakers
    /// run after the lock is released.
    pub fn expire_inactive(&self, now: Instant) -> Vec<EndedSession> {
        let ended = {
            let mut inner = lock(&self.inner);
            let Some(timeout) = inner.limits.inactivity_timeout else {
                return Vec::new();
            };
            let expired: Vec<(SessionId, Duration)> = inner
                .entries
                .values()
                .filter_map(|e| {
                    let quiet = now.saturating_duration_since(e.last_activity);
                    (quiet >= timeout).then_some((e.control.id, quiet))
                })
                .collect();
            let mut ended = Vec::with_capacity(expired.len());
            for (id, inactive_for) in expired {
                if let Some(entry) = inner.remove(id) {
                    let reason = EndReason::Inactive { inactive_for };
                    entry.control.mark_ended(reason.clone());
                    ended.push(EndedSession {
                        handle: SessionHandle(entry.control),
                        reason,
                    });
                }
            }
            ended
        };
        for e in &ended {
            e.handle.0.wake();
        }
        ended
    }

    /// End one session (logout, CWA session lost): remove it, record the
    /// reason, wake it. `None` if it had already ended.
    pub fn end(&self, id: SessionId, reason: EndReason) -> Option<EndedSession> {
        let entry = lock(&self.inner).remove(id)?;
        entry.control.mark_ended(reason.clone());
        entry.control.wake();
        Some(EndedSession {
            handle: SessionHandle(entry.control),
            reason,
        })
    }

    /// End every session (shutdown): the table is empty afterwards.
    pub fn end_all(&self, reason: EndReason) -> Vec<EndedSession> {
        let entries: Vec<Entry> = {
            let mut inner = lock(&self.inner);
            inner.by_pin.clear();
            inner.entries.drain().map(|(_, e)| e).collect()
        };
        entries
            .into_iter()
            .map(|entry| {
                entry.control.mark_ended(reason.clone());
                entry.control.wake();
                EndedSession {
                    handle: SessionHandle(entry.control),
                    reason: reason.clone(),
                }
            })
            .collect()
    }

    /// The live session of this device, for a device re-attaching after
    /// its connection dropped.
    pub fn find_by_pin(&self, pin: u32) -> Option<SessionHandle> {
        let inner = lock(&self.inner);
        let id = inner.by_pin.get(&pin)?;
        inner
            .entries
            .get(id)
            .map(|e| SessionHandle(Arc::clone(&e.control)))
    }

    /// A consistent copy of the table, sessions oldest first.
    pub fn snapshot(&self) -> TableSnapshot {
        let inner = lock(&self.inner);
        let mut sessions: Vec<SessionInfo> = inner
            .entries
            .values()
            .map(|e| SessionInfo {
                id: e.control.id,
                key: e.control.key.clone(),
                coverage: e.coverage,
                started: e.control.started,
                last_status: e.last_status,
                last_activity: e.last_activity,
            })
            .collect();
        sessions.sort_unstable_by_key(|s| s.id);
        TableSnapshot {
            limits: inner.limits.clone(),
            sessions,
        }
    }
}

impl fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("SessionTable")
            .field("limits", &inner.limits)
            .field("sessions", &inner.entries.len())
            .finish()
    }
}

/// Run the inactivity reaper: every `interval`, end the sessions past the
/// inactivity timeout and hand them to `on_ended` (audit, registry), until
/// `shutdown` is requested. The thread's stack is `stack_size` bytes.
pub fn spawn_reaper(
    table: SessionTable,
    interval: Duration,
    shutdown: Shutdown,
    stack_size: usize,
    on_ended: impl Fn(Vec<EndedSession>) + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("session-reaper".into())
        .stack_size(stack_size)
        .spawn(move || {
            let reap = || {
                while !shutdown.wait_timeout(interval) {
                    let ended = table.expire_inactive(Instant::now());
                    if !ended.is_empty() {
                        on_ended(ended);
                    }
                    // The tick also returns what the last frees of a burst
                    // (session ends, exiting finishers, closed Config DB
                    // connections) left.
                    crate::ops::memory::trim_if_due();
                }
            };
            // Without the reaper idle sessions would hold their slots for
            // ever: stop the service cleanly instead.
            crate::ops::panics::guard_service_thread("the session reaper", &shutdown, reap);
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn key(pin: u32) -> SessionKey {
        SessionKey {
            pin,
            login: format!("CORP\\user{pin}"),
        }
    }

    fn limits(max: Option<u32>, idle_ms: Option<u64>) -> Limits {
        Limits::from_millis(max, idle_ms, None, 1000)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn below_max_admits_and_at_max_without_idle_timeout_is_server_busy() {
        let table = SessionTable::new(limits(Some(2), None));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).expect("first");
        let b = table.admit(key(2), t0).expect("second");
        assert!(a.ended.is_empty() && b.ended.is_empty());
        assert_ne!(a.handle.id(), b.handle.id());
        table.mark_out_of_coverage(a.handle.id());
        let refused = table.admit(key(3), t0 + ms(10_000)).err().expect("refused");
        assert_eq!(
            refused,
            Refusal::ServerBusy {
                in_use: 2,
                max_sessions: 2
            }
        );
        assert_eq!(refused.status_code().code(), 301);
        assert_eq!(table.len(), 2);
        assert!(!a.handle.is_ended());
    }

    #[test]
    fn at_max_with_idle_timeout_evicts_out_of_coverage_session_and_admits() {
        let table = SessionTable::new(limits(Some(2), Some(60_000)));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let b = table.admit(key(2), t0).unwrap();
        let woken = Arc::new(AtomicBool::new(false));
        let w = Arc::clone(&woken);
        b.handle.set_waker(move || w.store(true, Ordering::SeqCst));
        assert!(table.mark_out_of_coverage(b.handle.id()));

        let c = table.admit(key(3), t0 + ms(1)).expect("evicts b");
        assert_eq!(c.ended.len(), 1);
        assert_eq!(c.ended[0].handle.id(), b.handle.id());
        assert_eq!(
            c.ended[0].reason,
            EndReason::Evicted(EvictionCause::OutOfCoverage)
        );
        assert!(woken.load(Ordering::SeqCst), "evicted session woken");
        assert!(b.handle.is_ended());
        assert_eq!(
            b.handle.end_reason(),
            Some(EndReason::Evicted(EvictionCause::OutOfCoverage))
        );
        assert!(!a.handle.is_ended());
        assert_eq!(table.len(), 2);
        assert!(table.find_by_pin(2).is_none());
        // The evicted session's guard dropping later must not free c's slot.
        drop(b);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn at_max_with_idle_timeout_but_nobody_idle_is_server_busy() {
        let table = SessionTable::new(limits(Some(2), Some(60_000)));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let _b = table.admit(key(2), t0).unwrap();
        assert!(table.note_status(a.handle.id(), Coverage::Dormant, t0 + ms(30_000)));
        let err = table.admit(key(3), t0 + ms(59_999)).err().unwrap();
        assert!(matches!(err, Refusal::ServerBusy { .. }));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn silent_sessions_are_evicted_oldest_status_first_and_only_as_many_as_needed() {
        let table = SessionTable::new(limits(Some(3), Some(1_000)));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let b = table.admit(key(2), t0).unwrap();
        let c = table.admit(key(3), t0).unwrap();
        table.note_status(a.handle.id(), Coverage::In, t0 + ms(500));
        table.note_status(b.handle.id(), Coverage::In, t0 + ms(200));
        table.note_status(c.handle.id(), Coverage::In, t0 + ms(5_000));
        // At t0+3000: a silent 2500 ms, b silent 2800 ms, c 0 ms (negative).
        let d = table.admit(key(4), t0 + ms(3_000)).unwrap();
        assert_eq!(d.ended.len(), 1);
        assert_eq!(d.ended[0].handle.id(), b.handle.id(), "oldest status first");
        assert_eq!(
            d.ended[0].reason,
            EndReason::Evicted(EvictionCause::NoStatus {
                silent_for: ms(2_800)
            })
        );
        assert!(!a.handle.is_ended());
        let e = table.admit(key(5), t0 + ms(3_000)).unwrap();
        assert_eq!(e.ended[0].handle.id(), a.handle.id());
        let refused = table.admit(key(6), t0 + ms(3_000));
        assert!(refused.is_err(), "c, d, e are all fresh");
    }

    #[test]
    fn out_of_coverage_goes_before_an_older_silent_session() {
        let table = SessionTable::new(limits(Some(2), Some(1_000)));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let b = table.admit(key(2), t0).unwrap();
        table.note_status(b.handle.id(), Coverage::In, t0 + ms(1_500));
        table.mark_out_of_coverage(b.handle.id());
        let c = table.admit(key(3), t0 + ms(5_000)).unwrap();
        assert_eq!(c.ended[0].handle.id(), b.handle.id());
        assert!(!a.handle.is_ended());
    }

    #[test]
    fn idle_sessions_are_never_evicted_below_the_limit() {
        let table = SessionTable::new(limits(Some(3), Some(10)));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        table.mark_out_of_coverage(a.handle.id());
        let b = table.admit(key(2), t0 + ms(100_000)).unwrap();
        let c = table.admit(key(3), t0 + ms(100_000)).unwrap();
        assert!(b.ended.is_empty() && c.ended.is_empty());
        assert!(!a.handle.is_ended());
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn max_unset_refuses_with_failed_at_http_max_connections() {
        let table = SessionTable::new(Limits {
            max_sessions: None,
            idle_timeout: Some(ms(1)),
            inactivity_timeout: None,
            http_max_connections: 3,
        });
        let t0 = Instant::now();
        let admitted: Vec<Admission> = (1..=3).map(|p| table.admit(key(p), t0).unwrap()).collect();
        table.mark_out_of_coverage(admitted[0].handle.id());
        let err = table.admit(key(4), t0 + ms(10_000)).err().unwrap();
        assert_eq!(
            err,
            Refusal::Failed {
                in_use: 3,
                http_max_connections: 3
            }
        );
        assert_eq!(err.status_code().code(), 300);
        assert_eq!(table.usage(), (3, 3));
    }

    #[test]
    fn same_device_logging_in_again_replaces_its_session_even_at_the_limit() {
        let table = SessionTable::new(limits(Some(1), None));
        let t0 = Instant::now();
        let first = table.admit(key(7), t0).unwrap();
        let second = table.admit(key(7), t0).expect("replaces, not busy");
        assert_eq!(second.ended.len(), 1);
        assert_eq!(second.ended[0].reason, EndReason::Replaced);
        assert_eq!(first.handle.end_reason(), Some(EndReason::Replaced));
        assert_eq!(table.len(), 1);
        assert_eq!(table.find_by_pin(7).unwrap().id(), second.handle.id());
        drop(first);
        assert_eq!(table.len(), 1, "old guard does not free the new slot");
        assert_eq!(table.find_by_pin(7).unwrap().id(), second.handle.id());
    }

    #[test]
    fn a_refused_login_leaves_the_devices_old_session_alone() {
        let table = SessionTable::new(limits(Some(1), None));
        let t0 = Instant::now();
        let _other = table.admit(key(1), t0).unwrap();
        // Limit lowered at run time while two sessions are live.
        table.set_limits(limits(Some(2), None));
        let mine = table.admit(key(2), t0).unwrap();
        table.set_limits(limits(Some(1), None));
        assert!(table.admit(key(2), t0).is_err());
        assert!(!mine.handle.is_ended());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_reservation_ends_nobody_until_it_commits() {
        let table = SessionTable::new(limits(Some(2), Some(1_000)));
        let t0 = Instant::now();
        let mine = table.admit(key(7), t0).unwrap();
        let idle = table.admit(key(8), t0).unwrap();
        table.mark_out_of_coverage(idle.handle.id());
        table.note_status(mine.handle.id(), Coverage::In, t0 + ms(4_900));
        // A login for the same device and one for another, both at the
        // limit: places are held, nobody is ended.
        let again = table.reserve(key(7), t0 + ms(5_000)).unwrap();
        let other = table.reserve(key(9), t0 + ms(5_000)).unwrap();
        assert_eq!(table.reserved(), 2);
        assert!(!mine.handle.is_ended() && !idle.handle.is_ended());
        // No idle session is left for a third login.
        assert!(table.reserve(key(10), t0 + ms(5_000)).is_err());
        // Their credentials were wrong: dropped, nothing happened.
        drop((again, other));
        assert_eq!(table.reserved(), 0);
        assert!(!mine.handle.is_ended() && !idle.handle.is_ended());
        assert_eq!(table.len(), 2);
        // Accepted this time: the commit replaces and evicts.
        let again = table.reserve(key(7), t0 + ms(5_000)).unwrap();
        let admitted = table.reserve(key(9), t0 + ms(5_000)).unwrap();
        let admitted = admitted.commit(t0 + ms(5_000)).unwrap();
        assert_eq!(admitted.ended.len(), 1);
        assert_eq!(admitted.ended[0].handle.id(), idle.handle.id());
        assert!(!mine.handle.is_ended(), "only what this login needs");
        let replaced = again.commit(t0 + ms(5_000)).unwrap();
        assert_eq!(replaced.ended[0].reason, EndReason::Replaced);
        assert!(mine.handle.is_ended());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_commit_whose_room_is_gone_is_refused_and_ends_nobody() {
        let table = SessionTable::new(limits(Some(1), Some(1_000)));
        let t0 = Instant::now();
        let first = table.admit(key(1), t0).unwrap();
        table.mark_out_of_coverage(first.handle.id());
        let pending = table.reserve(key(2), t0).unwrap();
        // The idle session comes back before the login is accepted.
        table.note_status(first.handle.id(), Coverage::In, t0 + ms(10));
        let refused = pending.commit(t0 + ms(20)).err().unwrap();
        assert_eq!(refused.status_code().code(), 301);
        assert!(!first.handle.is_ended());
        assert_eq!((table.len(), table.reserved()), (1, 0));
    }

    #[test]
    fn reservations_count_against_the_limit_until_given_back() {
        let table = SessionTable::new(limits(Some(2), None));
        let t0 = Instant::now();
        let a = table.reserve(key(1), t0).unwrap();
        let b = table.reserve(key(2), t0).unwrap();
        assert!(matches!(
            table.reserve(key(3), t0),
            Err(Refusal::ServerBusy { in_use: 2, .. })
        ));
        drop(a);
        let c = table.reserve(key(3), t0).unwrap();
        let (b, c) = (b.commit(t0).unwrap(), c.commit(t0).unwrap());
        assert!(b.ended.is_empty() && c.ended.is_empty());
        assert_eq!((table.len(), table.reserved()), (2, 0));
    }

    #[test]
    fn slot_guard_frees_the_slot_when_the_session_thread_panics() {
        let table = SessionTable::new(limits(Some(1), None));
        let t = table.clone();
        let joined = std::thread::spawn(move || {
            let admission = t.admit(key(1), Instant::now()).unwrap();
            let _guard = admission.guard;
            panic!("session thread fails");
        })
        .join();
        assert!(joined.is_err(), "the thread panicked");
        assert!(table.is_empty());
        let again = table.admit(key(2), Instant::now());
        assert!(again.is_ok(), "slot is free again");
    }

    #[test]
    fn slot_guard_frees_the_slot_under_catch_unwind_and_wakes_the_session() {
        let table = SessionTable::new(limits(Some(1), None));
        let woken = Arc::new(AtomicBool::new(false));
        let w = Arc::clone(&woken);
        let handle_out = Arc::new(Mutex::new(None));
        let h = Arc::clone(&handle_out);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let admission = table.admit(key(1), Instant::now()).unwrap();
            admission
                .handle
                .set_waker(move || w.store(true, Ordering::SeqCst));
            *h.lock().unwrap() = Some(admission.handle.clone());
            let _guard = admission.guard;
            panic!("boom");
        }));
        assert!(result.is_err());
        assert_eq!(table.len(), 0);
        assert!(woken.load(Ordering::SeqCst));
        let handle = handle_out.lock().unwrap().take().unwrap();
        assert_eq!(handle.end_reason(), Some(EndReason::Closed));
    }

    #[test]
    fn login_storm_of_4n_admits_exactly_n() {
        const N: usize = 25;
        let table = SessionTable::new(limits(Some(N as u32), Some(60_000)));
        let barrier = Arc::new(Barrier::new(4 * N));
        let admitted = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(Barrier::new(4 * N));
        let threads: Vec<_> = (0..4 * N)
            .map(|i| {
                let (table, barrier, hold) = (table.clone(), barrier.clone(), hold.clone());
                let (admitted, busy) = (admitted.clone(), busy.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let result = table.admit(key(i as u32), Instant::now());
                    match &result {
                        Ok(a) => {
                            assert!(a.ended.is_empty());
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Refusal::ServerBusy { .. }) => {
                            busy.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("unexpected {other}"),
                    }
                    // Keep every admitted slot held until all have tried.
                    hold.wait();
                    drop(result);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::SeqCst), N);
        assert_eq!(busy.load(Ordering::SeqCst), 3 * N);
        assert!(table.is_empty(), "all guards dropped");
    }

    #[test]
    fn inactivity_timeout_ends_any_session_even_below_the_limit() {
        let table = SessionTable::new(Limits {
            max_sessions: Some(100),
            idle_timeout: None,
            inactivity_timeout: Some(ms(1_000)),
            http_max_connections: 1000,
        });
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let b = table.admit(key(2), t0).unwrap();
        let c = table.admit(key(3), t0).unwrap();
        table.note_activity(b.handle.id(), t0 + ms(800));
        table.note_status(c.handle.id(), Coverage::Dormant, t0 + ms(900));
        let woken = Arc::new(AtomicBool::new(false));
        let w = Arc::clone(&woken);
        a.handle.set_waker(move || w.store(true, Ordering::SeqCst));

        assert!(table.expire_inactive(t0 + ms(999)).is_empty());
        let ended = table.expire_inactive(t0 + ms(1_000));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].handle.id(), a.handle.id());
        assert_eq!(
            ended[0].reason,
            EndReason::Inactive {
                inactive_for: ms(1_000)
            }
        );
        assert!(woken.load(Ordering::SeqCst));
        let ended = table.expire_inactive(t0 + ms(1_850));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].handle.id(), b.handle.id());
        assert_eq!(table.len(), 1);
        // No inactivity timeout: nothing is ever reaped.
        table.set_limits(limits(Some(100), None));
        assert!(table.expire_inactive(t0 + ms(1_000_000)).is_empty());
    }

    #[test]
    fn waker_set_after_the_end_runs_at_once_and_end_is_idempotent() {
        let table = SessionTable::new(limits(None, None));
        let a = table.admit(key(1), Instant::now()).unwrap();
        let ended = table.end(a.handle.id(), EndReason::Logout).unwrap();
        assert_eq!(ended.reason, EndReason::Logout);
        assert!(table
            .end(a.handle.id(), EndReason::ServiceStopping)
            .is_none());
        assert_eq!(a.handle.end_reason(), Some(EndReason::Logout));
        let woken = Arc::new(AtomicBool::new(false));
        let w = Arc::clone(&woken);
        a.handle.set_waker(move || w.store(true, Ordering::SeqCst));
        assert!(woken.load(Ordering::SeqCst));
        assert!(!table.note_status(a.handle.id(), Coverage::In, Instant::now()));
    }

    #[test]
    fn end_all_empties_the_table_and_snapshot_reports_state() {
        let table = SessionTable::new(limits(Some(10), None));
        let t0 = Instant::now();
        let a = table.admit(key(1), t0).unwrap();
        let b = table.admit(key(2), t0).unwrap();
        table.mark_out_of_coverage(b.handle.id());
        let snap = table.snapshot();
        assert_eq!(snap.sessions.len(), 2);
        assert_eq!(snap.sessions[0].id, a.handle.id());
        assert_eq!(snap.sessions[1].coverage, Coverage::Out);
        assert_eq!(snap.sessions[1].key, key(2));
        let ended = table.end_all(EndReason::ServiceStopping);
        assert_eq!(ended.len(), 2);
        assert!(table.is_empty());
        assert!(table.find_by_pin(1).is_none());
        assert_eq!(
            a.handle.end_reason().map(|r| r.status_code().code()),
            Some(311)
        );
    }

    #[test]
    fn reaper_thread_ends_inactive_sessions_and_stops_on_shutdown() {
        let table = SessionTable::new(Limits {
            max_sessions: None,
            idle_timeout: None,
            inactivity_timeout: Some(ms(1)),
            http_max_connections: 10,
        });
        let a = table.admit(key(1), Instant::now()).unwrap();
        let shutdown = Shutdown::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let reaper = spawn_reaper(
            table.clone(),
            ms(5),
            shutdown.clone(),
            64 * 1024,
            move |ended| {
                let _ = tx.send(ended);
            },
        )
        .unwrap();
        let ended = rx.recv_timeout(Duration::from_secs(30)).expect("reaped");
        assert_eq!(ended[0].handle.id(), a.handle.id());
        shutdown.request();
        reaper.join().unwrap();
    }
}
