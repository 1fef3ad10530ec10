//! `collab-device`: argument parsing, the key and password files, and the
//! two front ends over [`DeviceClient`]: `--script` (records on standard
//! input and output in the [`lineformat`], for tests and
//! load) and an interactive line UI for a person. Exit codes are in
//! [`CliError::exit_code`] and collab-device(1).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::Duration;

use super::lineformat::{self, Line, Record, ScriptAction};
use super::reconnect::{self, Backoff, Reattached};
use super::{DeviceClient, DeviceConfig, DeviceError, TlsConfig};
use crate::ops::args::Args;
use crate::wire::{
    self, Availability, Coverage, DeviceCommand, DeviceEvent, Secret, ServiceMessage, Status,
    WireError,
};

const USAGE: &str = "usage: collab-device --connect HOST:PORT --pin PIN --key-file FILE \
--user LOGIN --password-file FILE [--tls] [--ca FILE] [--tls-name NAME] [--script] \
[--manual-ack] [--status-interval SECS] [--timeout SECS] [--reconnect ATTEMPTS]";

/// How often the front ends look at standard input between reads.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Bound on queued, not yet handled input lines.
const INPUT_QUEUE: usize = 256;

/// Why `collab-device` stopped; each kind has its own exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments (64).
    Usage(String),
    /// The key or password file is missing, unreadable or malformed (66).
    File(String),
    /// The connection or the login was refused with a status (2).
    Refused(Status, String),
    /// The connection could not be made or was lost (3).
    Connection(String),
    /// The peer broke the protocol, or the key is wrong (4).
    Protocol(String),
    /// The service ended the session or is stopping (5).
    Ended(Status, String),
    /// Internal failure, e.g. the random source (70).
    Internal(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Refused(..) => 2,
            CliError::Connection(_) => 3,
            CliError::Protocol(_) => 4,
            CliError::Ended(..) => 5,
            CliError::Usage(_) => 64,
            CliError::File(_) => 66,
            CliError::Internal(_) => 70,
        }
    }

    fn from_device(e: DeviceError, logged_in: bool) -> CliError {
        match e {
            DeviceError::Connect(why) => CliError::Connection(why),
            DeviceError::Tls(why) => CliError::Connection(format!("TLS: {why}")),
            DeviceError::LoginRefused(s, t) => CliError::Refused(s, t),
            DeviceError::Unexpected(why) => CliError::Protocol(why),
            DeviceError::Wire(WireError::Refused(s, t)) if logged_in => CliError::Ended(s, t),
            DeviceError::Wire(WireError::Refused(s, t)) => CliError::Refused(s, t),
            DeviceError::Wire(WireError::Crypto(why)) => CliError::Internal(why),
            DeviceError::Wire(w) if w.is_protocol_violation() => CliError::Protocol(w.to_string()),
            DeviceError::Wire(w) => CliError::Connection(w.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(why) => write!(f, "{why}\n{USAGE}"),
            CliError::File(why) => write!(f, "{why}"),
            CliError::Refused(s, t) => write!(f, "refused: {} {} ({t})", s.code(), s.name()),
            CliError::Connection(why) => write!(f, "connection failed or lost: {why}"),
            CliError::Protocol(why) => write!(f, "protocol error: {why}"),
            CliError::Ended(s, t) => write!(f, "session ended: {} {} ({t})", s.code(), s.name()),
            CliError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for CliError {}

/// Parsed command line.
#[derive(Debug)]
pub struct Options {
    connect: String,
    pin: u32,
    key_file: PathBuf,
    user: String,
    password_file: PathBuf,
    tls: bool,
    ca: Option<PathBuf>,
    tls_name: Option<String>,
    script: bool,
    manual_ack: bool,
    status_interval: Option<Duration>,
    timeout: Duration,
    /// Reconnect attempts after a lost link (0: none).
    reconnect_attempts: u32,
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Options, CliError> {
    let usage = |m: String| CliError::Usage(m);
    let mut args = Args::new(args.iter().cloned());
    let mut connect = None;
    let mut pin = None;
    let mut key_file = None;
    let mut user = None;
    let mut password_file = None;
    let mut o = Options {
        connect: String::new(),
        pin: 0,
        key_file: PathBuf::new(),
        user: String::new(),
        password_file: PathBuf::new(),
        tls: false,
        ca: None,
        tls_name: None,
        script: false,
        manual_ack: false,
        status_interval: Some(Duration::from_secs(60)),
        timeout: Duration::from_secs(30),
        reconnect_attempts: reconnect::DEFAULT_ATTEMPTS,
    };
    let secs = |flag: &str, v: &str| -> Result<u64, CliError> {
        v.parse::<u64>()
            .map_err(|_| usage(format!("{flag} wants whole seconds, not \"{v}\"")))
    };
    while let Some(word) = args.next_word() {
        let a = &word;
        let mut value = |flag: &str| {
            args.value()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match a.as_str() {
            "--connect" => connect = Some(value(a)?),
            "--pin" => {
                let v = value(a)?;
                pin = Some(
                    wire::parse_pin(&v)
                        .ok_or_else(|| usage(format!("--pin wants 8 hex digits, not \"{v}\"")))?,
                );
            }
            "--key-file" => key_file = Some(PathBuf::from(value(a)?)),
            "--user" => user = Some(value(a)?),
            "--password-file" => password_file = Some(PathBuf::from(value(a)?)),
            "--tls" => o.tls = true,
            "--ca" => o.ca = Some(PathBuf::from(value(a)?)),
            "--tls-name" => o.tls_name = Some(value(a)?),
            "--script" => o.script = true,
            "--manual-ack" => o.manual_ack = true,
            "--status-interval" => {
                let n = secs(a, &value(a)?)?;
                o.status_interval = if n == 0 {
                    None
                } else {
                    Some(Duration::from_secs(n))
                };
            }
            "--timeout" => {
                let n = secs(a, &value(a)?)?;
                if n == 0 {
                    return Err(usage("--timeout must be at least 1".into()));
                }
                o.timeout = Duration::from_secs(n);
            }
            "--reconnect" => {
                let v = value(a)?;
                o.reconnect_attempts = v.parse::<u32>().map_err(|_| {
                    usage(format!(
                        "--reconnect wants a number of attempts, not \"{v}\""
                    ))
                })?;
            }
            "-h" | "--help" => return Err(usage("help requested".into())),
            other => return Err(usage(format!("unknown argument \"{other}\""))),
        }
    }
    o.connect = connect.ok_or_else(|| usage("--connect is required".into()))?;
    o.pin = pin.ok_or_else(|| usage("--pin is required".into()))?;
    o.key_file = key_file.ok_or_else(|| usage("--key-file is required".into()))?;
    o.user = user.ok_or_else(|| usage("--user is required".into()))?;
    o.password_file = password_file.ok_or_else(|| usage("--password-file is required".into()))?;
    if (o.ca.is_some() || o.tls_name.is_some()) && !o.tls {
        return Err(usage("--ca and --tls-name need --tls".into()));
    }
    Ok(o)
}

/// Reads a transport key: 64 hex digits (surrounding white space allowed)
/// or exactly 32 raw bytes.
pub fn read_key_file(path: &Path) -> Result<[u8; 32], CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::File(format!("key file {}: {e}", path.display())))?;
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if let Some(key) = crate::hex::parse_key(text) {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    if bytes.len() == 32 {
        key.copy_from_slice(&bytes);
        return Ok(key);
    }
    Err(CliError::File(format!(
        "key file {}: want 64 hex digits or 32 raw bytes",
        path.display()
    )))
}

/// Reads the password: the first line of the file, without its line end.
pub fn read_password_file(path: &Path) -> Result<Secret, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::File(format!("password file {}: {e}", path.display())))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        return Err(CliError::File(format!(
            "password file {} is empty",
            path.display()
        )));
    }
    Ok(Secret::new(first))
}

/// Runs `collab-device` with `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), CliError> {
    let o = parse_args(args)?;
    let key = read_key_file(&o.key_file)?;
    let password = read_password_file(&o.password_file)?;
    let cfg = DeviceConfig {
        addr: o.connect.clone(),
        pin: o.pin,
        transport_key: key,
        tls: o.tls.then(|| TlsConfig {
            ca_file: o.ca.clone(),
            domain: o.tls_name.clone(),
        }),
        timeout: o.timeout,
        status_interval: o.status_interval,
    };
    let mut out = Output::new(o.script);
    out.resumes = o.reconnect_attempts > 0;
    let mut client = match DeviceClient::connect(&cfg) {
        Ok(c) => c,
        Err(e) => {
            if let DeviceError::Wire(WireError::Refused(s, t)) = &e {
                out.record(status_record("refused", *s, t));
            }
            return Err(CliError::from_device(e, false));
        }
    };
    out.record(
        Line::new("connected")
            .kv("pin", &wire::format_pin(o.pin))
            .done(),
    );
    out.human(&format!(
        "connected to {} as device {}",
        o.connect,
        wire::format_pin(o.pin)
    ));
    let accepted = match client.login(&o.user, &password, None) {
        Ok(a) => a,
        Err(e) => {
            match &e {
                DeviceError::LoginRefused(s, t) => {
                    out.record(status_record("login refused", *s, t));
                    out.human(&format!("login refused: {} ({t})", s.text()));
                }
                DeviceError::Wire(WireError::Refused(s, t)) => {
                    out.record(status_record("refused", *s, t))
                }
                _ => {}
            }
            return Err(CliError::from_device(e, false));
        }
    };
    out.record(
        Line::new("login ok")
            .opt("session", accepted.session_id.as_deref())
            .opt("sip", accepted.sip_uri.as_deref())
            .kv("text", &accepted.text)
            .done(),
    );
    out.human(&format!(
        "signed in as {} ({}); /help lists commands",
        o.user,
        accepted.sip_uri.as_deref().unwrap_or("no SIP URI")
    ));
    let input = spawn_stdin_reader();
    let mut ui = Interactive::default();
    loop {
        match session_loop(&mut client, &input, &mut out, &mut ui, o.manual_ack) {
            Ok(()) => break,
            Err(CliError::Connection(why)) if out.resumes => {
                keep_session(&mut client, &cfg, &o, &password, &mut out, why)?;
            }
            Err(e) => return Err(e),
        }
    }
    drop(password);
    // Logout requested or input ended.
    let seen = client
        .logout()
        .map_err(|e| CliError::from_device(e, true))?;
    for m in &seen {
        out.message(m, &mut ui);
    }
    out.record(Line::new("closed").done());
    Ok(())
}

fn status_record(word: &str, s: Status, text: &str) -> String {
    Line::new(word)
        .kv("code", &s.code().to_string())
        .kv("name", s.name())
        .kv("text", text)
        .done()
}

/// Reads standard input on its own thread into a bounded queue; the queue
/// closes at end of input.
fn spawn_stdin_reader() -> Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    thread::Builder::new()
        .name("stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let stdin = io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        })
        .expect("spawning the stdin thread");
    rx
}

/// Runs until the user signs out or input ends (`Ok`), or the session
/// fails.
fn session_loop(
    client: &mut DeviceClient,
    input: &Receiver<String>,
    out: &mut Output,
    ui: &mut Interactive,
    manual_ack: bool,
) -> Result<(), CliError> {
    let mut line_no = 0u64;
    loop {
        loop {
            match client.poll(Duration::ZERO) {
                Ok(Some(m)) => handle_message(client, m, out, ui, manual_ack)?,
                Ok(None) => break,
                Err(e) => return Err(lost(e, out)),
            }
        }
        loop {
            match input.try_recv() {
                Ok(line) => {
                    line_no += 1;
                    if out.script {
                        if script_line(client, &line, line_no, out, ui)? {
                            return Ok(());
                        }
                    } else if ui.line(client, &line, out)? {
                        return Ok(());
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        match client.poll(POLL_SLICE) {
            Ok(Some(m)) => handle_message(client, m, out, ui, manual_ack)?,
            Ok(None) => {}
            Err(e) => return Err(lost(e, out)),
        }
    }
}

fn lost(e: DeviceError, out: &mut Output) -> CliError {
    if out.resumes {
        if let DeviceError::Wire(w) = &e {
            if reconnect::is_lost_link(w) {
                // Not yet the end: [`keep_session`] reconnects, and says
                // `lost` only if it gives up.
                return CliError::Connection(e.to_string());
            }
        }
    }
    let err = CliError::from_device(e, true);
    let kind = match &err {
        CliError::Protocol(_) => "protocol",
        CliError::Ended(..) => "refused",
        _ => "connection",
    };
    out.record(
        Line::new("lost")
            .kv("kind", kind)
            .kv("text", &err.to_string())
            .done(),
    );
    out.human(&format!("*** {err}"));
    err
}

/// The link was lost (`why`): reconnect with [`Backoff`] and resume the
/// session, saying so in `reconnecting`, `resumed` or `resume refused`
/// records (collab-device(1)). Gives up, with `lost`, when the bounds are
/// reached or a failure is final.
fn keep_session(
    client: &mut DeviceClient,
    cfg: &DeviceConfig,
    o: &Options,
    password: &Secret,
    out: &mut Output,
    why: String,
) -> Result<(), CliError> {
    let mut backoff = Backoff::new(o.reconnect_attempts);
    let mut last = why;
    let give_up = |out: &mut Output, err: CliError| {
        let kind = match &err {
            CliError::Protocol(_) => "protocol",
            CliError::Refused(..) | CliError::Ended(..) => "refused",
            _ => "connection",
        };
        out.record(
            Line::new("lost")
                .kv("kind", kind)
                .kv("text", &err.to_string())
                .done(),
        );
        out.human(&format!("*** {err}"));
        err
    };
    loop {
        let Some(wait) = backoff.next_wait() else {
            return Err(give_up(
                out,
                CliError::Connection(format!(
                    "{last}; gave up after {} reconnect attempts",
                    backoff.tried()
                )),
            ));
        };
        out.record(
            Line::new("reconnecting")
                .kv("attempt", &backoff.tried().to_string())
                .kv("wait-ms", &wait.as_millis().to_string())
                .kv("text", &last)
                .done(),
        );
        out.human(&format!(
            "*** link lost ({last}); reconnecting in {} ms (attempt {})",
            wait.as_millis(),
            backoff.tried()
        ));
        thread::sleep(wait);
        match client.reconnect(cfg, &o.user, password) {
            Ok(Reattached::Resumed {
                session,
                acked,
                resent,
            }) => {
                let mut rec = Line::new("resumed")
                    .kv("session", &session)
                    .kv("acked", &acked.to_string());
                for id in &resent {
                    rec = rec.kv("resent", &id.to_string());
                }
                out.record(rec.done());
                out.human(&format!("*** back in session {session}"));
                return Ok(());
            }
            Ok(Reattached::NewSession {
                old,
                session,
                sip_uri,
                text,
                dropped,
            }) => {
                let mut rec = Line::new("resume refused")
                    .opt("old", old.as_deref())
                    .opt("session", session.as_deref())
                    .opt("sip", sip_uri.as_deref())
                    .kv("text", &text);
                for id in &dropped {
                    rec = rec.kv("dropped", &id.to_string());
                }
                out.record(rec.done());
                out.human(&format!(
                    "*** the session was gone; signed in afresh ({}); commands without a result: {}",
                    session.as_deref().unwrap_or("no session id"),
                    dropped.len()
                ));
                return Ok(());
            }
            Err(e) if reconnect::worth_retrying(&e) => last = e.to_string(),
            Err(e) => {
                if let DeviceError::LoginRefused(s, t) = &e {
                    out.record(status_record("login refused", *s, t));
                }
                return Err(give_up(out, CliError::from_device(e, false)));
            }
        }
    }
}

/// A write to the service failed. The service may have said its last word
/// (session ended, service stopping) and closed the link just before, so
/// read what is still queued: the user learns why the session ended rather
/// than only that the connection was lost.
fn write_failed(
    client: &mut DeviceClient,
    e: DeviceError,
    out: &mut Output,
    ui: &mut Interactive,
) -> CliError {
    // Bounded: a few queued messages, each within half a second.
    for _ in 0..16 {
        let m = match client.poll(Duration::from_millis(500)) {
            Ok(Some(m)) => m,
            _ => break,
        };
        out.message(&m, ui);
        match m {
            ServiceMessage::SessionEnded { status, reason } => {
                return CliError::Ended(status, reason)
            }
            ServiceMessage::ServiceStopping => {
                return CliError::Ended(
                    Status::ServiceStopping,
                    Status::ServiceStopping.text().into(),
                )
            }
            _ => {}
        }
    }
    lost(e, out)
}

fn handle_message(
    client: &mut DeviceClient,
    m: ServiceMessage,
    out: &mut Output,
    ui: &mut Interactive,
    manual_ack: bool,
) -> Result<(), CliError> {
    out.message(&m, ui);
    match m {
        ServiceMessage::Event { seq, .. } if !manual_ack => {
            if let Err(e) = client.ack(seq) {
                return Err(write_failed(client, e, out, ui));
            }
            out.record(Line::new("acked").kv("seq", &seq.to_string()).done());
            Ok(())
        }
        ServiceMessage::SessionEnded { status, reason } => Err(CliError::Ended(status, reason)),
        ServiceMessage::ServiceStopping => Err(CliError::Ended(
            Status::ServiceStopping,
            Status::ServiceStopping.text().into(),
        )),
        _ => Ok(()),
    }
}

/// Runs one script line; true means sign out.
fn script_line(
    client: &mut DeviceClient,
    line: &str,
    line_no: u64,
    out: &mut Output,
    ui: &mut Interactive,
) -> Result<bool, CliError> {
    let action =
        Record::parse(line).and_then(|r| r.map(|r| lineformat::parse_action(&r)).transpose());
    let action = match action {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(false),
        Err(why) => {
            out.record(
                Line::new("error")
                    .kv("line", &line_no.to_string())
                    .kv("text", &why)
                    .done(),
            );
            return Ok(false);
        }
    };
    let sent = match action {
        ScriptAction::Logout => return Ok(true),
        ScriptAction::Status(c) => client
            .send_status(c)
            .map(|_| Line::new("sent status").kv("coverage", c.name()).done()),
        ScriptAction::Ack(seq) => client
            .ack(seq)
            .map(|_| Line::new("acked").kv("seq", &seq.to_string()).done()),
        ScriptAction::Command(c) => {
            let name = c.name();
            client.send_command(c).map(|id| {
                Line::new("sent")
                    .kv("id", &id.to_string())
                    .kv("cmd", name)
                    .done()
            })
        }
    };
    match sent {
        Ok(rec) => {
            out.record(rec);
            Ok(false)
        }
        Err(e) => Err(write_failed(client, e, out, ui)),
    }
}

/// Where output goes: records in script mode, prose otherwise.
struct Output {
    script: bool,
    stdout: io::Stdout,
    /// A lost link is reconnected and resumed, not the end (then the
    /// `lost` record waits until reconnecting gives up).
    resumes: bool,
    /// The contact list as the events so far make it, for the record
    /// that says a list sent in parts is whole.
    list: ListAssembly,
}

impl Output {
    fn new(script: bool) -> Output {
        Output {
            script,
            stdout: io::stdout(),
            resumes: false,
            list: ListAssembly::default(),
        }
    }

    fn put(&mut self, line: &str) {
        let mut lock = self.stdout.lock();
        // A closed stdout is not worth dying for; the exit code still tells.
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    }

    /// A script-mode record.
    fn record(&mut self, line: String) {
        if self.script {
            self.put(&line);
        }
    }

    /// An interactive-mode line.
    fn human(&mut self, line: &str) {
        if !self.script {
            self.put(line);
        }
    }

    fn message(&mut self, m: &ServiceMessage, ui: &mut Interactive) {
        if self.script {
            for l in lineformat::service_lines(m) {
                self.put(&l);
            }
            if let ServiceMessage::Event {
                seq,
                event: DeviceEvent::ContactList(list),
            } = m
            {
                if let Some(whole) = self.list.apply(*seq, list) {
                    self.put(&whole);
                }
            }
        } else {
            for l in ui.show(m) {
                self.put(&l);
            }
        }
    }
}

/// The device's contact list as assembled from `contact-list` events: a
/// complete list replaces it, a delta changes it. When the last part of a
/// list sent in parts is in, [`ListAssembly::apply`] gives the
/// `contact-list whole` record (collab-device(1)).
#[derive(Default)]
struct ListAssembly {
    groups: std::collections::BTreeSet<String>,
    contacts: std::collections::BTreeSet<String>,
}

impl ListAssembly {
    fn apply(&mut self, seq: u64, list: &wire::ContactList) -> Option<String> {
        if list.complete {
            self.groups.clear();
            self.contacts.clear();
        }
        self.groups.extend(list.groups.iter().map(|g| g.id.clone()));
        self.contacts
            .extend(list.contacts.iter().map(|c| c.uri.clone()));
        for g in &list.removed_groups {
            self.groups.remove(g);
        }
        for u in &list.removed_contacts {
            self.contacts.remove(u);
        }
        let part = list.part?;
        (part.number == part.of).then(|| {
            Line::new("contact-list whole")
                .kv("seq", &seq.to_string())
                .kv("parts", &part.of.to_string())
                .kv("groups", &self.groups.len().to_string())
                .kv("contacts", &self.contacts.len().to_string())
                .done()
        })
    }
}

/// The interactive UI's memory: contacts with presence, conversations, and
/// which conversation plain text goes to.
#[derive(Default)]
struct Interactive {
    contacts: BTreeMap<String, (Option<String>, Option<String>)>,
    presence: BTreeMap<String, (Availability, Option<String>)>,
    conversations: BTreeMap<String, String>,
    current: Option<String>,
    pending_start: BTreeMap<u64, String>,
    /// People's own access levels, and the level of everyone else.
    levels: BTreeMap<String, wire::AccessLevel>,
    default_level: Option<wire::AccessLevel>,
    /// Watchers: name and whether acknowledged.
    watchers: BTreeMap<String, (Option<String>, bool)>,
}

const HELP: &str = "\
commands:
  /contacts                     contacts, their presence and access level
  /convs                        open conversations
  /msg URI TEXT                 start a conversation with URI
  /send CONV TEXT               send to a conversation
  /to CONV                      plain lines go to CONV from now on
  TEXT                          send to the current conversation
  /accept CONV  /leave CONV  /invite CONV URI
  /status AVAIL [NOTE]          online busy dnd brb away offline
  /coverage in-coverage|dormant|active
  /add URI [NAME]  /remove URI  /search TEXT  /watch URI
  /access [URI LEVEL]           access levels; set URI's to blocked public
                                company team or personal
  /watchers                     people who added you
  /allow URI                    acknowledge a watcher
  /addback URI [NAME]           acknowledge a watcher and add them
  /quit                         sign out";

impl Interactive {
    fn name_of(&self, uri: &str) -> String {
        match self.contacts.get(uri) {
            Some((Some(name), _)) if !name.is_empty() => format!("{name} <{uri}>"),
            _ => uri.to_string(),
        }
    }

    /// Runs one typed line; true means sign out.
    fn line(
        &mut self,
        client: &mut DeviceClient,
        line: &str,
        out: &mut Output,
    ) -> Result<bool, CliError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(false);
        }
        let (cmd, rest) = match line.strip_prefix('/') {
            Some(l) => l.split_once(' ').map_or((l, ""), |(c, r)| (c, r.trim())),
            None => ("", line),
        };
        let (first, tail) = rest
            .split_once(' ')
            .map_or((rest, ""), |(a, b)| (a, b.trim()));
        let command = match cmd {
            "" => match &self.current {
                Some(c) => Some(DeviceCommand::Send {
                    conversation: c.clone(),
                    text: rest.to_string(),
                }),
                None => {
                    out.human("no current conversation: /msg URI TEXT or /to CONV");
                    None
                }
            },
            "quit" | "logout" => return Ok(true),
            "help" => {
                out.human(HELP);
                None
            }
            "contacts" => {
                for (uri, _) in self.contacts.iter() {
                    let p = match self.presence.get(uri) {
                        Some((a, Some(n))) if !n.is_empty() => format!("{} ({n})", a.to_wire()),
                        Some((a, _)) => a.to_wire(),
                        None => "unknown".into(),
                    };
                    // The access list carries URIs in lower case.
                    let level = self
                        .levels
                        .get(&uri.to_ascii_lowercase())
                        .or(self.default_level.as_ref())
                        .map_or(String::new(), |l| format!("  [{}]", l.name()));
                    out.human(&format!("  {:<40} {p}{level}", self.name_of(uri)));
                }
                None
            }
            "convs" => {
                for (c, who) in &self.conversations {
                    let mark = if self.current.as_deref() == Some(c) {
                        "*"
                    } else {
                        " "
                    };
                    out.human(&format!(" {mark}{c}  {who}"));
                }
                None
            }
            "to" => {
                self.current = Some(first.to_string());
                None
            }
            "msg" if !first.is_empty() => Some(DeviceCommand::StartConversation {
                to: vec![first.to_string()],
                subject: None,
                text: (!tail.is_empty()).then(|| tail.to_string()),
            }),
            "send" if !first.is_empty() && !tail.is_empty() => Some(DeviceCommand::Send {
                conversation: first.to_string(),
                text: tail.to_string(),
            }),
            "accept" if !first.is_empty() => {
                self.current = Some(first.to_string());
                Some(DeviceCommand::Accept {
                    conversation: first.to_string(),
                })
            }
            "leave" if !first.is_empty() => Some(DeviceCommand::Leave {
                conversation: first.to_string(),
            }),
            "invite" if !first.is_empty() && !tail.is_empty() => Some(DeviceCommand::Invite {
                conversation: first.to_string(),
                uris: tail.split_whitespace().map(str::to_string).collect(),
            }),
            "status" => match Availability::from_wire(first) {
                Some(availability) => Some(DeviceCommand::SetPresence {
                    availability,
                    note: (!tail.is_empty()).then(|| tail.to_string()),
                }),
                None => {
                    out.human("availability: online busy dnd brb away offline, or a number");
                    None
                }
            },
            "coverage" => {
                match Coverage::from_name(first) {
                    Some(c) => {
                        if let Err(e) = client.send_status(c) {
                            return Err(write_failed(client, e, out, self));
                        }
                    }
                    None => out.human("coverage: in-coverage dormant active"),
                }
                None
            }
            "add" if !first.is_empty() => Some(DeviceCommand::AddContact {
                uri: first.to_string(),
                name: (!tail.is_empty()).then(|| tail.to_string()),
                group: None,
            }),
            "remove" if !first.is_empty() => Some(DeviceCommand::RemoveContact {
                uri: first.to_string(),
            }),
            "search" if !rest.is_empty() => Some(DeviceCommand::Search {
                query: rest.to_string(),
            }),
            "watch" if !first.is_empty() => Some(DeviceCommand::SubscribePresence {
                uris: rest.split_whitespace().map(str::to_string).collect(),
            }),
            "access" if first.is_empty() => {
                let default = self
                    .default_level
                    .map_or("unknown", wire::AccessLevel::name);
                out.human(&format!("  everyone else: {default}"));
                for (uri, level) in &self.levels {
                    out.human(&format!("  {:<40} {}", self.name_of(uri), level.name()));
                }
                None
            }
            "access" => match wire::AccessLevel::from_name(tail) {
                Some(level) => Some(DeviceCommand::SetAccess {
                    uri: first.to_string(),
                    level,
                }),
                None => {
                    out.human("level: blocked public company team personal");
                    None
                }
            },
            "watchers" => {
                for (uri, (name, acknowledged)) in &self.watchers {
                    let who = match name {
                        Some(n) => format!("{n} <{uri}>"),
                        None => uri.clone(),
                    };
                    let mark = if *acknowledged {
                        ""
                    } else {
                        "  (new: /allow or /addback)"
                    };
                    out.human(&format!("  {who}{mark}"));
                }
                None
            }
            "allow" if !first.is_empty() => Some(DeviceCommand::AcknowledgeWatcher {
                uri: first.to_string(),
                add_contact: false,
                name: None,
                group: None,
            }),
            "addback" if !first.is_empty() => Some(DeviceCommand::AcknowledgeWatcher {
                uri: first.to_string(),
                add_contact: true,
                name: (!tail.is_empty())
                    .then(|| tail.to_string())
                    .or_else(|| self.watchers.get(first).and_then(|w| w.0.clone())),
                group: None,
            }),
            _ => {
                out.human("not understood; /help lists commands");
                None
            }
        };
        if let Some(c) = command {
            let start_to = match &c {
                DeviceCommand::StartConversation { to, .. } => Some(to.join(", ")),
                _ => None,
            };
            let id = match client.send_command(c) {
                Ok(id) => id,
                Err(e) => return Err(write_failed(client, e, out, self)),
            };
            if let Some(to) = start_to {
                self.pending_start.insert(id, to);
            }
        }
        Ok(false)
    }

    /// Lines to show for a message, updating the UI's memory.
    fn show(&mut self, m: &ServiceMessage) -> Vec<String> {
        match m {
            ServiceMessage::LoginResult { status, text, .. } => {
                vec![format!("login: {} ({text})", status.text())]
            }
            ServiceMessage::CommandResult {
                id,
                status,
                text,
                conversation,
            } => {
                let started = self.pending_start.remove(id);
                if let (Some(c), Some(to)) = (conversation, started) {
                    self.conversations.insert(c.clone(), to.clone());
                    self.current = Some(c.clone());
                    vec![format!("[{c}] conversation with {to}")]
                } else if *status != Status::Ok {
                    vec![format!(
                        "*** command {id} failed: {} ({text})",
                        status.text()
                    )]
                } else {
                    vec![]
                }
            }
            ServiceMessage::SessionEnded { reason, .. } => {
                vec![format!("*** session ended: {reason}")]
            }
            ServiceMessage::ServiceStopping => vec!["*** the service is stopping".into()],
            ServiceMessage::Event { event, .. } => self.show_event(event),
        }
    }

    fn show_event(&mut self, e: &DeviceEvent) -> Vec<String> {
        match e {
            DeviceEvent::ContactList(list) => {
                if list.complete {
                    self.contacts.clear();
                }
                for c in &list.contacts {
                    self.contacts.insert(c.uri.clone(), (c.name.clone(), None));
                }
                for u in &list.removed_contacts {
                    self.contacts.remove(u);
                }
                // A list in parts is shown once it is whole.
                if list.part.is_some_and(|p| p.number < p.of) {
                    return vec![];
                }
                vec![format!(
                    "* contact list: {} contacts (/contacts)",
                    self.contacts.len()
                )]
            }
            DeviceEvent::Presence(p) => {
                if let Some(n) = &p.display_name {
                    let entry = self.contacts.entry(p.uri.clone()).or_insert((None, None));
                    if entry.0.is_none() {
                        entry.0 = Some(n.clone());
                    }
                }
                self.presence
                    .insert(p.uri.clone(), (p.availability, p.note.clone()));
                let note = p
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                vec![format!(
                    "* {} is {}{note}",
                    self.name_of(&p.uri),
                    p.availability.to_wire()
                )]
            }
            DeviceEvent::SelfPresence { availability, note } => {
                let note = note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                vec![format!("* you are {}{note}", availability.to_wire())]
            }
            DeviceEvent::Invitation {
                conversation,
                from,
                subject,
                text,
            } => {
                self.conversations
                    .insert(conversation.clone(), from.clone());
                let mut v = vec![format!(
                    "[{conversation}] {} invites you{} (/accept {conversation})",
                    self.name_of(from),
                    subject
                        .as_deref()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                )];
                if let Some(t) = text {
                    v.push(format!("[{conversation}] {}: {t}", self.name_of(from)));
                }
                v
            }
            DeviceEvent::Message {
                conversation,
                from,
                text,
            } => vec![format!("[{conversation}] {}: {text}", self.name_of(from))],
            DeviceEvent::Typing {
                conversation,
                from,
                composing: true,
            } => vec![format!(
                "[{conversation}] {} is typing...",
                self.name_of(from)
            )],
            DeviceEvent::Typing { .. } => vec![],
            DeviceEvent::ConversationState {
                conversation,
                state,
            } => {
                if *state == wire::ConversationState::Terminated {
                    self.conversations.remove(conversation);
                    if self.current.as_deref() == Some(conversation) {
                        self.current = None;
                    }
                }
                vec![format!("[{conversation}] {}", state.name())]
            }
            DeviceEvent::Participants {
                conversation,
                joined,
                left,
            } => joined
                .iter()
                .map(|u| format!("[{conversation}] {} joined", self.name_of(u)))
                .chain(
                    left.iter()
                        .map(|u| format!("[{conversation}] {} left", self.name_of(u))),
                )
                .collect(),
            DeviceEvent::DeliveryFailed {
                conversation,
                reason,
                ..
            } => vec![format!("[{conversation}] *** not delivered: {reason}")],
            DeviceEvent::SearchResult { entries, .. } => {
                let mut v = vec![format!("* {} found", entries.len())];
                for en in entries {
                    let presence = en.availability.map(|a| a.to_wire());
                    v.push(format!(
                        "  {} {} ({})",
                        en.uri,
                        en.name.as_deref().unwrap_or(""),
                        presence.as_deref().unwrap_or("presence unknown")
                    ));
                }
                v
            }
            DeviceEvent::AccessLevels { default, entries } => {
                self.default_level = *default;
                self.levels = entries.iter().map(|a| (a.uri.clone(), a.level)).collect();
                vec![format!(
                    "* access levels: {} people with their own (/access)",
                    self.levels.len()
                )]
            }
            DeviceEvent::Watchers(watchers) => {
                let mut v = Vec::new();
                for w in watchers {
                    self.watchers
                        .insert(w.uri.clone(), (w.name.clone(), w.acknowledged));
                    if !w.acknowledged {
                        let who = match &w.name {
                            Some(n) => format!("{n} <{}>", w.uri),
                            None => w.uri.clone(),
                        };
                        v.push(format!(
                            "* {who} added you (/allow {0} or /addback {0})",
                            w.uri
                        ));
                    }
                }
                v
            }
        }
    }
}
