//! Helpers for the end-to-end tests of collabd: a whole stack of real
//! parts, one per test: `cwa-sim` (poll wait 0), a migrated scratch
//! database with an instance row and provisioned users and devices (key and
//! password files on disk), the `collabd` binary on 127.0.0.1:0 (its
//! address read from its stdout), and `collab-device --script` processes
//! whose output lines are read with generous timeouts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use collabd::configdb::{AuditRecord, ConfigDb, InstanceChange, InstanceSettings};
use collabd::device::{DeviceClient, DeviceConfig};

use super::device_peer::DeviceProcess;
use super::pg::migrated_database;
use super::sim::SimProcess;
use super::tls::TestCa;
use super::tmp::TempDir;

/// Generous bound on any wait (never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

/// The instance name every test uses.
pub const INSTANCE: &str = "bcs-test";

/// A test user: Windows login, password, SIP URI.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub login: String,
    pub password: String,
    pub sip: String,
}

impl TestUser {
    pub fn new(name: &str) -> TestUser {
        TestUser {
            login: format!("CONTOSO\\{name}"),
            password: format!("pw-{name}"),
            sip: format!("sip:{name}@contoso.com"),
        }
    }
}

/// The simulator's users file line for `user`, with extra options.
pub fn sim_line(user: &TestUser, options: &str) -> String {
    format!("{} {} {} {options}\n", user.login, user.password, user.sip)
}

/// Polls `check` every 20 ms until it is true; panics after [`WAIT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `key=` in a collab-device record line (not unescaped).
pub fn field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split(' ')
        .find_map(|f| f.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

/// A running `collabd`. Killed on drop; its log is printed if the test
/// is failing.
pub struct Collabd {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Its state directory (the registry spool).
    pub state: PathBuf,
}

impl Collabd {
    /// The process id (to read its memory in tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the binary for [`INSTANCE`] against `db_url` on
    /// 127.0.0.1:0, with `extra` flags.
    pub fn start(dir: &TempDir, db_url: &str, extra: &[&str]) -> Collabd {
        Collabd::start_with_env(dir, db_url, extra, &[])
    }

    /// [`Collabd::start`] with extra environment variables.
    pub fn start_with_env(
        dir: &TempDir,
        db_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Collabd {
        static STARTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(&format!("collabd-{n}.log"));
        let state = dir.join(&format!("collabd-{n}-state"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_collabd"))
            .args([
                "--instance",
                INSTANCE,
                "--database",
                db_url,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval-ms",
                "200",
                "--log-level",
                "collabd=debug,info",
                "--state-directory",
            ])
            .arg(&state)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn collabd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().ok());
                    break;
                }
            }
            for _ in lines {}
        });
        match rx.recv_timeout(WAIT) {
            Ok(Some(addr)) => Collabd {
                child,
                addr,
                log,
                state,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "collabd did not announce its address; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit; returns the exit code.
    pub fn signal_and_wait(&mut self, signal: libc::c_int) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(start.elapsed() < WAIT, "collabd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Collabd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(120).collect();
            eprintln!("--- collabd log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A provisioned device: PIN and key file for a user.
#[derive(Clone, Debug)]
pub struct TestDevice {
    pub pin: u32,
    pub key: [u8; 32],
    pub key_file: PathBuf,
    pub user: TestUser,
}

/// One test's stack: simulator, database, collabd.
pub struct Stack {
    // Dropped in this order: collabd first (its log lives in `dir`).
    pub collabd: Option<Collabd>,
    pub sim: SimProcess,
    pub db_url: String,
    pub db: ConfigDb,
    next_pin: u32,
    pub dir: TempDir,
}

impl Stack {
    /// Starts the simulator with `sim_users` and creates the database with
    /// the instance row (`settings.cwa_url` is filled in).
    pub fn new(sim_users: &str, settings: InstanceSettings) -> Stack {
        Stack::with_sim(
            SimProcess::start_with(sim_users, &["--poll-wait-ms", "0"]),
            settings,
        )
    }

    /// As [`Stack::new`] with the simulator on HTTPS with `ca`'s server
    /// certificate (for `localhost`).
    pub fn new_tls(sim_users: &str, settings: InstanceSettings, ca: &TestCa) -> Stack {
        Stack::with_sim(
            SimProcess::start_tls(sim_users, ca, &["--poll-wait-ms", "0"]),
            settings,
        )
    }

    fn with_sim(sim: SimProcess, mut settings: InstanceSettings) -> Stack {
        let dir = TempDir::new("collabd-e2e");
        let (db_url, mut db) = migrated_database();
        settings.cwa_url = sim.base_url();
        db.add_instance(INSTANCE, &settings).expect("add instance");
        Stack {
            dir,
            sim,
            db_url,
            db,
            collabd: None,
            next_pin: 0x1000_0001,
        }
    }

    /// Adds `user` to the Config DB.
    pub fn add_user(&mut self, user: &TestUser, im_enabled: bool) {
        self.db
            .add_user(&user.login, &user.sip, im_enabled)
            .expect("add user");
    }

    /// Provisions a new device for `user` (who must exist).
    pub fn add_device(&mut self, user: &TestUser) -> TestDevice {
        let pin = self.next_pin;
        self.next_pin += 1;
        let key = self.db.add_device(pin, &user.login).expect("add device");
        let hex = collabd::hex::encode(&key);
        let key_file = self.dir.join(&format!("{pin:08x}.key"));
        std::fs::write(&key_file, hex).unwrap();
        TestDevice {
            pin,
            key,
            key_file,
            user: user.clone(),
        }
    }

    /// Changes the instance row.
    pub fn set_instance(&mut self, change: InstanceChange) {
        self.db
            .set_instance(INSTANCE, &change)
            .expect("set instance");
    }

    /// Starts collabd with `extra` flags.
    pub fn start_collabd(&mut self, extra: &[&str]) -> SocketAddr {
        let c = Collabd::start(&self.dir, &self.db_url, extra);
        let addr = c.addr;
        self.collabd = Some(c);
        addr
    }

    /// Stops the simulator (CWA unreachable from now on).
    pub fn sim_kill(&mut self) {
        self.sim.kill();
    }

    pub fn collabd(&mut self) -> &mut Collabd {
        self.collabd.as_mut().expect("collabd started")
    }

    fn password_file(&self, login_as: &TestUser, password: &str) -> PathBuf {
        let name = login_as.login.replace('\\', "_");
        let path = self.dir.join(&format!("{name}-{}.pw", password.len()));
        std::fs::write(&path, format!("{password}\n")).unwrap();
        path
    }

    /// Starts `collab-device --script` for `device`, signing in as
    /// `login_as` with `password`.
    pub fn device_as(
        &self,
        device: &TestDevice,
        login_as: &TestUser,
        password: &str,
        extra: &[&str],
    ) -> DeviceProcess {
        let addr = self.collabd.as_ref().expect("collabd started").addr;
        self.device_at(addr, device, login_as, password, extra)
    }

    /// [`Stack::device_as`] connecting to `addr` (a dispatcher, or another
    /// collabd) instead of this stack's collabd.
    pub fn device_at(
        &self,
        addr: SocketAddr,
        device: &TestDevice,
        login_as: &TestUser,
        password: &str,
        extra: &[&str],
    ) -> DeviceProcess {
        let pw = self.password_file(login_as, password);
        let mut args: Vec<String> = vec![
            "--connect".into(),
            addr.to_string(),
            "--pin".into(),
            format!("{:08x}", device.pin),
            "--key-file".into(),
            device.key_file.display().to_string(),
            "--user".into(),
            login_as.login.clone(),
            "--password-file".into(),
            pw.display().to_string(),
            "--script".into(),
            "--timeout".into(),
            "30".into(),
            // A lost link ends the device here, as most tests expect; a
            // test of reconnecting passes --reconnect N in `extra`.
            "--reconnect".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        DeviceProcess::spawn(env!("CARGO_BIN_EXE_collab-device"), &args)
    }

    /// `device`'s own user signed in with [`Stack::device_at`] `addr` (a
    /// dispatcher); panics unless the login succeeds.
    pub fn signed_in_at(&self, addr: SocketAddr, device: &TestDevice) -> DeviceProcess {
        let mut d = self.device_at(addr, device, &device.user, &device.user.password, &[]);
        let line = d.expect("login ");
        assert!(
            line.starts_with("login ok"),
            "{}: {line}",
            device.user.login
        );
        d
    }

    /// A device-library client connected (handshake done, not signed in)
    /// to this stack's collabd as `device`.
    pub fn library_client(&self, device: &TestDevice) -> DeviceClient {
        DeviceClient::connect(&DeviceConfig {
            addr: self
                .collabd
                .as_ref()
                .expect("collabd started")
                .addr
                .to_string(),
            pin: device.pin,
            transport_key: device.key,
            tls: None,
            timeout: Duration::from_secs(30),
            status_interval: None,
        })
        .expect("connect")
    }

    /// Starts the device as its own user with the right password.
    pub fn device(&self, device: &TestDevice) -> DeviceProcess {
        self.device_as(device, &device.user, &device.user.password, &[])
    }

    /// Starts the device and waits for `login ok`; returns it and the line.
    pub fn signed_in(&self, device: &TestDevice) -> (DeviceProcess, String) {
        let mut d = self.device(device);
        let line = d.expect("login ");
        assert!(line.starts_with("login ok"), "login failed: {line}");
        (d, line)
    }

    /// Audit events of this instance, oldest first.
    pub fn audit(&mut self) -> Vec<AuditRecord> {
        let mut all = self.db.list_audit(10_000).expect("list audit");
        all.retain(|r| r.event.instance.as_deref() == Some(INSTANCE));
        all.reverse();
        all
    }

    /// Whether an audit event `event` for `pin` whose reason contains
    /// `reason_part` exists.
    pub fn audited(&mut self, event: &str, pin: u32, reason_part: &str) -> bool {
        self.audit().iter().any(|r| {
            r.event.event == event
                && r.event.pin == Some(pin)
                && r.event
                    .reason
                    .as_deref()
                    .unwrap_or("")
                    .contains(reason_part)
        })
    }

    /// The registry coverage of the device's active session, if any.
    pub fn session_coverage(&mut self, pin: u32) -> Option<String> {
        self.db
            .list_sessions(Some(INSTANCE))
            .expect("list sessions")
            .into_iter()
            .find(|s| s.pin == pin)
            .map(|s| s.coverage.as_str().to_string())
    }

    /// Active registry rows of the instance.
    pub fn active_sessions(&mut self) -> usize {
        self.db
            .list_sessions(Some(INSTANCE))
            .expect("list sessions")
            .len()
    }

    /// `sessions_in_use` from the instance's heartbeat.
    pub fn heartbeat_in_use(&mut self) -> u32 {
        self.db
            .instance(INSTANCE)
            .expect("instance")
            .sessions_in_use
    }
}

/// Waits until the device process has exited; returns its exit code and
/// every line it printed.
pub fn finish(device: DeviceProcess) -> (i32, Vec<String>) {
    let (code, lines, _) = device.finish();
    (code, lines)
}
