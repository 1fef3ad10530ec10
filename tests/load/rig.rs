//! The rig for the load runs (`main.rs` beside it): the open-file limit raised
//! to what the process may have, thousands of users and devices written to
//! the Config DB in one transaction, `collabd` and `collab-dispatcher` as
//! child processes tuned for load (no byte recording, quiet logs), and
//! samples of a process's memory, threads and descriptors from `/proc`.
//! Sizes come from environment variables so a run can be scaled without
//! editing code.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::devices::LoadDevice;

use super::support::tmp::TempDir;

/// Generous bound on waiting for a process to start (never asserted as a
/// duration).
pub const START_WAIT: Duration = Duration::from_secs(120);

/// `name` from the environment as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// Readies the load client, a process with a thread per device: puts it
/// on the system-wide futex hash (see `collabd::ops::futex`; with the
/// kernel's 16 buckets every wake between its thousands of device threads
/// would cost several microseconds) and raises its soft open-file limit to
/// its hard limit (children inherit it); returns the new soft limit.
pub fn prepare_load_client() -> libc::rlim_t {
    collabd::ops::futex::use_global_hash();
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

/// Writes the instance row and every device's user and device rows in one
/// transaction (thousands of rows in three statements).
pub fn provision(
    db_url: &str,
    instance: &str,
    cwa_url: &str,
    max_sessions: usize,
    devices: &[LoadDevice],
) {
    let mut client = postgres::Client::connect(db_url, postgres::NoTls).expect("connect");
    let mut tx = client.transaction().expect("begin");
    tx.execute(
        "INSERT INTO instance (name, cwa_url, max_sessions, http_max_connections) \
         VALUES ($1, $2, $3, $4)",
        &[
            &instance,
            &cwa_url,
            &(max_sessions as i32),
            &(max_sessions.max(1000) as i32),
        ],
    )
    .expect("insert instance");
    let logins: Vec<String> = devices.iter().map(|d| d.login.clone()).collect();
    let uris: Vec<String> = devices.iter().map(|d| d.sip_uri.clone()).collect();
    let pins: Vec<i64> = devices.iter().map(|d| i64::from(d.pin)).collect();
    let keys: Vec<Vec<u8>> = devices.iter().map(|d| d.transport_key.to_vec()).collect();
    tx.execute(
        "INSERT INTO app_user (login, sip_uri) SELECT * FROM unnest($1::text[], $2::text[])",
        &[&logins, &uris],
    )
    .expect("insert users");
    tx.execute(
        "INSERT INTO device (pin, login, transport_key) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
        &[&pins, &logins, &keys],
    )
    .expect("insert devices");
    tx.commit().expect("commit provisioning");
}

/// Active session rows of `instance` in the registry.
pub fn active_sessions(db_url: &str, instance: &str) -> i64 {
    let mut client = postgres::Client::connect(db_url, postgres::NoTls).expect("connect");
    client
        .query_one(
            "SELECT count(*) FROM session WHERE instance = $1 AND state = 'active'",
            &[&instance],
        )
        .expect("count sessions")
        .get(0)
}

/// A child process that announced `listening on ADDR` on stdout; killed on
/// drop, its log tail printed if the test is failing.
pub struct Daemon {
    child: Child,
    /// Its listening address.
    pub addr: SocketAddr,
    log: PathBuf,
    name: &'static str,
}

impl Daemon {
    /// Starts `bin` with `args` and `env`, stderr to a log in `dir`.
    pub fn start(
        name: &'static str,
        bin: &str,
        args: &[String],
        env: &[(&str, &str)],
        dir: &TempDir,
    ) -> Daemon {
        let log = dir.join(&format!("{name}.log"));
        // `LOAD_COLLABD_PREFIX` (e.g. `heaptrack -o /tmp/h`) runs collabd
        // under a profiler; the child, and the pid sampled, is then the
        // profiler's.
        let prefix = match name {
            "collabd" => std::env::var("LOAD_COLLABD_PREFIX").unwrap_or_default(),
            _ => String::new(),
        };
        let mut words = prefix.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&log).expect("log file")));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().parse::<SocketAddr>().ok());
                    break;
                }
            }
            for _ in lines {}
        });
        match rx.recv_timeout(START_WAIT) {
            Ok(Some(addr)) => Daemon {
                child,
                addr,
                log,
                name,
            },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{name} did not announce its address; log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    /// The process id (for `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} log (last lines) ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// `collabd` for `instance`, listening on 127.0.0.1:0, logging at warn
/// (a load run must not measure its own logging), with `extra` flags.
pub fn start_collabd(db_url: &str, instance: &str, extra: &[String], dir: &TempDir) -> Daemon {
    let mut args: Vec<String> = [
        "--instance",
        instance,
        "--database",
        db_url,
        "--listen",
        "127.0.0.1:0",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    Daemon::start("collabd", env!("CARGO_BIN_EXE_collabd"), &args, &[], dir)
}

/// `collab-dispatcher` on 127.0.0.1:0 with room for `connections` relays
/// (every load device connects from 127.0.0.1, so the cap on handshakes in
/// progress per address is lifted to that too), no recording, logging at
/// warn.
pub fn start_dispatcher(db_url: &str, connections: usize, dir: &TempDir) -> Daemon {
    let args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database".into(),
        db_url.into(),
        "--refresh-ms".into(),
        "200".into(),
        "--max-connections".into(),
        connections.to_string(),
        "--max-pending-per-address".into(),
        connections.to_string(),
    ];
    Daemon::start(
        "collab-dispatcher",
        env!("CARGO_BIN_EXE_collab-dispatcher"),
        &args,
        &[("RUST_LOG", "warn")],
        dir,
    )
}

/// What `/proc/PID` says about a process's footprint.
#[derive(Debug, Clone, Default)]
pub struct ProcSample {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
    /// RssAnon, KiB.
    pub rss_anon_kib: u64,
    /// VmSize, KiB.
    pub vm_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// smaps_rollup: Pss, KiB.
    pub pss_kib: u64,
    /// smaps_rollup: Private_Dirty, KiB.
    pub private_dirty_kib: u64,
    /// Memory mappings (lines of /proc/PID/maps).
    pub maps: u64,
}

fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Samples `/proc/PID/{status,smaps_rollup,fd,maps}`.
pub fn sample(pid: u32) -> ProcSample {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().count() as u64)
        .unwrap_or(0);
    ProcSample {
        rss_kib: kib_field(&status, "VmRSS:"),
        hwm_kib: kib_field(&status, "VmHWM:"),
        rss_anon_kib: kib_field(&status, "RssAnon:"),
        vm_kib: kib_field(&status, "VmSize:"),
        threads: kib_field(&status, "Threads:"),
        fds,
        pss_kib: kib_field(&rollup, "Pss:"),
        private_dirty_kib: kib_field(&rollup, "Private_Dirty:"),
        maps,
    }
}

impl std::fmt::Display for ProcSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS={} KiB (anon {} KiB, peak {} KiB) Pss={} KiB Private_Dirty={} KiB \
             VmSize={} KiB threads={} fds={} maps={}",
            self.rss_kib,
            self.rss_anon_kib,
            self.hwm_kib,
            self.pss_kib,
            self.private_dirty_kib,
            self.vm_kib,
            self.threads,
            self.fds,
            self.maps
        )
    }
}

/// System-wide thread count (for the pid_max budget).
pub fn system_threads() -> u64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .and_then(|f| f.split('/').nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Total CPU time (user + system) of a process so far, in clock ticks
/// converted to seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Today's date (UTC) as YYYY-MM-DD, for the printed figure lines.
pub fn today() -> String {
    collabd::ops::utc::Utc::from_system_time(std::time::SystemTime::now()).date()
}

/// Resident memory of `/proc/PID/smaps` grouped by mapping kind and size:
/// (label, mappings, total Rss KiB), largest first. Thread stacks show as
/// anonymous mappings of the stack size; malloc arenas as `[heap]` and
/// anonymous mappings of up to 64 MiB.
pub fn smaps_groups(pid: u32) -> Vec<(String, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut groups: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let mut f = line.split_whitespace();
            let range = f.next().unwrap_or("");
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
            let size_kib = (u64::from_str_radix(b, 16).unwrap_or(0)
                - u64::from_str_radix(a, 16).unwrap_or(0))
                / 1024;
            let label = if path.is_empty() {
                format!("anon {perms} {size_kib} KiB")
            } else if path.starts_with('/') {
                "files".to_string()
            } else {
                path.to_string()
            };
            groups.entry(label.clone()).or_default().0 += 1;
            current = Some(label);
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if let Some(label) = &current {
                let kib: u64 = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                groups.entry(label.clone()).or_default().1 += kib;
            }
        }
    }
    let mut out: Vec<(String, u64, u64)> = groups
        .into_iter()
        .map(|(k, (n, rss))| (k, n, rss))
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.2));
    out
}

/// The top `n` groups of [`smaps_groups`] as printable lines.
pub fn smaps_summary(pid: u32, n: usize) -> String {
    smaps_groups(pid)
        .into_iter()
        .take(n)
        .map(|(label, count, rss)| format!("  {rss:>9} KiB in {count:>6} x {label}\n"))
        .collect()
}

/// Threads of a process counted by name (`/proc/PID/task/*/comm`).
pub fn thread_names(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            // Names like "session-0000002a" count as "session-*".
            let name = comm.trim();
            let key = match name.rsplit_once('-') {
                Some((head, tail)) if tail.chars().all(|c| c.is_ascii_hexdigit()) => {
                    format!("{head}-*")
                }
                _ => name.to_string(),
            };
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// A process's TCP sockets counted by the remote port, from
/// `/proc/PID/net/tcp` matched against its socket inodes.
pub fn sockets_by_remote_port(pid: u32) -> std::collections::BTreeMap<u16, usize> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in dir.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(n.to_string());
                }
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                let port = f[2]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0);
                *out.entry(port).or_insert(0) += 1;
            }
        }
    }
    out
}

/// `perf record` attached to a process for the length of a run, when
/// `LOAD_PERF_DIR` names a directory (the file is `DIR/NAME.data`);
/// stopped with SIGINT on drop so perf writes its file.
pub struct Profiler(Option<Child>);

impl Profiler {
    /// Starts profiling `pid` (call graphs, 999 Hz) if asked to.
    pub fn start(pid: u32, name: &str) -> Profiler {
        let Ok(dir) = std::env::var("LOAD_PERF_DIR") else {
            return Profiler(None);
        };
        let out = PathBuf::from(dir).join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        // Let perf attach before the load starts.
        thread::sleep(Duration::from_millis(500));
        Profiler(child)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// Prints where `name`'s resident memory is (the `top` largest kinds of
/// mapping) and its threads by name, to the run's standard error.
pub fn print_breakdown(name: &str, pid: u32, top: usize) {
    eprintln!(
        "{name} resident memory by mapping:\n{}",
        smaps_summary(pid, top)
    );
    eprintln!("{name} threads by name: {:?}", thread_names(pid));
}
