//! cwa-sim driven over real HTTP (and once HTTPS) by plain clients: ureq
//! for ordinary requests, raw `TcpStream`s where the TCP connection
//! matters (NTLM).

use crate::support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use collabd::ntlm;
use collabd::xml::{self, attr, child_text, CWA_NS};
use support::sim::SimProcess;
use support::tls::TestCa;
use xmltree::Element;

const USERS: &str = "\
# test directory
CONTOSO\\alice alice-pw sip:alice@contoso.com name=Alice_Smith
CONTOSO\\bob bob-pw sip:bob@contoso.com name=Bob_Jones
CONTOSO\\carol carol-pw sip:carol@contoso.com name=Carol_White

CONTOSO\\dave dave-pw sip:dave@contoso.com iwa=no
CONTOSO\\erin erin-pw sip:erin@contoso.com enabled=no
";

/// Generous bound for waiting on events (never a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    ticket: Option<String>,
    body: String,
}

impl Reply {
    fn doc(&self) -> Element {
        xml::parse(self.body.as_bytes(), 1 << 20).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn to_reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("HTTP exchange");
    let status = r.status().as_u16();
    let ticket = r
        .headers()
        .get("CWA-Ticket")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.body_mut().read_to_string().unwrap();
    Reply {
        status,
        ticket,
        body,
    }
}

fn post(agent: &ureq::Agent, url: &str, ticket: Option<&str>, body: &str) -> Reply {
    let mut req = agent.post(url).header("Content-Type", "text/xml");
    if let Some(t) = ticket {
        req = req.header("CWA-Ticket", t);
    }
    to_reply(req.send(body))
}

fn get(agent: &ureq::Agent, url: &str, ticket: Option<&str>) -> Reply {
    let mut req = agent.get(url);
    if let Some(t) = ticket {
        req = req.header("CWA-Ticket", t);
    }
    to_reply(req.call())
}

fn logon_body(user: &str, password: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><cwaRequests xmlns=\"{CWA_NS}\"><logon><user>{user}</user><password>{password}</password></logon></cwaRequests>"
    )
}

fn error_code(e: &Element) -> Option<String> {
    xml::children(e)
        .find(|c| c.name == "error")
        .and_then(|c| attr(c, "code").map(str::to_string))
        .or_else(|| xml::children(e).find_map(error_code))
}

/// The single action inside a `conference` event.
fn conf_item(e: &Element) -> Option<&Element> {
    (e.name == "conference")
        .then(|| xml::children(e).next())
        .flatten()
}

fn is_conf(e: &Element, item: &str) -> bool {
    conf_item(e).is_some_and(|i| i.name == item)
}

fn availability_of(e: &Element, uri: &str) -> Option<u32> {
    let user = xml::children(e).find(|u| u.name == "user" && attr(u, "uri") == Some(uri))?;
    let cat = xml::children(user).find(|c| attr(c, "name") == Some("state"))?;
    let state = cat.get_child("state")?;
    child_text(state, "availability")?.parse().ok()
}

/// A signed-in CWA session driven over HTTP.
struct Cwa {
    agent: ureq::Agent,
    base: String,
    ticket: String,
    sid: u64,
    ack: u64,
    uri: String,
    rid: u64,
    backlog: VecDeque<Element>,
}

impl Cwa {
    fn sign_in(sim: &SimProcess, login: &str, password: &str) -> Cwa {
        Cwa::sign_in_with(agent(), &sim.base_url(), login, password)
    }

    fn sign_in_with(agent: ureq::Agent, base: &str, login: &str, password: &str) -> Cwa {
        let r = post(
            &agent,
            &format!("{base}/forms/logon.html"),
            None,
            &logon_body(login, password),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let ticket = r.ticket.clone().expect("CWA-Ticket on success");
        let doc = r.doc();
        let ok = doc.get_child("requestSucceeded").expect("requestSucceeded");
        let uri = child_text(ok, "uri").unwrap();
        let sign_in_data = child_text(ok, "signInData").unwrap();
        let mut cwa = Cwa {
            agent,
            base: base.to_string(),
            ticket,
            sid: 0,
            ack: 0,
            uri,
            rid: 0,
            backlog: VecDeque::new(),
        };
        let resp = cwa.cmd(&format!(
            "<initiateSession rid=\"{{rid}}\"><localeId>1033</localeId><securityMode>private</securityMode>\
             <userStateAvailability>3500</userStateAvailability><options autoPublishMachineState=\"true\"/>\
             <signInData>{sign_in_data}</signInData></initiateSession>"
        ));
        let accepted = resp
            .get_child("initiateSessionAccepted")
            .unwrap_or_else(|| panic!("{resp:?}"));
        cwa.sid = attr(accepted, "sid").unwrap().parse().unwrap();
        assert!(attr(accepted, "pollWaitTime").is_some());
        cwa
    }

    fn next_rid(&mut self) -> String {
        self.rid += 1;
        self.rid.to_string()
    }

    /// Posts one method (`{rid}` in `inner` is replaced by a fresh rid)
    /// and returns the `cwaResponses` root.
    fn cmd(&mut self, inner: &str) -> Element {
        let rid = self.next_rid();
        let body = format!(
            "<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{}\">{}</cwaRequests>",
            self.sid,
            inner.replace("{rid}", &rid)
        );
        let r = post(
            &self.agent,
            &format!("{}/cwa/MainCommandHandler.ashx", self.base),
            Some(&self.ticket),
            &body,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        if let Some(t) = r.ticket.clone() {
            self.ticket = t;
        }
        r.doc()
    }

    fn last_rid(&self) -> String {
        self.rid.to_string()
    }

    fn events_url(&self, ack: u64) -> String {
        format!(
            "{}/cwa/AsyncDataChannel.ashx?Sid={}&AckId={ack}&UA=true",
            self.base, self.sid
        )
    }

    /// One event GET; appends the events to the backlog.
    fn poll(&mut self) -> Element {
        let r = get(&self.agent, &self.events_url(self.ack), Some(&self.ticket));
        assert_eq!(r.status, 200, "{}", r.body);
        let doc = r.doc();
        assert_eq!(doc.name, "cwaEvents", "{}", r.body);
        if let Some(t) = r.ticket {
            self.ticket = t;
        }
        self.ack = attr(&doc, "ackId").unwrap().parse().unwrap();
        for e in xml::children(&doc) {
            self.backlog.push_back(e.clone());
        }
        doc
    }

    /// Drains events up to and including the first that matches.
    fn wait_until(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Vec<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.backlog.iter().position(&pred) {
                return self.backlog.drain(..=i).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what}; backlog {:?}",
                self.uri,
                self.backlog
            );
            self.poll();
        }
    }

    fn wait_for(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        self.wait_until(what, pred).pop().unwrap()
    }

    fn wait_succeeded(&mut self, rid: &str) {
        let rid = rid.to_string();
        let e = self.wait_for("request result", |e| {
            (e.name == "requestSucceeded" || e.name == "requestFailed")
                && attr(e, "rid") == Some(&rid)
        });
        assert_eq!(e.name, "requestSucceeded", "{e:?}");
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP for NTLM: the TCP connection is what matters.

struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct Raw {
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(sim: &SimProcess) -> Raw {
        let s = TcpStream::connect(sim.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Raw {
            reader: BufReader::new(s),
        }
    }

    fn local_addr(&self) -> std::net::SocketAddr {
        self.reader.get_ref().local_addr().unwrap()
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawReply {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: cwa\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send_raw(req.as_bytes());
        self.read_reply()
    }

    fn read_reply(&mut self) -> RawReply {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap();
        RawReply {
            status,
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }

    /// Sends NEGOTIATE and returns the parsed CHALLENGE.
    fn ntlm_negotiate(&mut self) -> ntlm::Challenge {
        let r = self.request(
            "POST",
            "/iwa/logon.html",
            &[(
                "Authorization",
                &ntlm::header_value(&ntlm::negotiate_message()),
            )],
            "<cwaRequests><logon/></cwaRequests>",
        );
        assert_eq!(r.status, 401);
        let offer = r.headers_named("WWW-Authenticate");
        assert_eq!(offer.len(), 1, "{offer:?}");
        ntlm::parse_challenge(&ntlm::parse_header_value(offer[0]).unwrap()).unwrap()
    }

    fn ntlm_authenticate(
        &mut self,
        ch: &ntlm::Challenge,
        domain: &str,
        user: &str,
        pw: &str,
    ) -> RawReply {
        let mut cc = [0u8; 8];
        openssl::rand::rand_bytes(&mut cc).unwrap();
        let msg =
            ntlm::authenticate_message(ch, domain, user, pw, "TESTWS", cc, ntlm::filetime_now())
                .unwrap();
        self.request(
            "POST",
            "/iwa/logon.html",
            &[("Authorization", &ntlm::header_value(&msg))],
            "<cwaRequests><logon/></cwaRequests>",
        )
    }
}

// ---------------------------------------------------------------------------
// Sign-in

#[test]
fn forms_sign_in_outcomes() {
    let sim = SimProcess::start(USERS);
    let a = agent();
    let url = format!("{}/forms/logon.html", sim.base_url());

    let ok = post(&a, &url, None, &logon_body("CONTOSO\\alice", "alice-pw"));
    assert_eq!(ok.status, 200);
    assert!(ok.ticket.as_deref().is_some_and(|t| t.len() >= 32));
    let doc = ok.doc();
    let s = doc.get_child("requestSucceeded").unwrap();
    assert_eq!(
        child_text(s, "uri").as_deref(),
        Some("sip:alice@contoso.com")
    );
    assert!(!child_text(s, "signInData").unwrap().is_empty());

    // user@domain works too; the iwa=no user may use forms.
    assert_eq!(
        post(&a, &url, None, &logon_body("bob@contoso.com", "bob-pw")).status,
        200
    );
    assert_eq!(
        post(&a, &url, None, &logon_body("CONTOSO\\dave", "dave-pw")).status,
        200
    );

    for (user, pw) in [
        ("CONTOSO\\alice", "wrong"),
        ("CONTOSO\\nobody", "x"),
        ("CONTOSO\\alice", ""),
    ] {
        let r = post(&a, &url, None, &logon_body(user, pw));
        assert_eq!(r.status, 401, "{user}: {}", r.body);
        assert!(r.ticket.is_none());
        assert!(r.doc().get_child("requestSucceeded").is_none());
    }

    // Right credentials, not enabled: 403 with an error body, no ticket.
    let r = post(&a, &url, None, &logon_body("CONTOSO\\erin", "erin-pw"));
    assert_eq!(r.status, 403);
    assert!(r.ticket.is_none());
    let failed = r.doc();
    let failed = failed.get_child("requestFailed").expect("requestFailed");
    assert_eq!(error_code(failed).as_deref(), Some("18102"));

    // Passwords never reach the log; refusals do.
    let log = sim.log();
    for pw in ["alice-pw", "bob-pw", "dave-pw", "erin-pw"] {
        assert!(!log.contains(pw), "password {pw} in the log");
    }
    assert!(log.contains("forms logon refused"), "{log}");
}

#[test]
fn ntlm_sign_in_is_bound_to_its_connection() {
    let sim = SimProcess::start(USERS);

    // No credentials: offer both schemes.
    let mut c1 = Raw::connect(&sim);
    let r = c1.request(
        "POST",
        "/iwa/logon.html",
        &[],
        "<cwaRequests><logon/></cwaRequests>",
    );
    assert_eq!(r.status, 401);
    let offers = r.headers_named("WWW-Authenticate");
    assert!(
        offers.contains(&"NTLM") && offers.contains(&"Negotiate"),
        "{offers:?}"
    );

    // The full handshake on one connection.
    let ch = c1.ntlm_negotiate();
    assert_eq!(ch.target_name, "CWASIM");
    let ok = c1.ntlm_authenticate(&ch, "CONTOSO", "alice", "alice-pw");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers_named("CWA-Ticket").len(), 1);
    assert!(ok.body.contains("<uri>sip:alice@contoso.com</uri>"));
    let me = c1.local_addr();
    let conns = sim.connections();
    let mine = conns
        .iter()
        .find(|c| c.peer == me)
        .expect("our connection listed");
    assert_eq!(mine.ntlm, vec!["sip:alice@contoso.com".to_string()]);

    // A challenge answered on another connection is refused, even with
    // the right password.
    let mut c2 = Raw::connect(&sim);
    let ch2 = c2.ntlm_negotiate();
    let mut c3 = Raw::connect(&sim);
    let r = c3.ntlm_authenticate(&ch2, "CONTOSO", "bob", "bob-pw");
    assert_eq!(r.status, 401);
    assert!(r.headers_named("CWA-Ticket").is_empty());
    // ...and the challenge on c2 is still usable there, exactly once.
    let r = c2.ntlm_authenticate(&ch2, "CONTOSO", "bob", "bob-pw");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c2.ntlm_authenticate(&ch2, "CONTOSO", "bob", "bob-pw");
    assert_eq!(r.status, 401, "challenge reused");

    // Wrong password, unknown user: 401 and a fresh offer.
    let mut c4 = Raw::connect(&sim);
    let ch = c4.ntlm_negotiate();
    let r = c4.ntlm_authenticate(&ch, "CONTOSO", "alice", "nope");
    assert_eq!(r.status, 401);
    assert!(r.headers_named("WWW-Authenticate").contains(&"NTLM"));
    let ch = c4.ntlm_negotiate();
    assert_eq!(
        c4.ntlm_authenticate(&ch, "CONTOSO", "mallory", "x").status,
        401
    );

    // iwa=no: the right password is still refused over IWA; forms works.
    let ch = c4.ntlm_negotiate();
    assert_eq!(
        c4.ntlm_authenticate(&ch, "CONTOSO", "dave", "dave-pw")
            .status,
        401
    );
    let forms = c4.request(
        "POST",
        "/forms/logon.html",
        &[],
        &logon_body("CONTOSO\\dave", "dave-pw"),
    );
    assert_eq!(forms.status, 200);

    // enabled=no: authenticated, then refused with 403.
    let mut c5 = Raw::connect(&sim);
    let ch = c5.ntlm_negotiate();
    let r = c5.ntlm_authenticate(&ch, "CONTOSO", "erin", "erin-pw");
    assert_eq!(r.status, 403);
    assert!(r.body.contains("18102"));

    // Garbage NTLM: 400, the connection and the simulator live on.
    let mut c6 = Raw::connect(&sim);
    for bad in [
        "NTLM !!!notbase64",
        "NTLM Zm9vYmFy",
        "Basic Zm9vOmJhcg==",
        "NTLM TlRMTVNTUAADAAAA",
    ] {
        let r = c6.request("POST", "/iwa/logon.html", &[("Authorization", bad)], "");
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let ch = c6.ntlm_negotiate();
    assert_eq!(
        c6.ntlm_authenticate(&ch, "CONTOSO", "carol", "carol-pw")
            .status,
        200
    );
    assert!(!sim.log().contains("carol-pw"));
}

#[test]
fn tickets_rotate_with_a_grace_window() {
    let sim = SimProcess::start_with(
        USERS,
        &[
            "--ticket-rotate-ms",
            "200",
            "--ticket-grace-ms",
            "60000",
            "--hold-ms",
            "100",
        ],
    );
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let first = alice.ticket.clone();
    // The simulator rotates a ticket when it is presented past its period
    // (no timer runs), so sleeping longer than the period is a lower bound
    // that a slow machine only makes longer: these sleeps cannot race.
    std::thread::sleep(Duration::from_millis(400));
    // The event channel hands out the rotated ticket.
    let r = get(&alice.agent, &alice.events_url(0), Some(&first));
    assert_eq!(r.status, 200);
    let second = r.ticket.unwrap();
    assert_ne!(second, first, "ticket rotated after its period");
    // The old ticket still works inside the grace window, and the answer
    // carries the newest one.
    let r = get(&alice.agent, &alice.events_url(0), Some(&first));
    assert_eq!(r.status, 200);
    assert_eq!(r.ticket.as_deref(), Some(second.as_str()));

    // With no grace, a rotated-out ticket is refused with 401.
    sim.faults("ticket_grace_ms=0");
    std::thread::sleep(Duration::from_millis(400));
    let r = get(&alice.agent, &alice.events_url(0), Some(&second));
    let third = r.ticket.unwrap();
    assert_ne!(third, second);
    std::thread::sleep(Duration::from_millis(50));
    let r = get(&alice.agent, &alice.events_url(0), Some(&second));
    assert_eq!(r.status, 401, "{}", r.body);
    alice.ticket = third;
    sim.faults("ticket_rotate_ms=600000");
    alice.poll();

    // Missing and unknown tickets.
    let url = format!("{}/cwa/MainCommandHandler.ashx", sim.base_url());
    let body = format!("<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{}\"><queryPresence rid=\"1\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence></cwaRequests>", alice.sid);
    assert_eq!(post(&alice.agent, &url, None, &body).status, 401);
    assert_eq!(
        post(&alice.agent, &url, Some("0123abcd"), &body).status,
        401
    );
    assert_eq!(get(&alice.agent, &alice.events_url(0), None).status, 401);
}

#[test]
fn initiate_session_reply_forms_and_first_events() {
    let sim = SimProcess::start_with(
        USERS,
        &["--session-reply", "elements", "--poll-wait-ms", "3000"],
    );
    let a = agent();
    let r = post(
        &a,
        &format!("{}/forms/logon.html", sim.base_url()),
        None,
        &logon_body("CONTOSO\\bob", "bob-pw"),
    );
    let ticket = r.ticket.clone().unwrap();
    let sid_data =
        child_text(r.doc().get_child("requestSucceeded").unwrap(), "signInData").unwrap();
    let cmd = format!("{}/cwa/MainCommandHandler.ashx", sim.base_url());

    // signInData must be echoed.
    let bad = post(
        &a,
        &cmd,
        Some(&ticket),
        &format!("<cwaRequests xmlns=\"{CWA_NS}\" sid=\"0\"><initiateSession rid=\"1\"><signInData>x</signInData></initiateSession></cwaRequests>"),
    );
    assert!(
        bad.doc().get_child("requestInvalid").is_some(),
        "{}",
        bad.body
    );

    let r = post(
        &a,
        &cmd,
        Some(&ticket),
        &format!("<cwaRequests xmlns=\"{CWA_NS}\" sid=\"0\"><initiateSession rid=\"2\"><signInData>{sid_data}</signInData></initiateSession></cwaRequests>"),
    );
    let doc = r.doc();
    let acc = doc
        .get_child("requestAccepted")
        .unwrap_or_else(|| panic!("{}", r.body));
    assert_eq!(attr(acc, "rid"), Some("2"));
    let sid: u64 = child_text(acc, "sid").unwrap().parse().unwrap();
    assert_eq!(
        child_text(acc, "uri").as_deref(),
        Some("sip:bob@contoso.com")
    );
    assert_eq!(child_text(acc, "pollWaitTime").as_deref(), Some("3000"));

    let ev = get(
        &a,
        &format!(
            "{}/cwa/AsyncDataChannel.ashx?Sid={sid}&AckId=0&UA=false",
            sim.base_url()
        ),
        Some(&ticket),
    );
    let doc = ev.doc();
    assert_eq!(attr(&doc, "sid"), Some(sid.to_string().as_str()));
    assert_eq!(attr(&doc, "pollWaitTime"), Some("3000"));
    let timeout: u64 = attr(&doc, "sessionTimeout").unwrap().parse().unwrap();
    assert!(timeout > 0 && timeout <= 1200);
    let names: Vec<&str> = xml::children(&doc).map(|e| e.name.as_str()).collect();
    for want in [
        "configuration",
        "contactGroup",
        "selfPresence",
        "subscribers",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let full = xml::children(&doc)
        .find(|e| e.name == "contactGroup")
        .unwrap();
    assert_eq!(attr(full, "fullList"), Some("true"));
    // ackId is the highest eid in the batch.
    let max_eid = xml::children(&doc)
        .map(|e| attr(e, "eid").unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert_eq!(attr(&doc, "ackId"), Some(max_eid.to_string().as_str()));
}

// ---------------------------------------------------------------------------
// Presence, contacts, conversations

#[test]
fn two_users_see_each_others_presence() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "1000"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let mut bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");

    // alice adds bob as a subscribed contact in a new group.
    let r = alice.cmd("<addGroup rid=\"{rid}\"><group name=\"Team\"/></addGroup>");
    assert!(r.get_child("requestAccepted").is_some());
    let rid = alice.last_rid();
    let delta = alice.wait_for("group delta", |e| {
        e.name == "contactGroup" && attr(e, "fullList") == Some("false")
    });
    let group = delta.get_child("group").unwrap();
    assert_eq!(attr(group, "action"), Some("added"));
    let gid = attr(group, "id").unwrap().to_string();
    alice.wait_succeeded(&rid);
    // Duplicate group names: SIP 485.
    alice.cmd("<addGroup rid=\"{rid}\"><group name=\"team\"/></addGroup>");
    let rid = alice.last_rid();
    let f = alice.wait_for("dup", |e| {
        e.name == "requestFailed" && attr(e, "rid") == Some(&rid)
    });
    assert!(xml::to_string(&f).contains("485"));

    alice.cmd(&format!(
        "<addContact rid=\"{{rid}}\"><contact uri=\"sip:bob@contoso.com\" name=\"Bob\" subscribed=\"true\" groups=\"{gid}\"/></addContact>"
    ));
    let rid = alice.last_rid();
    let seen = alice.wait_for("bob's presence", |e| {
        e.name == "userPresence" && availability_of(e, "sip:bob@contoso.com").is_some()
    });
    assert_eq!(availability_of(&seen, "sip:bob@contoso.com"), Some(3500));
    alice.wait_succeeded(&rid);
    // bob learns he has a new watcher.
    bob.wait_for("subscriber", |e| {
        e.name == "subscribers"
            && xml::children(e).any(|s| attr(s, "uri") == Some("sip:alice@contoso.com"))
    });

    // bob goes busy with a note; alice sees both.
    bob.cmd(
        "<publishSelfPresence rid=\"{rid}\">\
         <cwaCategory name=\"state\" instanceMask=\"536870912\"><state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"userState\" manual=\"true\"><availability>6500</availability></state></cwaCategory>\
         <cwaCategory name=\"note\" instanceMask=\"0\" expires=\"-1\"><note xmlns=\"http://schemas.microsoft.com/2006/09/sip/note\"><body type=\"personal\">In a meeting &amp; busy</body></note></cwaCategory>\
         </publishSelfPresence>",
    );
    let rid = bob.last_rid();
    bob.wait_for("selfPresence", |e| {
        e.name == "selfPresence" && xml::to_string(e).contains("6500")
    });
    bob.wait_succeeded(&rid);
    let busy = alice.wait_for("busy", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(6500)
    });
    assert!(xml::to_string(&busy).contains("In a meeting &amp; busy"));

    // queryPresence (one-shot) of bob by carol-less alice, and search.
    alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    alice.wait_for("query", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(6500)
    });
    alice.cmd("<search rid=\"{rid}\"><displayName>jones</displayName></search>");
    let rid = alice.last_rid();
    let res = alice.wait_for("search", |e| {
        e.name == "searchResult" && attr(e, "rid") == Some(&rid)
    });
    let found: Vec<&str> = xml::children(&res).filter_map(|u| attr(u, "uri")).collect();
    assert_eq!(found, vec!["sip:bob@contoso.com"]);

    // bob signs out: alice sees him offline.
    let r = bob.cmd("<terminateSession rid=\"{rid}\"/>");
    assert!(r.get_child("requestAccepted").is_some());
    alice.wait_for("offline", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(18000)
    });
    // bob's session is gone; his ticket still works for a new session.
    let r = bob.cmd("<queryPresence rid=\"{rid}\"><uris><uri>sip:alice@contoso.com</uri></uris></queryPresence>");
    assert_eq!(
        error_code(r.get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );

    // Contact update and delete reach the list as deltas.
    alice.cmd("<updateContact rid=\"{rid}\"><contact uri=\"sip:bob@contoso.com\" name=\"Bobby\"/></updateContact>");
    let d = alice.wait_for("update", |e| {
        e.name == "contactGroup" && xml::to_string(e).contains("Bobby")
    });
    assert_eq!(
        attr(d.get_child("contact").unwrap(), "action"),
        Some("updated")
    );
    alice.cmd("<deleteContact rid=\"{rid}\"><uri>sip:bob@contoso.com</uri></deleteContact>");
    let d = alice.wait_for("delete", |e| {
        e.name == "contactGroup" && xml::to_string(e).contains("deleted")
    });
    assert_eq!(
        attr(d.get_child("contact").unwrap(), "uri"),
        Some("sip:bob@contoso.com")
    );
    alice.cmd(&format!(
        "<deleteGroup rid=\"{{rid}}\"><group id=\"{gid}\"/></deleteGroup>"
    ));
    let rid = alice.last_rid();
    alice.wait_succeeded(&rid);
    alice.cmd("<deleteGroup rid=\"{rid}\"><group id=\"1\"/></deleteGroup>");
    let r = alice.cmd("<unSubscribePresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></unSubscribePresence>");
    assert!(r.get_child("requestAccepted").is_some());
}

fn start_conversation(alice: &mut Cwa, bob: &mut Cwa, first: &str) -> String {
    let r = alice.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"0\"><initiateImSession><uris><uri>{}</uri></uris>\
         <message><format>text/plain</format><content>{first}</content></message><subject>hello</subject></initiateImSession></conference>",
        bob.uri
    ));
    let invite_rid = alice.last_rid();
    let acc = r
        .get_child("initiateImSessionAccepted")
        .unwrap_or_else(|| panic!("{r:?}"));
    let conf = attr(acc, "confId").unwrap().to_string();
    assert_ne!(conf, "0");
    alice.wait_for("connecting", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "connecting"
    });

    let inv = bob.wait_for("invitation", |e| is_conf(e, "imSessionReceived"));
    assert_eq!(attr(&inv, "confId"), Some(conf.as_str()));
    let item = conf_item(&inv).unwrap();
    assert_eq!(
        attr(item.get_child("inviter").unwrap(), "uri"),
        Some(alice.uri.as_str())
    );
    assert_eq!(
        child_text(item.get_child("message").unwrap(), "content").as_deref(),
        Some(first)
    );

    bob.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><acceptImSession/></conference>"
    ));
    let accept_rid = bob.last_rid();
    bob.wait_for("connected", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "connected"
    });
    bob.wait_succeeded(&accept_rid);
    let p = alice.wait_for("participant", |e| is_conf(e, "participant"));
    assert_eq!(attr(conf_item(&p).unwrap(), "uri"), Some(bob.uri.as_str()));
    alice.wait_for("connected", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "connected"
    });
    alice.wait_succeeded(&invite_rid);
    conf
}

fn send(from: &mut Cwa, conf: &str, text: &str) {
    from.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><sendMessage><format>text/plain</format><content>{text}</content></sendMessage></conference>"
    ));
    let rid = from.last_rid();
    from.wait_succeeded(&rid);
}

fn received(to: &mut Cwa, from: &str, text: &str) {
    let (from, text) = (from.to_string(), text.to_string());
    let content_of = |e: &Element| {
        conf_item(e)
            .and_then(|i| i.get_child("message"))
            .and_then(|m| child_text(m, "content"))
    };
    let m = to.wait_for("message", |e| {
        is_conf(e, "messageReceived")
            && content_of(e).as_deref() == Some(text.as_str())
            && attr(conf_item(e).unwrap(), "sender") == Some(&from)
    });
    let msg = conf_item(&m).unwrap().get_child("message").unwrap();
    assert_eq!(child_text(msg, "format").as_deref(), Some("text/plain"));
}

#[test]
fn a_conversation_with_messages_and_typing() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "1000"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let mut bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    let conf = start_conversation(&mut alice, &mut bob, "hi bob");

    alice.cmd(&format!("<conference rid=\"{{rid}}\" confId=\"{conf}\"><notifyComposing>composing</notifyComposing></conference>"));
    let c = bob.wait_for("typing", |e| is_conf(e, "composingState"));
    assert_eq!(xml::text(conf_item(&c).unwrap()), "composing");
    send(&mut alice, &conf, "how are &lt;you&gt; &amp; all?");
    received(&mut bob, "sip:alice@contoso.com", "how are <you> & all?");
    send(&mut bob, &conf, "fine");
    received(&mut alice, "sip:bob@contoso.com", "fine");

    // bob leaves: alice sees him go and the conversation end.
    bob.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><terminateImSession/></conference>"
    ));
    let rid = bob.last_rid();
    bob.wait_for("terminated", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "terminated"
    });
    bob.wait_succeeded(&rid);
    let gone = alice.wait_until("end", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "terminated"
    });
    assert!(gone.iter().any(|e| is_conf(e, "participantRemoved")
        && xml::text(conf_item(e).unwrap()) == "sip:bob@contoso.com"));
    // Sending into the ended conversation fails synchronously.
    let r = alice.cmd(&format!("<conference rid=\"{{rid}}\" confId=\"{conf}\"><sendMessage><content>x</content></sendMessage></conference>"));
    assert_eq!(
        error_code(r.get_child("requestFailed").unwrap()).as_deref(),
        Some("18102")
    );

    // An offline invitee: inviteFailed, requestFailed (SIP 480), terminated.
    alice.cmd("<conference rid=\"{rid}\" confId=\"0\"><initiateImSession><uris><uri>sip:carol@contoso.com</uri></uris></initiateImSession></conference>");
    let rid = alice.last_rid();
    let seq = alice.wait_until("terminated", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "terminated"
    });
    let pos = |pred: &dyn Fn(&Element) -> bool| {
        seq.iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{seq:?}"))
    };
    let i_invite = pos(&|e| {
        is_conf(e, "inviteFailed")
            && attr(conf_item(e).unwrap(), "uri") == Some("sip:carol@contoso.com")
    });
    let i_failed = pos(&|e| e.name == "requestFailed" && attr(e, "rid") == Some(&rid));
    assert!(i_invite < i_failed && i_failed < seq.len() - 1, "{seq:?}");
    assert!(xml::to_string(&seq[i_failed]).contains("code=\"480\""));

    // A declined invitation: 603 to the inviter.
    alice.cmd("<conference rid=\"{rid}\" confId=\"0\"><initiateImSession><uris><uri>sip:bob@contoso.com</uri></uris></initiateImSession></conference>");
    let rid = alice.last_rid();
    let inv = bob.wait_for("invitation", |e| is_conf(e, "imSessionReceived"));
    let conf2 = attr(&inv, "confId").unwrap().to_string();
    bob.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf2}\"><terminateImSession/></conference>"
    ));
    let f = alice.wait_for("declined", |e| {
        e.name == "requestFailed" && attr(e, "rid") == Some(&rid)
    });
    assert!(xml::to_string(&f).contains("603"));
}

#[test]
fn a_multiparty_conversation() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "1000"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let mut bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    let mut carol = Cwa::sign_in(&sim, "CONTOSO\\carol", "carol-pw");
    let conf = start_conversation(&mut alice, &mut bob, "1:1 first");

    alice.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><inviteParticipants><uris><uri>sip:carol@contoso.com</uri></uris></inviteParticipants></conference>"
    ));
    let rid = alice.last_rid();
    let inv = carol.wait_for("invitation", |e| is_conf(e, "imSessionReceived"));
    assert_eq!(attr(&inv, "confId"), Some(conf.as_str()));
    carol.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><acceptImSession/></conference>"
    ));
    let roster = carol.wait_until("connected", |e| {
        is_conf(e, "imSessionState") && xml::text(conf_item(e).unwrap()) == "connected"
    });
    let mut uris: Vec<String> = roster
        .iter()
        .filter(|e| is_conf(e, "participant"))
        .map(|e| attr(conf_item(e).unwrap(), "uri").unwrap().to_string())
        .collect();
    uris.sort();
    assert_eq!(uris, vec!["sip:alice@contoso.com", "sip:bob@contoso.com"]);
    for who in [&mut alice, &mut bob] {
        let p = who.wait_for("carol joins", |e| {
            is_conf(e, "participant")
                && attr(conf_item(e).unwrap(), "uri") == Some("sip:carol@contoso.com")
        });
        assert_eq!(attr(&p, "confId"), Some(conf.as_str()));
        who.wait_for("escalated", |e| {
            is_conf(e, "escalationMode") && xml::text(conf_item(e).unwrap()) == "escalated"
        });
    }
    alice.wait_succeeded(&rid);

    send(&mut carol, &conf, "hello both");
    received(&mut alice, "sip:carol@contoso.com", "hello both");
    received(&mut bob, "sip:carol@contoso.com", "hello both");
    send(&mut bob, &conf, "hi carol");
    received(&mut alice, "sip:bob@contoso.com", "hi carol");
    received(&mut carol, "sip:bob@contoso.com", "hi carol");

    // alice leaves; bob and carol carry on.
    alice.cmd(&format!(
        "<conference rid=\"{{rid}}\" confId=\"{conf}\"><terminateImSession/></conference>"
    ));
    for who in [&mut bob, &mut carol] {
        who.wait_for("alice left", |e| {
            is_conf(e, "participantRemoved")
                && xml::text(conf_item(e).unwrap()) == "sip:alice@contoso.com"
        });
    }
    send(&mut bob, &conf, "still here");
    received(&mut carol, "sip:bob@contoso.com", "still here");
}

// ---------------------------------------------------------------------------
// Event channel

#[test]
fn long_poll_is_held_until_an_event_and_replays_after_a_lost_answer() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "60000"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let mut bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    alice.poll(); // sign-in events
    bob.poll();
    let before = alice.ack;

    // A GET with nothing to say is held.
    let url = alice.events_url(alice.ack);
    let ticket = alice.ticket.clone();
    let a2 = agent();
    let held = std::thread::spawn(move || get(&a2, &url, Some(&ticket)));
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !held.is_finished(),
        "event GET answered without an event (hold 60 s)"
    );

    // An event releases it: alice's own subscription answers with bob's presence.
    alice.cmd("<subscribePresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></subscribePresence>");
    let r = held.join().unwrap();
    assert_eq!(r.status, 200);
    let doc = r.doc();
    assert!(xml::children(&doc).count() >= 1, "{}", r.body);
    let ack: u64 = attr(&doc, "ackId").unwrap().parse().unwrap();
    assert!(ack > before);

    // The answer is "lost": the same AckId replays the same events.
    let again = get(&alice.agent, &alice.events_url(before), Some(&alice.ticket));
    let again_doc = again.doc();
    let eids = |d: &Element| {
        xml::children(d)
            .map(|e| attr(e, "eid").unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let first_eids = eids(&doc);
    assert_eq!(eids(&again_doc)[..first_eids.len()], first_eids[..]);

    // An AckId ahead of the server: answered at once (not held), empty,
    // with the server's latest eid.
    let latest: u64 = attr(&again_doc, "ackId").unwrap().parse().unwrap();
    let ahead = get(
        &alice.agent,
        &alice.events_url(latest + 1000),
        Some(&alice.ticket),
    );
    let ahead_doc = ahead.doc();
    assert_eq!(ahead_doc.name, "cwaEvents");
    assert_eq!(xml::children(&ahead_doc).count(), 0);
    assert_eq!(attr(&ahead_doc, "ackId"), Some(latest.to_string().as_str()));
    assert!(sim.log().contains("ahead of the server"));
}

// ---------------------------------------------------------------------------
// Faults

#[test]
fn connection_limit_answers_503() {
    let sim = SimProcess::start_with(USERS, &["--max-connections", "2"]);
    let mut c1 = Raw::connect(&sim);
    let mut c2 = Raw::connect(&sim);
    assert_eq!(c1.request("POST", "/iwa/logon.html", &[], "").status, 401);
    assert_eq!(c2.request("POST", "/iwa/logon.html", &[], "").status, 401);
    let mut c3 = Raw::connect(&sim);
    let r = c3.request(
        "POST",
        "/forms/logon.html",
        &[],
        &logon_body("CONTOSO\\alice", "alice-pw"),
    );
    assert_eq!(r.status, 503);
    assert_eq!(sim.status()["refused_connections"], "1");
    // Lifted at run time.
    sim.faults("max_connections=0");
    let mut c4 = Raw::connect(&sim);
    let r = c4.request(
        "POST",
        "/forms/logon.html",
        &[],
        &logon_body("CONTOSO\\alice", "alice-pw"),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn throttling_latency_drop_expiry_and_restart() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "60000", "--session-timeout-s", "600"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    alice.poll();

    // Throttle the next two requests: 18101, then normal service.
    sim.faults("throttle=2");
    for _ in 0..2 {
        let r = post(
            &alice.agent,
            &format!("{}/cwa/MainCommandHandler.ashx", alice.base),
            Some(&alice.ticket),
            "<x/>",
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            error_code(r.doc().get_child("requestFailed").unwrap()).as_deref(),
            Some("18101")
        );
    }
    let r = alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    assert!(r.get_child("requestAccepted").is_some());
    sim.faults("throttle=on");
    let r = get(
        &alice.agent,
        &alice.events_url(alice.ack),
        Some(&alice.ticket),
    );
    assert_eq!(
        error_code(r.doc().get_child("requestFailed").unwrap()).as_deref(),
        Some("18101")
    );
    sim.faults("throttle=off\nlatency_ms=150");
    assert_eq!(sim.status()["latency_ms"], "150");
    let r = alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    assert!(r.get_child("requestAccepted").is_some());
    sim.faults("latency_ms=0");

    // Drop the session while its GET is held: the GET ends with 18100,
    // and so does the next command.
    alice.poll();
    let url = alice.events_url(alice.ack);
    let (a2, t2) = (agent(), alice.ticket.clone());
    let held = std::thread::spawn(move || get(&a2, &url, Some(&t2)));
    std::thread::sleep(Duration::from_millis(300));
    let out = sim.faults(&format!("drop_session={}", alice.sid));
    assert!(out.contains("dropped_sessions=1"), "{out}");
    let r = held.join().unwrap();
    assert_eq!(
        error_code(r.doc().get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );
    let r = alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    assert_eq!(
        error_code(r.get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );

    // drop_user by login ends every session of that user.
    let bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    assert!(sim
        .faults("drop_user=CONTOSO\\bob")
        .contains("dropped_sessions=1"));
    let r = get(&bob.agent, &bob.events_url(0), Some(&bob.ticket));
    assert_eq!(
        error_code(r.doc().get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );

    // Restart: every ticket and session is forgotten.
    let mut carol = Cwa::sign_in(&sim, "CONTOSO\\carol", "carol-pw");
    carol.poll();
    sim.faults("restart=yes");
    assert_eq!(sim.status()["sessions"], "0");
    assert_eq!(sim.status()["tickets"], "0");
    let r = get(
        &carol.agent,
        &carol.events_url(carol.ack),
        Some(&carol.ticket),
    );
    assert_eq!(r.status, 401);
    // Signing in again works.
    let mut carol = Cwa::sign_in(&sim, "CONTOSO\\carol", "carol-pw");
    carol.poll();

    // Unknown settings are refused as a whole.
    let (status, body) = sim.admin("POST", "/admin/faults", "latency_ms=5\ncolour=red");
    assert_eq!(status, 400, "{body}");
    assert_eq!(sim.status()["latency_ms"], "0");
}

#[test]
fn sessions_expire_after_inactivity() {
    let sim = SimProcess::start_with(USERS, &["--session-timeout-s", "1", "--hold-ms", "100"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let deadline = Instant::now() + WAIT;
    // UA=false polls are not user activity, so the session runs out.
    loop {
        let url = format!(
            "{}/cwa/AsyncDataChannel.ashx?Sid={}&AckId={}&UA=false",
            alice.base, alice.sid, alice.ack
        );
        let r = get(&alice.agent, &url, Some(&alice.ticket));
        let doc = r.doc();
        if doc.name == "cwaResponses" {
            assert_eq!(
                error_code(doc.get_child("requestFailed").unwrap()).as_deref(),
                Some("18100")
            );
            break;
        }
        alice.ack = attr(&doc, "ackId").unwrap().parse().unwrap();
        assert!(Instant::now() < deadline, "session never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    assert_eq!(
        error_code(r.get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn bad_input_gets_precise_errors_and_never_wedges() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "100", "--max-body", "4096"]);
    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    let cmd_url = format!("{}/cwa/MainCommandHandler.ashx", sim.base_url());
    let a = agent();
    let t = alice.ticket.clone();
    let sid = alice.sid;
    let invalid_code = |body: &str| -> Option<String> {
        let r = post(&a, &cmd_url, Some(&t), body);
        assert_eq!(r.status, 200, "{}", r.body);
        let d = r.doc();
        d.get_child("requestInvalid").and_then(error_code)
    };

    assert_eq!(
        invalid_code("<cwaRequests><unclosed>").as_deref(),
        Some("18000")
    );
    assert_eq!(invalid_code("not xml at all").as_deref(), Some("18000"));
    assert_eq!(
        invalid_code(&format!(
            "<cwaRequests sid=\"{sid}\"><queryPresence rid=\"1\"/></cwaRequests>"
        ))
        .as_deref(),
        Some("18000"),
    );
    assert_eq!(
        invalid_code(&format!(
            "<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{sid}\"><fooBar rid=\"1\"/></cwaRequests>"
        ))
        .as_deref(),
        Some("18001")
    );
    assert_eq!(
        invalid_code(&format!("<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{sid}\"><queryPresence rid=\"1\"><uris><uri>bob</uri></uris></queryPresence></cwaRequests>")).as_deref(),
        Some("18001")
    );
    assert_eq!(
        invalid_code(&format!(
            "<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{sid}\"><queryPresence/></cwaRequests>"
        ))
        .as_deref(),
        Some("18001")
    );
    let deep = format!(
        "<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{sid}\">{}</cwaRequests>",
        "<a>".repeat(1000)
    );
    assert_eq!(invalid_code(&deep).as_deref(), Some("18000"));
    // "/>" as text must not fool the nesting bound (small stacks).
    let sneaky = format!(
        "<cwaRequests xmlns=\"{CWA_NS}\" sid=\"{sid}\">{}</cwaRequests>",
        "<a x=\"/>\">/>".repeat(200)
    );
    assert_eq!(invalid_code(&sneaky).as_deref(), Some("18000"));

    // A wrong sid.
    let r = post(&a, &cmd_url, Some(&t), &format!("<cwaRequests xmlns=\"{CWA_NS}\" sid=\"999\"><queryPresence rid=\"5\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence></cwaRequests>"));
    let d = r.doc();
    let f = d.get_child("requestFailed").unwrap();
    assert_eq!(attr(f, "rid"), Some("5"));
    assert_eq!(error_code(f).as_deref(), Some("18100"));
    // Another user's sid is just as unknown.
    let bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    let r = get(
        &a,
        &format!(
            "{}/cwa/AsyncDataChannel.ashx?Sid={}&AckId=0&UA=false",
            sim.base_url(),
            bob.sid
        ),
        Some(&t),
    );
    assert_eq!(
        error_code(r.doc().get_child("requestFailed").unwrap()).as_deref(),
        Some("18100")
    );

    // Oversized body: 413.
    let big = "x".repeat(5000);
    assert_eq!(post(&a, &cmd_url, Some(&t), &big).status, 413);
    // Bad event parameters: 400.
    let r = get(
        &a,
        &format!(
            "{}/cwa/AsyncDataChannel.ashx?Sid=abc&AckId=0",
            sim.base_url()
        ),
        Some(&t),
    );
    assert_eq!(r.status, 400);
    // Unknown path and method.
    assert_eq!(
        get(&a, &format!("{}/nothing", sim.base_url()), None).status,
        404
    );
    assert_eq!(get(&a, &cmd_url, Some(&t)).status, 405);
    // Admin is not served on the CWA listener when it has its own.
    assert_eq!(
        get(&a, &format!("{}/admin/status", sim.base_url()), None).status,
        403
    );

    // Raw protocol garbage: bad request line, huge headers, chunked body.
    let mut raw = Raw::connect(&sim);
    raw.send_raw(b"HELLO THERE\r\n\r\n");
    assert_eq!(raw.read_reply().status, 400);
    let mut raw = Raw::connect(&sim);
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    raw.send_raw(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert_eq!(raw.read_reply().status, 431);
    let mut raw = Raw::connect(&sim);
    raw.send_raw(b"POST /forms/logon.html HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(raw.read_reply().status, 411);
    let mut raw = Raw::connect(&sim);
    let mut junk = vec![0u8; 3000];
    openssl::rand::rand_bytes(&mut junk).unwrap();
    raw.send_raw(&junk);
    raw.send_raw(b"\r\n\r\n");
    // Either a 400 or a closed connection; never a hang (read timeout 30 s).
    let mut buf = [0u8; 12];
    let n = raw.reader.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf.starts_with(b"HTTP/1.1 4"), "{:?}", &buf[..n]);

    // Still serving.
    let r = alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    assert!(r.get_child("requestAccepted").is_some());
    let log = sim.log();
    assert!(
        log.contains("(413)") && log.contains("(400)") && log.contains("requestInvalid"),
        "{log}"
    );
}

#[test]
fn users_file_and_flag_errors_exit_with_sysexits_codes() {
    let dir = support::tmp::TempDir::new("sim-args");
    let users = dir.join("users");
    std::fs::write(&users, "CONTOSO\\a pw sip:a@x\n\nbroken line here\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cwa-sim"))
        .args(["--listen", "127.0.0.1:0", "--users"])
        .arg(&users)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cwa-sim"))
        .args(["--listen", "127.0.0.1:0", "--users", "/nonexistent/users"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cwa-sim"))
        .args(["--listen", "127.0.0.1:0", "--bogus", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cwa-sim"))
        .args(["--listen", "127.0.0.1:0", "--users"])
        .arg(&users)
        .env("RUST_LOG", "loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("cwa-sim: RUST_LOG"), "{err}");
}

// ---------------------------------------------------------------------------
// HTTPS and many sessions

#[test]
fn https_sign_in_and_events_with_the_test_ca() {
    let ca = TestCa::new();
    let sim = SimProcess::start_tls(USERS, &ca, &["--hold-ms", "500"]);
    assert!(sim.base_url().starts_with("https://localhost:"));
    let tls_agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(ca.ureq_tls_config())
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let mut alice = Cwa::sign_in_with(tls_agent, &sim.base_url(), "CONTOSO\\alice", "alice-pw");
    alice.poll();
    alice.wait_for("self", |e| e.name == "selfPresence");
    assert!(sim.connections().iter().all(|c| c.tls));

    // A client that does not trust the test CA fails the handshake.
    let untrusting: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::NativeTls)
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        )
        .build()
        .into();
    assert!(untrusting
        .post(&format!("{}/forms/logon.html", sim.base_url()))
        .send("x")
        .is_err());
    // NTLM over TLS with a raw native-tls stream.
    let tcp = TcpStream::connect(sim.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = ca.native_connector().connect("localhost", tcp).unwrap();
    let neg = ntlm::header_value(&ntlm::negotiate_message());
    write!(tls, "POST /iwa/logon.html HTTP/1.1\r\nHost: localhost\r\nAuthorization: {neg}\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 401"), "{line}");
}

#[test]
fn hundreds_of_sessions_hold_long_polls_on_small_stacks() {
    const N: usize = 200;
    let mut users = String::new();
    for i in 0..N {
        users.push_str(&format!("LOAD\\u{i} pw{i} sip:u{i}@load.example\n"));
    }
    let sim = SimProcess::start_with(&users, &["--stack-kib", "64", "--hold-ms", "60000"]);
    let base = sim.base_url();
    // Sign in everyone, then hold one event GET per session, all at once.
    let mut sessions: Vec<Cwa> = (0..N)
        .map(|i| {
            let mut c =
                Cwa::sign_in_with(agent(), &base, &format!("LOAD\\u{i}"), &format!("pw{i}"));
            c.poll();
            c
        })
        .collect();
    let mut held = Vec::new();
    for c in &sessions {
        let (url, ticket) = (c.events_url(c.ack), c.ticket.clone());
        let a = c.agent.clone();
        held.push(std::thread::spawn(move || get(&a, &url, Some(&ticket))));
    }
    // Wait until the simulator holds all of them.
    let deadline = Instant::now() + WAIT;
    while sim.status()["held_polls"] != N.to_string() {
        assert!(
            Instant::now() < deadline,
            "held: {}",
            sim.status()["held_polls"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every user subscribes to the next one and publishes: each held GET is
    // released by an event.
    for (i, session) in sessions.iter_mut().enumerate() {
        let next = format!("sip:u{}@load.example", (i + 1) % N);
        session.cmd(&format!(
            "<subscribePresence rid=\"{{rid}}\"><uris><uri>{next}</uri></uris></subscribePresence>"
        ));
    }
    for h in held {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200);
        assert!(xml::children(&r.doc()).count() >= 1);
    }
    // No two users on one connection.
    for c in sim.connections() {
        assert!(c.users().len() <= 1, "{c:?}");
    }
    let mut sim = sim;
    assert!(sim.is_running());
}

/// The note text in `e`'s presence of `uri`, if any.
fn note_of(e: &Element, uri: &str) -> Option<String> {
    let user = xml::children(e).find(|u| u.name == "user" && attr(u, "uri") == Some(uri))?;
    let cat = xml::children(user).find(|c| attr(c, "name") == Some("note"))?;
    let note = cat.get_child("note")?;
    child_text(note, "body")
}

/// The members of container `id` in a `containers` event, as
/// `type value` strings.
fn members_of(e: &Element, id: &str) -> Option<Vec<String>> {
    let c = xml::children(e).find(|c| c.name == "container" && attr(c, "id") == Some(id))?;
    Some(
        xml::children(c)
            .map(|m| {
                format!(
                    "{} {}",
                    attr(m, "type").unwrap_or(""),
                    attr(m, "value").unwrap_or("")
                )
                .trim()
                .to_string()
            })
            .collect(),
    )
}

#[test]
fn containers_decide_what_a_watcher_sees_and_watchers_are_acknowledged() {
    let sim = SimProcess::start_with(USERS, &["--hold-ms", "1000"]);
    let mut bob = Cwa::sign_in(&sim, "CONTOSO\\bob", "bob-pw");
    // Every container at sign-in, as Office Communicator sets them up.
    let all = bob.wait_for("containers", |e| e.name == "containers");
    assert_eq!(
        members_of(&all, "200"),
        Some(vec!["sameEnterprise".to_string()])
    );
    assert_eq!(
        members_of(&all, "100"),
        Some(vec!["federated".to_string(), "publicCloud".to_string()])
    );
    assert_eq!(members_of(&all, "32000"), Some(vec![]));
    bob.cmd(
        "<publishSelfPresence rid=\"{rid}\"><cwaCategory name=\"state\"><state><availability>6500</availability></state></cwaCategory>\
         <cwaCategory name=\"note\"><note><body type=\"personal\">busy day</body></note></cwaCategory></publishSelfPresence>",
    );
    let rid = bob.last_rid();
    bob.wait_succeeded(&rid);

    let mut alice = Cwa::sign_in(&sim, "CONTOSO\\alice", "alice-pw");
    alice.cmd(
        "<subscribePresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></subscribePresence>",
    );
    let seen = alice.wait_for("bob's presence", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(6500)
    });
    assert_eq!(
        note_of(&seen, "sip:bob@contoso.com").as_deref(),
        Some("busy day")
    );
    // Bob learns of his new watcher, not yet acknowledged.
    let w = bob.wait_for("watcher", |e| e.name == "subscribers");
    let s = w.get_child("subscriber").unwrap();
    assert_eq!(attr(s, "uri"), Some("sip:alice@contoso.com"));
    assert_eq!(attr(s, "acknowledged"), Some("false"));

    // Blocked: Offline, no note; one document adds and deletes.
    let block = "<updateContainer rid=\"{rid}\"><container id=\"32000\"><addMember type=\"uri\" value=\"sip:alice@contoso.com\"/></container></updateContainer>";
    bob.cmd(block);
    let rid = bob.last_rid();
    let delta = bob.wait_for("blocked container", |e| e.name == "containers");
    assert_eq!(
        members_of(&delta, "32000"),
        Some(vec!["uri sip:alice@contoso.com".to_string()])
    );
    assert_eq!(
        members_of(&delta, "200"),
        None,
        "only the changed container"
    );
    bob.wait_succeeded(&rid);
    let off = alice.wait_for("offline", |e| {
        availability_of(e, "sip:bob@contoso.com").is_some()
    });
    assert_eq!(availability_of(&off, "sip:bob@contoso.com"), Some(18000));
    assert_eq!(note_of(&off, "sip:bob@contoso.com"), None);
    // A query shows the same; an invitation fails as if Bob were offline.
    alice.cmd(
        "<queryPresence rid=\"{rid}\"><uris><uri>sip:bob@contoso.com</uri></uris></queryPresence>",
    );
    alice.wait_for("query", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(18000)
    });
    alice.cmd(
        "<conference rid=\"{rid}\" confId=\"0\"><initiateImSession><uris><uri>sip:bob@contoso.com</uri></uris></initiateImSession></conference>",
    );
    alice.wait_for("invite failed", |e| is_conf(e, "inviteFailed"));

    // Public (and out of Blocked): the state, not the note. Deleting a
    // member a container does not hold succeeds.
    bob.cmd(
        "<updateContainer rid=\"{rid}\"><container id=\"100\"><addMember type=\"uri\" value=\"sip:alice@contoso.com\"/></container></updateContainer>\
         <updateContainer rid=\"{rid}.1\"><container id=\"32000\"><deleteMember type=\"uri\" value=\"sip:alice@contoso.com\"/></container></updateContainer>\
         <updateContainer rid=\"{rid}.2\"><container id=\"300\"><deleteMember type=\"uri\" value=\"sip:alice@contoso.com\"/></container></updateContainer>",
    );
    let rid = bob.last_rid();
    bob.wait_succeeded(&rid);
    bob.wait_succeeded(&format!("{rid}.2"));
    let public = alice.wait_for("public", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(6500)
    });
    assert_eq!(note_of(&public, "sip:bob@contoso.com"), None);
    // Team: the note too.
    bob.cmd("<updateContainer rid=\"{rid}\"><container id=\"300\"><addMember type=\"uri\" value=\"sip:alice@contoso.com\"/></container></updateContainer>");
    let team = alice.wait_for("team", |e| {
        availability_of(e, "sip:bob@contoso.com") == Some(6500)
    });
    assert_eq!(
        note_of(&team, "sip:bob@contoso.com").as_deref(),
        Some("busy day")
    );

    // Malformed updates are refused at once, each with its reason.
    for (bad, why) in [
        (
            "<container id=\"0\"><addMember type=\"everyone\"/></container>",
            "1..32767",
        ),
        (
            "<container id=\"300\"><addMember type=\"friends\"/></container>",
            "unknown member type",
        ),
        (
            "<container id=\"300\"><addMember type=\"uri\" value=\"alice\"/></container>",
            "sip: URI",
        ),
        ("", "without container"),
    ] {
        let r = bob.cmd(&format!(
            "<updateContainer rid=\"{{rid}}\">{bad}</updateContainer>"
        ));
        let invalid = r
            .get_child("requestInvalid")
            .unwrap_or_else(|| panic!("{r:?}"));
        assert_eq!(error_code(invalid).as_deref(), Some("18001"));
        assert!(xml::to_string(invalid).contains(why), "{invalid:?}");
    }
    // A container full: SIP 413, nothing changed.
    let many = |from: usize| -> String {
        (from..from + 300)
            .map(|i| format!("<addMember type=\"uri\" value=\"sip:u{i}@x.com\"/>"))
            .collect()
    };
    bob.cmd(&format!(
        "<updateContainer rid=\"{{rid}}\"><container id=\"400\">{}</container></updateContainer>",
        many(0)
    ));
    let rid = bob.last_rid();
    bob.wait_succeeded(&rid);
    bob.cmd(&format!(
        "<updateContainer rid=\"{{rid}}\"><container id=\"400\">{}</container></updateContainer>",
        many(300)
    ));
    let rid = bob.last_rid();
    let f = bob.wait_for("413", |e| {
        e.name == "requestFailed" && attr(e, "rid") == Some(&rid)
    });
    assert!(xml::to_string(&f).contains("413"), "{f:?}");
    bob.cmd("<updateContainer rid=\"{rid}\"><container id=\"400\"><addMember type=\"domain\" value=\"fabrikam.com\"/></container></updateContainer>");
    let personal = bob.wait_for("personal", |e| {
        e.name == "containers" && members_of(e, "400").is_some_and(|m| m.len() != 300)
    });
    assert_eq!(members_of(&personal, "400").unwrap().len(), 301);

    // Acknowledging: Bob's sessions see Alice acknowledged, now and at
    // the next sign-in (Alice watches him only in her session, so she is
    // listed there only while subscribed).
    bob.cmd("<acknowledgeSubscriber rid=\"{rid}\"><uri>sip:alice@contoso.com</uri></acknowledgeSubscriber>");
    let rid = bob.last_rid();
    let acked = bob.wait_for("acknowledged", |e| {
        e.name == "subscribers" && xml::to_string(e).contains("acknowledged=\"true\"")
    });
    assert_eq!(
        attr(acked.get_child("subscriber").unwrap(), "uri"),
        Some("sip:alice@contoso.com")
    );
    bob.wait_succeeded(&rid);
    let r = bob.cmd("<acknowledgeSubscriber rid=\"{rid}\"/>");
    assert_eq!(
        error_code(r.get_child("requestInvalid").unwrap()).as_deref(),
        Some("18001")
    );
    let r =
        bob.cmd("<acknowledgeSubscriber rid=\"{rid}\"><uri>alice</uri></acknowledgeSubscriber>");
    assert_eq!(
        error_code(r.get_child("requestInvalid").unwrap()).as_deref(),
        Some("18001")
    );
}
