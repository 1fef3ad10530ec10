/*!
A small bounded pool of Config DB connections, shared by the threads of a
daemon (collabd's logins and session registry writes, the dispatcher's PIN
lookups).

A `postgres::Client` is heavy (each runs its own small runtime), so a
daemon never opens one per request: it borrows one from here. The pool
holds at most `size` connections, opened lazily; a borrower waits for a
free one at most until its deadline and then gets [`PoolError::Busy`], so
a slow database turns into a precise "Config DB unavailable" answer instead
of a pile of waiting threads. Connections beyond one that have sat idle
for the pool's idle limit ([`Pool::close_idle_after`]) are closed as the
pool is next used, so the connections a burst opened (each with its
runtime and buffers) do not stay for the process's life. A connection
that failed in a way that may have broken it (the server unreachable, a
failed query) or that the driver reports closed is dropped rather than
handed to the next borrower; the next borrower then opens a fresh one,
which is how the pool reconnects after the database comes back.

The pool is generic over the connection type, so a user can keep prepared
statements with each connection (the dispatcher does); [`ConfigDb`] itself
is a [`PooledConnection`].
*/

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{ConfigDb, DbError};

/// How long a connection beyond the newest may sit idle before the daemons'
/// pools close it: a burst of logins opens the whole pool, which the quiet
/// hours after it do not need (reopening one costs a few milliseconds).
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// A connection the pool can hold.
pub trait PooledConnection: Send {
    /// Whether the connection is known to be unusable (closed by the
    /// server or after an I/O error).
    fn is_broken(&self) -> bool;
}

impl PooledConnection for ConfigDb {
    fn is_broken(&self) -> bool {
        self.client.is_closed()
    }
}

/// Why a pooled operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Opening a connection, or the operation itself, failed.
    Db(DbError),
    /// Every connection stayed busy until the deadline.
    Busy {
        /// The pool's size.
        size: usize,
    },
}

impl PoolError {
    /// Whether this means the database cannot be used right now (as
    /// opposed to an answer such as "not found").
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PoolError::Busy { .. } | PoolError::Db(DbError::Unreachable(_) | DbError::Query(_))
        )
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Db(e) => write!(f, "{e}"),
            PoolError::Busy { size } => write!(
                f,
                "Config DB: all {size} pooled connections busy until the deadline"
            ),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Db(e) => Some(e),
            PoolError::Busy { .. } => None,
        }
    }
}

impl From<DbError> for PoolError {
    fn from(e: DbError) -> PoolError {
        PoolError::Db(e)
    }
}

type Connector<C> = Box<dyn Fn() -> Result<C, DbError> + Send + Sync>;

struct Slots<C> {
    /// Idle connections with the time each came back, oldest first (a
    /// borrower takes the newest, so the oldest age out).
    idle: Vec<(C, Instant)>,
    in_use: usize,
}

impl<C> Slots<C> {
    /// Takes out the idle connections past `limit`, always leaving the
    /// newest one.
    fn expired(&mut self, limit: Option<Duration>, now: Instant) -> Vec<C> {
        let Some(limit) = limit else {
            return Vec::new();
        };
        let old = self
            .idle
            .iter()
            .take(self.idle.len().saturating_sub(1))
            .take_while(|(_, since)| now.saturating_duration_since(*since) >= limit)
            .count();
        self.idle.drain(..old).map(|(conn, _)| conn).collect()
    }
}

/// A bounded pool of connections of type `C`.
pub struct Pool<C> {
    connect: Connector<C>,
    size: usize,
    idle_limit: Option<Duration>,
    /// Called after idle connections were closed.
    after_idle_closed: fn(),
    slots: Mutex<Slots<C>>,
    freed: Condvar,
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<C: PooledConnection> Pool<C> {
    /// A pool of at most `size` (at least 1) connections made by `connect`
    /// (called outside the pool's lock, when a borrower finds no idle
    /// connection and the pool is not full).
    pub fn new(
        size: usize,
        connect: impl Fn() -> Result<C, DbError> + Send + Sync + 'static,
    ) -> Pool<C> {
        Pool {
            connect: Box::new(connect),
            size: size.max(1),
            idle_limit: None,
            after_idle_closed: || {},
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                in_use: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Closes idle connections beyond the newest once they have been idle
    /// for `limit` (checked whenever the pool is used; without this, idle
    /// connections stay open), then calls `closed` (a daemon returns the
    /// freed memory to the system).
    pub fn close_idle_after(mut self, limit: Duration, closed: fn()) -> Pool<C> {
        self.idle_limit = Some(limit);
        self.after_idle_closed = closed;
        self
    }

    /// The most connections the pool opens.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Connections open and idle right now.
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    fn lock(&self) -> MutexGuard<'_, Slots<C>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a pooled connection, waiting for one at most until
    /// `deadline`. The connection goes back to the pool unless `f` failed
    /// with [`DbError::Unreachable`] or [`DbError::Query`], or the driver
    /// reports it closed.
    pub fn with<T>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&mut C) -> Result<T, DbError>,
    ) -> Result<T, PoolError> {
        let reserved = self.take(deadline)?;
        // From here the place is the guard's: an early return or a panic
        // in the connector or in `f` frees it (the connection, possibly
        // half-used, is dropped).
        let place = Place { pool: self };
        let mut conn = match reserved {
            Some(conn) => conn,
            None => (self.connect)().map_err(PoolError::Db)?,
        };
        let result = f(&mut conn);
        let keep = !conn.is_broken()
            && !matches!(result, Err(DbError::Unreachable(_) | DbError::Query(_)));
        place.release(keep.then_some(conn));
        result.map_err(PoolError::Db)
    }

    /// Reserves a place: an idle connection (`Some`), or the right to open
    /// one (`None`).
    fn take(&self, deadline: Instant) -> Result<Option<C>, PoolError> {
        let mut slots = self.lock();
        let expired = slots.expired(self.idle_limit, Instant::now());
        if !expired.is_empty() {
            drop(slots);
            self.close(expired);
            slots = self.lock();
        }
        loop {
            while let Some((conn, _)) = slots.idle.pop() {
                if !conn.is_broken() {
                    slots.in_use += 1;
                    return Ok(Some(conn));
                }
            }
            if slots.in_use < self.size {
                slots.in_use += 1;
                return Ok(None);
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or(PoolError::Busy { size: self.size })?;
            slots = self
                .freed
                .wait_timeout(slots, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn give_back(&self, conn: Option<C>) {
        let now = Instant::now();
        let mut slots = self.lock();
        slots.in_use -= 1;
        if let Some(conn) = conn {
            slots.idle.push((conn, now));
        }
        let expired = slots.expired(self.idle_limit, now);
        drop(slots);
        self.freed.notify_one();
        self.close(expired);
    }

    /// Closes connections, outside the pool's lock (a driver may say
    /// goodbye to its server).
    fn close(&self, expired: Vec<C>) {
        if !expired.is_empty() {
            drop(expired);
            (self.after_idle_closed)();
        }
    }
}

/// A reserved place in the pool, freed when dropped (also while unwinding)
/// unless [`Place::release`] handed a connection back first.
struct Place<'a, C: PooledConnection> {
    pool: &'a Pool<C>,
}

impl<C: PooledConnection> Place<'_, C> {
    fn release(self, conn: Option<C>) {
        let pool = self.pool;
        std::mem::forget(self);
        pool.give_back(conn);
    }
}

impl<C: PooledConnection> Drop for Place<'_, C> {
    fn drop(&mut self) {
        self.pool.give_back(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    struct Fake {
        broken: Arc<AtomicBool>,
    }

    impl PooledConnection for Fake {
        fn is_broken(&self) -> bool {
            self.broken.load(Ordering::SeqCst)
        }
    }

    fn pool(size: usize, opened: Arc<AtomicUsize>, broken: Arc<AtomicBool>) -> Pool<Fake> {
        Pool::new(size, move || {
            opened.fetch_add(1, Ordering::SeqCst);
            Ok(Fake {
                broken: Arc::clone(&broken),
            })
        })
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn a_burst_s_connections_close_once_idle_but_one_stays() {
        let opened = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(
            pool(4, Arc::clone(&opened), Arc::new(AtomicBool::new(false)))
                .close_idle_after(Duration::from_millis(250), || {}),
        );
        // Four borrowers at once: four connections.
        let together = Arc::new(std::sync::Barrier::new(4));
        let burst: Vec<_> = (0..4)
            .map(|_| {
                let (pool, together) = (Arc::clone(&pool), Arc::clone(&together));
                std::thread::spawn(move || {
                    pool.with(soon(), |_| {
                        together.wait();
                        Ok(())
                    })
                    .unwrap()
                })
            })
            .collect();
        for b in burst {
            b.join().unwrap();
        }
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        assert_eq!(pool.idle(), 4, "used within the limit, all stay");
        std::thread::sleep(Duration::from_millis(350));
        pool.with(soon(), |_| Ok(())).unwrap();
        assert_eq!(pool.idle(), 1, "the idle ones closed, the newest kept");
        std::thread::sleep(Duration::from_millis(350));
        pool.with(soon(), |_| Ok(())).unwrap();
        assert_eq!(pool.idle(), 1, "the last one is never closed for idling");
        assert_eq!(opened.load(Ordering::SeqCst), 4, "nothing reopened");
    }

    #[test]
    fn reuses_a_connection_and_reconnects_after_a_failure() {
        let opened = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let pool = pool(2, Arc::clone(&opened), Arc::clone(&broken));
        assert_eq!(pool.with(soon(), |_| Ok(1)).unwrap(), 1);
        assert_eq!(pool.with(soon(), |_| Ok(2)).unwrap(), 2);
        assert_eq!(opened.load(Ordering::SeqCst), 1, "reused");
        // A "not found" answer keeps the connection.
        let e = pool
            .with(soon(), |_| -> Result<(), DbError> {
                Err(DbError::not_found("x"))
            })
            .unwrap_err();
        assert!(!e.is_unavailable());
        assert_eq!(pool.idle(), 1);
        // An unreachable server drops it; the next borrower reconnects.
        let e = pool
            .with(soon(), |_| -> Result<(), DbError> {
                Err(DbError::Unreachable("gone".into()))
            })
            .unwrap_err();
        assert!(e.is_unavailable());
        assert_eq!(pool.idle(), 0);
        pool.with(soon(), |_| Ok(())).unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        // A connection the driver reports closed is never handed out.
        broken.store(true, Ordering::SeqCst);
        pool.with(soon(), |_| Ok(())).unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_full_pool_answers_busy_at_the_deadline() {
        let opened = Arc::new(AtomicUsize::new(0));
        let pool = Arc::new(pool(1, opened, Arc::new(AtomicBool::new(false))));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let p = Arc::clone(&pool);
        let holder = std::thread::spawn(move || {
            p.with(soon(), |_| {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
            .unwrap();
        });
        held_rx.recv().unwrap();
        let busy = pool.with(Instant::now() + Duration::from_millis(20), |_| Ok(()));
        assert_eq!(busy.unwrap_err(), PoolError::Busy { size: 1 });
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(pool.with(soon(), |_| Ok(())).is_ok());
    }

    #[test]
    fn a_panicking_borrower_frees_its_place() {
        let opened = Arc::new(AtomicUsize::new(0));
        let pool = pool(8, Arc::clone(&opened), Arc::new(AtomicBool::new(false)));
        for _ in 0..12 {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.with(soon(), |_| -> Result<(), DbError> {
                    panic!("borrower bug")
                })
            }));
            assert!(panicked.is_err());
        }
        // Every place is free again: a normal borrower is served at once,
        // not told the pool is busy.
        let now = Instant::now();
        assert_eq!(pool.with(now, |_| Ok(7)).unwrap(), 7);
        // A panicking connector frees its place too.
        let bad: Pool<Fake> = Pool::new(1, || panic!("connector bug"));
        for _ in 0..3 {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                bad.with(Instant::now(), |_| Ok(()))
            }));
            assert!(panicked.is_err(), "panicked, not Busy");
        }
    }

    #[test]
    fn a_failed_connect_frees_its_place() {
        let pool: Pool<Fake> = Pool::new(1, || Err(DbError::Unreachable("refused".into())));
        for _ in 0..3 {
            let e = pool.with(soon(), |_| Ok(())).unwrap_err();
            assert!(matches!(e, PoolError::Db(DbError::Unreachable(_))));
        }
    }
}
