//! The dispatcher's admission limits and the rate limit on its refusal log
//! lines: [`Permits`] (open connections against `--max-connections`),
//! [`PendingByAddress`] (connections per source address that have not yet
//! proved progress, against `--max-pending-per-address`) and
//! [`LogLimiter`] (at most a few refusal lines a second, so that a flood
//! does not become a flood in the journal).
//!
//! A connection is *pending* from its accept until the device's second
//! frame (its handshake Confirm) has been relayed to collabd. Only a device
//! that holds its transport key can go further, so pending connections are
//! what an attacker without keys can hold; capping them per address keeps
//! a few addresses from filling collabd's `max_unauthenticated` slots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counts open device connections against `--max-connections`.
pub(crate) struct Permits {
    open: AtomicUsize,
    max: usize,
}

/// One open connection's place under the cap; released on drop.
pub(crate) struct Permit(Arc<Permits>);

impl Permits {
    pub(crate) fn new(max: usize) -> Arc<Permits> {
        Arc::new(Permits {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut current = self.open.load(Ordering::Relaxed);
        loop {
            if current >= self.max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => current = now,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Pending connections per source address.
pub(crate) struct PendingByAddress {
    counts: Mutex<HashMap<IpAddr, u32>>,
    cap: u32,
}

/// One pending connection's place; given back by [`PendingSlot::release`]
/// once the handshake went through, or on drop.
pub(crate) struct PendingSlot {
    owner: Arc<PendingByAddress>,
    addr: IpAddr,
}

impl PendingByAddress {
    pub(crate) fn new(cap: u32) -> Arc<PendingByAddress> {
        Arc::new(PendingByAddress {
            counts: Mutex::new(HashMap::new()),
            cap,
        })
    }

    /// The cap per address.
    pub(crate) fn cap(&self) -> u32 {
        self.cap
    }

    /// A slot for `addr`, or `None` when the address already has `cap`
    /// pending connections. IPv4-mapped IPv6 addresses count as IPv4, and
    /// an IPv6 address counts as its /64 (one subscriber's network, in
    /// which an attacker can choose any address).
    pub(crate) fn try_acquire(self: &Arc<Self>, addr: IpAddr) -> Option<PendingSlot> {
        let addr = source_key(addr);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(addr).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            owner: self.clone(),
            addr,
        })
    }

    /// Pending connections from `addr` now.
    #[cfg(test)]
    fn pending(&self, addr: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&source_key(addr)).copied().unwrap_or(0)
    }
}

/// What the per-address cap counts `addr` as: IPv4 itself (mapped IPv6
/// included), IPv6 its /64 prefix.
fn source_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl PendingSlot {
    /// The connection proved progress: it no longer counts as pending.
    pub(crate) fn release(self) {
        drop(self);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.addr) {
            *count -= 1;
            // Forget the address, so the map holds only addresses with a
            // pending connection.
            if *count == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

/// Lets through at most `per_second` lines in each wall-clock second and
/// counts the rest, reporting the count with the next line let through.
pub(crate) struct LogLimiter {
    per_second: u32,
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    second: u64,
    this_second: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) const fn new(per_second: u32) -> LogLimiter {
        LogLimiter {
            per_second,
            state: Mutex::new(LimiterState {
                second: 0,
                this_second: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now; when it may, also how many lines
    /// were held back since the last one written.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.second != second {
            s.second = second;
            s.this_second = 0;
        }
        if s.this_second >= self.per_second {
            s.suppressed += 1;
            return None;
        }
        s.this_second += 1;
        Some(std::mem::take(&mut s.suppressed))
    }
}

/// The limiter for the dispatcher's info lines about refused, timed-out
/// and failed connections.
pub(crate) static REFUSAL_LOG: LogLimiter = LogLimiter::new(20);

/// Logs at info through [`REFUSAL_LOG`], appending how many such lines were
/// held back before this one.
macro_rules! refusal_info {
    ($($arg:tt)*) => {
        if let Some(held) = $crate::dispatcher::limits::REFUSAL_LOG.admit() {
            if held > 0 {
                log::info!("{} ({held} similar lines not logged)", format_args!($($arg)*));
            } else {
                log::info!($($arg)*);
            }
        }
    };
}
pub(crate) use refusal_info;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_slots_are_capped_per_address_and_given_back() {
        let pending = PendingByAddress::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let first = pending.try_acquire(a).unwrap();
        let _second = pending.try_acquire(mapped).unwrap();
        assert!(pending.try_acquire(a).is_none(), "the cap holds");
        let _other = pending
            .try_acquire(b)
            .expect("another address is not affected");
        first.release();
        assert_eq!(pending.pending(a), 1);
        assert!(pending.try_acquire(a).is_some());

        // IPv6 addresses of one /64 share a cap; another /64 has its own.
        let one: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let same_net: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        let other_net: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        let _x = pending.try_acquire(one).unwrap();
        let _y = pending.try_acquire(same_net).unwrap();
        assert!(pending.try_acquire(same_net).is_none());
        assert!(pending.try_acquire(other_net).is_some());
    }

    #[test]
    fn permits_count_open_connections() {
        let permits = Permits::new(1);
        let p = permits.try_acquire().unwrap();
        assert!(permits.try_acquire().is_none());
        assert_eq!(permits.open(), 1);
        drop(p);
        assert_eq!(permits.open(), 0);
    }

    #[test]
    fn log_limiter_holds_back_lines_and_counts_them() {
        let limiter = LogLimiter::new(2);
        assert_eq!(limiter.admit_at(10), Some(0));
        assert_eq!(limiter.admit_at(10), Some(0));
        assert_eq!(limiter.admit_at(10), None);
        assert_eq!(limiter.admit_at(10), None);
        assert_eq!(limiter.admit_at(11), Some(2));
        assert_eq!(limiter.admit_at(11), Some(0));
    }
}
