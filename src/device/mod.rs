//! The device side of the collaboration protocol: a blocking client that
//! connects (plain TCP, or TLS through native-tls with an optional extra CA),
//! runs the handshake, signs in, sends commands and status reports, receives
//! events with a timeout and acknowledges them, and signs out. Used by
//! `collab-device` ([`cli`]), the tests and the load runs' devices
//! (`tests/load/devices.rs`).
//!
//! One thread drives a [`DeviceClient`]: [`DeviceClient::poll`] waits for
//! the next service message for at most the given time and sends the
//! periodic status report when it is due, so a caller interleaves its own
//! work (reading a terminal, a script) between polls.
//!
//! It imports the device protocol (`wire`), the hex spellings (`hex`) and
//! the command-line reader of `ops`; nothing of the service.

pub mod cli;
pub mod kept;
pub mod lineformat;
pub mod reconnect;

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::wire::{
    self, Coverage, DeviceCommand, DeviceMessage, Resume, Secret, SecureChannel, ServiceMessage,
    Status, WireError,
};

/// How to reach and authenticate to the service.
#[derive(Clone)]
pub struct DeviceConfig {
    /// `HOST:PORT` of the dispatcher (or of collabd directly).
    pub addr: String,
    /// The device PIN.
    pub pin: u32,
    /// The device's 256-bit transport key.
    pub transport_key: [u8; 32],
    /// TLS to the first hop, if wanted.
    pub tls: Option<TlsConfig>,
    /// Bound on the TCP connect and on each wait during handshake and login.
    pub timeout: Duration,
    /// How often to send a status report (`None`: never on its own).
    pub status_interval: Option<Duration>,
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("addr", &self.addr)
            .field("pin", &wire::format_pin(self.pin))
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .field("status_interval", &self.status_interval)
            .finish_non_exhaustive()
    }
}

/// TLS settings. Certificate and host-name verification are always on.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// A PEM file with an extra trusted root (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// The name to verify the certificate against (default: the host part
    /// of the address).
    pub domain: Option<String>,
}

/// Why the client failed.
#[derive(Debug)]
pub enum DeviceError {
    /// The address could not be resolved or connected to.
    Connect(String),
    /// TLS setup or the TLS handshake failed.
    Tls(String),
    /// The protocol failed (includes `Refused` frames and lost links).
    Wire(WireError),
    /// The service answered the login with a refusal.
    LoginRefused(Status, String),
    /// The service sent something out of place (e.g. an event before the
    /// login result).
    Unexpected(String),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Connect(why) => write!(f, "cannot connect: {why}"),
            DeviceError::Tls(why) => write!(f, "TLS failure: {why}"),
            DeviceError::Wire(e) => write!(f, "{e}"),
            DeviceError::LoginRefused(status, text) => {
                write!(f, "login refused: {} {}", status.code(), status.name())?;
                if !text.is_empty() {
                    write!(f, " ({text})")?;
                }
                Ok(())
            }
            DeviceError::Unexpected(why) => write!(f, "unexpected message from the service: {why}"),
        }
    }
}

impl std::error::Error for DeviceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DeviceError::Wire(e) => Some(e),
            _ => None,
        }
    }
}

impl From<WireError> for DeviceError {
    fn from(e: WireError) -> Self {
        DeviceError::Wire(e)
    }
}

/// The connection under the secure channel: plain TCP or TLS over TCP,
/// the crate's one connection type.
pub type Link = crate::net::Stream;

/// What a successful login returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginAccepted {
    /// The session id (for a later resume).
    pub session_id: Option<String>,
    /// The user's own SIP URI.
    pub sip_uri: Option<String>,
    /// The service's text.
    pub text: String,
}

/// A connected device.
pub struct DeviceClient {
    channel: SecureChannel<Link>,
    timeout: Duration,
    next_command_id: u64,
    status_interval: Option<Duration>,
    coverage: Coverage,
    last_status: Instant,
    /// The session as far as a resume needs it.
    kept: kept::Kept,
}

/// Opens the TCP connection, trying every resolved address within the
/// timeout.
fn open_tcp(addr: &str, timeout: Duration) -> Result<TcpStream, DeviceError> {
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| DeviceError::Connect(format!("{addr}: {e}")))?;
    let mut last = format!("{addr}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                s.set_write_timeout(Some(timeout))
                    .map_err(|e| DeviceError::Connect(e.to_string()))?;
                return Ok(s);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(DeviceError::Connect(last))
}

fn open_tls(tcp: TcpStream, addr: &str, cfg: &TlsConfig) -> Result<Link, DeviceError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| DeviceError::Tls(format!("CA file {}: {e}", path.display())))?;
        let cert = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| DeviceError::Tls(format!("CA file {}: {e}", path.display())))?;
        builder.add_root_certificate(cert);
    }
    let connector = builder
        .build()
        .map_err(|e| DeviceError::Tls(e.to_string()))?;
    let host = match &cfg.domain {
        Some(d) => d.clone(),
        None => host_of(addr).to_string(),
    };
    let stream = connector
        .connect(&host, tcp)
        .map_err(|e| DeviceError::Tls(e.to_string()))?;
    Ok(Link::Tls(Box::new(stream)))
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

impl DeviceClient {
    /// Connects and runs the handshake.
    pub fn connect(cfg: &DeviceConfig) -> Result<DeviceClient, DeviceError> {
        let tcp = open_tcp(&cfg.addr, cfg.timeout)?;
        tcp.set_read_timeout(Some(cfg.timeout))
            .map_err(|e| DeviceError::Connect(e.to_string()))?;
        let link = match &cfg.tls {
            None => Link::Plain(tcp),
            Some(t) => open_tls(tcp, &cfg.addr, t)?,
        };
        let channel = wire::connect(link, cfg.pin, &cfg.transport_key)?;
        Ok(DeviceClient {
            channel,
            timeout: cfg.timeout,
            next_command_id: 1,
            status_interval: cfg.status_interval,
            coverage: Coverage::InCoverage,
            last_status: Instant::now(),
            kept: kept::Kept::default(),
        })
    }

    /// Signs in and waits (up to the configured timeout) for the result.
    pub fn login(
        &mut self,
        user: &str,
        password: &Secret,
        resume: Option<Resume>,
    ) -> Result<LoginAccepted, DeviceError> {
        self.channel.send_device(&DeviceMessage::Login {
            user: user.to_string(),
            password: password.clone(),
            resume,
        })?;
        self.channel
            .get_ref()
            .set_read_timeout(self.timeout.max(Duration::from_millis(1)))
            .map_err(|e| DeviceError::Wire(WireError::Io(e)))?;
        match self.channel.recv_service()? {
            ServiceMessage::LoginResult {
                status: Status::Ok,
                text,
                session_id,
                sip_uri,
            } => {
                self.last_status = Instant::now();
                self.kept.session_id.clone_from(&session_id);
                Ok(LoginAccepted {
                    session_id,
                    sip_uri,
                    text,
                })
            }
            ServiceMessage::LoginResult { status, text, .. } => {
                Err(DeviceError::LoginRefused(status, text))
            }
            ServiceMessage::SessionEnded { status, reason } => {
                Err(DeviceError::LoginRefused(status, reason))
            }
            ServiceMessage::ServiceStopping => Err(DeviceError::LoginRefused(
                Status::ServiceStopping,
                Status::ServiceStopping.text().to_string(),
            )),
            other => Err(DeviceError::Unexpected(format!(
                "{other:?} before the login result"
            ))),
        }
    }

    /// Sends a command; returns its id (the `CommandResult` carries it).
    pub fn send_command(&mut self, command: DeviceCommand) -> Result<u64, DeviceError> {
        let id = self.next_command_id;
        self.next_command_id += 1;
        // Noted before it goes: a command whose write fails is sent again
        // after a resume.
        self.kept.sent(id, command.clone());
        self.channel
            .send_device(&DeviceMessage::Command { id, command })?;
        Ok(id)
    }

    /// Acknowledges all events up to and including `seq`.
    pub fn ack(&mut self, seq: u64) -> Result<(), DeviceError> {
        self.channel.send_device(&DeviceMessage::Ack { seq })?;
        self.kept.acked = self.kept.acked.max(seq);
        Ok(())
    }

    /// Sends a status report now, and reports `coverage` from now on.
    pub fn send_status(&mut self, coverage: Coverage) -> Result<(), DeviceError> {
        self.coverage = coverage;
        self.last_status = Instant::now();
        Ok(self
            .channel
            .send_device(&DeviceMessage::Status { coverage })?)
    }

    /// If the status interval has passed, sends a status report and
    /// returns true.
    pub fn status_if_due(&mut self) -> Result<bool, DeviceError> {
        match self.status_interval {
            Some(every) if self.last_status.elapsed() >= every => {
                self.send_status(self.coverage)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The coverage that status reports carry.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// Waits up to `timeout` for the next service message, sending the
    /// periodic status report when due. `Ok(None)`: nothing arrived in time.
    /// An event replayed after a resume that was delivered before is not
    /// delivered again.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<ServiceMessage>, DeviceError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.status_if_due()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut wait = deadline - now;
            if let Some(every) = self.status_interval {
                let next_status = (self.last_status + every).saturating_duration_since(now);
                wait = wait.min(next_status.max(Duration::from_millis(1)));
            }
            self.channel
                .get_ref()
                .set_read_timeout(wait.max(Duration::from_millis(1)))
                .map_err(|e| DeviceError::Wire(WireError::Io(e)))?;
            match self.channel.recv_service() {
                Ok(ServiceMessage::Event { seq, .. }) if !self.kept.first_delivery(seq) => continue,
                Ok(m) => {
                    if let ServiceMessage::CommandResult { id, .. } = &m {
                        self.kept.unanswered.remove(id);
                    }
                    return Ok(Some(m));
                }
                Err(WireError::Timeout) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `Logout` and waits (up to the configured timeout) for the
    /// service to confirm with `SessionEnded` or close the link. Messages
    /// that arrive meanwhile are returned for the caller to show.
    pub fn logout(mut self) -> Result<Vec<ServiceMessage>, DeviceError> {
        self.channel.send_device(&DeviceMessage::Logout)?;
        let mut seen = Vec::new();
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            self.status_interval = None;
            match self.poll(deadline.saturating_duration_since(Instant::now())) {
                Ok(Some(m)) => {
                    let done = matches!(
                        m,
                        ServiceMessage::SessionEnded { .. } | ServiceMessage::ServiceStopping
                    );
                    seen.push(m);
                    if done {
                        break;
                    }
                }
                Ok(None) => break,
                Err(DeviceError::Wire(WireError::Closed)) => break,
                Err(e) => return Err(e),
            }
        }
        let _ = self
            .channel
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
        Ok(seen)
    }

    /// The underlying channel (for tests that need the raw protocol).
    pub fn channel_mut(&mut self) -> &mut SecureChannel<Link> {
        &mut self.channel
    }
}

/// What a client that resumes after a lost link needs: the command
/// numbering goes on across connections (collab-protocol(7): ids are
/// unique in the session), and a command without a result is sent again
/// with its own id.
impl DeviceClient {
    /// The id the next [`DeviceClient::send_command`] will use.
    pub fn next_command_id(&self) -> u64 {
        self.next_command_id
    }

    /// Numbers commands from `next` on (after a resume on a new
    /// connection).
    pub fn continue_numbering(&mut self, next: u64) {
        self.next_command_id = self.next_command_id.max(next);
    }

    /// Sends `command` again with the id it had on an earlier connection.
    pub fn send_command_again(
        &mut self,
        id: u64,
        command: DeviceCommand,
    ) -> Result<(), DeviceError> {
        Ok(self
            .channel
            .send_device(&DeviceMessage::Command { id, command })?)
    }
}
