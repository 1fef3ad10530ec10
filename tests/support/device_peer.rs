//! A small collaboration service for device tests, built on the
//! `collabd::wire` library: it listens on 127.0.0.1:0, runs one thread per
//! connection, answers logins by a fixed rule, sends a few events, echoes
//! messages, and reports everything it receives on a channel. Plus helpers
//! to run the `collab-device` binary and read its output lines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use collabd::wire::{
    accept, Availability, Contact, ContactList, DeviceCommand, DeviceEvent, DeviceMessage, Frame,
    FrameType, Header, Presence, SecureChannel, ServiceMessage, Status, WireError,
};

pub const PIN: u32 = 0x2a00_b1c3;
pub const KEY: [u8; 32] = [0x5c; 32];
pub const PASSWORD: &str = "correct horse battery";
/// Generous bound for waiting on another process or thread (never a
/// timing assertion).
pub const WAIT: Duration = Duration::from_secs(30);

/// What the test service observed.
#[derive(Debug)]
pub enum Seen {
    /// A device finished the handshake.
    Handshake(u32),
    /// A device message arrived.
    Message(DeviceMessage),
    /// The connection ended, with why.
    End(String),
}

pub struct TestService {
    pub addr: SocketAddr,
    pub seen: Receiver<Seen>,
}

impl TestService {
    /// Starts the service; it serves connections until the test ends.
    pub fn start() -> TestService {
        TestService::start_with(None)
    }

    /// Starts the service behind TLS.
    pub fn start_tls(acceptor: native_tls::TlsAcceptor) -> TestService {
        TestService::start_with(Some(acceptor))
    }

    fn start_with(tls: Option<native_tls::TlsAcceptor>) -> TestService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let tx = tx.clone();
                let tls = tls.clone();
                thread::spawn(move || match tls {
                    None => serve(stream, tx),
                    Some(acceptor) => match acceptor.accept(stream) {
                        Ok(s) => serve(s, tx),
                        Err(e) => {
                            let _ = tx.send(Seen::End(format!("TLS: {e}")));
                        }
                    },
                });
            }
        });
        TestService { addr, seen: rx }
    }

    /// The next observation (waits up to [`WAIT`]).
    pub fn next(&self) -> Seen {
        self.seen
            .recv_timeout(WAIT)
            .expect("the test service saw nothing")
    }

    /// Waits for an observation matching `f`; returns everything seen up
    /// to and including it.
    pub fn wait_for(&self, what: &str, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut all = Vec::new();
        loop {
            let s = self
                .seen
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("the test service never saw {what}"));
            let done = f(&s);
            all.push(s);
            if done {
                return all;
            }
        }
    }
}

fn lookup(pin: u32) -> Result<[u8; 32], Status> {
    if pin == PIN {
        Ok(KEY)
    } else {
        Err(Status::UnknownDevice)
    }
}

/// Streams the test service can half-close.
pub trait CloseWrite {
    fn close_write(&mut self);
}

impl CloseWrite for TcpStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl CloseWrite for native_tls::TlsStream<TcpStream> {
    fn close_write(&mut self) {
        let _ = self.shutdown();
    }
}

fn serve<S: Read + Write + CloseWrite>(stream: S, seen: Sender<Seen>) {
    let mut ch = match accept(stream, lookup) {
        Ok(ch) => ch,
        Err(e) => {
            let _ = seen.send(Seen::End(format!("handshake: {e}")));
            return;
        }
    };
    let _ = seen.send(Seen::Handshake(ch.pin()));
    let why = match session(&mut ch, &seen) {
        Ok(why) => why,
        Err(e) => {
            if e.is_protocol_violation() {
                let _ = ch.refuse(Status::ProtocolError, &e.to_string());
            }
            e.to_string()
        }
    };
    // Close politely: stop sending, then read until the device closes, so
    // unread device bytes do not turn our close into a reset that would
    // destroy what we sent last.
    let stream = ch.get_mut();
    stream.close_write();
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let _ = seen.send(Seen::End(why));
}

/// The canned events sent after a successful login (seq 1..=3).
pub fn welcome_events() -> Vec<DeviceEvent> {
    vec![
        DeviceEvent::ContactList(ContactList {
            complete: true,
            groups: vec![collabd::wire::Group {
                id: "1".into(),
                name: "Team Mates".into(),
            }],
            contacts: vec![Contact {
                uri: "sip:bob@example.com".into(),
                name: Some("Bob Jones".into()),
                groups: vec!["1".into()],
            }],
            removed_groups: vec![],
            removed_contacts: vec![],
            part: None,
        }),
        DeviceEvent::Presence(Presence {
            uri: "sip:bob@example.com".into(),
            availability: Availability::Busy,
            note: Some("In a meeting".into()),
            display_name: Some("Bob Jones".into()),
        }),
        DeviceEvent::Message {
            conversation: "c7".into(),
            from: "sip:bob@example.com".into(),
            text: "hi there\nsecond line".into(),
        },
    ]
}

fn session<S: Read + Write>(
    ch: &mut SecureChannel<S>,
    seen: &Sender<Seen>,
) -> Result<String, WireError> {
    let mut seq = 0u64;
    let mut event = |ch: &mut SecureChannel<S>, e: DeviceEvent| {
        seq += 1;
        ch.send_service(&ServiceMessage::Event { seq, event: e })
    };
    loop {
        let m = ch.recv_device()?;
        let _ = seen.send(Seen::Message(m.clone()));
        match m {
            DeviceMessage::Login { user, password, .. } => {
                let (status, text) = if user == "busy" {
                    (Status::ServerBusy, Status::ServerBusy.text())
                } else if password.expose() != PASSWORD {
                    (Status::BadCredentials, Status::BadCredentials.text())
                } else {
                    (Status::Ok, "welcome")
                };
                ch.send_service(&ServiceMessage::LoginResult {
                    status,
                    text: text.into(),
                    session_id: (status == Status::Ok).then(|| "sess-1".to_string()),
                    sip_uri: (status == Status::Ok).then(|| format!("sip:{user}@example.com")),
                })?;
                if status != Status::Ok {
                    return Ok("login refused".into());
                }
                for e in welcome_events() {
                    event(ch, e)?;
                }
            }
            DeviceMessage::Command { id, command } => match command {
                DeviceCommand::Send { conversation, text } if text == "please end" => {
                    ch.send_service(&ServiceMessage::SessionEnded {
                        status: Status::SessionEnded,
                        reason: "evicted by test".into(),
                    })?;
                    let _ = conversation;
                    return Ok("ended by service".into());
                }
                DeviceCommand::Send { conversation, text } if text == "please garble" => {
                    let _ = conversation;
                    // A Data frame whose body was not made with the key.
                    let f = Frame::new(
                        Header::new(FrameType::Data, ch.pin(), seq + 1000),
                        vec![0xee; 40],
                    );
                    ch.get_mut().write_all(&f.to_bytes()).unwrap();
                    return Ok("garbled".into());
                }
                DeviceCommand::Send { conversation, text } => {
                    ch.send_service(&ServiceMessage::CommandResult {
                        id,
                        status: Status::Ok,
                        text: String::new(),
                        conversation: None,
                    })?;
                    event(
                        ch,
                        DeviceEvent::Message {
                            conversation,
                            from: "sip:echo@example.com".into(),
                            text,
                        },
                    )?;
                }
                DeviceCommand::StartConversation { .. } => {
                    ch.send_service(&ServiceMessage::CommandResult {
                        id,
                        status: Status::Ok,
                        text: String::new(),
                        conversation: Some("c1".into()),
                    })?
                }
                _ => ch.send_service(&ServiceMessage::CommandResult {
                    id,
                    status: Status::Failed,
                    text: "not in the test service".into(),
                    conversation: None,
                })?,
            },
            DeviceMessage::Logout => {
                ch.send_service(&ServiceMessage::SessionEnded {
                    status: Status::SessionEnded,
                    reason: "logout".into(),
                })?;
                return Ok("logout".into());
            }
            DeviceMessage::Status { .. } | DeviceMessage::Ack { .. } => {}
        }
    }
}

/// A temporary directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut rnd = [0u8; 8];
        openssl::rand::rand_bytes(&mut rnd).unwrap();
        let name = format!(
            "{tag}-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(rnd)
        );
        let p = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    collabd::hex::encode(bytes)
}

/// A running `collab-device --script`, with its output lines on a channel.
pub struct DeviceProcess {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
    pub stderr: Receiver<String>,
    pub transcript: Vec<String>,
}

impl DeviceProcess {
    pub fn spawn(bin: &str, args: &[String]) -> DeviceProcess {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let lines = pipe_lines(BufReader::new(child.stdout.take().unwrap()));
        let stderr = pipe_lines(BufReader::new(child.stderr.take().unwrap()));
        DeviceProcess {
            child,
            stdin,
            lines,
            stderr,
            transcript: Vec::new(),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads output lines until one starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) => {
                    self.transcript.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line starting with {prefix:?}; got so far:\n{}\nstderr: {:?}",
                    self.transcript.join("\n"),
                    self.stderr.try_iter().collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Closes stdin and waits for the exit code; returns it with the rest
    /// of standard output and all of standard error.
    pub fn finish(mut self) -> (i32, Vec<String>, String) {
        drop(self.stdin.take());
        let status = wait_child(&mut self.child);
        let mut rest = self.transcript;
        rest.extend(self.lines.iter());
        let err: Vec<String> = self.stderr.iter().collect();
        (status, rest, err.join("\n"))
    }
}

fn pipe_lines<R: BufRead + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for l in r.lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (generously) for a child to exit and returns its code.
pub fn wait_child(child: &mut Child) -> i32 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("collab-device did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Standard arguments for a device with the given files.
pub fn device_args(addr: &str, key_file: &Path, user: &str, password_file: &Path) -> Vec<String> {
    vec![
        "--connect".into(),
        addr.into(),
        "--pin".into(),
        format!("{PIN:08x}"),
        "--key-file".into(),
        key_file.display().to_string(),
        "--user".into(),
        user.into(),
        "--password-file".into(),
        password_file.display().to_string(),
        "--script".into(),
        "--timeout".into(),
        "30".into(),
    ]
}
