//! What every connection and session thread of one collabd instance
//! shares: the instance's name and current settings from its Config DB
//! row, the session table, the pool of Config DB connections, the live
//! sessions by id (for a device re-attaching), the stopping flag, and the
//! daemon's timeouts, and the pool of finisher threads. Also the two Config DB writes every part makes:
//! audit events and session registry updates, which are best effort (a
//! running session carries on when PostgreSQL is down; the failure is
//! logged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::configdb::pool::{Pool, PoolError};
use crate::configdb::{AuditEvent, ConfigDb, DbError, Instance};
use crate::cwa::ClientConfig;

use super::finishers::Finishers;
use super::session::Session;
use super::table::{Limits, SessionId, SessionTable};

/// Config DB connections a collabd instance keeps for logins, registry
/// writes, audit and the heartbeat.
pub const DB_POOL_SIZE: usize = 8;

/// Most threads ending sessions at once (CWA sign-out, the device's last
/// message, registry and audit): enough to end 5,000 sessions within a
/// few seconds with CWA and the Config DB answering in milliseconds, few
/// enough that a mass end adds little to the task count.
pub const FINISHER_THREADS: usize = 32;

/// How long a registry or audit write may wait for a pooled connection.
pub const DB_WRITE_WAIT: Duration = Duration::from_secs(5);

/// TCP connect plus TLS handshake to CWA.
pub const CWA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of the instance row that sessions use (besides the limits,
/// which live in the table).
#[derive(Clone, Debug)]
pub struct CwaSettings {
    /// How to reach and sign in to CWA (URL, auth mode, extra CA).
    pub client: ClientConfig,
    /// Keep the password in memory to sign in again when CWA loses a
    /// session.
    pub password_caching: bool,
}

impl CwaSettings {
    /// From the instance row, with the daemon's extra CA file for CWA.
    pub fn from_instance(instance: &Instance, ca_file: Option<&std::path::Path>) -> CwaSettings {
        let mut client = ClientConfig::new(&instance.cwa_url);
        client.auth_mode = instance.auth_mode;
        client.ca_file = ca_file.map(std::path::Path::to_path_buf);
        // A sign-in must fit in the device's sign-in deadline (default
        // 10 s), so that an unreachable CWA is answered 306, not dropped.
        client.connect_timeout = CWA_CONNECT_TIMEOUT;
        CwaSettings {
            client,
            password_caching: instance.password_caching,
        }
    }
}

/// The table limits of an instance row.
pub fn limits_of(instance: &Instance) -> Limits {
    Limits::from_millis(
        instance.max_sessions,
        instance.idle_timeout_ms,
        instance.inactivity_timeout_ms,
        instance.http_max_connections,
    )
}

/// The daemon's timeouts and sizes that sessions need.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A signed-in device that sends nothing for this long is taken as
    /// disconnected.
    pub status_timeout: Duration,
    /// Bound on a login's Config DB reads.
    pub login_db_wait: Duration,
    /// Stack size of session and helper threads.
    pub thread_stack_size: usize,
}

/// Shared state of one collabd instance.
pub struct ServiceContext {
    /// This instance's name (its Config DB row).
    pub instance: String,
    /// The session table.
    pub table: SessionTable,
    /// Config DB connections.
    pub db: Pool<ConfigDb>,
    /// Timeouts and sizes.
    pub timeouts: Timeouts,
    /// The threads that end sessions.
    pub finishers: Finishers,
    cwa: RwLock<CwaSettings>,
    stopping: AtomicBool,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    sessions_changed: Condvar,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("instance", &self.instance)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl ServiceContext {
    /// A context for `instance` with its settings.
    pub fn new(
        instance: String,
        table: SessionTable,
        db: Pool<ConfigDb>,
        cwa: CwaSettings,
        timeouts: Timeouts,
    ) -> ServiceContext {
        ServiceContext {
            instance,
            table,
            db,
            finishers: Finishers::new(FINISHER_THREADS, timeouts.thread_stack_size),
            timeouts,
            cwa: RwLock::new(cwa),
            stopping: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            sessions_changed: Condvar::new(),
        }
    }

    /// The CWA settings in force.
    pub fn cwa(&self) -> CwaSettings {
        self.cwa.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply a re-read instance row: limits to the table (from the next
    /// admission), CWA settings to the next sign-in.
    pub fn apply_instance(&self, instance: &Instance, ca_file: Option<&std::path::Path>) {
        self.table.set_limits(limits_of(instance));
        *self.cwa.write().unwrap_or_else(|p| p.into_inner()) =
            CwaSettings::from_instance(instance, ca_file);
    }

    /// Whether shutdown has started (new logins get 311).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Start refusing logins with 311.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a live session (until [`ServiceContext::forget_session`]).
    pub fn remember_session(&self, session: Arc<Session>) {
        self.sessions().insert(session.id(), session);
    }

    /// A session has finished (signed out, device told, registry written).
    pub fn forget_session(&self, id: SessionId) {
        self.sessions().remove(&id);
        self.sessions_changed.notify_all();
        self.finishers.note_freed();
    }

    /// A live session by id, for a device re-attaching.
    pub fn session(&self, id: SessionId) -> Option<Arc<Session>> {
        self.sessions().get(&id).cloned()
    }

    /// Sessions not yet finished.
    pub fn live_sessions(&self) -> usize {
        self.sessions().len()
    }

    /// Wait up to `limit` for every session to finish; returns how many
    /// are left.
    pub fn wait_sessions_finished(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut sessions = self.sessions();
        while !sessions.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sessions = self
                .sessions_changed
                .wait_timeout(sessions, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        sessions.len()
    }

    /// Run `f` on a pooled Config DB connection, waiting at most `wait`.
    pub fn with_db<T>(
        &self,
        wait: Duration,
        f: impl FnOnce(&mut ConfigDb) -> Result<T, DbError>,
    ) -> Result<T, PoolError> {
        self.db.with(Instant::now() + wait, f)
    }

    /// Record an audit event for this instance; a failure is logged.
    pub fn audit(&self, event: &str, login: Option<&str>, pin: Option<u32>, reason: &str) {
        let mut e = AuditEvent::new(event);
        e.instance = Some(self.instance.clone());
        e.login = login.map(str::to_string);
        e.pin = pin;
        e.reason = (!reason.is_empty()).then(|| reason.to_string());
        if let Err(err) = self.with_db(DB_WRITE_WAIT, |db| db.audit(&e)) {
            log::warn!("audit {event} not recorded: {err}");
        }
    }
}
