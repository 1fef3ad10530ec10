//! The collabd daemon from start to exit: the order of start-up and
//! shutdown that collabd(8) documents, over the service's parts.
//!
//! Start-up: signals blocked (by [`main`], before any thread exists) and a
//! `sigwait` thread; logging; the Config DB pool; the instance's row
//! (an unknown instance exits 78; an unreachable database is retried with
//! back-off until it answers or the daemon is told to stop, so that a
//! database restart never makes the unit flap); stale registry rows of a
//! previous run ended; the session table from the row; the listener bound
//! and `listening on ADDR` printed on standard output; the heartbeat,
//! reaper and (under systemd) watchdog threads; `READY=1`.
//!
//! Running: the heartbeat writes the instance's listen address (the
//! `advertise` setting, or the bound address with an unspecified IP
//! replaced by loopback), sessions in use, capacity and health every
//! `heartbeat_interval`, and re-reads the instance row (limits apply from
//! the next admission). SIGHUP re-reads it at once.
//!
//! Shutdown (SIGTERM, SIGINT): `STOPPING=1`; new logins get 311; the
//! listener stops accepting; every session ends with 311 (devices are
//! told, CWA sessions signed out, registry rows ended); up to
//! `shutdown_grace` for that; remaining connections are closed; a last
//! heartbeat says unhealthy; exit 0.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::configdb::pool::{Pool, PoolError};
use crate::configdb::{ConfigDb, DbError, Instance};
use crate::ops::logging;
use crate::ops::memory;
use crate::ops::notify::{self, NotifyState};
use crate::ops::panics;
use crate::ops::signals::{self, AfterSignal, BlockedSignals, Shutdown, Signal};
use crate::service::config::{self, Command, Config};

use crate::wire::{Frame, Status};

use super::context::{limits_of, CwaSettings, ServiceContext, Timeouts, DB_POOL_SIZE};
use super::listener::{self, Handler, Listener};
use super::login;
use super::spool::Spool;
use super::table::{spawn_reaper, EndReason, SessionTable};

/// Most malloc arenas (one per core up to this): more arenas only spread
/// thousands of mostly idle threads' freed memory over more heaps. The
/// price is lock traffic: with two arenas on 2 cores collabd made 27 to 50
/// thousand futex calls in 5 s of the message-latency run (10 idle),
/// against 4 to 9 thousand with eight; but eight left 13.1-13.4 MiB
/// resident 40 s after 5,000 HTTPS sessions ended (1.92-2.03 times the
/// size before the first login, against 1.96 with two), at the edge of
/// what the project allows (README, Performance). An operator can choose
/// otherwise with `GLIBC_TUNABLES=glibc.malloc.arena_max=N`.
const MAX_MALLOC_ARENAS: usize = 8;

/// Exit status for a runtime failure (collabd(8), EXIT STATUS).
pub const EX_FAILURE: u8 = 1;

/// The error beneath a [`RunError`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the daemon could not run: what failed, and the error beneath it
/// when there is one (also in the message, after `what`).
#[derive(Debug)]
pub enum RunError {
    /// The configuration (file, flags, instance row, TLS files) is
    /// unusable: exit 78, the unit does not restart.
    Config {
        /// What was unusable.
        what: String,
        /// Why.
        source: Option<Cause>,
    },
    /// Anything else (listen address in use, threads, logging): exit 1.
    Runtime {
        /// What failed.
        what: String,
        /// Why.
        source: Option<Cause>,
    },
}

impl RunError {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config { .. } => config::EX_CONFIG,
            RunError::Runtime { .. } => EX_FAILURE,
        }
    }

    fn config(what: impl Into<String>) -> RunError {
        RunError::Config {
            what: what.into(),
            source: None,
        }
    }

    /// `what` ("" when the cause says it all) failed because of `source`.
    fn config_because(what: impl Into<String>, source: impl Into<Cause>) -> RunError {
        RunError::Config {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    fn runtime(what: impl Into<String>) -> RunError {
        RunError::Runtime {
            what: what.into(),
            source: None,
        }
    }

    /// `what` ("" when the cause says it all) failed because of `source`.
    fn runtime_because(what: impl Into<String>, source: impl Into<Cause>) -> RunError {
        RunError::Runtime {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, source) = match self {
            RunError::Config { what, source } => {
                f.write_str("configuration: ")?;
                (what, source)
            }
            RunError::Runtime { what, source } => (what, source),
        };
        match source {
            Some(cause) if what.is_empty() => write!(f, "{cause}"),
            Some(cause) => write!(f, "{what}: {cause}"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Config { source, .. } | RunError::Runtime { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
        }
    }
}

/// The whole program: block signals, parse the command line, run. Returns
/// the exit status.
pub fn main() -> u8 {
    // First of all: this may execute the program again, and the new image
    // must start as this one did (no thread, no signal blocked).
    if let Err(e) = memory::reexec_without_thread_caches() {
        eprintln!("collabd: cannot turn glibc's thread caches off ({e}); running with them");
    }
    // Before any thread exists: a thread per connection needs more than
    // the 16 futex buckets the kernel would size for two cores.
    crate::ops::futex::use_global_hash();
    // Before any thread exists, so that every thread inherits the mask.
    let blocked = match signals::block_signals() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("collabd: cannot block signals: {e}");
            return EX_FAILURE;
        }
    };
    let command = match Command::from_process() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("collabd: {e}");
            return e.exit_code();
        }
    };
    match command {
        Command::Help => {
            print!("{}", config::usage());
            0
        }
        Command::Version => {
            println!("collabd {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::CheckConfig(c) => {
            println!("{c:#?}");
            0
        }
        Command::Run(c) => {
            // Before any thread exists: each thread that contends for the
            // allocator would otherwise get an arena of its own (up to
            // eight per core), which with a thread per connection keeps
            // most freed memory resident.
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            memory::limit_malloc_arenas(cores.clamp(2, MAX_MALLOC_ARENAS));
            match run(c, blocked) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("collabd: {e}");
                    e.exit_code()
                }
            }
        }
    }
}

/// A wake-up for the heartbeat thread (SIGHUP, shutdown).
#[derive(Default)]
struct Kick {
    kicked: Mutex<bool>,
    cond: Condvar,
}

impl Kick {
    fn kick(&self) {
        *self.kicked.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Wait up to `timeout` for a kick; returns whether one came.
    fn wait(&self, timeout: Duration) -> bool {
        let kicked = self.kicked.lock().unwrap_or_else(|p| p.into_inner());
        let (mut kicked, _) = self
            .cond
            .wait_timeout_while(kicked, timeout, |k| !*k)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *kicked)
    }
}

fn read_password_file(config: &Config) -> Result<Option<String>, RunError> {
    let Some(path) = &config.database_password_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        RunError::config_because(format!("database password file {}", path.display()), e)
    })?;
    Ok(Some(text.lines().next().unwrap_or("").to_string()))
}

/// The address the dispatcher should use for a bound address.
pub fn advertised_addr(bound: SocketAddr) -> String {
    crate::net::local_connect_addr(bound).to_string()
}

/// Read the instance row, retrying while the database is unreachable.
/// `Ok(None)`: shutdown was requested meanwhile.
fn read_instance(
    pool: &Pool<ConfigDb>,
    name: &str,
    shutdown: &Shutdown,
) -> Result<Option<Instance>, RunError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        match pool.with(deadline, |db| db.instance(name)) {
            Ok(instance) => return Ok(Some(instance)),
            Err(PoolError::Db(DbError::NotFound { .. })) => {
                return Err(RunError::config(format!(
                "instance {name:?} is not in the Config DB (add it with `collabctl instance add`)"
            )))
            }
            Err(PoolError::Db(e @ DbError::BadData { .. })) => {
                return Err(RunError::config_because(format!("instance {name:?}"), e))
            }
            Err(e) => {
                log::warn!(
                    "cannot read instance {name:?}: {e}; retrying in {} s",
                    backoff.as_secs()
                );
                if shutdown.wait_timeout(backoff) {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Run the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, blocked: BlockedSignals) -> Result<(), RunError> {
    logging::init(&config.log_filter).map_err(|e| RunError::runtime_because("", e))?;
    log::info!("collabd {} starting: {config:?}", env!("CARGO_PKG_VERSION"));
    let password = read_password_file(&config)?;
    let tls = match &config.tls {
        Some(files) => Some(
            listener::load_tls_acceptor(&files.cert, &files.key)
                .map_err(|e| RunError::config_because("", e))?,
        ),
        None => None,
    };

    let shutdown = Shutdown::new();
    let kick = Arc::new(Kick::default());
    let signal_thread = {
        let shutdown = shutdown.clone();
        let kick = Arc::clone(&kick);
        signals::spawn_signal_thread(blocked, move |signal| match signal {
            Signal::Hangup => {
                kick.kick();
                AfterSignal::Continue
            }
            Signal::Terminate | Signal::Interrupt => {
                shutdown.request();
                kick.kick();
                AfterSignal::Stop
            }
        })
        .map_err(|e| RunError::runtime_because("cannot start the signal thread", e))?
    };

    let url = config.database.clone();
    let pool = Pool::new(DB_POOL_SIZE, move || {
        ConfigDb::connect_with_password(&url, password.as_deref())
    })
    .close_idle_after(crate::configdb::pool::IDLE_CLOSE, memory::note_freed);
    let Some(instance) = read_instance(&pool, &config.instance, &shutdown)? else {
        log::info!("stopped before the Config DB answered");
        return Ok(());
    };
    log::info!(
        "instance {}: CWA {} ({}), max_sessions {:?}, idle_timeout_ms {:?}, \
         inactivity_timeout_ms {:?}, http_max_connections {}, password caching {}",
        instance.name,
        instance.cwa_url,
        instance.auth_mode.as_str(),
        instance.max_sessions,
        instance.idle_timeout_ms,
        instance.inactivity_timeout_ms,
        instance.http_max_connections,
        if instance.password_caching {
            "on"
        } else {
            "off"
        }
    );
    match pool.with(std::time::Instant::now() + Duration::from_secs(10), |db| {
        db.end_all_sessions(&config.instance, "restart: session of a previous run")
    }) {
        Ok(0) => {}
        Ok(n) => log::info!("ended {n} registry rows left by a previous run"),
        Err(e) => log::warn!("cannot end stale registry rows: {e}"),
    }

    let spool = Spool::open(config.state_directory.as_deref()).map_err(|e| {
        let dir = config
            .state_directory
            .as_deref()
            .unwrap_or(std::path::Path::new("-"));
        RunError::config_because(format!("state directory {}", dir.display()), e)
    })?;
    match config.state_directory.as_deref() {
        Some(dir) => log::info!(
            "registry writes are spooled in {} while the Config DB is unavailable",
            dir.display()
        ),
        None => log::warn!(
            "no state directory: registry and audit writes made while the Config DB is \
             unavailable will be lost"
        ),
    }
    let table = SessionTable::new(limits_of(&instance));
    let ctx = Arc::new(ServiceContext::new(
        config.instance.clone(),
        table.clone(),
        pool,
        spool,
        {
            let mut cwa = CwaSettings::from_instance(&instance, config.cwa_ca_file.as_deref());
            cwa.client.republish_interval = config.presence_republish;
            cwa
        },
        Timeouts {
            status_timeout: config.status_timeout,
            login_db_wait: config.handshake_timeout.min(Duration::from_secs(5)),
            key_proof_timeout: config.key_proof_timeout,
            command_timeout: config.command_timeout,
            max_pending_per_address: config.max_unauthenticated_per_address,
            relay_addresses: config.relay_addresses.clone(),
            thread_stack_size: config.thread_stack_size,
        },
    ));

    let overflow = Frame::refused(
        0,
        Status::ServerBusy,
        "too many connections signing in; try another instance",
    );
    let plain = tls.is_none();
    let mut listener = Listener::bind(config.listen, tls, config.listener_limits())
        .map_err(|e| RunError::runtime_because("", e))?;
    if plain {
        // (Over TLS, clear bytes before the handshake would mean nothing.)
        listener = listener.with_overflow_reply(overflow.to_bytes());
    }
    let handler: Handler = {
        let ctx = Arc::clone(&ctx);
        Arc::new(move |incoming| login::handle(&ctx, incoming))
    };
    let server = listener
        .serve(handler)
        .map_err(|e| RunError::runtime_because("", e))?;
    let bound = server.local_addr();
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| advertised_addr(bound));
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {bound}");
        let _ = out.flush();
    }
    log::info!("listening on {bound} (advertised as {advertise})");

    let heartbeat_pulse = Arc::new(Pulse::new());
    let heartbeat = {
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        let kick = Arc::clone(&kick);
        let interval = config.heartbeat_interval;
        let advertise = advertise.clone();
        let ca_file = config.cwa_ca_file.clone();
        let mut upkeep = RegistryUpkeep::new(config.instance_lost_after);
        let pulse = Arc::clone(&heartbeat_pulse);
        std::thread::Builder::new()
            .name("heartbeat".into())
            .stack_size(config.thread_stack_size)
            .spawn(move || {
                let beat = || loop {
                    let written = heartbeat_once(&ctx, &advertise, true);
                    pulse.beat();
                    if written {
                        drain_spool(&ctx);
                        pulse.beat();
                    }
                    upkeep.after_heartbeat(&ctx, written, &pulse);
                    refresh_instance(&ctx, ca_file.as_deref());
                    ctx.purge_stale_devices();
                    pulse.beat();
                    let kicked = kick.wait(interval);
                    if shutdown.is_requested() {
                        return;
                    }
                    if kicked {
                        log::info!("SIGHUP: re-reading instance {}", ctx.instance);
                        let _ = notify::notify(&[NotifyState::Reloading]);
                        refresh_instance(&ctx, ca_file.as_deref());
                        let _ = notify::notify(&[NotifyState::Ready]);
                    }
                };
                // Without heartbeats the dispatcher stops routing here
                // while sessions carry on: stop cleanly instead.
                panics::guard_service_thread("the heartbeat thread", &shutdown, beat);
            })
            .map_err(|e| RunError::runtime_because("cannot start the heartbeat thread", e))?
    };
    let reaper = spawn_reaper(
        table.clone(),
        Duration::from_millis(500),
        shutdown.clone(),
        64 * 1024,
        |ended| {
            for e in ended {
                log::info!("session {} reaped: {}", e.handle.id(), e.reason);
            }
        },
    )
    .map_err(|e| RunError::runtime_because("cannot start the reaper", e))?;
    let watchdog = match notify::watchdog_interval() {
        Some(interval) => {
            let handle = server.shutdown_handle();
            let table = table.clone();
            let pulse = Arc::clone(&heartbeat_pulse);
            let stalled_after = config.heartbeat_stall;
            Some(
                notify::spawn_watchdog(interval, shutdown.clone(), move || {
                    // The heartbeat went round recently: a stuck Config DB
                    // call or a dead heartbeat thread is not health.
                    let quiet = pulse.age();
                    if quiet > stalled_after {
                        let _ = notify::notify(&[NotifyState::Status(format!(
                            "heartbeat stalled for {} s; not feeding the watchdog",
                            quiet.as_secs()
                        ))]);
                        return false;
                    }
                    // The table lock can be taken and the accept loop runs.
                    let _ = table.usage();
                    !handle.is_stopping()
                })
                .map_err(|e| RunError::runtime_because("cannot start the watchdog", e))?,
            )
        }
        None => None,
    };
    let (in_use, limit) = table.usage();
    let _ = notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(format!("{in_use} of {limit} sessions")),
    ]);

    shutdown.wait();

    log::info!("stopping");
    let _ = notify::notify(&[NotifyState::Stopping]);
    ctx.set_stopping();
    server.shutdown_handle().stop_accepting();
    let ended = table.end_all(EndReason::ServiceStopping);
    log::info!("ending {} sessions", ended.len());
    let left = ctx.wait_sessions_finished(config.shutdown_grace);
    if left > 0 {
        log::warn!("{left} sessions did not finish within the grace period");
    }
    let report = server.stop(Duration::from_millis(200), Duration::from_secs(2));
    if report.forced > 0 || report.still_running > 0 {
        log::info!(
            "connections closed at shutdown: {} forced, {} still running",
            report.forced,
            report.still_running
        );
    }
    let _ = heartbeat.join();
    heartbeat_once(&ctx, &advertise, false);
    let _ = reaper.join();
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    // The signal thread stopped after the shutdown signal.
    let _ = signal_thread.join();
    if panics::service_thread_failed() {
        return Err(RunError::runtime(
            "stopped because a service thread panicked (see the error above)",
        ));
    }
    log::info!("stopped");
    Ok(())
}

/// When a thread last went round its loop, for the watchdog's health check.
struct Pulse {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Pulse {
    fn new() -> Pulse {
        Pulse {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat (or since start).
    fn age(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Writes what the spool kept while the Config DB was unavailable.
fn drain_spool(ctx: &ServiceContext) {
    if ctx.spool.spooled() == 0 {
        return;
    }
    let drained = ctx.spool.drain(&ctx.db, Duration::from_secs(5));
    log::info!(
        "spool: {} registry and audit writes made while the Config DB was unavailable \
         written, {} left",
        drained.written,
        drained.left
    );
}

/// Writes the heartbeat; returns whether it reached the Config DB.
fn heartbeat_once(ctx: &ServiceContext, advertise: &str, healthy: bool) -> bool {
    let (in_use, limit) = ctx.table.usage();
    let healthy = healthy && !ctx.is_stopping();
    let written = ctx.with_db(Duration::from_secs(5), |db| {
        db.write_heartbeat(
            &ctx.instance,
            advertise,
            u32::try_from(in_use).unwrap_or(u32::MAX),
            Some(limit),
            healthy,
        )
    });
    if let Err(e) = &written {
        log::warn!("heartbeat not written: {e}");
    }
    let _ = notify::notify(&[NotifyState::Status(format!("{in_use} of {limit} sessions"))]);
    written.is_ok()
}

/// What the heartbeat thread keeps true in the registry besides the
/// heartbeat itself (collabd(8), "The registry"): sessions of instances
/// whose heartbeat went stale are ended as `instance lost`; this
/// instance's own sessions, if another party ended them that way while its
/// heartbeat could not be written, are made active again; and
/// administrators' end requests reach the sessions they name.
struct RegistryUpkeep {
    lost_after: Duration,
    last_written: Instant,
}

impl RegistryUpkeep {
    fn new(lost_after: Duration) -> RegistryUpkeep {
        RegistryUpkeep {
            lost_after,
            last_written: Instant::now(),
        }
    }

    /// One round, after the heartbeat; `pulse` beats after each Config DB
    /// call, each of which is bounded on its own.
    fn after_heartbeat(&mut self, ctx: &ServiceContext, written: bool, pulse: &Pulse) {
        if !written {
            return;
        }
        // Out of touch for longer than half the loss threshold: another
        // instance or a dispatcher may have taken this one for lost.
        let out_of_touch = self.last_written.elapsed() > self.lost_after / 2;
        self.last_written = Instant::now();
        let wait = Duration::from_secs(5);
        if out_of_touch {
            let rows: Vec<i64> = ctx
                .registry_rows()
                .into_iter()
                .map(|(_, row)| row)
                .collect();
            let reclaimed = ctx.with_db(wait, |db| db.reclaim_sessions(&ctx.instance, &rows));
            pulse.beat();
            match reclaimed {
                Ok(0) => {}
                Ok(n) => log::warn!("{n} live sessions were marked lost while the Config DB was out of reach; marked active again"),
                Err(e) => log::warn!("cannot check this instance's sessions in the registry: {e}"),
            }
        }
        let lost_after_ms = u64::try_from(self.lost_after.as_millis()).unwrap_or(u64::MAX);
        let lost = ctx.with_db(wait, |db| {
            db.end_sessions_of_lost_instances(lost_after_ms, &ctx.instance)
        });
        pulse.beat();
        match lost {
            Ok(lost) => {
                for (instance, n) in lost {
                    log::warn!("instance {instance} lost (no heartbeat for {lost_after_ms} ms): ended its {n} sessions in the registry");
                }
            }
            Err(e) => log::warn!("cannot end the sessions of lost instances: {e}"),
        }
        let requests = ctx.with_db(wait, |db| db.end_requests(&ctx.instance));
        pulse.beat();
        let requests = match requests {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot read end requests: {e}");
                return;
            }
        };
        if requests.is_empty() {
            return;
        }
        let live = ctx.registry_rows();
        for request in requests {
            let holder = live.iter().find(|(_, row)| *row == request.id);
            log::info!(
                "session row {} ended by {}: {}",
                request.id,
                request.by,
                request.reason
            );
            match holder {
                Some((id, _)) => {
                    ctx.table
                        .end(*id, EndReason::Administrative(request.reason.clone()));
                }
                // No live session holds the row (it is finishing, or the
                // row outlived its session): end the row itself.
                None => {
                    let text = EndReason::Administrative(request.reason).to_string();
                    if let Err(e) = ctx.with_db(wait, |db| db.session_ended(request.id, &text)) {
                        log::warn!("registry end of row {} not recorded: {e}", request.id);
                    }
                    pulse.beat();
                }
            }
        }
    }
}

fn refresh_instance(ctx: &ServiceContext, ca_file: Option<&std::path::Path>) {
    match ctx.with_db(Duration::from_secs(5), |db| db.instance(&ctx.instance)) {
        Ok(instance) => {
            let before = ctx.table.limits();
            ctx.apply_instance(&instance, ca_file);
            let after = ctx.table.limits();
            if before != after {
                log::info!("instance limits now {after:?}");
            }
        }
        Err(e) => log::warn!("cannot re-read instance {}: {e}", ctx.instance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_error_keeps_its_cause_with_the_message_unchanged() {
        use std::error::Error;
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = RunError::config_because("state directory /s", gone());
        assert_eq!(e.to_string(), "configuration: state directory /s: gone");
        assert_eq!(e.exit_code(), config::EX_CONFIG);
        assert_eq!(e.source().map(|c| c.to_string()).as_deref(), Some("gone"));
        let e = RunError::runtime_because("", gone());
        assert_eq!(e.to_string(), "gone");
        assert_eq!(e.exit_code(), EX_FAILURE);
        assert!(e.source().is_some());
        assert!(RunError::runtime("stopped").source().is_none());
    }

    #[test]
    fn unspecified_addresses_are_advertised_as_loopback() {
        assert_eq!(
            advertised_addr("0.0.0.0:3200".parse().unwrap()),
            "127.0.0.1:3200"
        );
        assert_eq!(advertised_addr("[::]:3200".parse().unwrap()), "[::1]:3200");
        assert_eq!(
            advertised_addr("10.1.2.3:3200".parse().unwrap()),
            "10.1.2.3:3200"
        );
    }

    #[test]
    fn a_kick_wakes_the_waiter_once() {
        let kick = Kick::default();
        assert!(!kick.wait(Duration::from_millis(1)));
        kick.kick();
        assert!(kick.wait(Duration::from_secs(30)));
        assert!(!kick.wait(Duration::from_millis(1)));
    }
}
