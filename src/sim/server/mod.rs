//! The simulator's HTTP server: accept loops (CWA listener and optional
//! admin listener), one small-stack thread per connection with keep-alive,
//! TLS through native-tls, routing to sign-in (forms and NTLM), the
//! command and event channels, and the admin endpoint; the run-time fault
//! settings; and the registry of open connections with the users seen on
//! each. The sign-in pages are in [`signin`], the admin endpoint in
//! [`admin`].
//!
//! The status and body chosen where real CWA's behaviour is not known are
//! listed in `man/cwa-sim.1`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xmltree::Element;

use super::events::PollOutcome;
use super::http::{Connection, Limits, Request, Response, Stream};
use super::ocs::{Ocs, PollRefusal, TicketOk};
use crate::xml::{self, elem, with_child, CWA_NS};

mod admin;
mod signin;

/// Deepest XML nesting accepted in a request body (CWA documents are a
/// handful of levels deep; the bound protects the small thread stacks).
const MAX_XML_DEPTH: usize = 24;
/// Most events in one `cwaEvents` answer.
const MAX_EVENTS_PER_BATCH: usize = 200;
/// Most concurrent threads answering refused (over-limit) connections.
const MAX_REFUSAL_THREADS: usize = 64;
/// How long an NTLM challenge stays valid on its connection.
const NTLM_CHALLENGE_TTL: Duration = Duration::from_secs(60);

/// Fault and capacity settings, changeable at run time.
#[derive(Debug, Default)]
pub struct Faults {
    /// Open CWA connections allowed (0 = unlimited); more get 503.
    pub max_connections: AtomicUsize,
    /// Throttling: 0 off, -1 on until turned off, N > 0 the next N CWA
    /// requests (each answered with error 18101).
    pub throttle: AtomicI64,
    /// Delay added before answering each CWA request, in ms.
    pub latency_ms: AtomicU64,
    /// How long an event GET is held without events, in ms.
    pub hold_ms: AtomicU64,
}

impl Faults {
    /// Consumes one throttled request if throttling is on.
    fn take_throttle(&self) -> bool {
        let mut cur = self.throttle.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return false;
            }
            if cur < 0 {
                return true;
            }
            match self
                .throttle
                .compare_exchange(cur, cur - 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn throttle_text(&self) -> String {
        match self.throttle.load(Ordering::Relaxed) {
            0 => "off".into(),
            n if n < 0 => "on".into(),
            n => n.to_string(),
        }
    }
}

/// Server-wide settings fixed at start.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Request limits.
    pub limits: Limits,
    /// Idle/read timeout between and within requests.
    pub idle_timeout: Duration,
    /// Stack size of connection threads.
    pub stack_size: usize,
    /// Whether admin paths are served on the CWA listener (to loopback
    /// peers only); false when a separate admin listener exists.
    pub admin_on_main: bool,
}

#[derive(Debug, Clone)]
struct ConnInfo {
    peer: SocketAddr,
    tls: bool,
    ntlm: BTreeSet<String>,
    forms: BTreeSet<String>,
    tickets: BTreeSet<String>,
}

/// The running simulator.
pub struct Server {
    /// The OCS model.
    pub ocs: Ocs,
    /// Run-time faults.
    pub faults: Faults,
    settings: ServerSettings,
    tls: Option<native_tls::TlsAcceptor>,
    conns: Mutex<HashMap<u64, ConnInfo>>,
    open_conns: AtomicUsize,
    next_conn: AtomicU64,
    refusing: AtomicUsize,
    refused_total: AtomicU64,
    held_polls: AtomicUsize,
    started: Instant,
}

/// Per-connection state: the NTLM handshake in progress and the user the
/// connection authenticated as (IIS keeps NTLM authentication per
/// connection).
struct ConnState {
    id: u64,
    peer: SocketAddr,
    pending_challenge: Option<([u8; 8], Instant, &'static str)>,
    ntlm_user: Option<usize>,
}

fn cwa_doc(child: Element) -> Vec<u8> {
    xml::to_string(&with_child(
        elem("cwaResponses", &[("xmlns", CWA_NS)]),
        child,
    ))
    .into_bytes()
}

fn error_doc(wrapper: &str, code: Option<u32>, reason: &str) -> Vec<u8> {
    let mut e = elem("error", &[("reason", reason)]);
    if let Some(c) = code {
        e.attributes.insert("code".into(), c.to_string());
    }
    cwa_doc(with_child(elem(wrapper, &[]), e))
}

fn parse_body(body: &[u8], limit: usize) -> Result<Element, String> {
    let shape = xml::Shape {
        max_depth: MAX_XML_DEPTH,
        max_elements: usize::MAX,
        allow_declarations: true,
    };
    xml::parse_shaped(body, limit, &shape).map_err(|e| e.to_string())
}

fn password_matches(given: &str, expected: &str) -> bool {
    // Compare digests so the comparison is constant-time whatever the
    // lengths.
    let a = openssl::sha::sha256(given.as_bytes());
    let b = openssl::sha::sha256(expected.as_bytes());
    openssl::memcmp::eq(&a, &b)
}

impl Server {
    /// A server over `ocs` with TLS if `tls` is given.
    pub fn new(
        ocs: Ocs,
        faults: Faults,
        settings: ServerSettings,
        tls: Option<native_tls::TlsAcceptor>,
    ) -> Server {
        Server {
            ocs,
            faults,
            settings,
            tls,
            conns: Mutex::new(HashMap::new()),
            open_conns: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            refusing: AtomicUsize::new(0),
            refused_total: AtomicU64::new(0),
            held_polls: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnInfo>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts CWA connections forever (`admin_only`: the admin listener).
    pub fn accept_loop(self: &Arc<Self>, listener: TcpListener, admin_only: bool) {
        for incoming in listener.incoming() {
            let tcp = match incoming {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let peer = match tcp.peer_addr() {
                Ok(p) => p,
                Err(_) => continue,
            };
            if !admin_only {
                let max = self.faults.max_connections.load(Ordering::Relaxed);
                if max > 0 && self.open_conns.load(Ordering::Relaxed) >= max {
                    self.refuse(tcp, peer);
                    continue;
                }
            }
            // Only CWA connections count against the limit: the operator's
            // admin requests must not take a client's place.
            let counted = !admin_only;
            if counted {
                self.open_conns.fetch_add(1, Ordering::Relaxed);
            }
            let server = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .stack_size(self.settings.stack_size)
                .spawn(move || {
                    server.serve(tcp, peer, admin_only);
                    if counted {
                        server.open_conns.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            if let Err(e) = spawned {
                if counted {
                    self.open_conns.fetch_sub(1, Ordering::Relaxed);
                }
                log::error!("{peer}: cannot start a connection thread: {e}");
            }
        }
    }

    /// Answers an over-limit connection with 503 and closes it.
    fn refuse(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        log::warn!("{peer}: refused, connection limit reached (503)");
        if self.refusing.load(Ordering::Relaxed) >= MAX_REFUSAL_THREADS {
            return; // dropping the socket closes it
        }
        self.refusing.fetch_add(1, Ordering::Relaxed);
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .stack_size(self.settings.stack_size)
            .spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = tcp.set_write_timeout(Some(Duration::from_secs(2)));
                let resp = Response::xml(
                    503,
                    error_doc("requestFailed", Some(18101), "connection limit reached"),
                )
                .with_header("Retry-After", "1")
                .closing();
                if let Some(stream) = server.open_stream(tcp, peer) {
                    let mut conn = Connection::new(stream);
                    // Read the request first so the client sees the answer
                    // rather than a reset.
                    let _ = conn.read_request(&server.settings.limits);
                    let _ = conn.write_response(&resp);
                }
                server.refusing.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn open_stream(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Stream> {
        match &self.tls {
            None => Some(Stream::Plain(tcp)),
            Some(acceptor) => match acceptor.accept(tcp) {
                Ok(s) => Some(Stream::Tls(Box::new(s))),
                Err(e) => {
                    log::warn!("{peer}: TLS handshake failed: {e}");
                    None
                }
            },
        }
    }

    fn serve(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr, admin_only: bool) {
        let _ = tcp.set_read_timeout(Some(self.settings.idle_timeout));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.is_some() && !admin_only;
        let stream = if admin_only {
            Stream::Plain(tcp)
        } else {
            match self.open_stream(tcp, peer) {
                Some(s) => s,
                None => return,
            }
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if !admin_only {
            self.conns().insert(
                id,
                ConnInfo {
                    peer,
                    tls,
                    ntlm: BTreeSet::new(),
                    forms: BTreeSet::new(),
                    tickets: BTreeSet::new(),
                },
            );
        }
        let mut state = ConnState {
            id,
            peer,
            pending_challenge: None,
            ntlm_user: None,
        };
        let mut conn = Connection::new(stream);
        loop {
            let req = match conn.read_request(&self.settings.limits) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(status) = e.status() {
                        log::warn!("{peer}: refused request: {e} ({status})");
                        let resp = Response::text(status, format!("{e}\n")).closing();
                        let _ = conn.write_response(&resp);
                    }
                    break;
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.route(&mut state, &req, admin_only)
            }));
            let mut resp = match outcome {
                Ok(r) => r,
                Err(_) => {
                    log::error!(
                        "{peer}: internal error handling {} {}",
                        req.method,
                        req.path
                    );
                    Response::xml(
                        500,
                        error_doc("requestFailed", Some(18400), "internal failure"),
                    )
                    .closing()
                }
            };
            if req.close {
                resp.close = true;
            }
            if conn.write_response(&resp).is_err() || resp.close {
                break;
            }
        }
        if let Stream::Plain(s) = conn.stream() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if !admin_only {
            self.conns().remove(&id);
        }
    }

    fn note_user(&self, conn: u64, kind: &str, user: usize) {
        let uri = self.ocs.directory.users[user].sip_uri.clone();
        if let Some(info) = self.conns().get_mut(&conn) {
            let set = match kind {
                "ntlm" => &mut info.ntlm,
                "forms" => &mut info.forms,
                _ => &mut info.tickets,
            };
            if !set.contains(&uri) {
                set.insert(uri);
            }
        }
    }

    fn route(&self, st: &mut ConnState, req: &Request, admin_only: bool) -> Response {
        let is_admin_path = req.path.starts_with("/admin/");
        if admin_only {
            return if is_admin_path {
                self.admin(req)
            } else {
                Response::text(404, "not found (admin listener)\n")
            };
        }
        if is_admin_path {
            let loopback = match st.peer.ip() {
                IpAddr::V4(v4) => v4.is_loopback(),
                IpAddr::V6(v6) => v6.is_loopback(),
            };
            if self.settings.admin_on_main && loopback {
                return self.admin(req);
            }
            log::warn!("{}: refused admin request {} (403)", st.peer, req.path);
            return Response::text(403, "admin endpoint not available here\n");
        }
        let known = matches!(
            req.path.as_str(),
            "/forms/logon.html"
                | "/iwa/logon.html"
                | "/cwa/MainCommandHandler.ashx"
                | "/cwa/AsyncDataChannel.ashx"
        );
        if !known {
            log::warn!("{}: unknown path {} (404)", st.peer, req.path);
            return Response::text(404, "not found\n");
        }
        let expected = if req.path == "/cwa/AsyncDataChannel.ashx" {
            "GET"
        } else {
            "POST"
        };
        if req.method != expected {
            log::warn!("{}: {} {} (405)", st.peer, req.method, req.path);
            return Response::text(405, format!("use {expected}\n")).with_header("Allow", expected);
        }
        let latency = self.faults.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            std::thread::sleep(Duration::from_millis(latency));
        }
        if self.faults.take_throttle() {
            log::warn!("{}: throttled {} (18101)", st.peer, req.path);
            return Response::xml(
                200,
                error_doc("requestFailed", Some(18101), "request throttled"),
            );
        }
        match req.path.as_str() {
            "/forms/logon.html" => self.forms_logon(st, req),
            "/iwa/logon.html" => self.iwa_logon(st, req),
            "/cwa/MainCommandHandler.ashx" => self.commands(st, req),
            _ => self.events(st, req),
        }
    }

    // -----------------------------------------------------------------
    // Command and event channels

    fn ticket(&self, st: &ConnState, req: &Request) -> Result<TicketOk, Response> {
        let token = req.header("CWA-Ticket").map(str::trim).unwrap_or("");
        match (!token.is_empty())
            .then(|| self.ocs.check_ticket(token))
            .flatten()
        {
            Some(t) => {
                self.note_user(st.id, "ticket", t.user);
                Ok(t)
            }
            None => {
                let why = if token.is_empty() {
                    "missing"
                } else {
                    "unknown or expired"
                };
                log::warn!("{}: {} with CWA-Ticket {why} (401)", st.peer, req.path);
                Err(Response::xml(
                    401,
                    error_doc("requestFailed", None, &format!("CWA-Ticket {why}")),
                ))
            }
        }
    }

    fn commands(&self, st: &mut ConnState, req: &Request) -> Response {
        let ticket = match self.ticket(st, req) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let doc = match parse_body(&req.body, self.settings.limits.max_body) {
            Ok(d) => d,
            Err(why) => {
                log::warn!("{}: command: {why} (requestInvalid 18000)", st.peer);
                return Response::xml(200, error_doc("requestInvalid", Some(18000), &why))
                    .with_header("CWA-Ticket", ticket.newest);
            }
        };
        let out = self.ocs.handle_requests(&ticket, &doc);
        for c in xml::children(&out) {
            if c.name == "requestInvalid" || c.name == "requestFailed" {
                let err = c.get_child("error");
                log::warn!(
                    "{}: {} rid={:?}: {} {}",
                    st.peer,
                    c.name,
                    xml::attr(c, "rid").unwrap_or(""),
                    err.and_then(|e| xml::attr(e, "code")).unwrap_or(""),
                    err.and_then(|e| xml::attr(e, "reason")).unwrap_or("")
                );
            }
        }
        Response::xml(200, xml::to_string(&out)).with_header("CWA-Ticket", ticket.newest)
    }

    fn events(&self, st: &mut ConnState, req: &Request) -> Response {
        let ticket = match self.ticket(st, req) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let sid = req.query_param("Sid").and_then(|s| s.parse::<u64>().ok());
        let ack = req.query_param("AckId").and_then(|s| s.parse::<u64>().ok());
        let (Some(sid), Some(ack)) = (sid, ack) else {
            log::warn!("{}: event GET without numeric Sid and AckId (400)", st.peer);
            return Response::xml(
                400,
                error_doc(
                    "requestInvalid",
                    Some(18001),
                    "Sid and AckId must be numbers",
                ),
            )
            .with_header("CWA-Ticket", ticket.newest);
        };
        let ua = req
            .query_param("UA")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let queue = match self.ocs.poll_session(&ticket, sid, ua) {
            Ok(q) => q,
            Err(PollRefusal::SessionNotFound(why)) => {
                log::warn!("{}: event GET for sid {sid}: {why} (18100)", st.peer);
                return Response::xml(200, error_doc("requestFailed", Some(18100), &why))
                    .with_header("CWA-Ticket", ticket.newest);
            }
        };
        let hold = Duration::from_millis(self.faults.hold_ms.load(Ordering::Relaxed));
        self.held_polls.fetch_add(1, Ordering::Relaxed);
        let outcome = queue.poll(ack, hold, MAX_EVENTS_PER_BATCH);
        self.held_polls.fetch_sub(1, Ordering::Relaxed);
        let newest = self
            .ocs
            .newest_token(ticket.ticket)
            .unwrap_or(ticket.newest);
        let (ack_id, events) = match outcome {
            PollOutcome::Events { ack_id, events } => (ack_id, events),
            PollOutcome::Empty { ack_id } => {
                if ack > ack_id {
                    log::warn!(
                        "{}: sid {sid}: AckId {ack} ahead of the server ({ack_id})",
                        st.peer
                    );
                }
                (ack_id, Vec::new())
            }
            PollOutcome::Ended(reason) => {
                return Response::xml(
                    200,
                    error_doc("requestFailed", Some(18100), reason.as_str()),
                )
                .with_header("CWA-Ticket", newest);
            }
        };
        let mut body = format!(
            "<cwaEvents xmlns=\"{CWA_NS}\" sid=\"{sid}\" pollWaitTime=\"{}\" ackId=\"{ack_id}\" sessionTimeout=\"{}\">",
            self.ocs.settings().poll_wait_ms,
            self.ocs.session_timeout_left(&queue)
        );
        for e in &events {
            body.push_str(e);
        }
        body.push_str("</cwaEvents>");
        Response::xml(200, body).with_header("CWA-Ticket", newest)
    }
}

/// Writes `text` and flushes stdout (for the `listening on` lines tests
/// wait for).
pub fn announce(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_bodies_are_refused_before_parsing() {
        let deep = "<a>".repeat(10_000);
        let err = parse_body(deep.as_bytes(), 1 << 20).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
        assert!(parse_body(b"<a><b/></a>", 1 << 20).is_ok());
    }

    #[test]
    fn throttle_counts_down() {
        let f = Faults::default();
        assert!(!f.take_throttle());
        f.throttle.store(2, Ordering::Relaxed);
        assert!(f.take_throttle());
        assert!(f.take_throttle());
        assert!(!f.take_throttle());
        f.throttle.store(-1, Ordering::Relaxed);
        assert!(f.take_throttle() && f.take_throttle());
    }
}
