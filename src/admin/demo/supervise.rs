//! The demo's life cycle: the state directory, PostgreSQL, the three
//! programs as child processes in start order, watching them, and stopping
//! everything in [`STOP_ORDER`] on a signal or a child's death.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::configdb::{generate_transport_key, ConfigDb, InstanceSettings};
use crate::ops::scratch_pg::ScratchPostgres;
use crate::ops::signals::{self, AfterSignal, Shutdown};

use super::banner::{write_banner, Started};
use super::error::{output, state_err, DemoError};
use super::options::{DemoOptions, HELP};
use super::users::{DemoUser, USERS};

/// The instance the demo creates.
pub const INSTANCE: &str = "demo";
/// The last line printed after a clean stop.
pub const STOPPED_LINE: &str = "demo stopped";

/// How long a child may take to print its `listening on` line, and collabd
/// to write its first heartbeat (debug builds on a busy machine are slow).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a child has after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the demo looks at its children while it runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// collabd's heartbeat period in the demo: short, so that the dispatcher
/// sees the instance soon after it starts.
const HEARTBEAT_INTERVAL_MS: u64 = 1000;
/// How long collabd may take to say goodbye to its devices at shutdown.
const SHUTDOWN_GRACE_MS: u64 = 2000;
/// How often the dispatcher re-reads the instance table.
const DISPATCHER_REFRESH_MS: u64 = 500;
/// Heartbeats older than this do not count (the dispatcher's default).
const STALE_AFTER_MS: u64 = 15_000;
/// Log lines shown when a child fails.
const LOG_TAIL_LINES: usize = 30;
/// The order in which the children are stopped: collabd first, so that
/// it can tell its devices (through the dispatcher's still open relays)
/// that the service is stopping and sign their sessions out of CWA (the
/// simulator still runs); then the dispatcher; then the simulator.
const STOP_ORDER: [&str; 3] = ["collabd", "collab-dispatcher", "cwa-sim"];
/// Stack of the threads that copy a child's stdout into its log.
const COPY_THREAD_STACK: usize = 64 * 1024;

/// Runs `collabctl demo` with the words after `demo`, printing to `out`,
/// until a signal stops it. Call it before any thread of the process has
/// started: it blocks SIGINT, SIGTERM and SIGHUP first thing.
pub fn run(words: &[String], out: &mut dyn Write) -> Result<(), DemoError> {
    // First thing, before any thread exists (the PostgreSQL client starts
    // some): every thread inherits the mask, so Ctrl-C goes only to the
    // sigwait thread below.
    let blocked = signals::block_signals().map_err(DemoError::Signals)?;
    let options = DemoOptions::parse(words)?;
    if options.help {
        out.write_all(HELP.as_bytes()).map_err(output)?;
        return Ok(());
    }
    let shutdown = Shutdown::new();
    let raised = shutdown.clone();
    // Every signal, SIGHUP too (the terminal went away), means stop; the
    // thread lives until the process ends, so a second Ctrl-C is absorbed.
    signals::spawn_signal_thread(blocked, move |_| {
        raised.request();
        AfterSignal::Continue
    })
    .map_err(DemoError::Signals)?;

    let programs = Programs::find()?;
    check_free("collab-dispatcher", options.dispatcher_listen)?;
    check_free("collabd", options.collabd_listen)?;
    let state_dir = make_state_dir(options.dir.as_deref())?;

    let mut demo = Demo {
        state_dir,
        postgres: None,
        children: Vec::new(),
    };
    let started = demo.start(&programs, &options, &shutdown, out);
    let result = match started {
        Ok(true) => demo.watch(&shutdown),
        Ok(false) => Ok(()),
        // A Ctrl-C in the terminal also reaches initdb and pg_ctl, which
        // share our process group; their failure is the stop asked for.
        Err(_) if shutdown.is_requested() => Ok(()),
        Err(e) => Err(e),
    };
    if result.is_ok() {
        // Best effort: the user may have closed the terminal.
        let _ = writeln!(out, "stopping...");
        let _ = out.flush();
    }
    demo.stop();
    if options.keep {
        if result.is_ok() {
            let _ = writeln!(out, "state kept in {}", demo.state_dir.display());
        }
    } else if let Err(error) = fs::remove_dir_all(&demo.state_dir) {
        if error.kind() != io::ErrorKind::NotFound {
            let _ = writeln!(
                io::stderr(),
                "collabctl: demo: cannot remove {}: {error}",
                demo.state_dir.display()
            );
        }
    }
    result?;
    writeln!(out, "{STOPPED_LINE}").map_err(output)?;
    out.flush().map_err(output)
}

/// Paths of the programs the demo runs.
struct Programs {
    cwa_sim: PathBuf,
    collabd: PathBuf,
    dispatcher: PathBuf,
    device: PathBuf,
    collabctl: PathBuf,
}

impl Programs {
    /// The programs built next to this executable.
    fn find() -> Result<Programs, DemoError> {
        let collabctl = std::env::current_exe().map_err(|error| DemoError::State {
            what: "finding the running program".into(),
            error,
        })?;
        let dir = collabctl
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let find = |name: &str| -> Result<PathBuf, DemoError> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(DemoError::MissingProgram { program: path })
            }
        };
        Ok(Programs {
            cwa_sim: find("cwa-sim")?,
            collabd: find("collabd")?,
            dispatcher: find("collab-dispatcher")?,
            device: find("collab-device")?,
            collabctl,
        })
    }
}

/// Fails early, with a hint, when a fixed port is taken. (Port 0 is always
/// free; a race with another program is still reported by the child.)
fn check_free(what: &'static str, addr: SocketAddr) -> Result<(), DemoError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            Err(DemoError::PortInUse { what, addr })
        }
        Err(error) => Err(DemoError::CannotListen { what, addr, error }),
    }
}

/// Creates the state directory: `dir` (new, or existing and empty), or a
/// new `collabd-demo-XXXXXXXX` under the temporary directory. Mode 0711:
/// the PostgreSQL cluster lives inside, and when the demo runs as root the
/// server runs as the `postgres` user, which must be able to pass through;
/// the secrets in it are files of mode 0600.
fn make_state_dir(dir: Option<&Path>) -> Result<PathBuf, DemoError> {
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o711);
    match dir {
        Some(dir) => {
            match fs::read_dir(dir) {
                Ok(mut entries) => {
                    if entries.next().is_some() {
                        return Err(DemoError::Usage(format!(
                            "--dir {} is not empty (the demo removes it when it stops)",
                            dir.display()
                        )));
                    }
                    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                        .map_err(state_err(format!("setting the mode of {}", dir.display())))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    builder
                        .recursive(true)
                        .create(dir)
                        .map_err(state_err(format!("creating {}", dir.display())))?;
                }
                Err(e) => return Err(state_err(format!("reading {}", dir.display()))(e)),
            }
            // Absolute, so the printed commands work from any directory.
            fs::canonicalize(dir).map_err(state_err(format!("resolving {}", dir.display())))
        }
        None => {
            let tmp = fs::canonicalize(std::env::temp_dir())
                .map_err(state_err("resolving the temporary directory"))?;
            // Short, so the cluster's socket path inside stays under the
            // 108-byte limit.
            let path = tmp.join(format!("collabd-demo-{}", random_hex(4)?));
            builder
                .create(&path)
                .map_err(state_err(format!("creating {}", path.display())))?;
            Ok(path)
        }
    }
}

fn random_hex(bytes: usize) -> Result<String, DemoError> {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).map_err(|e| DemoError::State {
        what: "getting random numbers".into(),
        error: io::Error::other(e.to_string()),
    })?;
    Ok(crate::hex::encode(&buf))
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), DemoError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(state_err(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(state_err(format!("writing {}", path.display())))
}

/// A running child program.
struct Component {
    program: &'static str,
    child: Child,
    log: PathBuf,
}

/// What the demo has started so far, stopped by [`Demo::stop`].
struct Demo {
    state_dir: PathBuf,
    postgres: Option<ScratchPostgres>,
    /// In start order; stopped in [`STOP_ORDER`].
    children: Vec<Component>,
}

impl Demo {
    /// Starts everything and prints the banner. `Ok(false)`: a signal came
    /// during start-up.
    fn start(
        &mut self,
        programs: &Programs,
        options: &DemoOptions,
        shutdown: &Shutdown,
        out: &mut dyn Write,
    ) -> Result<bool, DemoError> {
        let dir = self.state_dir.clone();
        writeln!(out, "collabd demo: starting in {}", dir.display()).map_err(output)?;
        out.flush().map_err(output)?;

        let postgres = ScratchPostgres::start(&dir).map_err(DemoError::Postgres)?;
        let database_url = postgres
            .create_database("collabd")
            .map_err(DemoError::Postgres)?;
        let postgres_pid = postmaster_pid(postgres.dir());
        self.postgres = Some(postgres);
        if shutdown.is_requested() {
            return Ok(false);
        }

        // The simulator's users and the device files.
        let mut users_file = String::from(
            "# cwa-sim users for the collabd demo: DOMAIN\\user PASSWORD SIP-URI options\n",
        );
        for user in &USERS {
            let password = random_hex(9)?;
            let contacts: Vec<String> = USERS
                .iter()
                .filter(|u| u.name != user.name)
                .map(DemoUser::sip_uri)
                .collect();
            users_file.push_str(&format!(
                "{} {password} {} name={} contacts={}\n",
                user.login(),
                user.sip_uri(),
                user.display_name.replace(' ', "_"),
                contacts.join(",")
            ));
            write_private(
                &user.password_file(&self.state_dir),
                &format!("{password}\n"),
            )?;
        }
        let users_path = dir.join("cwa-sim.users");
        write_private(&users_path, &users_file)?;

        let sim_log = dir.join("cwa-sim.log");
        let mut sim = Command::new(&programs.cwa_sim);
        sim.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--users")
            .arg(&users_path)
            .args(["--poll-wait-ms", "0"]);
        let Some(sim_addr) = self.spawn("cwa-sim", sim, &sim_log, shutdown)? else {
            return Ok(false);
        };
        let sim_url = format!("http://{sim_addr}");

        // The Config DB: schema, instance, users, devices.
        {
            let mut db = ConfigDb::connect(&database_url)?;
            db.migrate()?;
            db.add_instance(
                INSTANCE,
                &InstanceSettings {
                    cwa_url: sim_url.clone(),
                    max_sessions: Some(100),
                    idle_timeout_ms: Some(10 * 60 * 1000),
                    inactivity_timeout_ms: Some(60 * 60 * 1000),
                    ..InstanceSettings::default()
                },
            )?;
            for user in &USERS {
                db.add_user(&user.login(), &user.sip_uri(), true)?;
                let key = generate_transport_key()?;
                let hex = crate::hex::encode(&key);
                write_private(&user.key_file(&self.state_dir), &format!("{hex}\n"))?;
                db.add_device_with_key(user.pin, &user.login(), &key)?;
            }
        }

        let collabd_conf = dir.join("collabd.conf");
        write_private(
            &collabd_conf,
            &format!(
                "# collabd settings for the demo (see collabd.conf(5))\n\
                 instance = {INSTANCE}\n\
                 database = {database_url}\n\
                 listen = {}\n\
                 heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}\n\
                 shutdown_grace_ms = {SHUTDOWN_GRACE_MS}\n\
                 state_directory = {}\n",
                options.collabd_listen,
                dir.join("collabd-state").display()
            ),
        )?;
        let collabd_log = dir.join("collabd.log");
        let mut collabd = Command::new(&programs.collabd);
        collabd.arg("--config").arg(&collabd_conf);
        let Some(collabd_addr) = self.spawn("collabd", collabd, &collabd_log, shutdown)? else {
            return Ok(false);
        };
        // The dispatcher routes only to instances with a fresh heartbeat,
        // and reads the table once before it listens: wait for the first.
        if !self.wait_for_heartbeat(&database_url, &collabd_log, shutdown)? {
            return Ok(false);
        }

        let dispatcher_log = dir.join("collab-dispatcher.log");
        let mut dispatcher = Command::new(&programs.dispatcher);
        dispatcher
            .arg("--listen")
            .arg(options.dispatcher_listen.to_string())
            .arg("--database")
            .arg(&database_url)
            .args(["--refresh-ms", &DISPATCHER_REFRESH_MS.to_string()])
            .args(["--stale-after-ms", &STALE_AFTER_MS.to_string()]);
        let Some(dispatcher_addr) =
            self.spawn("collab-dispatcher", dispatcher, &dispatcher_log, shutdown)?
        else {
            return Ok(false);
        };

        let started = Started {
            state_dir: self.state_dir.clone(),
            database_url,
            postgres_pid,
            postgres_log: self
                .postgres
                .as_ref()
                .map(|p| p.log_path().to_path_buf())
                .unwrap_or_default(),
            sim_url,
            collabd_addr,
            dispatcher_addr,
            pids: self
                .children
                .iter()
                .map(|c| (c.program, c.child.id()))
                .collect(),
            device: programs.device.clone(),
            collabctl: programs.collabctl.clone(),
        };
        write_banner(&started, out).map_err(output)?;
        Ok(true)
    }

    /// Starts `command` with its output in `log`, and waits for its
    /// `listening on ADDR` line. `Ok(None)`: a signal came first.
    fn spawn(
        &mut self,
        program: &'static str,
        mut command: Command,
        log: &Path,
        shutdown: &Shutdown,
    ) -> Result<Option<SocketAddr>, DemoError> {
        let log_file = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(state_err(format!("creating {}", log.display())))?;
        let stderr = log_file
            .try_clone()
            .map_err(state_err(format!("opening {}", log.display())))?;
        let parent = std::process::id();
        command
            .env_remove(crate::configdb::DATABASE_URL_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // A group of its own: the terminal's Ctrl-C reaches only the
            // demo, which stops the children in order.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (sigemptyset,
        // pthread_sigmask, prctl, getppid, kill, getpid).
        unsafe {
            command.pre_exec(move || {
                // The demo blocks these signals; the child must not inherit
                // that (std resets the mask as well; this says we rely on it).
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                // If the demo dies without stopping us, stop anyway.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent as libc::pid_t {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| DemoError::Start {
            program,
            why: format!("could not be started: {e}"),
            log: log.to_path_buf(),
            tail: String::new(),
        })?;
        let stdout = child.stdout.take();
        self.children.push(Component {
            program,
            child,
            log: log.to_path_buf(),
        });
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            let mut copy = log_file;
            std::thread::Builder::new()
                .name(format!("{program}-stdout"))
                .stack_size(COPY_THREAD_STACK)
                .spawn(move || {
                    let mut sent = false;
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let _ = writeln!(copy, "{line}");
                        if !sent {
                            if let Some(addr) = line.strip_prefix("listening on ") {
                                if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                                    sent = tx.send(addr).is_ok();
                                }
                            }
                        }
                    }
                })
                .map_err(|e| self.start_failure(program, format!("has no output thread: {e}")))?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if shutdown.is_requested() {
                return Ok(None);
            }
            match rx.recv_timeout(WATCH_INTERVAL) {
                Ok(addr) => return Ok(Some(addr)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: it is ending.
                    let component = self.children.last_mut().expect("just pushed");
                    let status = wait_until(&mut component.child, Instant::now() + STOP_TIMEOUT);
                    return Err(self.start_failure(
                        program,
                        match status {
                            Some(s) => format!("did not start ({s})"),
                            None => "closed its output without saying where it listens".into(),
                        },
                    ));
                }
            }
            let component = self.children.last_mut().expect("just pushed");
            if let Ok(Some(status)) = component.child.try_wait() {
                return Err(self.start_failure(program, format!("did not start ({status})")));
            }
            if Instant::now() > deadline {
                return Err(self.start_failure(
                    program,
                    format!(
                        "did not say where it listens within {} s",
                        START_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
    }

    fn start_failure(&self, program: &'static str, why: String) -> DemoError {
        let log = self
            .children
            .iter()
            .find(|c| c.program == program)
            .map(|c| c.log.clone())
            .unwrap_or_default();
        DemoError::Start {
            program,
            why,
            tail: log_tail(&log),
            log,
        }
    }

    /// Waits until collabd's instance row has a fresh heartbeat with its
    /// address. `Ok(false)`: a signal came first.
    fn wait_for_heartbeat(
        &mut self,
        database_url: &str,
        collabd_log: &Path,
        shutdown: &Shutdown,
    ) -> Result<bool, DemoError> {
        let mut db = ConfigDb::connect(database_url)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if shutdown.is_requested() {
                return Ok(false);
            }
            if db
                .live_instances(STALE_AFTER_MS)?
                .iter()
                .any(|i| i.name == INSTANCE)
            {
                return Ok(true);
            }
            let collabd = self.children.last_mut().expect("collabd was started");
            if let Ok(Some(status)) = collabd.child.try_wait() {
                return Err(self.start_failure("collabd", format!("did not start ({status})")));
            }
            if Instant::now() > deadline {
                return Err(DemoError::Start {
                    program: "collabd",
                    why: format!(
                        "wrote no healthy heartbeat to the Config DB within {} s",
                        START_TIMEOUT.as_secs()
                    ),
                    log: collabd_log.to_path_buf(),
                    tail: log_tail(collabd_log),
                });
            }
            std::thread::sleep(WATCH_INTERVAL);
        }
    }

    /// Waits for a signal (`Ok`) or a child's death (`Err`).
    fn watch(&mut self, shutdown: &Shutdown) -> Result<(), DemoError> {
        loop {
            if shutdown.wait_timeout(WATCH_INTERVAL) {
                return Ok(());
            }
            for component in &mut self.children {
                if let Ok(Some(status)) = component.child.try_wait() {
                    return Err(DemoError::Died {
                        program: component.program,
                        status,
                        tail: log_tail(&component.log),
                        log: component.log.clone(),
                    });
                }
            }
        }
    }

    /// Stops the children (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`])
    /// in [`STOP_ORDER`], then PostgreSQL.
    fn stop(&mut self) {
        for program in STOP_ORDER {
            let Some(at) = self.children.iter().position(|c| c.program == program) else {
                continue;
            };
            let mut component = self.children.remove(at);
            if let Ok(None) = component.child.try_wait() {
                let pid = component.child.id() as libc::pid_t;
                // SAFETY: `pid` is our unreaped child, so it cannot have been
                // reused by another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if wait_until(&mut component.child, Instant::now() + STOP_TIMEOUT).is_none() {
                    let _ = writeln!(
                        io::stderr(),
                        "collabctl: demo: {} did not stop within {} s; killing it",
                        component.program,
                        STOP_TIMEOUT.as_secs()
                    );
                    let _ = component.child.kill();
                    let _ = component.child.wait();
                }
            }
        }
        // Dropping it stops the server and removes its directory (and
        // waits for that).
        self.postgres = None;
    }
}

/// Polls `child` until it exits or `deadline` passes.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return None,
        }
    }
}

/// The postmaster's pid, from the first line of `postmaster.pid`.
fn postmaster_pid(cluster_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(cluster_dir.join("data").join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// The last [`LOG_TAIL_LINES`] lines of a log (reading at most its last
/// 16 KiB).
fn log_tail(path: &Path) -> String {
    const MAX: u64 = 16 * 1024;
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_ok() {
            let _ = file.take(MAX).read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    if lines.is_empty() {
        "(empty)".into()
    } else {
        lines[start..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_port_is_reported_with_a_hint() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = check_free("collab-dispatcher", addr).unwrap_err();
        assert_eq!(e.exit_code(), 69);
        let text = e.to_string();
        assert!(text.contains("already in use"), "{text}");
        assert!(text.contains("--listen-dispatcher"), "{text}");
    }
}
