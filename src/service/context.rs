//! What every connection and session thread of one collabd instance
//! shares: the instance's name and current settings from its Config DB
//! row, the session table, the pool of Config DB connections, the live
//! sessions by id (for a device re-attaching), the stopping flag, the
//! daemon's timeouts and the pool of finisher threads. Also the two Config
//! DB writes every part makes, audit events and session registry updates
//! (through the [`super::spool`] while PostgreSQL is unavailable: a running
//! session carries on); and the Hellos' device lookups and the audit of
//! failures, bounded as [`super::throttle`] says.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::configdb::pool::{Pool, PoolError};
use crate::configdb::{self, AuditEvent, ConfigDb, DbError, Device, Instance};
use crate::cwa::{AuthMode, ClientConfig};
use crate::wire::{self, Status};

use super::finishers::Finishers;
use super::spool::{RegistryWrite, Spool};
use super::table::{Limits, SessionId, SessionTable};
use super::throttle::{
    AddressHold, AuditLimiter, AuditVerdict, DeviceCache, LookupBudget, PendingByAddress,
    KEY_LOOKUP_CONNECTIONS, KEY_LOOKUP_WAIT,
};

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
    /// The instance's away period (`away_after_ms`); `None`: off.
    pub away_after: Option<Duration>,
}

impl CwaSettings {
    /// From the instance row, with the daemon's extra CA file for CWA.
    pub fn from_instance(instance: &Instance, ca_file: Option<&std::path::Path>) -> CwaSettings {
        let mut client = ClientConfig::new(&instance.cwa_url);
        client.auth_mode = match instance.auth_mode {
            configdb::AuthMode::IwaThenForms => AuthMode::IwaThenForms,
            configdb::AuthMode::Forms => AuthMode::Forms,
            configdb::AuthMode::Iwa => AuthMode::Iwa,
        };
        client.ca_file = ca_file.map(std::path::Path::to_path_buf);
        // A sign-in must fit in the device's sign-in deadline (default
        // 10 s), so that an unreachable CWA is answered 306, not dropped.
        client.connect_timeout = CWA_CONNECT_TIMEOUT;
        CwaSettings {
            client,
            password_caching: instance.password_caching,
            away_after: (instance.away_after_ms > 0)
                .then(|| Duration::from_millis(instance.away_after_ms)),
        }
    }
}

fn away_ms(cwa: &CwaSettings) -> u64 {
    cwa.away_after
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    /// From accept to the device's key proof (its `Confirm`): a connection
    /// that has not proved the PIN's key by then is cut.
    pub key_proof_timeout: Duration,
    /// How long a command CWA accepted may wait for its outcome event
    /// before the device is answered 306.
    pub command_timeout: Duration,
    /// Connections not yet signed in from one source address (0: no cap);
    /// `relay_addresses` are exempt.
    pub max_pending_per_address: usize,
    /// Dispatchers and other relays, which carry many devices.
    pub relay_addresses: Vec<std::net::IpAddr>,
    /// Stack size of session and helper threads.
    pub thread_stack_size: usize,
}

/// What the context keeps of a live session. The session holds the
/// context, so the context knows sessions only through this (the service's
/// `Session` implements it).
pub trait LiveSession: Send + Sync + 'static {
    /// The session's id in the session table.
    fn id(&self) -> SessionId;
    /// Its row in the Config DB's session registry, once written.
    fn registry_id(&self) -> Option<i64>;
    /// Itself, to be had back as its own type ([`ServiceContext::session`]).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// Shared state of one collabd instance.
pub struct ServiceContext {
    /// This instance's name (its Config DB row).
    pub instance: String,
    /// The session table.
    pub table: SessionTable,
    /// Config DB connections.
    pub db: Pool<ConfigDb>,
    /// Registry and audit writes kept while the Config DB is unavailable.
    pub spool: Spool,
    /// Timeouts and sizes.
    pub timeouts: Timeouts,
    /// The threads that end sessions.
    pub finishers: Finishers,
    cwa: RwLock<CwaSettings>,
    /// The away period in ms (0: off), read by every session's event loop
    /// without cloning the CWA settings.
    away_after_ms: AtomicU64,
    stopping: AtomicBool,
    sessions: Mutex<HashMap<SessionId, Arc<dyn LiveSession>>>,
    sessions_changed: Condvar,
    devices: DeviceCache,
    lookups: LookupBudget,
    audit_limit: AuditLimiter,
    pending_by_address: PendingByAddress,
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
        spool: Spool,
        cwa: CwaSettings,
        timeouts: Timeouts,
    ) -> ServiceContext {
        ServiceContext {
            instance,
            table,
            db,
            spool,
            finishers: Finishers::new(FINISHER_THREADS, timeouts.thread_stack_size),
            timeouts,
            away_after_ms: AtomicU64::new(away_ms(&cwa)),
            cwa: RwLock::new(cwa),
            stopping: AtomicBool::new(false),
            sessions: Mutex::new(HashMap::new()),
            sessions_changed: Condvar::new(),
            devices: DeviceCache::default(),
            lookups: LookupBudget::new(KEY_LOOKUP_CONNECTIONS),
            audit_limit: AuditLimiter::default(),
            pending_by_address: PendingByAddress::default(),
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
        let mut next = CwaSettings::from_instance(instance, ca_file);
        let mut cwa = self.cwa.write().unwrap_or_else(|p| p.into_inner());
        // Keep the TLS context and its sessions to resume: a re-read row
        // does not change them (a changed CA file is noticed by the
        // context itself).
        next.client.transport = cwa.client.transport.clone();
        // The republish period is the daemon's (collabd.conf), not the row's.
        next.client.republish_interval = cwa.client.republish_interval;
        self.away_after_ms.store(away_ms(&next), Ordering::Relaxed);
        *cwa = next;
    }

    /// The instance's away period now; `None`: off.
    pub fn away_after(&self) -> Option<Duration> {
        match self.away_after_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Whether shutdown has started (new logins get 311).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Start refusing logins with 311.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<dyn LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a live session (until [`ServiceContext::forget_session`]).
    pub fn remember_session(&self, session: Arc<dyn LiveSession>) {
        self.sessions().insert(session.id(), session);
    }

    /// A session has finished (signed out, device told, registry written).
    pub fn forget_session(&self, id: SessionId) {
        self.sessions().remove(&id);
        self.sessions_changed.notify_all();
        crate::ops::memory::note_freed();
    }

    /// A live session by id, for a device re-attaching.
    pub fn session<S: LiveSession>(&self, id: SessionId) -> Option<Arc<S>> {
        let live = self.sessions().get(&id).cloned()?;
        live.into_any().downcast().ok()
    }

    /// The live sessions' ids with their registry rows (those written).
    pub fn registry_rows(&self) -> Vec<(SessionId, i64)> {
        self.sessions()
            .values()
            .filter_map(|s| s.registry_id().map(|row| (s.id(), row)))
            .collect()
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
        self.record(RegistryWrite::Audit(e));
    }

    /// A registry or audit write: to the Config DB now, or to the spool
    /// while the database is unavailable (or the spool still holds older
    /// writes, which go first).
    pub fn record(&self, write: RegistryWrite) {
        self.spool.write(write, |w| {
            let done = self.with_db(DB_WRITE_WAIT, |db| match w {
                RegistryWrite::Audit(e) => db.audit(e),
                RegistryWrite::Coverage { id, coverage } => db.session_updated(*id, *coverage),
                RegistryWrite::Ended { id, reason } => db.session_ended(*id, reason).map(|_| ()),
            });
            match done {
                Ok(()) => Ok(()),
                // A late coverage update of a row that has ended: nothing
                // to write.
                Err(PoolError::Db(DbError::NotFound { .. })) => Ok(()),
                Err(e) => Err((e.is_unavailable(), e.to_string())),
            }
        });
    }

    /// Drops device rows too old to be used (called with each heartbeat):
    /// their transport keys need not stay in memory either.
    pub fn purge_stale_devices(&self) {
        self.devices.purge(Instant::now());
    }

    /// The device row for a Hello of `pin`: from the cache, or read within
    /// the Hellos' share of the Config DB pool. The flag says whether it
    /// came from the cache (a login then reads it again). The error is the
    /// status to refuse the Hello with: 312 unknown, 301 too many Hellos
    /// waiting for the Config DB, 307 the Config DB unavailable.
    pub fn device_for_hello(&self, pin: u32, peer: SocketAddr) -> Result<(Device, bool), Status> {
        if let Some(device) = self.devices.get(pin, Instant::now()) {
            return Ok((device, true));
        }
        let Some(_turn) = self.lookups.turn(KEY_LOOKUP_WAIT) else {
            log::info!(
                "{peer}: device {} refused: too many Hellos waiting for the Config DB",
                wire::format_pin(pin)
            );
            return Err(Status::ServerBusy);
        };
        match self.with_db(self.timeouts.login_db_wait, |db| db.device(pin)) {
            Ok(device) => {
                self.devices.put(device.clone(), Instant::now());
                Ok((device, false))
            }
            Err(PoolError::Db(DbError::NotFound { .. })) => Err(Status::UnknownDevice),
            Err(e) => {
                log::warn!(
                    "{peer}: device {} refused, Config DB unavailable: {e}",
                    wire::format_pin(pin)
                );
                Err(Status::ConfigUnavailable)
            }
        }
    }

    /// A place among the connections from `peer`'s address that are not
    /// signed in yet, held until the hold drops; `None` if the address has
    /// `max_pending_per_address` already. Relays and an unset cap always
    /// get one.
    pub fn hold_pending_place(&self, peer: SocketAddr) -> Option<AddressHold<'_>> {
        let t = &self.timeouts;
        let cap = if t.max_pending_per_address == 0 || t.relay_addresses.contains(&peer.ip()) {
            None
        } else {
            Some(t.max_pending_per_address)
        };
        self.pending_by_address.hold(peer.ip(), cap)
    }

    /// Drop `pin`'s cached device row (the Config DB says it changed).
    pub fn forget_device(&self, pin: u32) {
        self.devices.forget(pin);
    }

    /// Record a failed handshake from `peer` (`pin` as its Hello claimed,
    /// if it sent one): logged at info and audited as `handshake_failed`,
    /// within the per-PIN and per-address rate of [`super::throttle`]
    /// (past it, logged at debug only).
    pub fn audit_handshake_failure(&self, pin: Option<u32>, peer: SocketAddr, reason: &str) {
        self.audit_failure("handshake_failed", None, pin, peer, true, reason);
    }

    /// Record a refused login of `login` on the proved `pin` from `peer`:
    /// logged at info and audited as `login_refused`, within the per-PIN
    /// rate of [`super::throttle`]. `reason` never holds a password.
    pub fn audit_login_refused(&self, login: &str, pin: u32, peer: SocketAddr, reason: &str) {
        self.audit_failure("login_refused", Some(login), Some(pin), peer, false, reason);
    }

    fn audit_failure(
        &self,
        event: &str,
        login: Option<&str>,
        pin: Option<u32>,
        peer: SocketAddr,
        address_counts: bool,
        reason: &str,
    ) {
        let who = pin.map_or_else(|| "-".to_string(), wire::format_pin);
        let ip = address_counts.then_some(peer.ip());
        match self.audit_limit.check(pin, ip, Instant::now()) {
            AuditVerdict::Record { suppressed } => {
                log::info!("{peer}: {event} {who}: {reason}");
                let mut text = format!("from {}: {reason}", peer.ip());
                if suppressed > 0 {
                    text.push_str(&format!(" ({suppressed} earlier failures not audited)"));
                }
                self.audit(event, login, pin, &text);
            }
            AuditVerdict::Suppress => {
                log::debug!("{peer}: {event} {who}: {reason} (over the audit rate)");
            }
        }
    }
}
