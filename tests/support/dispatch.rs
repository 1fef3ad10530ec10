//! Helpers for the dispatcher tests: the `collab-dispatcher` binary as a
//! child process, stand-in collabd instances and devices.
//!
//! A [`TestInstance`] is a real peer on 127.0.0.1:0 speaking the real
//! device protocol through `collabd::wire::accept` (transport keys read from
//! the Config DB, as collabd does), recording the plaintext it receives and
//! registering sessions in the real `session` table. It answers the real
//! messages (`Login` with `LoginResult`, `Command` with `CommandResult`)
//! without CWA behind it. Swapping it for a `collabd` process (with
//! `cwa-sim` behind) changes only [`TestInstance`], not the devices or the
//! tests' assertions, which read the `session` table.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::tmp::TempDir;
use collabd::configdb::{ConfigDb, InstanceSettings};
use collabd::wire::{
    self, DeviceCommand, DeviceMessage, Secret, SecureChannel, ServiceMessage, Status, WireError,
};

/// Generous bound for anything the tests wait for (never asserted as a
/// duration; only so a broken build fails instead of hanging).
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `check` every 20 ms until it is true; panics after [`WAIT`].
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running `collab-dispatcher`. Killed on drop; its log is printed if the
/// test is failing.
pub struct Dispatcher {
    child: Child,
    pub addr: SocketAddr,
    pub record_dir: PathBuf,
    log: PathBuf,
    _scratch: TempDir,
}

impl Dispatcher {
    /// Starts the binary on 127.0.0.1:0 against `db_url`, recording every
    /// relayed byte, with `extra` flags after the defaults (a later flag
    /// wins where it repeats one).
    pub fn start(db_url: &str, extra: &[&str]) -> Dispatcher {
        let scratch = TempDir::new("dispatcher");
        let record_dir = scratch.join("record");
        let log = scratch.join("dispatcher.log");
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--refresh-ms",
            "100",
            "--stale-after-ms",
            "60000",
            "--header-timeout-ms",
            "10000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--record-dir".into());
        args.push(record_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
            .args(&args)
            .env("COLLABD_DATABASE_URL", db_url)
            .env("RUST_LOG", "info,collabd=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .expect("start collab-dispatcher");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "dispatcher did not start:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Dispatcher {
            child,
            addr,
            record_dir,
            log,
            _scratch: scratch,
        }
    }

    /// Everything the dispatcher relayed, all connections and directions.
    pub fn recorded(&self) -> Vec<u8> {
        let mut all = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.record_dir) {
            for entry in entries.flatten() {
                all.extend(fs::read(entry.path()).unwrap());
            }
        }
        all
    }

    /// The dispatcher's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and returns at once.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(mut self, signal: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < WAIT, "dispatcher did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- dispatcher log ---\n{}", self.log());
        }
    }
}

/// How a stand-in instance treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Handshake and serve (the normal case).
    Serve,
    /// Accept the TCP connection and close it at once.
    DropAtOnce,
    /// Answer every Hello with a clear Refused 311 ServiceStopping.
    Stopping,
}

/// One plaintext payload an instance received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub pin: u32,
    pub payload: Vec<u8>,
}

/// A stand-in collabd instance (see the module doc).
pub struct TestInstance {
    pub name: String,
    pub addr: SocketAddr,
    db_url: String,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TestInstance {
    /// Adds the instance row (if missing), starts listening on
    /// 127.0.0.1:0, and writes a heartbeat with `in_use` of `limit`.
    pub fn start(db_url: &str, name: &str, behaviour: Behaviour, in_use: u32, limit: u32) -> Self {
        Self::start_with(db_url, name, behaviour, in_use, limit, None)
    }

    /// [`TestInstance::start`], speaking TLS with `tls` to the dispatcher.
    pub fn start_with(
        db_url: &str,
        name: &str,
        behaviour: Behaviour,
        in_use: u32,
        limit: u32,
        tls: Option<native_tls::TlsAcceptor>,
    ) -> Self {
        add_instance_row(db_url, name);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let (stop, open, seen) = (stop.clone(), open.clone(), seen.clone());
            let (db_url, name) = (db_url.to_string(), name.to_string());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) => {
                            thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    stream.set_nonblocking(false).unwrap();
                    if behaviour == Behaviour::DropAtOnce {
                        drop(stream);
                        continue;
                    }
                    open.lock().unwrap().push(stream.try_clone().unwrap());
                    let (db_url, name, seen) = (db_url.clone(), name.clone(), seen.clone());
                    let tls = tls.clone();
                    thread::spawn(move || {
                        serve_one(stream, &db_url, &name, behaviour, &seen, tls.as_ref())
                    });
                }
                // Dropping the listener here closes the port.
            })
        };
        let instance = TestInstance {
            name: name.to_string(),
            addr,
            db_url: db_url.to_string(),
            stop,
            open,
            seen,
            accept_thread: Some(accept_thread),
        };
        instance.heartbeat(in_use, limit, true);
        instance
    }

    /// Writes this instance's heartbeat row now.
    pub fn heartbeat(&self, in_use: u32, limit: u32, healthy: bool) {
        let mut db = ConfigDb::connect(&self.db_url).unwrap();
        db.write_heartbeat(
            &self.name,
            &self.addr.to_string(),
            in_use,
            Some(limit),
            healthy,
        )
        .unwrap();
    }

    /// Makes the heartbeat an hour old (the instance looks dead).
    pub fn age_heartbeat(&self) {
        let mut db = ConfigDb::connect(&self.db_url).unwrap();
        db.client()
            .execute(
                "UPDATE instance SET heartbeat_at = now() - interval '1 hour' WHERE name = $1",
                &[&self.name],
            )
            .unwrap();
    }

    /// Kills the instance: the port closes and every open connection is
    /// cut (its session rows stay, as after a crash).
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            t.join().unwrap();
        }
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The payloads received from `pin`, as text.
    pub fn payloads_from(&self, pin: u32) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.pin == pin)
            .map(|s| String::from_utf8_lossy(&s.payload).into_owned())
            .collect()
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn add_instance_row(db_url: &str, name: &str) {
    let mut db = ConfigDb::connect(db_url).unwrap();
    let exists = db
        .client()
        .query_opt("SELECT 1 FROM instance WHERE name = $1", &[&name])
        .unwrap()
        .is_some();
    if !exists {
        let settings = InstanceSettings {
            cwa_url: "https://cwa.example.test".into(),
            ..InstanceSettings::default()
        };
        db.add_instance(name, &settings).unwrap();
    }
}

/// The stand-in collabd's side of one connection, plain or TLS.
type Link = collabd::net::Stream;

fn serve_one(
    stream: TcpStream,
    db_url: &str,
    name: &str,
    behaviour: Behaviour,
    seen: &Mutex<Vec<Seen>>,
    tls: Option<&native_tls::TlsAcceptor>,
) {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // Close the socket when this connection ends, as collabd does, even
    // though `kill` holds a clone of it.
    let _closer = CloseOnDrop(stream.try_clone().unwrap());
    let mut link = match tls {
        None => Link::Plain(stream),
        Some(acceptor) => match acceptor.accept(stream) {
            Ok(s) => Link::Tls(Box::new(s)),
            Err(_) => return,
        },
    };
    if behaviour == Behaviour::Stopping {
        if let Ok(hello) = wire::read_frame(&mut link, wire::MAX_FRAME_LEN) {
            let refusal =
                wire::Frame::refused(hello.header.pin, Status::ServiceStopping, "stopping");
            let _ = wire::write_frame(&mut link, &refusal);
        }
        return;
    }
    let Ok(mut db) = ConfigDb::connect(db_url) else {
        return;
    };
    let lookup = |pin: u32| -> Result<[u8; 32], Status> {
        let key: Option<Vec<u8>> = db
            .client()
            .query_opt(
                "SELECT transport_key FROM device WHERE pin = $1",
                &[&i64::from(pin)],
            )
            .map_err(|_| Status::ConfigUnavailable)?
            .map(|row| row.get(0));
        key.and_then(|k| k.try_into().ok())
            .ok_or(Status::UnknownDevice)
    };
    let Ok(mut channel) = wire::accept(link, lookup) else {
        return;
    };
    let pin = channel.pin();
    while let Ok(payload) = channel.recv() {
        seen.lock().unwrap().push(Seen {
            pin,
            payload: payload.clone(),
        });
        let reply = match DeviceMessage::decode(&payload) {
            Ok(DeviceMessage::Login { user, .. }) => {
                let held = db
                    .client()
                    .query_opt(
                        "SELECT id FROM session WHERE pin = $1 AND instance = $2 AND state = 'active'",
                        &[&i64::from(pin), &name],
                    )
                    .unwrap()
                    .map(|row| row.get::<_, i64>(0));
                let id = match held {
                    Some(id) => id,
                    None => db.session_started(name, &user, pin).unwrap(),
                };
                ServiceMessage::LoginResult {
                    status: Status::Ok,
                    text: format!("signed in on {name}"),
                    session_id: Some(id.to_string()),
                    sip_uri: None,
                }
            }
            Ok(DeviceMessage::Command { id, .. }) => ServiceMessage::CommandResult {
                id,
                status: Status::Ok,
                text: String::new(),
                conversation: None,
            },
            Ok(_) => continue,
            Err(_) => break,
        };
        if channel.send(&reply.encode()).is_err() {
            break;
        }
    }
}

struct CloseOnDrop(TcpStream);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// A device connected through the dispatcher and past the handshake.
pub type DeviceLink = SecureChannel<TcpStream>;

/// Connects device `pin` through `dispatcher` and runs the handshake.
pub fn connect_device(
    dispatcher: SocketAddr,
    pin: u32,
    key: &[u8; 32],
) -> Result<DeviceLink, WireError> {
    let stream = TcpStream::connect(dispatcher).map_err(WireError::Io)?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    wire::connect(stream, pin, key)
}

/// Signs in over `link`; returns the instance that now holds the device's
/// session, from the Config DB.
pub fn login(
    link: &mut DeviceLink,
    db_url: &str,
    user: &str,
    password: &str,
) -> Result<String, WireError> {
    let message = DeviceMessage::Login {
        user: user.to_string(),
        password: Secret::new(password),
        resume: None,
    };
    link.send(&message.encode())?;
    let reply = ServiceMessage::decode(&link.recv()?)?;
    assert!(reply.is_ok(), "login refused: {reply:?}");
    Ok(session_instance(db_url, link.pin()).expect("a session row after the login"))
}

/// Sends one chat text and waits for the command's result.
pub fn say(link: &mut DeviceLink, text: &str) -> Result<(), WireError> {
    let message = DeviceMessage::Command {
        id: 1,
        command: DeviceCommand::Send {
            conversation: "conversation-1".into(),
            text: text.to_string(),
        },
    };
    link.send(&message.encode())?;
    let reply = ServiceMessage::decode(&link.recv()?)?;
    assert!(reply.is_ok(), "send refused: {reply:?}");
    Ok(())
}

/// The instance holding `pin`'s newest active session, from the Config DB.
pub fn session_instance(db_url: &str, pin: u32) -> Option<String> {
    let mut db = ConfigDb::connect(db_url).unwrap();
    db.instance_holding_session(pin).unwrap()
}

/// Provisions `count` devices (PINs from `first_pin`) for users
/// `DOMAIN\userN`; returns (pin, key, login) triples.
pub fn provision(db_url: &str, first_pin: u32, count: u32) -> Vec<(u32, [u8; 32], String)> {
    let mut db = ConfigDb::connect(db_url).unwrap();
    (0..count)
        .map(|i| {
            let pin = first_pin + i;
            let login = format!("CORP\\user{pin:08x}");
            db.add_user(&login, &format!("sip:user{pin:08x}@corp.example"), true)
                .unwrap();
            let mut key = [0u8; 32];
            openssl::rand::rand_bytes(&mut key).unwrap();
            db.add_device_with_key(pin, &login, &key).unwrap();
            (pin, key, login)
        })
        .collect()
}

/// Reads until end of stream or error; returns what arrived.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("waiting for the dispatcher to close: {e}"),
        }
    }
}

/// A TCP connection to `to` from the local address `source` (any
/// 127.0.0.x works on Linux loopback), for tests of per-address limits.
pub fn connect_from(source: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = to else {
        panic!("connect_from needs an IPv4 destination, not {to}");
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket owned by the TcpStream at once (closed on
    // every error path by its drop); bind and connect get valid sockaddr_in
    // values and their true length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let src = sockaddr(source, 0);
        if libc::bind(
            fd,
            &src as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let dst = sockaddr(*to.ip(), to.port());
        if libc::connect(
            fd,
            &dst as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
