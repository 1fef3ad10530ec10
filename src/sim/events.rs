//! Per-session event queues for the CWA event channel: each session owns a
//! bounded log of serialised events, numbered by `eid` (1, 2, ... per
//! session), a `Condvar` that wakes a held event GET when an event is
//! queued or the session ends, and the session's last-activity clock.
//!
//! Acknowledgement is implicit through `AckId` (cwa-sim(1), EVENTS):
//! a GET with `AckId=n` drops every event with `eid <= n` and returns the
//! ones after it; an event stays in the log until acknowledged, so a GET
//! that was lost in transit is simply repeated with the same `AckId` and
//! replays. The log bound is the session's `event_log` setting; a session
//! whose unacknowledged events exceed it is ended (PROPOSED: 18100 on its
//! next request, rather than silently losing events).
//!
//! Lock order: the OCS state lock may be held while pushing to a queue;
//! a waiting GET holds only its own queue's lock (released while it
//! waits), never the OCS lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xmltree::Element;

/// Why a session ended, as reported on its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `terminateSession`.
    Terminated,
    /// No activity for the session timeout.
    Expired,
    /// Dropped through the admin endpoint.
    Dropped,
    /// The simulator was "restarted" through the admin endpoint.
    Restarted,
    /// More unacknowledged events than the event log holds.
    Overflow,
}

impl EndReason {
    /// Short text for logs and error `reason`s.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Terminated => "session terminated",
            EndReason::Expired => "session expired after inactivity",
            EndReason::Dropped => "session dropped by the administrator",
            EndReason::Restarted => "server restarted",
            EndReason::Overflow => "event log overflowed (events not acknowledged)",
        }
    }
}

/// The most bytes of events one event GET returns (the first event always
/// goes, whatever its size): a client that bounds its responses (collabd
/// takes at most 1 MiB) gets a long backlog over several GETs.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

struct QueueState {
    last_eid: u64,
    events: VecDeque<(u64, String)>,
    ended: Option<EndReason>,
    poll_generation: u64,
}

/// What a held event GET returns.
#[derive(Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// Events after the client's AckId (serialised, each with its eid);
    /// `ack_id` is the highest eid among them.
    Events { ack_id: u64, events: Vec<String> },
    /// Nothing new before the hold time passed (or a newer GET took over,
    /// or the client's AckId was ahead); `ack_id` is the server's latest
    /// eid.
    Empty { ack_id: u64 },
    /// The session is over.
    Ended(EndReason),
}

/// The shared, lock-light part of one session: its event queue and its
/// activity clock.
pub struct SessionQueue {
    /// The session id.
    pub sid: u64,
    /// Index of the session's user in the directory.
    pub user: usize,
    state: Mutex<QueueState>,
    cond: Condvar,
    capacity: usize,
    epoch: Instant,
    last_activity_ms: AtomicU64,
    /// Set, under the lock, when `ended` is: lets [`SessionQueue::sweep_verdict`]
    /// skip the lock for the live sessions that are nearly all it sees.
    has_ended: AtomicBool,
}

impl SessionQueue {
    /// A new queue holding at most `capacity` unacknowledged events.
    /// `epoch` is the server's clock origin for activity times.
    pub fn new(sid: u64, user: usize, capacity: usize, epoch: Instant) -> SessionQueue {
        let q = SessionQueue {
            sid,
            user,
            state: Mutex::new(QueueState {
                last_eid: 0,
                events: VecDeque::new(),
                ended: None,
                poll_generation: 0,
            }),
            cond: Condvar::new(),
            capacity: capacity.max(1),
            epoch,
            last_activity_ms: AtomicU64::new(0),
            has_ended: AtomicBool::new(false),
        };
        q.touch();
        q
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue
        // inconsistent (every update is a single push/pop), so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records user activity now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last activity.
    pub fn idle(&self) -> Duration {
        self.idle_at(Instant::now())
    }

    /// Time from the last activity to `now`.
    fn idle_at(&self, now: Instant) -> Duration {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        Duration::from_millis(now_ms.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    /// Queues `event`, giving it the next eid. Returns false (and ends the
    /// session with [`EndReason::Overflow`]) when the log is full, and
    /// false when the session has already ended.
    pub fn push(&self, mut event: Element) -> bool {
        let mut st = self.lock();
        if st.ended.is_some() {
            return false;
        }
        if st.events.len() >= self.capacity {
            st.ended = Some(EndReason::Overflow);
            self.has_ended.store(true, Ordering::Release);
            st.events.clear();
            drop(st);
            self.cond.notify_all();
            return false;
        }
        st.last_eid += 1;
        let eid = st.last_eid;
        event.attributes.insert("eid".into(), eid.to_string());
        st.events.push_back((eid, crate::xml::to_string(&event)));
        drop(st);
        self.cond.notify_all();
        true
    }

    /// Ends the session and wakes any held GET.
    pub fn end(&self, reason: EndReason) {
        let mut st = self.lock();
        if st.ended.is_none() {
            st.ended = Some(reason);
            self.has_ended.store(true, Ordering::Release);
        }
        st.events.clear();
        drop(st);
        self.cond.notify_all();
    }

    /// Why the session ended, if it has.
    pub fn ended(&self) -> Option<EndReason> {
        self.lock().ended
    }

    /// What the sweep does with this session at `now`: why it ended, if it
    /// has; [`EndReason::Expired`] if idle for `timeout` or longer; else
    /// None. Takes the queue's lock only for a session that has ended, and
    /// reads no clock (the sweep reads one per chunk): at 5,000 sessions
    /// the lock and clock per session were most of a sweep's 1-3 ms.
    pub fn sweep_verdict(&self, now: Instant, timeout: Duration) -> Option<EndReason> {
        if self.has_ended.load(Ordering::Acquire) {
            return self.ended();
        }
        (self.idle_at(now) >= timeout).then_some(EndReason::Expired)
    }

    /// (last eid issued, unacknowledged events held).
    pub fn counters(&self) -> (u64, usize) {
        let st = self.lock();
        (st.last_eid, st.events.len())
    }

    /// Serves one event GET: acknowledges everything up to `ack`, then
    /// returns the events after it, waiting up to `hold` for one to arrive.
    /// At most `max_batch` events, and no more than [`MAX_BATCH_BYTES`] of
    /// them (but always one), are returned at once. A newer GET on the
    /// same session releases this one with an empty batch (one outstanding
    /// GET per session). An `ack` ahead of the server is answered at once
    /// with an empty batch carrying the server's latest eid (PROPOSED).
    pub fn poll(&self, ack: u64, hold: Duration, max_batch: usize) -> PollOutcome {
        let deadline = Instant::now() + hold;
        let mut st = self.lock();
        if let Some(reason) = st.ended {
            return PollOutcome::Ended(reason);
        }
        while st.events.front().is_some_and(|(eid, _)| *eid <= ack) {
            st.events.pop_front();
        }
        if ack > st.last_eid {
            return PollOutcome::Empty {
                ack_id: st.last_eid,
            };
        }
        st.poll_generation += 1;
        let generation = st.poll_generation;
        // Release an older GET still held on this session.
        self.cond.notify_all();
        loop {
            if let Some(reason) = st.ended {
                return PollOutcome::Ended(reason);
            }
            if !st.events.is_empty() {
                let mut bytes = 0usize;
                let events: Vec<String> = st
                    .events
                    .iter()
                    .take(max_batch.max(1))
                    .enumerate()
                    .take_while(|(i, (_, x))| {
                        bytes += x.len();
                        *i == 0 || bytes <= MAX_BATCH_BYTES
                    })
                    .map(|(_, (_, x))| x.clone())
                    .collect();
                let ack_id = st.events[events.len() - 1].0;
                return PollOutcome::Events { ack_id, events };
            }
            let now = Instant::now();
            if st.poll_generation != generation || now >= deadline {
                return PollOutcome::Empty {
                    ack_id: st.last_eid,
                };
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Formats a `SystemTime` as `YYYY-MM-DDThh:mm:ssZ` (UTC), as CWA's
/// `publishTime` attributes are written.
pub fn iso_utc(t: std::time::SystemTime) -> String {
    let t = crate::ops::utc::Utc::from_system_time(t);
    format!("{}T{}Z", t.date(), t.time())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::elem;
    use std::sync::Arc;

    #[test]
    fn iso_dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_283_309_290);
        assert_eq!(iso_utc(t), "2010-09-01T02:48:10Z");
        assert_eq!(iso_utc(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(iso_utc(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ack_replay_and_ahead() {
        let q = SessionQueue::new(1, 0, 10, Instant::now());
        for _ in 0..3 {
            assert!(q.push(elem("selfPresence", &[])));
        }
        let PollOutcome::Events { ack_id, events } = q.poll(0, Duration::ZERO, 100) else {
            panic!()
        };
        assert_eq!(ack_id, 3);
        assert_eq!(events.len(), 3);
        assert!(events[0].contains("eid=\"1\""));
        // The same AckId again (the answer was lost): replayed.
        assert!(matches!(
            q.poll(0, Duration::ZERO, 100),
            PollOutcome::Events { ack_id: 3, .. }
        ));
        assert!(matches!(
            q.poll(2, Duration::ZERO, 100),
            PollOutcome::Events { ack_id: 3, .. }
        ));
        assert_eq!(
            q.poll(3, Duration::ZERO, 100),
            PollOutcome::Empty { ack_id: 3 }
        );
        assert_eq!(
            q.poll(99, Duration::from_secs(60), 100),
            PollOutcome::Empty { ack_id: 3 }
        );
        // Batches are bounded.
        for _ in 0..5 {
            q.push(elem("x", &[]));
        }
        assert!(matches!(
            q.poll(3, Duration::ZERO, 2),
            PollOutcome::Events { ack_id: 5, .. }
        ));
    }

    #[test]
    fn overflow_ends_the_session() {
        let q = SessionQueue::new(1, 0, 2, Instant::now());
        assert!(q.push(elem("a", &[])));
        assert!(q.push(elem("a", &[])));
        assert!(!q.push(elem("a", &[])));
        assert_eq!(q.ended(), Some(EndReason::Overflow));
        assert_eq!(
            q.poll(0, Duration::ZERO, 10),
            PollOutcome::Ended(EndReason::Overflow)
        );
    }

    #[test]
    fn the_sweep_verdict_names_an_ended_session_then_an_idle_one() {
        let start = Instant::now();
        let q = SessionQueue::new(1, 0, 1, start);
        let hour = Duration::from_secs(3600);
        assert_eq!(q.sweep_verdict(Instant::now(), hour), None);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            q.sweep_verdict(later, Duration::from_secs(4)),
            Some(EndReason::Expired)
        );
        assert_eq!(q.sweep_verdict(later, Duration::from_secs(6)), None);
        // Overflow and end are seen without the clock, whatever the timeout.
        assert!(q.push(elem("a", &[])));
        assert!(!q.push(elem("a", &[])));
        assert_eq!(
            q.sweep_verdict(Instant::now(), hour),
            Some(EndReason::Overflow)
        );
        let q = SessionQueue::new(2, 0, 10, start);
        q.end(EndReason::Dropped);
        assert_eq!(q.sweep_verdict(start, hour), Some(EndReason::Dropped));
    }

    #[test]
    fn held_poll_is_released_by_an_event_and_by_end() {
        let q = Arc::new(SessionQueue::new(1, 0, 10, Instant::now()));
        let q2 = Arc::clone(&q);
        let t = std::thread::spawn(move || q2.poll(0, Duration::from_secs(60), 10));
        std::thread::sleep(Duration::from_millis(50));
        q.push(elem("a", &[]));
        assert!(matches!(
            t.join().unwrap(),
            PollOutcome::Events { ack_id: 1, .. }
        ));
        let q3 = Arc::clone(&q);
        let t = std::thread::spawn(move || q3.poll(1, Duration::from_secs(60), 10));
        std::thread::sleep(Duration::from_millis(50));
        q.end(EndReason::Dropped);
        assert_eq!(t.join().unwrap(), PollOutcome::Ended(EndReason::Dropped));
    }
}
