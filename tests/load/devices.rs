//! The load generator: many simulated devices in one process, each a
//! [`DeviceClient`] on its own thread with a small explicit stack, for the
//! load runs (`main.rs` beside it; README, Performance).
//!
//! It owns three shapes of load and what they measure, nothing else:
//!
//! - [`Fleet`]: N devices sign in (at most `concurrency` sign-ins in
//!   flight), then sit idle, acknowledging every event and sending their
//!   periodic status report, until [`Fleet::stop`] signs them all out.
//! - [`run_pairs`]: pairs of devices open a conversation with each other and
//!   exchange messages at a fixed aggregate rate; the receiver measures each
//!   message's latency (receive time − send time, one monotonic clock, since
//!   sender and receiver live in this process) and counts every message, so
//!   a lost or duplicated message is reported, never hidden.
//! - [`login_burst`]: M sign-ins with C concurrent clients, started together;
//!   counts results by status code and keeps the signed-in clients open, for
//!   the login rate and the login storm.
//!
//! Devices come from a provisioning list ([`LoadDevice`]), made by
//! [`generate_devices`] or read from a file ([`parse_devices`]); writing
//! them to the Config DB and to the simulator's users file is the caller's
//! business. No figure is computed here that was not measured: reports hold
//! counts, durations and percentiles of observed samples.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use collabd::device::{DeviceClient, DeviceConfig, DeviceError, TlsConfig};
use collabd::wire::{
    self, ConversationState, DeviceCommand, DeviceEvent, Secret, ServiceMessage, Status, WireError,
};

/// Default stack of a device thread; only the touched pages are resident.
/// The deepest path is deflate: flate2's pure-Rust backend builds its
/// compressor state (over 64 KiB) on the stack before boxing it. Measured:
/// 64 KiB overflows and 128 KiB suffices in release; unoptimised builds
/// need over 256 KiB, so they get 512 KiB.
pub const DEFAULT_STACK: usize = if cfg!(debug_assertions) {
    512 * 1024
} else {
    128 * 1024
};

/// How long an idle device blocks in one read before it looks at the stop
/// flag: long, so that thousands of idle threads do not wake the machine
/// (at 2 s, 5,000 idle devices woke it 2,500 times a second on the CPUs
/// the measured messages need; a fleet's stop now takes up to this long).
const IDLE_SLICE: Duration = Duration::from_secs(10);

/// One provisioned device and the user it signs in as.
#[derive(Clone)]
pub struct LoadDevice {
    /// The device PIN.
    pub pin: u32,
    /// Its 256-bit transport key.
    pub transport_key: [u8; 32],
    /// The login (`DOMAIN\user`).
    pub login: String,
    /// The user's password.
    pub password: Secret,
    /// The user's SIP URI.
    pub sip_uri: String,
}

impl fmt::Debug for LoadDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadDevice")
            .field("pin", &wire::format_pin(self.pin))
            .field("login", &self.login)
            .field("sip_uri", &self.sip_uri)
            .finish_non_exhaustive()
    }
}

/// Why a load run could not be set up or did not complete.
#[derive(Debug)]
pub enum LoadError {
    /// A provisioning line is malformed (1-based line number, why).
    Provisioning(usize, String),
    /// A thread could not be started (the process or system thread limit).
    Spawn(String),
    /// The random source failed.
    Random(String),
    /// A run needs something the caller did not give (e.g. an odd number
    /// of devices for pairs).
    Setup(String),
    /// A device failed in a way the run cannot continue from.
    Device(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Provisioning(line, why) => write!(f, "devices line {line}: {why}"),
            LoadError::Spawn(why) => write!(f, "cannot start a device thread: {why}"),
            LoadError::Random(why) => write!(f, "random source: {why}"),
            LoadError::Setup(why) => write!(f, "load setup: {why}"),
            LoadError::Device(why) => write!(f, "device failed: {why}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Where and how the simulated devices connect.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `HOST:PORT` of the dispatcher or of collabd.
    pub addr: String,
    /// TLS on the first hop, if wanted.
    pub tls: Option<TlsConfig>,
    /// Bound on connect, handshake and each wait for an answer.
    pub timeout: Duration,
    /// Devices' status report interval (`None`: never).
    pub status_interval: Option<Duration>,
    /// Stack size of each device thread, bytes.
    pub stack_size: usize,
    /// Print each message that took longer than this, with the
    /// `CLOCK_MONOTONIC` time it arrived, to line it up with a trace
    /// (`perf record -k CLOCK_MONOTONIC`) of the same run.
    pub report_slower_than: Option<Duration>,
}

impl LoadOptions {
    /// Plain TCP to `addr`, 60 s timeout, no status reports, default stack.
    pub fn new(addr: impl Into<String>) -> LoadOptions {
        LoadOptions {
            addr: addr.into(),
            tls: None,
            timeout: Duration::from_secs(60),
            status_interval: None,
            stack_size: DEFAULT_STACK,
            report_slower_than: None,
        }
    }

    fn device_config(&self, d: &LoadDevice) -> DeviceConfig {
        DeviceConfig {
            addr: self.addr.clone(),
            pin: d.pin,
            transport_key: d.transport_key,
            tls: self.tls.clone(),
            timeout: self.timeout,
            status_interval: self.status_interval,
        }
    }
}

// ---------------------------------------------------------------------------
// Provisioning

fn random_bytes<const N: usize>() -> Result<[u8; N], LoadError> {
    let mut buf = [0u8; N];
    openssl::rand::rand_bytes(&mut buf).map_err(|e| LoadError::Random(e.to_string()))?;
    Ok(buf)
}

/// `count` devices with PINs `first_pin`, `first_pin + 1`, ..., fresh random
/// transport keys and passwords, users `DOMAIN\uNNNNNN` with SIP URIs
/// `sip:uNNNNNN@HOST` where `HOST` is `domain` in lower case followed by
/// `.example.com`.
pub fn generate_devices(
    count: usize,
    first_pin: u32,
    domain: &str,
) -> Result<Vec<LoadDevice>, LoadError> {
    let host = format!("{}.example.com", domain.to_ascii_lowercase());
    (0..count)
        .map(|i| {
            let pin = u32::try_from(i)
                .ok()
                .and_then(|i| first_pin.checked_add(i))
                .ok_or_else(|| LoadError::Setup(format!("PIN {first_pin:#x} + {i} overflows")))?;
            Ok(LoadDevice {
                pin,
                transport_key: random_bytes()?,
                login: format!("{domain}\\u{i:06}"),
                password: Secret::new(collabd::hex::encode(&random_bytes::<12>()?)),
                sip_uri: format!("sip:u{i:06}@{host}"),
            })
        })
        .collect()
}

/// One line of the devices file: `PIN KEYHEX LOGIN PASSWORD SIPURI`
/// (8 hex digits, 64 hex digits, then three words). The file holds secrets:
/// keep it private.
pub fn device_line(d: &LoadDevice) -> String {
    format!(
        "{} {} {} {} {}",
        wire::format_pin(d.pin),
        collabd::hex::encode(&d.transport_key),
        d.login,
        d.password.expose(),
        d.sip_uri
    )
}

/// Parses a devices file (see [`device_line`]); blank lines and lines
/// starting with `#` are skipped. An error names the line, never its
/// secrets.
pub fn parse_devices(text: &str) -> Result<Vec<LoadDevice>, LoadError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [pin, key, login, password, sip_uri] = fields[..] else {
            return Err(LoadError::Provisioning(
                line_no,
                format!("{} fields, expected 5", fields.len()),
            ));
        };
        let pin = wire::parse_pin(pin)
            .ok_or_else(|| LoadError::Provisioning(line_no, "bad PIN".into()))?;
        let transport_key = collabd::hex::parse_key(key)
            .ok_or_else(|| LoadError::Provisioning(line_no, "key is not 64 hex digits".into()))?;
        if !sip_uri.starts_with("sip:") {
            return Err(LoadError::Provisioning(
                line_no,
                "SIP URI must start with sip:".into(),
            ));
        }
        out.push(LoadDevice {
            pin,
            transport_key,
            login: login.to_string(),
            password: Secret::new(password),
            sip_uri: sip_uri.to_string(),
        });
    }
    Ok(out)
}

/// The devices' users as lines of a cwa-sim users file
/// (`DOMAIN\user PASSWORD sip:URI`), without contacts.
pub fn sim_users(devices: &[LoadDevice]) -> String {
    let mut out = String::with_capacity(devices.len() * 64);
    for d in devices {
        out.push_str(&d.login);
        out.push(' ');
        out.push_str(d.password.expose());
        out.push(' ');
        out.push_str(&d.sip_uri);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// Results

/// How one sign-in ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Signed in.
    Ok,
    /// Refused with a status (by the login result or a clear `Refused`
    /// frame before it).
    Refused(Status),
    /// Anything else (connect failure, closed link, timeout), in words.
    Failed(String),
}

impl LoginOutcome {
    fn of_error(e: &DeviceError) -> LoginOutcome {
        match e {
            DeviceError::LoginRefused(status, _)
            | DeviceError::Wire(WireError::Refused(status, _)) => LoginOutcome::Refused(*status),
            e => LoginOutcome::Failed(e.to_string()),
        }
    }
}

/// Counts of sign-in outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginCounts {
    /// Signed in.
    pub ok: usize,
    /// Refused, by status code.
    pub refused: BTreeMap<u16, usize>,
    /// Other failures, by message (at most a few kinds are expected).
    pub failed: BTreeMap<String, usize>,
}

impl LoginCounts {
    fn add(&mut self, o: &LoginOutcome) {
        match o {
            LoginOutcome::Ok => self.ok += 1,
            LoginOutcome::Refused(s) => *self.refused.entry(s.code()).or_default() += 1,
            LoginOutcome::Failed(why) => *self.failed.entry(why.clone()).or_default() += 1,
        }
    }

    /// Every outcome counted.
    pub fn total(&self) -> usize {
        self.ok + self.refused.values().sum::<usize>() + self.failed.values().sum::<usize>()
    }

    /// Refusals with `status`.
    pub fn refused_with(&self, status: Status) -> usize {
        self.refused.get(&status.code()).copied().unwrap_or(0)
    }
}

impl fmt::Display for LoginCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ok={}", self.ok)?;
        for (code, n) in &self.refused {
            write!(f, " refused[{code}]={n}")?;
        }
        for (why, n) in &self.failed {
            write!(f, " failed[{why}]={n}")?;
        }
        Ok(())
    }
}

/// Percentiles of a set of measured durations (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl Percentiles {
    /// From unsorted samples; `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p·n samples at or
        // below it.
        let rank = |p: f64| -> Duration {
            let r = ((p * n as f64).ceil() as usize).clamp(1, n);
            samples[r - 1]
        };
        let total: Duration = samples.iter().sum();
        Some(Percentiles {
            count: n,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples[n - 1],
            mean: total / n as u32,
        })
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={} p90={} p99={} p99.9={} max={} mean={}",
            self.count,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.mean)
        )
    }
}

// ---------------------------------------------------------------------------
// A counting semaphore for "at most C sign-ins in flight".

struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    fn enter(&self) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
    }

    fn leave(&self) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
    }
}

/// Where device threads wait until every one of them is ready, then all
/// start together at the time the coordinator chooses (or give up, if the
/// coordinator could not start them all).
struct StartLine {
    state: Mutex<(usize, Option<Option<Instant>>)>,
    cv: Condvar,
}

impl StartLine {
    fn new() -> Arc<StartLine> {
        Arc::new(StartLine {
            state: Mutex::new((0, None)),
            cv: Condvar::new(),
        })
    }

    /// Reports ready, then waits for the start: `Some(at)` to go at `at`,
    /// `None` to give up.
    fn arrive(&self) -> Option<Instant> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 += 1;
        self.cv.notify_all();
        loop {
            if let Some(decision) = st.1 {
                return decision;
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until `n` threads have arrived.
    fn wait_ready(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while st.0 < n {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets every waiting thread go at `at`, or give up with `None`.
    fn release(&self, at: Option<Instant>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(at);
        self.cv.notify_all();
    }
}

fn spawn_device<T: Send + 'static>(
    name: String,
    stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, LoadError> {
    thread::Builder::new()
        .name(name)
        .stack_size(stack)
        .spawn(f)
        .map_err(|e| LoadError::Spawn(e.to_string()))
}

fn connect_and_login(opts: &LoadOptions, d: &LoadDevice) -> Result<DeviceClient, DeviceError> {
    let mut client = DeviceClient::connect(&opts.device_config(d))?;
    client.login(&d.login, &d.password, None)?;
    Ok(client)
}

// ---------------------------------------------------------------------------
// Idle fleet

/// What one idle device saw over its life.
#[derive(Debug, Clone, Default)]
struct IdleTally {
    events: u64,
    ended: Option<String>,
    logout: Option<String>,
}

/// N devices signed in and idle. Each thread acknowledges every event it
/// receives; a session that ends on the service's initiative is counted in
/// [`FleetReport::ended_early`].
pub struct Fleet {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<IdleTally>>,
    /// How the sign-ins went.
    pub logins: LoginCounts,
    /// From the first connect to the last sign-in result.
    pub sign_in_time: Duration,
}

/// What a fleet saw, collected by [`Fleet::stop`].
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    /// Events received (and acknowledged) by all devices.
    pub events: u64,
    /// Sessions the service ended before the stop, with why.
    pub ended_early: BTreeMap<String, usize>,
    /// Sign-outs that did not end cleanly, with why.
    pub logout_failures: BTreeMap<String, usize>,
    /// Devices signed out.
    pub logged_out: usize,
}

impl Fleet {
    /// Starts one thread per device; at most `concurrency` are between
    /// connect and login result at once. Returns when every device has its
    /// sign-in result. Devices that did not sign in end their thread at
    /// once; the others stay idle until [`Fleet::stop`].
    pub fn sign_in(
        opts: &LoadOptions,
        devices: &[LoadDevice],
        concurrency: usize,
    ) -> Result<Fleet, LoadError> {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::new(concurrency));
        let (tx, rx) = mpsc::channel::<LoginOutcome>();
        let started = Instant::now();
        let mut threads = Vec::with_capacity(devices.len());
        for d in devices {
            let (opts, d, stop_flag, gate, tx) = (
                opts.clone(),
                d.clone(),
                stop.clone(),
                gate.clone(),
                tx.clone(),
            );
            let name = format!("idle-{}", wire::format_pin(d.pin));
            let spawned = spawn_device(name, opts.stack_size, move || {
                gate.enter();
                let result = connect_and_login(&opts, &d);
                gate.leave();
                let outcome = match &result {
                    Ok(_) => LoginOutcome::Ok,
                    Err(e) => LoginOutcome::of_error(e),
                };
                let _ = tx.send(outcome);
                drop(tx);
                match result {
                    Ok(client) => idle(client, &stop_flag),
                    Err(_) => IdleTally::default(),
                }
            });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    // Let the ones already started finish and sign out.
                    stop.store(true, Ordering::SeqCst);
                    for h in threads {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        drop(tx);
        let mut logins = LoginCounts::default();
        for outcome in rx.iter() {
            logins.add(&outcome);
        }
        Ok(Fleet {
            stop,
            threads,
            logins,
            sign_in_time: started.elapsed(),
        })
    }

    /// Tells every device to sign out, waits for all threads, and reports.
    pub fn stop(self) -> FleetReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = FleetReport::default();
        for h in self.threads {
            let tally = h.join().unwrap_or_else(|_| IdleTally {
                ended: Some("device thread panicked".into()),
                ..IdleTally::default()
            });
            report.events += tally.events;
            if let Some(why) = tally.ended {
                *report.ended_early.entry(why).or_default() += 1;
            }
            match tally.logout {
                Some(why) if why.is_empty() => report.logged_out += 1,
                Some(why) => *report.logout_failures.entry(why).or_default() += 1,
                None => {}
            }
        }
        report
    }
}

fn idle(mut client: DeviceClient, stop: &AtomicBool) -> IdleTally {
    let mut tally = IdleTally::default();
    while !stop.load(Ordering::Relaxed) {
        match client.poll(IDLE_SLICE) {
            Ok(None) => {}
            Ok(Some(ServiceMessage::Event { seq, .. })) => {
                tally.events += 1;
                if let Err(e) = client.ack(seq) {
                    tally.ended = Some(format!("ack: {e}"));
                    return tally;
                }
            }
            Ok(Some(ServiceMessage::SessionEnded { status, reason })) => {
                tally.ended = Some(format!("session ended {}: {reason}", status.code()));
                return tally;
            }
            Ok(Some(ServiceMessage::ServiceStopping)) => {
                tally.ended = Some("service stopping".into());
                return tally;
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tally.ended = Some(e.to_string());
                return tally;
            }
        }
    }
    tally.logout = Some(match client.logout() {
        Ok(seen) => {
            let ended = seen.iter().any(|m| {
                matches!(
                    m,
                    ServiceMessage::SessionEnded {
                        status: Status::SessionEnded,
                        ..
                    }
                )
            });
            if ended {
                String::new()
            } else {
                "no session-ended after logout".into()
            }
        }
        Err(e) => e.to_string(),
    });
    tally
}

// ---------------------------------------------------------------------------
// Login burst

/// The result of [`login_burst`].
pub struct BurstReport {
    /// Outcomes by kind.
    pub logins: LoginCounts,
    /// From the start signal to the last result.
    pub elapsed: Duration,
    /// Connect-to-result time of each successful sign-in.
    pub latency: Option<Percentiles>,
    /// The signed-in clients, still open (drop them or sign them out).
    pub clients: Vec<DeviceClient>,
}

impl BurstReport {
    /// Successful sign-ins per second over the whole burst.
    pub fn logins_per_second(&self) -> f64 {
        self.logins.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Signs in every device with `concurrency` worker threads that start
/// together (after all are spawned) and take the next device as soon as
/// their previous sign-in has its result. Signed-in clients are kept open
/// and returned, so the sessions stay live for the whole burst.
pub fn login_burst(
    opts: &LoadOptions,
    devices: &[LoadDevice],
    concurrency: usize,
) -> Result<BurstReport, LoadError> {
    let workers = concurrency.clamp(1, devices.len().max(1));
    let devices: Arc<Vec<LoadDevice>> = Arc::new(devices.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = StartLine::new();
    let mut threads = Vec::with_capacity(workers);
    for w in 0..workers {
        let (opts, devices, next, line) =
            (opts.clone(), devices.clone(), next.clone(), start.clone());
        let spawned = spawn_device(format!("login-{w}"), opts.stack_size, move || {
            let mut mine = Vec::new();
            if line.arrive().is_none() {
                return mine;
            }
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = devices.get(i) else { break };
                let t0 = Instant::now();
                match connect_and_login(&opts, d) {
                    Ok(c) => mine.push((LoginOutcome::Ok, Some((c, t0.elapsed())))),
                    Err(e) => mine.push((LoginOutcome::of_error(&e), None)),
                }
            }
            mine
        });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                start.release(None);
                for h in threads {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    start.wait_ready(workers);
    let t0 = Instant::now();
    start.release(Some(t0));
    let mut logins = LoginCounts::default();
    let mut clients = Vec::new();
    let mut latencies = Vec::new();
    for h in threads {
        let results = h
            .join()
            .map_err(|_| LoadError::Device("a login worker panicked".into()))?;
        for (outcome, client) in results {
            logins.add(&outcome);
            if let Some((c, took)) = client {
                clients.push(c);
                latencies.push(took);
            }
        }
    }
    let elapsed = t0.elapsed();
    Ok(BurstReport {
        logins,
        elapsed,
        latency: Percentiles::of(latencies),
        clients,
    })
}

// ---------------------------------------------------------------------------
// Message pairs

/// The result of [`run_pairs`].
#[derive(Debug, Clone, Default)]
pub struct PairsReport {
    /// Messages sent (their `Send` command was written).
    pub sent: u64,
    /// Distinct messages received by their addressee.
    pub received: u64,
    /// Messages sent but never received.
    pub lost: u64,
    /// Extra copies of messages already received.
    pub duplicates: u64,
    /// `Send` commands answered with something other than Ok.
    pub send_failures: u64,
    /// Latency of every received message.
    pub latency: Option<Percentiles>,
    /// From the first to the last send.
    pub send_span: Duration,
    /// Devices that failed (sign-in, conversation set-up, lost link), why.
    pub device_failures: Vec<String>,
}

impl PairsReport {
    /// Messages sent per second over the sending span.
    pub fn send_rate(&self) -> f64 {
        if self.sent < 2 {
            return 0.0;
        }
        (self.sent - 1) as f64 / self.send_span.as_secs_f64().max(1e-9)
    }
}

/// Message text: `lt SENDER SEQ NANOS`, `NANOS` the send time since the
/// run's epoch.
fn message_text(sender: usize, seq: u64, nanos: u128) -> String {
    format!("lt {sender} {seq} {nanos}")
}

fn parse_message_text(text: &str) -> Option<(usize, u64, u128)> {
    let mut it = text.strip_prefix("lt ")?.split(' ');
    let sender = it.next()?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    let nanos = it.next()?.parse().ok()?;
    it.next().is_none().then_some((sender, seq, nanos))
}

/// What one device of a pair did.
#[derive(Default)]
struct PairTally {
    sent: u64,
    send_failures: u64,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    /// Copies received of each of the peer's messages, by sequence.
    copies: Vec<u32>,
    latencies: Vec<Duration>,
    failure: Option<String>,
}

/// Runs `devices.len() / 2` pairs (devices 0 and 1, 2 and 3, ...). In each
/// pair the first device starts a conversation with the second, which
/// accepts; when every pair is connected, each device sends
/// `per_device` messages to its peer, all devices together at `rate`
/// messages per second, evenly spaced. Each device meanwhile receives its
/// peer's messages, records their latency and acknowledges every event.
/// A device stops when it has sent everything and received everything
/// from its peer, or `drain` after its last send.
pub fn run_pairs(
    opts: &LoadOptions,
    devices: &[LoadDevice],
    rate: f64,
    per_device: u64,
    drain: Duration,
) -> Result<PairsReport, LoadError> {
    if devices.len() < 2 || devices.len() % 2 != 0 {
        return Err(LoadError::Setup(format!(
            "pairs need an even number of devices, got {}",
            devices.len()
        )));
    }
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(LoadError::Setup(format!("bad message rate {rate}")));
    }
    let n = devices.len();
    // Everyone signs in before any conversation starts (an invitation to
    // a user not yet signed in fails as offline), and everyone is set up
    // (or failed) before anyone sends.
    let signed_in = StartLine::new();
    let start = StartLine::new();
    let epoch = Instant::now();
    let interval = Duration::from_secs_f64(n as f64 / rate);
    let offset = Duration::from_secs_f64(1.0 / rate);
    let mut threads = Vec::with_capacity(n);
    for pair in 0..n / 2 {
        for side in 0..2 {
            let me = 2 * pair + side;
            let peer = 2 * pair + 1 - side;
            let job = PairJob {
                opts: opts.clone(),
                me,
                device: devices[me].clone(),
                peer_uri: devices[peer].sip_uri.clone(),
                starts: side == 0,
                signed_in: signed_in.clone(),
                start: start.clone(),
                epoch,
                first_send_offset: offset * me as u32,
                interval,
                per_device,
                drain,
            };
            let name = format!("pair-{}", wire::format_pin(devices[me].pin));
            match spawn_device(name, opts.stack_size, move || job.run()) {
                Ok(h) => threads.push(h),
                Err(e) => {
                    signed_in.release(None);
                    start.release(None);
                    for h in threads {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
    }
    signed_in.wait_ready(n);
    signed_in.release(Some(Instant::now()));
    // Start everyone half a second after the last one is ready.
    start.wait_ready(n);
    start.release(Some(Instant::now() + Duration::from_millis(500)));
    let mut report = PairsReport::default();
    let mut latencies = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut tallies = Vec::with_capacity(n);
    for h in threads {
        tallies.push(h.join().unwrap_or_else(|_| PairTally {
            failure: Some("device thread panicked".into()),
            ..PairTally::default()
        }));
    }
    for (me, t) in tallies.iter().enumerate() {
        let peer = me ^ 1;
        report.sent += t.sent;
        report.send_failures += t.send_failures;
        if let Some(why) = &t.failure {
            report
                .device_failures
                .push(format!("{}: {why}", devices[me].login));
        }
        first = match (first, t.first_send) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = match (last, t.last_send) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // What `me` received is what `peer` sent.
        let peer_sent = tallies[peer].sent as usize;
        for (seq, copies) in t.copies.iter().enumerate() {
            match copies {
                0 if seq < peer_sent => report.lost += 1,
                0 => {}
                c => {
                    report.received += 1;
                    report.duplicates += u64::from(c - 1);
                }
            }
        }
        latencies.extend_from_slice(&t.latencies);
    }
    report.latency = Percentiles::of(latencies);
    if let (Some(a), Some(b)) = (first, last) {
        report.send_span = b - a;
    }
    Ok(report)
}

struct PairJob {
    opts: LoadOptions,
    me: usize,
    device: LoadDevice,
    peer_uri: String,
    starts: bool,
    signed_in: Arc<StartLine>,
    start: Arc<StartLine>,
    epoch: Instant,
    first_send_offset: Duration,
    interval: Duration,
    per_device: u64,
    drain: Duration,
}

impl PairJob {
    fn run(self) -> PairTally {
        let mut tally = PairTally {
            copies: vec![0; self.per_device as usize],
            ..PairTally::default()
        };
        let client = connect_and_login(&self.opts, &self.device);
        let all_signed_in = self.signed_in.arrive().is_some();
        let set_up = match client {
            Err(e) => Err(format!("sign-in: {e}")),
            Ok(_) if !all_signed_in => Err("run abandoned before the start".into()),
            Ok(c) => self.set_up(c, &mut tally),
        };
        // Always arrive at the start line, even after a failure, so the
        // coordinator never waits forever.
        let go = self.start.arrive();
        let (mut client, conversation) = match set_up {
            Ok(x) => x,
            Err(why) => {
                tally.failure = Some(why);
                return tally;
            }
        };
        let Some(go) = go else {
            tally.failure = Some("run abandoned before the start".into());
            return tally;
        };
        if let Err(why) = self.exchange(&mut client, &conversation, go, &mut tally) {
            tally.failure = Some(why);
            return tally;
        }
        let _ = client.logout();
        tally
    }

    /// Joins the pair's conversation; returns the client and its id.
    fn set_up(
        &self,
        mut client: DeviceClient,
        tally: &mut PairTally,
    ) -> Result<(DeviceClient, String), String> {
        let deadline = Instant::now() + self.opts.timeout;
        if self.starts {
            let id = client
                .send_command(DeviceCommand::StartConversation {
                    to: vec![self.peer_uri.clone()],
                    subject: Some("load".into()),
                    text: None,
                })
                .map_err(|e| format!("start conversation: {e}"))?;
            let mut conversation = None;
            let mut connected = false;
            while conversation.is_none() || !connected {
                let msg = self.next_before(&mut client, deadline, tally)?;
                match msg {
                    ServiceMessage::CommandResult {
                        id: got,
                        status,
                        text,
                        conversation: c,
                    } if got == id => {
                        if status != Status::Ok {
                            return Err(format!(
                                "start conversation refused: {} {text}",
                                status.code()
                            ));
                        }
                        conversation = Some(c.ok_or("start conversation: no conversation id")?);
                    }
                    ServiceMessage::Event {
                        event:
                            DeviceEvent::ConversationState {
                                state: ConversationState::Connected,
                                ..
                            },
                        ..
                    } => connected = true,
                    _ => {}
                }
            }
            Ok((client, conversation.unwrap_or_default()))
        } else {
            // Wait for the invitation, then accept it.
            let conversation = loop {
                if let ServiceMessage::Event {
                    event:
                        DeviceEvent::Invitation {
                            conversation, from, ..
                        },
                    ..
                } = self.next_before(&mut client, deadline, tally)?
                {
                    if from.eq_ignore_ascii_case(&self.peer_uri) {
                        break conversation;
                    }
                }
            };
            let id = client
                .send_command(DeviceCommand::Accept {
                    conversation: conversation.clone(),
                })
                .map_err(|e| format!("accept: {e}"))?;
            loop {
                if let ServiceMessage::CommandResult {
                    id: got,
                    status,
                    text,
                    ..
                } = self.next_before(&mut client, deadline, tally)?
                {
                    if got == id {
                        if status != Status::Ok {
                            return Err(format!("accept refused: {} {text}", status.code()));
                        }
                        break;
                    }
                }
            }
            Ok((client, conversation))
        }
    }

    /// The next service message before `deadline`, acknowledging events
    /// and counting any load message that arrives early.
    fn next_before(
        &self,
        client: &mut DeviceClient,
        deadline: Instant,
        tally: &mut PairTally,
    ) -> Result<ServiceMessage, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out setting up the conversation".into());
            }
            match client.poll(left) {
                Ok(Some(m)) => {
                    self.handle(client, &m, tally)?;
                    return Ok(m);
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Acknowledges an event, records a load message, ends on session end.
    fn handle(
        &self,
        client: &mut DeviceClient,
        m: &ServiceMessage,
        tally: &mut PairTally,
    ) -> Result<(), String> {
        match m {
            ServiceMessage::Event { seq, event } => {
                if let DeviceEvent::Message { from, text, .. } = event {
                    if from.eq_ignore_ascii_case(&self.peer_uri) {
                        self.record(text, tally);
                    }
                }
                client.ack(*seq).map_err(|e| format!("ack: {e}"))
            }
            ServiceMessage::CommandResult { status, .. } if *status != Status::Ok => {
                tally.send_failures += 1;
                Ok(())
            }
            ServiceMessage::SessionEnded { status, reason } => {
                Err(format!("session ended {}: {reason}", status.code()))
            }
            ServiceMessage::ServiceStopping => Err("service stopping".into()),
            _ => Ok(()),
        }
    }

    fn record(&self, text: &str, tally: &mut PairTally) {
        let now = self.epoch.elapsed().as_nanos();
        let Some((_sender, seq, sent)) = parse_message_text(text) else {
            return;
        };
        if let Some(c) = tally.copies.get_mut(seq as usize) {
            *c += 1;
            if *c == 1 {
                let nanos = now.saturating_sub(sent);
                let took = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                if self
                    .opts
                    .report_slower_than
                    .is_some_and(|limit| took > limit)
                {
                    eprintln!(
                        "slow message: arrived at {:.6} s (CLOCK_MONOTONIC), took {:.3} ms, \
                         device {} message {seq}",
                        monotonic_seconds(),
                        took.as_secs_f64() * 1e3,
                        self.me
                    );
                }
                tally.latencies.push(took);
            }
        }
    }

    fn received_all(tally: &PairTally) -> bool {
        tally.copies.iter().all(|c| *c > 0)
    }

    fn exchange(
        &self,
        client: &mut DeviceClient,
        conversation: &str,
        go: Instant,
        tally: &mut PairTally,
    ) -> Result<(), String> {
        let mut next_send = go + self.first_send_offset;
        let mut seq = 0u64;
        let mut stop_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if seq < self.per_device && now >= next_send {
                let text = message_text(self.me, seq, self.epoch.elapsed().as_nanos());
                let sent_at = Instant::now();
                client
                    .send_command(DeviceCommand::Send {
                        conversation: conversation.to_string(),
                        text,
                    })
                    .map_err(|e| format!("send: {e}"))?;
                tally.sent += 1;
                tally.first_send.get_or_insert(sent_at);
                tally.last_send = Some(sent_at);
                seq += 1;
                // Open loop: the schedule does not slip when a send is late.
                next_send += self.interval;
                if seq == self.per_device {
                    stop_at = Some(Instant::now() + self.drain);
                }
                continue;
            }
            if seq == self.per_device && Self::received_all(tally) {
                return Ok(());
            }
            if stop_at.is_some_and(|t| now >= t) {
                return Ok(());
            }
            let wait = if seq < self.per_device {
                next_send.saturating_duration_since(now)
            } else {
                stop_at.map_or(IDLE_SLICE, |t| t.saturating_duration_since(now))
            };
            match client.poll(wait.max(Duration::from_micros(100))) {
                Ok(Some(m)) => self.handle(client, &m, tally)?,
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// The `CLOCK_MONOTONIC` time, in seconds (what `perf record -k
/// CLOCK_MONOTONIC` stamps its events with).
fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples).unwrap();
        assert_eq!(p.count, 100);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p90, Duration::from_millis(90));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.p999, Duration::from_millis(100));
        assert_eq!(p.max, Duration::from_millis(100));
        assert!(Percentiles::of(Vec::new()).is_none());
        let one = Percentiles::of(vec![Duration::from_micros(7)]).unwrap();
        assert_eq!(one.p50, Duration::from_micros(7));
        assert_eq!(one.p99, Duration::from_micros(7));
    }

    #[test]
    fn devices_round_trip_through_their_file_format() {
        let devices = generate_devices(3, 0x3000_0000, "LOAD").unwrap();
        assert_eq!(devices[2].pin, 0x3000_0002);
        assert_eq!(devices[1].login, "LOAD\\u000001");
        assert_eq!(devices[1].sip_uri, "sip:u000001@load.example.com");
        assert_ne!(devices[0].transport_key, devices[1].transport_key);
        let text: String = devices.iter().map(|d| device_line(d) + "\n").collect();
        let back = parse_devices(&format!("# load devices\n\n{text}")).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in devices.iter().zip(&back) {
            assert_eq!(a.pin, b.pin);
            assert_eq!(a.transport_key, b.transport_key);
            assert_eq!(a.login, b.login);
            assert_eq!(a.password, b.password);
            assert_eq!(a.sip_uri, b.sip_uri);
        }
        let users = sim_users(&devices);
        assert_eq!(users.lines().count(), 3);
        assert!(users.starts_with("LOAD\\u000000 "));
    }

    #[test]
    fn bad_device_lines_are_refused_by_line_number_without_secrets() {
        let good = device_line(&generate_devices(1, 1, "LOAD").unwrap()[0]);
        let cases = [
            "0000000g 00 a b sip:x@y".to_string(),
            good.replace("sip:", "tel:"),
            format!("{good} extra"),
            good.replacen(' ', " zz", 1),
        ];
        for bad in cases {
            let e = parse_devices(&format!("{good}\n{bad}\n")).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("devices line 2:"), "{text}");
            assert!(!text.contains(&bad), "{text}");
        }
    }

    #[test]
    fn message_text_round_trips_and_rejects_others() {
        let t = message_text(12, 345, 6_789_000);
        assert_eq!(parse_message_text(&t), Some((12, 345, 6_789_000)));
        assert_eq!(parse_message_text("hello"), None);
        assert_eq!(parse_message_text("lt 1 2 3 4"), None);
        assert_eq!(parse_message_text("lt 1 x 3"), None);
    }

    #[test]
    fn login_counts_tally_by_kind() {
        let mut c = LoginCounts::default();
        c.add(&LoginOutcome::Ok);
        c.add(&LoginOutcome::Refused(Status::ServerBusy));
        c.add(&LoginOutcome::Refused(Status::ServerBusy));
        c.add(&LoginOutcome::Failed("closed".into()));
        assert_eq!(c.total(), 4);
        assert_eq!(c.refused_with(Status::ServerBusy), 2);
        assert_eq!(c.to_string(), "ok=1 refused[301]=2 failed[closed]=1");
    }
}
