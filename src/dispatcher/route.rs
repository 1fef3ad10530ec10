//! Choosing instances: the cached view of instance health (re-read from the
//! Config DB every `--refresh-ms` by one thread, read lock-free-ish by every
//! connection), the count of relays this dispatcher has open to each
//! instance, and the order in which a connection tries instances.
//!
//! Order: the instance that holds the PIN's live session first (if its
//! heartbeat is fresh and it is healthy), then the instances with room by
//! most free slots, then the full ones (collabd's own admission may still
//! sign out an idle session and admit, or answer Server Busy precisely).
//! Stale, unhealthy and address-less rows are never tried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// One instance row as the dispatcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    /// Instance name (primary key of `instance`).
    pub name: String,
    /// Where collabd accepts dispatcher connections (`HOST:PORT`); `None`
    /// until the instance has written a heartbeat.
    pub listen_addr: Option<String>,
    /// Sessions in use at the last heartbeat.
    pub sessions_in_use: i64,
    /// The instance's session limit at the last heartbeat.
    pub session_limit: i64,
    /// The instance's own verdict on its health.
    pub healthy: bool,
    /// Age of the heartbeat when it was read, measured by the database's
    /// clock (so clocks of dispatcher and instance hosts never matter);
    /// `None` if there was never a heartbeat.
    pub heartbeat_age: Option<Duration>,
}

/// An instance a connection may be relayed to, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Instance name.
    pub name: String,
    /// Its address.
    pub addr: String,
}

/// The last instance table read, with when it was read.
struct Snapshot {
    rows: Vec<InstanceHealth>,
    read_at: Instant,
}

/// Shared routing state: the cached instance table and the per-instance
/// count of open relays.
pub struct Router {
    snapshot: RwLock<Option<Snapshot>>,
    open: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    stale_after: Duration,
    // Ties are broken by rotation so that equal instances share new devices
    // even between two heartbeats.
    rotation: AtomicUsize,
}

/// Counts one open relay to an instance while it lives.
pub struct OpenRelay {
    count: Arc<AtomicUsize>,
}

impl Drop for OpenRelay {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Router {
    /// A router with no instance table yet (every route is empty until the
    /// first [`Router::replace`]).
    pub fn new(stale_after: Duration) -> Router {
        Router {
            snapshot: RwLock::new(None),
            open: Mutex::new(HashMap::new()),
            stale_after,
            rotation: AtomicUsize::new(0),
        }
    }

    /// Installs a freshly read instance table.
    pub fn replace(&self, rows: Vec<InstanceHealth>) {
        let snapshot = Snapshot {
            rows,
            read_at: Instant::now(),
        };
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
    }

    /// Whether a table was ever read.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Names of the instances that are routable right now.
    pub fn live_names(&self) -> Vec<String> {
        self.live_rows().into_iter().map(|r| r.name).collect()
    }

    /// Registers one open relay to `instance`; dropping the guard ends it.
    pub fn open_relay(&self, instance: &str) -> OpenRelay {
        let count = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            open.entry(instance.to_string())
                .or_insert_with(|| Arc::new(AtomicUsize::new(0)))
                .clone()
        };
        count.fetch_add(1, Ordering::Relaxed);
        OpenRelay { count }
    }

    fn open_count(&self, instance: &str) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn live_rows(&self) -> Vec<InstanceHealth> {
        let guard = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        let Some(snapshot) = guard.as_ref() else {
            return Vec::new();
        };
        let since_read = snapshot.read_at.elapsed();
        snapshot
            .rows
            .iter()
            .filter(|row| is_live(row, since_read, self.stale_after))
            .cloned()
            .collect()
    }

    /// The instances to try for a device, in order (see the module doc).
    /// `session_holder` is the instance that holds the PIN's live session.
    pub fn targets(&self, session_holder: Option<&str>) -> Vec<Target> {
        let live = self.live_rows();
        let open: Vec<usize> = live.iter().map(|r| self.open_count(&r.name)).collect();
        let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
        order_targets(&live, &open, session_holder, rotation)
    }
}

/// Fresh heartbeat, healthy, with an address.
fn is_live(row: &InstanceHealth, since_read: Duration, stale_after: Duration) -> bool {
    let fresh = row
        .heartbeat_age
        .is_some_and(|age| age.saturating_add(since_read) <= stale_after);
    fresh && row.healthy && row.listen_addr.as_deref().is_some_and(|a| !a.is_empty())
}

/// Orders live instances: the session holder, then by free slots (most
/// first), full instances last. `open[i]` is this dispatcher's open relays
/// to `live[i]`: a burst of devices between two heartbeats must not all
/// land on the instance that looked emptiest, so the load estimate is the
/// larger of the heartbeat's count and our own.
fn order_targets(
    live: &[InstanceHealth],
    open: &[usize],
    session_holder: Option<&str>,
    rotation: usize,
) -> Vec<Target> {
    let n = live.len();
    let mut scored: Vec<(usize, i64, usize)> = (0..n)
        .map(|i| {
            let row = &live[i];
            let in_use = row.sessions_in_use.max(open[i] as i64);
            let free = row.session_limit.saturating_sub(in_use);
            // Rank by rotation distance so equal candidates take turns.
            let turn = (i + n - rotation % n.max(1)) % n.max(1);
            (i, free, turn)
        })
        .collect();
    scored.sort_by(|a, b| {
        let room_a = a.1 > 0;
        let room_b = b.1 > 0;
        room_b.cmp(&room_a).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2))
    });
    let mut order: Vec<Target> = Vec::with_capacity(n);
    if let Some(holder) = session_holder {
        if let Some(row) = live.iter().find(|r| r.name == holder) {
            order.push(target(row));
        }
    }
    for (i, _, _) in scored {
        if Some(live[i].name.as_str()) != session_holder {
            order.push(target(&live[i]));
        }
    }
    order
}

fn target(row: &InstanceHealth) -> Target {
    Target {
        name: row.name.clone(),
        addr: row.listen_addr.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, in_use: i64, limit: i64) -> InstanceHealth {
        InstanceHealth {
            name: name.into(),
            listen_addr: Some(format!("{name}:3200")),
            sessions_in_use: in_use,
            session_limit: limit,
            healthy: true,
            heartbeat_age: Some(Duration::from_millis(10)),
        }
    }

    fn names(targets: &[Target]) -> Vec<&str> {
        targets.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn most_free_slots_first_and_full_last() {
        let live = [row("a", 9, 10), row("b", 2, 10), row("c", 10, 10)];
        let order = order_targets(&live, &[0, 0, 0], None, 0);
        assert_eq!(names(&order), ["b", "a", "c"]);
    }

    #[test]
    fn session_holder_goes_first_even_when_fuller() {
        let live = [row("a", 9, 10), row("b", 2, 10)];
        let order = order_targets(&live, &[0, 0], Some("a"), 0);
        assert_eq!(names(&order), ["a", "b"]);
        // A holder that is not live is not invented.
        let order = order_targets(&live, &[0, 0], Some("gone"), 0);
        assert_eq!(names(&order), ["b", "a"]);
    }

    #[test]
    fn ties_rotate_and_open_relays_count_as_load() {
        let live = [row("a", 0, 10), row("b", 0, 10)];
        let first = order_targets(&live, &[0, 0], None, 0);
        let second = order_targets(&live, &[0, 0], None, 1);
        assert_ne!(first[0].name, second[0].name);
        // Our own three relays to "a" outweigh its stale heartbeat count.
        let order = order_targets(&live, &[3, 0], None, 0);
        assert_eq!(names(&order), ["b", "a"]);
    }

    #[test]
    fn stale_unhealthy_and_addressless_rows_are_skipped() {
        let router = Router::new(Duration::from_millis(1000));
        let mut stale = row("stale", 0, 10);
        stale.heartbeat_age = Some(Duration::from_millis(5000));
        let mut never = row("never", 0, 10);
        never.heartbeat_age = None;
        let mut sick = row("sick", 0, 10);
        sick.healthy = false;
        let mut nowhere = row("nowhere", 0, 10);
        nowhere.listen_addr = None;
        router.replace(vec![stale, never, sick, nowhere, row("ok", 0, 10)]);
        assert_eq!(router.live_names(), ["ok"]);
        assert_eq!(names(&router.targets(Some("stale"))), ["ok"]);
    }

    #[test]
    fn open_relay_guard_counts_down() {
        let router = Router::new(Duration::from_secs(10));
        let a = router.open_relay("a");
        let b = router.open_relay("a");
        assert_eq!(router.open_count("a"), 2);
        drop(a);
        assert_eq!(router.open_count("a"), 1);
        drop(b);
        assert_eq!(router.open_count("a"), 0);
    }
}
