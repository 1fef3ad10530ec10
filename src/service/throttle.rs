//! What keeps a flood of handshakes from costing collabd more than the
//! flood is worth (collabd(8), "Sign-in under attack"):
//!
//! - [`DeviceCache`]: the device rows that Hellos looked up, per PIN, for
//!   [`DEVICE_CACHE_TTL`], so that Hellos repeated for one PIN (the PIN
//!   travels in clear) cost no Config DB work; a login re-reads its row
//!   after the key proof, so a cached row never decides a login;
//! - [`LookupBudget`]: at most [`KEY_LOOKUP_CONNECTIONS`] of the Config DB
//!   pool's connections serve Hellos at a time, each waiting at most
//!   [`KEY_LOOKUP_WAIT`] for its turn, so that logins, registry writes and
//!   audit always find a connection;
//! - [`PendingByAddress`]: with `max_unauthenticated_per_address` set,
//!   one source address (other than a configured relay) may hold at most
//!   that many of the places of connections not yet signed in;
//! - [`AuditLimiter`]: failed handshakes and refused logins are audited at
//!   most [`AUDIT_PER_PIN`] times per [`AUDIT_WINDOW`] per PIN, and failed
//!   handshakes (where the PIN is the peer's claim, not yet proved) also
//!   at most [`AUDIT_PER_ADDRESS`] times per window per source address (an
//!   IPv6 address counts by its /64), so that an attack cannot flood the
//!   audit table; what is left out is counted in the next row written for
//!   that address (or PIN). Refused logins come after the key proof, so
//!   their PIN is proved and bounds them alone: the many devices behind
//!   one dispatcher address do not share one budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::configdb::Device;

/// How long a device row looked up for a Hello is reused for Hellos of
/// the same PIN.
pub const DEVICE_CACHE_TTL: Duration = Duration::from_secs(5);

/// Device rows cached at most; past this, expired rows go, then all.
pub const DEVICE_CACHE_MAX: usize = 4096;

/// Config DB connections that Hello key lookups may use at once.
pub const KEY_LOOKUP_CONNECTIONS: usize = 2;

/// How long a Hello waits for a key lookup turn before it is refused 301.
pub const KEY_LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// Audit rows for failed handshakes and refused logins per PIN in each
/// [`AUDIT_WINDOW`].
pub const AUDIT_PER_PIN: u32 = 5;

/// Audit rows for failed handshakes per source address in each
/// [`AUDIT_WINDOW`].
pub const AUDIT_PER_ADDRESS: u32 = 20;

/// The audit rate limit's window.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// Keys the audit limiter remembers at most; past this, finished windows
/// go, then all.
const AUDIT_KEYS_MAX: usize = 16_384;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Device rows by PIN, each for [`DEVICE_CACHE_TTL`].
#[derive(Default)]
pub struct DeviceCache {
    rows: Mutex<HashMap<u32, (Instant, Device)>>,
}

impl DeviceCache {
    /// The row of `pin` if it was stored less than the TTL ago.
    pub fn get(&self, pin: u32, now: Instant) -> Option<Device> {
        let rows = lock(&self.rows);
        rows.get(&pin)
            .filter(|(at, _)| now.saturating_duration_since(*at) < DEVICE_CACHE_TTL)
            .map(|(_, d)| d.clone())
    }

    /// Remember `device` as read at `now`.
    pub fn put(&self, device: Device, now: Instant) {
        let mut rows = lock(&self.rows);
        if rows.len() >= DEVICE_CACHE_MAX {
            rows.retain(|_, (at, _)| now.saturating_duration_since(*at) < DEVICE_CACHE_TTL);
            if rows.len() >= DEVICE_CACHE_MAX {
                rows.clear();
            }
        }
        rows.insert(device.pin, (now, device));
    }

    /// Forget `pin` (its row changed in the Config DB).
    pub fn forget(&self, pin: u32) {
        lock(&self.rows).remove(&pin);
    }

    /// Drop the rows older than the TTL, which no lookup would use, and
    /// give their room back: after a burst of logins they would otherwise
    /// stay until the next burst, holding the freed memory around them in
    /// pieces the allocator cannot return.
    pub fn purge(&self, now: Instant) {
        let mut rows = lock(&self.rows);
        rows.retain(|_, (at, _)| now.saturating_duration_since(*at) < DEVICE_CACHE_TTL);
        rows.shrink_to_fit();
    }

    /// Rows held (fresh or not).
    pub fn rows_held(&self) -> usize {
        lock(&self.rows).len()
    }
}

/// A counting semaphore over the Hellos' share of the Config DB pool.
pub struct LookupBudget {
    in_use: Mutex<usize>,
    freed: Condvar,
    size: usize,
}

/// One key lookup's turn; dropping it frees the turn.
pub struct LookupTurn<'a>(&'a LookupBudget);

impl Drop for LookupTurn<'_> {
    fn drop(&mut self) {
        *lock(&self.0.in_use) -= 1;
        self.0.freed.notify_one();
    }
}

impl LookupBudget {
    /// A budget of `size` concurrent lookups.
    pub fn new(size: usize) -> LookupBudget {
        LookupBudget {
            in_use: Mutex::new(0),
            freed: Condvar::new(),
            size: size.max(1),
        }
    }

    /// A turn, waiting up to `wait`; `None` if none came.
    pub fn turn(&self, wait: Duration) -> Option<LookupTurn<'_>> {
        let deadline = Instant::now() + wait;
        let mut in_use = lock(&self.in_use);
        while *in_use >= self.size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            in_use = self
                .freed
                .wait_timeout(in_use, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *in_use += 1;
        Some(LookupTurn(self))
    }
}

/// Connections not yet signed in, per source address.
#[derive(Default)]
pub struct PendingByAddress {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PendingByAddress`]; dropping it frees it.
pub struct AddressHold<'a> {
    table: &'a PendingByAddress,
    ip: IpAddr,
}

impl Drop for AddressHold<'_> {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl PendingByAddress {
    /// A place for a connection from `ip`, or `None` if it already has
    /// `cap` (no cap: always a place).
    pub fn hold(&self, ip: IpAddr, cap: Option<usize>) -> Option<AddressHold<'_>> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(ip).or_insert(0);
        if cap.is_some_and(|cap| *n >= cap) {
            return None;
        }
        *n += 1;
        Some(AddressHold { table: self, ip })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AuditKey {
    Pin(u32),
    Addr(IpAddr),
}

/// An IPv4 address as is; an IPv6 address by its /64, which one
/// subscriber usually holds whole.
fn address_key(ip: IpAddr) -> AuditKey {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => AuditKey::Addr(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                AuditKey::Addr(IpAddr::V6(std::net::Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
        },
        v4 => AuditKey::Addr(v4),
    }
}

struct Window {
    started: Instant,
    rows: u32,
    suppressed: u64,
}

/// Decides which failures get an audit row (see the module documentation).
#[derive(Default)]
pub struct AuditLimiter {
    windows: Mutex<HashMap<AuditKey, Window>>,
}

/// The limiter's answer for one failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Write the row; this many earlier failures from the same address
    /// were left out.
    Record {
        /// Failures from this address not audited since its last row.
        suppressed: u64,
    },
    /// Over the rate: count it, write nothing.
    Suppress,
}

impl AuditKey {
    fn limit(self) -> u32 {
        match self {
            AuditKey::Pin(_) => AUDIT_PER_PIN,
            AuditKey::Addr(_) => AUDIT_PER_ADDRESS,
        }
    }
}

impl AuditLimiter {
    /// Whether a failure at `now` gets a row: of `pin` (if known), from
    /// `ip` when the source address counts (a failed handshake), `None`
    /// when it does not (a refused login, whose PIN is proved).
    pub fn check(&self, pin: Option<u32>, ip: Option<IpAddr>, now: Instant) -> AuditVerdict {
        let mut windows = lock(&self.windows);
        if windows.len() >= AUDIT_KEYS_MAX {
            windows.retain(|_, w| now.saturating_duration_since(w.started) < AUDIT_WINDOW);
            if windows.len() >= AUDIT_KEYS_MAX {
                windows.clear();
            }
        }
        // The first key carries the count of what was left out.
        let keys: Vec<AuditKey> = ip
            .map(address_key)
            .into_iter()
            .chain(pin.map(AuditKey::Pin))
            .collect();
        let Some(&first) = keys.first() else {
            return AuditVerdict::Record { suppressed: 0 };
        };
        let mut allowed = true;
        for key in &keys {
            let w = windows.entry(*key).or_insert(Window {
                started: now,
                rows: 0,
                suppressed: 0,
            });
            if now.saturating_duration_since(w.started) >= AUDIT_WINDOW {
                w.started = now;
                w.rows = 0;
            }
            allowed &= w.rows < key.limit();
        }
        if !allowed {
            if let Some(w) = windows.get_mut(&first) {
                w.suppressed += 1;
            }
            return AuditVerdict::Suppress;
        }
        for key in &keys {
            if let Some(w) = windows.get_mut(key) {
                w.rows += 1;
            }
        }
        let suppressed = windows
            .get_mut(&first)
            .map_or(0, |w| std::mem::take(&mut w.suppressed));
        AuditVerdict::Record { suppressed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(pin: u32) -> Device {
        Device {
            pin,
            login: "CORP\\a".into(),
            sip_uri: "sip:a@x".into(),
            im_enabled: true,
            transport_key: [1; 32],
        }
    }

    #[test]
    fn cached_rows_expire_and_can_be_forgotten() {
        let cache = DeviceCache::default();
        let t0 = Instant::now();
        cache.put(device(7), t0);
        assert!(cache.get(7, t0 + Duration::from_millis(10)).is_some());
        assert!(cache.get(7, t0 + DEVICE_CACHE_TTL).is_none());
        assert!(cache.get(8, t0).is_none());
        cache.forget(7);
        assert!(cache.get(7, t0).is_none());
        cache.put(device(1), t0);
        cache.put(device(2), t0 + DEVICE_CACHE_TTL);
        cache.purge(t0 + DEVICE_CACHE_TTL);
        assert_eq!(cache.rows_held(), 1, "only the stale row goes");
        assert!(cache.get(2, t0 + DEVICE_CACHE_TTL).is_some());
    }

    #[test]
    fn pending_places_are_capped_per_address_and_freed_on_drop() {
        let pending = PendingByAddress::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = pending.hold(a, Some(2)).unwrap();
        let _second = pending.hold(a, Some(2)).unwrap();
        assert!(pending.hold(a, Some(2)).is_none());
        assert!(pending.hold(b, Some(2)).is_some(), "another address");
        assert!(pending.hold(a, None).is_some(), "no cap (a relay)");
        drop(first);
        assert!(pending.hold(a, Some(2)).is_some());
    }

    #[test]
    fn the_budget_gives_out_its_size_in_turns() {
        let budget = LookupBudget::new(2);
        let a = budget.turn(Duration::ZERO).unwrap();
        let _b = budget.turn(Duration::ZERO).unwrap();
        assert!(budget.turn(Duration::from_millis(5)).is_none());
        drop(a);
        assert!(budget.turn(Duration::ZERO).is_some());
    }

    #[test]
    fn audit_rows_are_limited_per_pin_and_per_address() {
        let limiter = AuditLimiter::default();
        let t0 = Instant::now();
        let record = |v: AuditVerdict| matches!(v, AuditVerdict::Record { .. });
        let a: Option<IpAddr> = Some("127.0.0.2".parse().unwrap());
        let b: Option<IpAddr> = Some("127.0.0.3".parse().unwrap());
        for _ in 0..AUDIT_PER_PIN {
            assert!(record(limiter.check(Some(1), a, t0)));
        }
        // PIN 1 is spent, from any address and for refused logins too.
        assert_eq!(limiter.check(Some(1), b, t0), AuditVerdict::Suppress);
        assert_eq!(limiter.check(Some(1), None, t0), AuditVerdict::Suppress);
        // Address a has room for other PINs up to its own limit.
        for pin in 0..AUDIT_PER_ADDRESS - AUDIT_PER_PIN {
            assert!(record(limiter.check(Some(100 + pin), a, t0)));
        }
        assert_eq!(limiter.check(Some(999), a, t0), AuditVerdict::Suppress);
        // Refused logins of other PINs are not bound by the address.
        assert!(record(limiter.check(Some(998), None, t0)));
        // A new window: the address's left-out failures are counted.
        assert_eq!(
            limiter.check(Some(2), a, t0 + AUDIT_WINDOW),
            AuditVerdict::Record { suppressed: 1 }
        );
        // An IPv6 /64 is one address.
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for i in 0..AUDIT_PER_ADDRESS {
            assert!(record(limiter.check(
                None,
                v6(&format!("2001:db8::{i}")),
                t0
            )));
        }
        assert_eq!(
            limiter.check(None, v6("2001:db8::ffff"), t0),
            AuditVerdict::Suppress
        );
    }
}
