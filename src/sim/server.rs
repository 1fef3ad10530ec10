//! The simulator's HTTP server: accept loops (CWA listener and optional
//! admin listener), one small-stack thread per connection with keep-alive,
//! TLS through native-tls, routing to sign-in (forms and NTLM), the
//! command and event channels, and the admin endpoint; the run-time fault
//! settings; and the registry of open connections with the users seen on
//! each.
//!
//! Status and body choices for situations the protocol notes leave open
//! are PROPOSED (cwa-protocol.md §2.2, §6) and listed in `man/cwa-sim.1`.

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
use super::ocs::{sign_in_data, Ocs, PollRefusal, TicketOk};
use crate::ntlm;
use crate::xml::{self, child_text, elem, text_elem, with_child, CWA_NS};

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
    // Sign-in

    fn logon_success(&self, user: usize) -> Response {
        let entry = &self.ocs.directory.users[user];
        let token = self.ocs.issue_ticket(user);
        let body = with_child(
            with_child(
                elem("requestSucceeded", &[]),
                text_elem("uri", &entry.sip_uri),
            ),
            text_elem("signInData", &sign_in_data(&entry.sip_uri)),
        );
        log::info!("{}: signed in", entry.sip_uri);
        Response::xml(200, cwa_doc(body)).with_header("CWA-Ticket", token)
    }

    fn not_enabled(&self, user: usize) -> Response {
        log::warn!(
            "{}: refused sign-in, not enabled for Communications Server (403)",
            self.ocs.directory.users[user].sip_uri
        );
        Response::xml(
            403,
            error_doc(
                "requestFailed",
                Some(18102),
                "user not enabled for Communications Server",
            ),
        )
    }

    fn forms_logon(&self, st: &mut ConnState, req: &Request) -> Response {
        let doc = match parse_body(&req.body, self.settings.limits.max_body) {
            Ok(d) => d,
            Err(why) => {
                log::warn!("{}: forms logon: {why} (400)", st.peer);
                return Response::xml(400, error_doc("requestInvalid", Some(18000), &why));
            }
        };
        let Some(logon) = (doc.name == "cwaRequests")
            .then(|| doc.get_child("logon"))
            .flatten()
        else {
            log::warn!(
                "{}: forms logon without <cwaRequests><logon> (400)",
                st.peer
            );
            return Response::xml(
                400,
                error_doc(
                    "requestInvalid",
                    Some(18001),
                    "expected <cwaRequests><logon>",
                ),
            );
        };
        let login = child_text(logon, "user").unwrap_or_default();
        let password = child_text(logon, "password").unwrap_or_default();
        let login = login.trim();
        let user = self.ocs.directory.by_login(login);
        let ok = match user {
            Some(u) => password_matches(&password, &self.ocs.directory.users[u].password),
            None => false,
        };
        let (Some(user), true) = (user, ok) else {
            log::warn!(
                "{}: forms logon refused for {login:?}: unknown user or bad password (401)",
                st.peer
            );
            return Response::xml(
                401,
                error_doc(
                    "requestFailed",
                    None,
                    "logon failed: unknown user or bad password",
                ),
            );
        };
        self.note_user(st.id, "forms", user);
        if !self.ocs.directory.users[user].enabled {
            return self.not_enabled(user);
        }
        self.logon_success(user)
    }

    fn ntlm_offer(&self) -> Response {
        Response::xml(
            401,
            error_doc("requestFailed", None, "authentication required"),
        )
        .with_header("WWW-Authenticate", "Negotiate")
        .with_header("WWW-Authenticate", "NTLM")
    }

    fn iwa_logon(&self, st: &mut ConnState, req: &Request) -> Response {
        let Some(auth) = req.header("Authorization") else {
            if let Some(user) = st.ntlm_user {
                // IIS keeps NTLM authentication for the connection.
                if !self.ocs.directory.users[user].enabled {
                    return self.not_enabled(user);
                }
                return self.logon_success(user);
            }
            return self.ntlm_offer();
        };
        let scheme = if auth.trim_start().len() >= 9
            && auth.trim_start()[..9].eq_ignore_ascii_case("Negotiate")
        {
            "Negotiate"
        } else {
            "NTLM"
        };
        let msg = match ntlm::parse_header_value(auth) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{}: IWA logon: {e} (400)", st.peer);
                st.pending_challenge = None;
                return Response::xml(
                    400,
                    error_doc("requestInvalid", Some(18000), &e.to_string()),
                );
            }
        };
        let msg_type = msg
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match msg_type {
            Some(1) if msg.len() >= 16 => {
                let mut challenge = [0u8; 8];
                openssl::rand::rand_bytes(&mut challenge).expect("system random number generator");
                let info = ntlm::target_info("CWASIM", "CWA01");
                let type2 = ntlm::challenge_message(challenge, "CWASIM", &info);
                st.pending_challenge = Some((challenge, Instant::now(), scheme));
                st.ntlm_user = None;
                let value = format!("{scheme} {}", ntlm::base64_encode(&type2));
                Response::xml(401, error_doc("requestFailed", None, "NTLM challenge"))
                    .with_header("WWW-Authenticate", value)
            }
            Some(3) => self.iwa_authenticate(st, req, &msg),
            _ => {
                log::warn!("{}: IWA logon: unexpected NTLM message (400)", st.peer);
                st.pending_challenge = None;
                Response::xml(
                    400,
                    error_doc(
                        "requestInvalid",
                        Some(18000),
                        "unexpected NTLM message type",
                    ),
                )
            }
        }
    }

    fn iwa_authenticate(&self, st: &mut ConnState, req: &Request, msg: &[u8]) -> Response {
        let auth = match ntlm::parse_authenticate(msg) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("{}: IWA logon: {e} (400)", st.peer);
                st.pending_challenge = None;
                return Response::xml(
                    400,
                    error_doc("requestInvalid", Some(18000), &e.to_string()),
                );
            }
        };
        // The challenge is single-use and belongs to this connection.
        let Some((challenge, issued, _)) = st.pending_challenge.take() else {
            log::warn!(
                "{}: IWA logon: AUTHENTICATE for {}\\{} without a challenge on this connection (401)",
                st.peer,
                auth.domain,
                auth.user
            );
            return self.ntlm_offer();
        };
        if issued.elapsed() > NTLM_CHALLENGE_TTL {
            log::warn!("{}: IWA logon: challenge expired (401)", st.peer);
            return self.ntlm_offer();
        }
        let user = self
            .ocs
            .directory
            .by_domain_account(&auth.domain, &auth.user);
        let verified = user.is_some_and(|u| {
            match ntlm::verify_ntlmv2(&auth, challenge, &self.ocs.directory.users[u].password) {
                Ok(verified) => verified,
                Err(e) => {
                    log::error!("{}: IWA logon cannot be checked: {e}", st.peer);
                    false
                }
            }
        });
        let Some(user) = user.filter(|_| verified) else {
            log::warn!(
                "{}: IWA logon refused for {}\\{}: unknown user or bad password (401)",
                st.peer,
                auth.domain,
                auth.user
            );
            return self.ntlm_offer();
        };
        if !self.ocs.directory.users[user].iwa {
            log::warn!(
                "{}: IWA logon refused for {}: IWA not available for this user (401)",
                st.peer,
                auth.user
            );
            return self.ntlm_offer();
        }
        st.ntlm_user = Some(user);
        self.note_user(st.id, "ntlm", user);
        if !req.body.is_empty() {
            if let Err(why) = parse_body(&req.body, self.settings.limits.max_body) {
                log::warn!("{}: IWA logon body: {why} (400)", st.peer);
                return Response::xml(400, error_doc("requestInvalid", Some(18000), &why));
            }
        }
        if !self.ocs.directory.users[user].enabled {
            return self.not_enabled(user);
        }
        self.logon_success(user)
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

    // -----------------------------------------------------------------
    // Admin

    fn status_text(&self) -> String {
        let s = self.ocs.status();
        let (rotate, grace) = self.ocs.ticket_timing();
        let mut out = String::new();
        let _ = writeln!(out, "uptime_s={}", self.started.elapsed().as_secs());
        let _ = writeln!(out, "connections={}", self.conns().len());
        let _ = writeln!(
            out,
            "refused_connections={}",
            self.refused_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "held_polls={}",
            self.held_polls.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "tickets={}", s.tickets);
        let _ = writeln!(out, "sessions={}", s.sessions);
        let _ = writeln!(out, "sessions_ended={}", s.sessions_ended);
        let _ = writeln!(out, "conversations={}", s.conversations);
        let _ = writeln!(
            out,
            "max_connections={}",
            self.faults.max_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "throttle={}", self.faults.throttle_text());
        let _ = writeln!(
            out,
            "latency_ms={}",
            self.faults.latency_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "hold_ms={}",
            self.faults.hold_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "ticket_rotate_ms={}", rotate.as_millis());
        let _ = writeln!(out, "ticket_grace_ms={}", grace.as_millis());
        let withheld = if self.ocs.withholds_outcomes() {
            "on"
        } else {
            "off"
        };
        let _ = writeln!(out, "withhold_outcomes={withheld}");
        let query = if self.ocs.fails_query_presence() {
            "fail"
        } else {
            "ok"
        };
        let _ = writeln!(out, "query_presence={query}");
        for (sid, uri) in self.ocs.session_list() {
            let _ = writeln!(out, "session {sid} {uri}");
        }
        out
    }

    fn connections_text(&self) -> String {
        let conns = self.conns();
        let mut ids: Vec<&u64> = conns.keys().collect();
        ids.sort();
        let list = |s: &BTreeSet<String>| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.iter().cloned().collect::<Vec<_>>().join(",")
            }
        };
        let mut out = String::new();
        for id in ids {
            let c = &conns[id];
            let _ = writeln!(
                out,
                "{id} {} tls={} ntlm={} forms={} tickets={}",
                c.peer,
                if c.tls { "yes" } else { "no" },
                list(&c.ntlm),
                list(&c.forms),
                list(&c.tickets)
            );
        }
        out
    }

    fn admin(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/admin/status") => Response::text(200, self.status_text()),
            ("GET", "/admin/connections") => Response::text(200, self.connections_text()),
            ("GET", "/admin/presence") => Response::text(200, self.ocs.published_text()),
            ("POST", "/admin/faults") => match self.apply_faults(&req.body) {
                Ok(done) => Response::text(200, format!("ok {done}\n{}", self.status_text())),
                Err(why) => {
                    log::warn!("admin: refused faults: {why} (400)");
                    Response::text(400, format!("{why}\n"))
                }
            },
            (_, "/admin/status" | "/admin/connections" | "/admin/faults" | "/admin/presence") => {
                Response::text(405, "wrong method\n")
            }
            _ => Response::text(404, "unknown admin path\n"),
        }
    }

    /// Applies `key=value` pairs (newline- or `&`-separated); validates all
    /// before applying any. Returns a summary of the actions taken.
    fn apply_faults(&self, body: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
        enum Action {
            MaxConnections(usize),
            Throttle(i64),
            Latency(u64),
            Hold(u64),
            Rotate(u64),
            Grace(u64),
            DropSession(u64),
            DropUser(String),
            WithholdOutcomes(bool),
            FailQueryPresence(bool),
            Restart,
        }
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v}: expected a number"))
        };
        let mut actions = Vec::new();
        for pair in text
            .split(['\n', '&'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            actions.push(match k {
                "max_connections" => Action::MaxConnections(num(k, v)? as usize),
                "throttle" => Action::Throttle(match v {
                    "on" => -1,
                    "off" => 0,
                    n => num(k, n)?.min(i64::MAX as u64) as i64,
                }),
                "latency_ms" => Action::Latency(num(k, v)?),
                "hold_ms" => Action::Hold(num(k, v)?),
                "ticket_rotate_ms" => Action::Rotate(num(k, v)?),
                "ticket_grace_ms" => Action::Grace(num(k, v)?),
                "drop_session" => Action::DropSession(num(k, v)?),
                "drop_user" => Action::DropUser(v.to_string()),
                "withhold_outcomes" => Action::WithholdOutcomes(match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{k}={v}: expected on or off")),
                }),
                "query_presence" => Action::FailQueryPresence(match v {
                    "fail" => true,
                    "ok" => false,
                    _ => return Err(format!("{k}={v}: expected fail or ok")),
                }),
                "restart" if matches!(v, "yes" | "true" | "1") => Action::Restart,
                _ => return Err(format!("unknown setting `{pair}`")),
            });
        }
        let mut done = Vec::new();
        for a in actions {
            match a {
                Action::MaxConnections(n) => {
                    self.faults.max_connections.store(n, Ordering::Relaxed)
                }
                Action::Throttle(n) => self.faults.throttle.store(n, Ordering::Relaxed),
                Action::Latency(n) => self.faults.latency_ms.store(n, Ordering::Relaxed),
                Action::Hold(n) => self.faults.hold_ms.store(n, Ordering::Relaxed),
                Action::WithholdOutcomes(on) => self.ocs.set_withhold_outcomes(on),
                Action::FailQueryPresence(on) => self.ocs.set_fail_query_presence(on),
                Action::Rotate(n) => self
                    .ocs
                    .set_ticket_timing(Some(Duration::from_millis(n)), None),
                Action::Grace(n) => self
                    .ocs
                    .set_ticket_timing(None, Some(Duration::from_millis(n))),
                Action::DropSession(sid) => {
                    let found = self.ocs.drop_session(sid);
                    log::warn!(
                        "admin: drop session {sid}: {}",
                        if found { "dropped" } else { "not found" }
                    );
                    done.push(format!("dropped_sessions={}", usize::from(found)));
                }
                Action::DropUser(who) => {
                    let n = self.ocs.drop_user(&who);
                    log::warn!("admin: drop user {who}: {n} session(s)");
                    done.push(format!("dropped_sessions={n}"));
                }
                Action::Restart => {
                    log::warn!("admin: restart: forgetting every session and ticket");
                    self.ocs.restart();
                    done.push("restarted".into());
                }
            }
        }
        Ok(done.join(" "))
    }
}

use std::fmt::Write as _;

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
