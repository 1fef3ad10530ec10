//! The dispatcher's reads of the Config DB: the instance table with each
//! heartbeat's age (measured by the database's clock, so the clocks of the
//! dispatcher and instance hosts never matter), and, per device connection,
//! whether the PIN is provisioned and which instance holds its live session
//! (one round trip). The dispatcher only reads here; its one write, ending
//! the sessions of an instance whose heartbeat is long gone, is the
//! registry's own (`configdb`), made by the refresher.
//!
//! Connections come from a small bounded pool (the Config DB's
//! [`crate::configdb::pool`], each connection with the lookup statement
//! prepared): a lookup waits for a free slot at most the given deadline, so a slow database turns into a precise
//! 307 ConfigUnavailable for the device, never into a pile of threads.

use std::fmt;
use std::time::{Duration, Instant};

use crate::configdb::pool::{Pool, PoolError, PooledConnection};
use crate::configdb::{classify, Cause, ConfigDb, DbError};

use super::route::InstanceHealth;

/// Concurrent Config DB connections used for per-device lookups.
pub const LOOKUP_POOL: usize = 8;

/// What the Config DB says about a PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRoute {
    /// No `device` row: the PIN is not provisioned.
    Unknown,
    /// Provisioned; `session_holder` is the instance of its active session.
    Known {
        /// The instance holding the PIN's active session, if any.
        session_holder: Option<String>,
    },
}

/// A Config DB read that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryError {
    /// The database is unreachable or failed the query.
    Db(DbError),
    /// The driver failed a lookup (its text, with its error beneath).
    Driver(Cause),
    /// Every pooled connection stayed busy until the deadline.
    PoolBusy,
}

impl fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectoryError::Db(e) => write!(f, "Config DB: {e}"),
            DirectoryError::Driver(why) => write!(f, "Config DB: {why}"),
            DirectoryError::PoolBusy => write!(
                f,
                "Config DB: all {LOOKUP_POOL} lookup connections busy until the deadline"
            ),
        }
    }
}

impl std::error::Error for DirectoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DirectoryError::Db(e) => Some(e),
            DirectoryError::Driver(cause) => cause.driver_error(),
            DirectoryError::PoolBusy => None,
        }
    }
}

impl From<DbError> for DirectoryError {
    fn from(e: DbError) -> DirectoryError {
        DirectoryError::Db(e)
    }
}

impl From<postgres::Error> for DirectoryError {
    fn from(e: postgres::Error) -> DirectoryError {
        // The driver's text names the failing operation, never a password.
        let text = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        };
        DirectoryError::Driver(Cause::from_driver(text, e))
    }
}

const INSTANCES_SQL: &str = "\
SELECT name, listen_addr, sessions_in_use::bigint, session_limit::bigint, healthy,
       (extract(epoch from (now() - heartbeat_at)) * 1000)::bigint
  FROM instance
 ORDER BY name";

const DEVICE_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM device WHERE pin = $1),
       (SELECT instance FROM session
         WHERE pin = $1 AND state = 'active'
         ORDER BY started_at DESC, id DESC LIMIT 1)";

/// Reads the instance table (for the refresher thread, which keeps its own
/// connection).
pub fn read_instances(db: &mut ConfigDb) -> Result<Vec<InstanceHealth>, DirectoryError> {
    let rows = db.client().query(INSTANCES_SQL, &[])?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let limit: Option<i64> = row.try_get(3)?;
        let age_ms: Option<i64> = row.try_get(5)?;
        out.push(InstanceHealth {
            name: row.try_get(0)?,
            listen_addr: row.try_get(1)?,
            sessions_in_use: row.try_get(2)?,
            // No limit written: rank by load alone.
            session_limit: limit.unwrap_or(i64::MAX),
            healthy: row.try_get(4)?,
            // A heartbeat "from the future" (clock step on the DB host) is
            // fresh, not negative.
            heartbeat_age: age_ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        });
    }
    Ok(out)
}

/// The PIN lookups, over a bounded pool of connections
/// ([`crate::configdb::pool`]).
pub struct Directory {
    url: String,
    pool: Pool<Pooled>,
}

/// A lookup connection with its statement prepared once, so each device
/// costs one round trip.
struct Pooled {
    db: ConfigDb,
    device_query: postgres::Statement,
}

impl PooledConnection for Pooled {
    fn is_broken(&self) -> bool {
        self.db.is_broken()
    }
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

impl Directory {
    /// A directory over the Config DB at `url` (connections open lazily).
    pub fn new(url: String) -> Directory {
        let pool_url = url.clone();
        Directory {
            url,
            pool: Pool::new(LOOKUP_POOL, move || {
                let mut db = ConfigDb::connect(&pool_url)?;
                let device_query = db
                    .client()
                    .prepare(DEVICE_SQL)
                    .map_err(|e| classify(e, "preparing the device lookup"))?;
                Ok(Pooled { db, device_query })
            })
            .close_idle_after(
                crate::configdb::pool::IDLE_CLOSE,
                crate::ops::memory::note_freed,
            ),
        }
    }

    /// Opens a connection of its own (the refresher's).
    pub fn connect(&self) -> Result<ConfigDb, DirectoryError> {
        Ok(ConfigDb::connect(&self.url)?)
    }

    /// Whether `pin` is provisioned and where its live session is. Waits
    /// for a pooled connection until `deadline` at most.
    pub fn lookup(&self, pin: u32, deadline: Instant) -> Result<DeviceRoute, DirectoryError> {
        self.pool
            .with(deadline, |conn| query_device(conn, pin))
            .map_err(|e| match e {
                PoolError::Busy { .. } => DirectoryError::PoolBusy,
                PoolError::Db(e) => DirectoryError::from(e),
            })
    }
}

fn query_device(conn: &mut Pooled, pin: u32) -> Result<DeviceRoute, DbError> {
    let failed = |e| classify(e, "looking up the device");
    let row = conn
        .db
        .client()
        .query_one(&conn.device_query, &[&i64::from(pin)])
        .map_err(failed)?;
    let known: bool = row.try_get(0).map_err(failed)?;
    if !known {
        return Ok(DeviceRoute::Unknown);
    }
    Ok(DeviceRoute::Known {
        session_holder: row.try_get(1).map_err(failed)?,
    })
}
