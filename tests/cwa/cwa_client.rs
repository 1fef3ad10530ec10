//! Integration tests of the CWA client (`collabd::cwa`).
//!
//! Two kinds of peer, both real sockets on 127.0.0.1:
//! - "evil" raw-TCP servers (tests/support/evil_http.rs) that misbehave in
//!   one precise way each: malformed XML, unknown events, huge bodies, no
//!   ticket, redirects, stalls, dropped connections, busy answers;
//! - the real `cwa-sim` binary, over HTTP and over HTTPS with the test CA
//!   (further down).

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use collabd::cwa::{
    AuthMode, ClientConfig, Command, CommandKind, ConferenceItem, CwaSession, Event, ImMessage,
    Outcome, SessionError, SignInError, SignedInVia,
};
use support::evil_http::{response, send, EvilServer, Reply, Request};

/// Runs `f` on its own thread and fails the test if it has not finished
/// within a generous deadline: a stuck client must fail, not hang CI.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(90))
        .unwrap_or_else(|_| panic!("{what}: the client is stuck"))
}

/// Short phase timeouts so that stalls end quickly; forms only (the evil
/// servers do not speak NTLM unless a test says so).
fn evil_config(base: &str) -> ClientConfig {
    ClientConfig {
        auth_mode: AuthMode::Forms,
        connect_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        recv_timeout: Duration::from_secs(2),
        poll_hold_margin: Duration::from_secs(1),
        busy_backoff_cap: Duration::from_millis(300),
        max_busy_retries: 3,
        ..ClientConfig::new(base)
    }
}

const LOGON_OK: &str = r#"<cwaResponses xmlns="http://schemas.microsoft.com/2006/09/rtc/cwa"><requestSucceeded><uri>sip:alice@example.com</uri><signInData>ZGF0YQ==</signInData></requestSucceeded></cwaResponses>"#;
const SESSION_OK: &str =
    r#"<cwaResponses><initiateSessionAccepted rid="1" sid="5" pollWaitTime="0"/></cwaResponses>"#;

/// The rid attribute of the first method in a command body.
fn rid_of(r: &Request) -> String {
    let body = r.body_text();
    let at = body.find("rid=\"").expect("a rid") + 5;
    body[at..].split('"').next().unwrap().to_string()
}

/// A CWA that signs anyone in by forms (ticket `T1`, sid 5), accepts every
/// command, and answers event GETs with `get`.
fn fake_cwa<G>(get: G) -> EvilServer
where
    G: Fn(&Request) -> Reply + Send + Sync + 'static,
{
    fake_cwa_with(
        |r| {
            send(
                200,
                &[],
                &format!(
                    r#"<cwaResponses><requestAccepted rid="{}"/></cwaResponses>"#,
                    rid_of(r)
                ),
            )
        },
        get,
    )
}

fn fake_cwa_with<C, G>(command: C, get: G) -> EvilServer
where
    C: Fn(&Request) -> Reply + Send + Sync + 'static,
    G: Fn(&Request) -> Reply + Send + Sync + 'static,
{
    EvilServer::start(move |r| match r.path() {
        "/forms/logon.html" => send(200, &[("CWA-Ticket", "T1")], LOGON_OK),
        "/cwa/MainCommandHandler.ashx" if r.body_text().contains("<initiateSession") => {
            send(200, &[("CWA-Ticket", "T1")], SESSION_OK)
        }
        "/cwa/MainCommandHandler.ashx" => command(r),
        "/cwa/AsyncDataChannel.ashx" => get(r),
        _ => send(404, &[], ""),
    })
}

fn sign_in_err(server: &EvilServer, config: ClientConfig) -> SignInError {
    let _ = server;
    within("sign-in", move || {
        CwaSession::sign_in(&config, r"EXAMPLE\alice", "pw").err()
    })
    .expect("sign-in should have failed")
}

fn logon_server(reply: impl Fn() -> Reply + Send + Sync + 'static) -> EvilServer {
    EvilServer::start(move |r| match r.path() {
        "/forms/logon.html" => reply(),
        _ => send(404, &[], ""),
    })
}

type ReplyMaker = Box<dyn Fn() -> Reply + Send + Sync>;
type SignInCase = (&'static str, ReplyMaker, fn(&SignInError) -> bool);

#[test]
fn evil_sign_in_replies_are_classified() {
    let cases: Vec<SignInCase> = vec![
        (
            "malformed XML",
            Box::new(|| {
                send(
                    200,
                    &[("CWA-Ticket", "T")],
                    "<cwaResponses><requestSucceeded>",
                )
            }),
            |e| matches!(e, SignInError::Protocol(_)),
        ),
        ("no ticket", Box::new(|| send(200, &[], LOGON_OK)), |e| {
            matches!(e, SignInError::Protocol(_))
        }),
        ("401", Box::new(|| send(401, &[], "")), |e| {
            *e == SignInError::BadCredentials
        }),
        ("403", Box::new(|| send(403, &[], "")), |e| {
            *e == SignInError::NotEnabled
        }),
        ("503", Box::new(|| send(503, &[], "")), |e| {
            *e == SignInError::ServerBusy
        }),
        (
            "18101",
            Box::new(|| {
                send(
                    200,
                    &[],
                    r#"<cwaResponses><requestFailed><error code="18101" reason="throttled"/></requestFailed></cwaResponses>"#,
                )
            }),
            |e| *e == SignInError::ServerBusy,
        ),
        (
            "huge body",
            Box::new(|| {
                let mut body = b"<cwaResponses>".to_vec();
                body.resize(3 * 1024 * 1024, b' ');
                Reply::Send(response(200, &[("CWA-Ticket", "T")], &body))
            }),
            |e| matches!(e, SignInError::Protocol(_)),
        ),
        (
            "deeply nested",
            Box::new(|| {
                Reply::Send(response(
                    200,
                    &[("CWA-Ticket", "T")],
                    &b"<a>".repeat(200_000),
                ))
            }),
            |e| matches!(e, SignInError::Protocol(_)),
        ),
        (
            "stall mid-body",
            Box::new(|| {
                let mut bytes =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nCWA-Ticket: T\r\n\r\n".to_vec();
                bytes.extend_from_slice(b"<cwaResponses>");
                Reply::SendThenStall(bytes, Duration::from_secs(30))
            }),
            |e| matches!(e, SignInError::Unavailable(_)),
        ),
        (
            "stall before answering",
            Box::new(|| Reply::SendThenStall(Vec::new(), Duration::from_secs(30))),
            |e| matches!(e, SignInError::Unavailable(_)),
        ),
        (
            "not HTTP",
            Box::new(|| {
                Reply::SendThenStall(
                    b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
                    Duration::from_millis(10),
                )
            }),
            |e| matches!(e, SignInError::Protocol(_) | SignInError::Unavailable(_)),
        ),
        ("closed without answer", Box::new(|| Reply::Close), |e| {
            matches!(e, SignInError::Unavailable(_))
        }),
    ];
    for (name, reply, ok) in cases {
        let server = logon_server(reply);
        let err = sign_in_err(&server, evil_config(&server.base_url()));
        assert!(ok(&err), "{name}: got {err:?}");
        // Every class maps to a device status of the brief.
        assert!(
            [303, 305, 306, 308].contains(&err.device_status().code()),
            "{name}"
        );
    }
}

#[test]
fn evil_redirect_is_a_protocol_error_and_not_followed() {
    let target = EvilServer::start(|_| send(200, &[("CWA-Ticket", "T")], LOGON_OK));
    let location = format!("{}/forms/logon.html", target.base_url());
    let server = EvilServer::start(move |_| send(302, &[("Location", &location)], ""));
    let err = sign_in_err(&server, evil_config(&server.base_url()));
    assert!(
        matches!(err, SignInError::Protocol(ref why) if why.contains("redirect")),
        "{err:?}"
    );
    assert_eq!(err.device_status().code(), 308);
    assert_eq!(server.seen().len(), 1);
    assert!(target.seen().is_empty(), "the redirect was followed");
}

#[test]
fn evil_network_tls_and_config_failures() {
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = evil_config(&format!("http://127.0.0.1:{port}"));
    let err = within("refused", move || {
        CwaSession::sign_in(&config, "a", "b").err()
    })
    .unwrap();
    assert!(matches!(err, SignInError::Unavailable(_)), "{err:?}");

    // TLS to a peer that answers in plain HTTP as soon as it connects.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap();
    thread::spawn(move || {
        use std::io::Write;
        for mut s in plain.incoming().flatten() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let config = evil_config(&format!("https://{plain_addr}"));
    let err = within("tls", move || CwaSession::sign_in(&config, "a", "b").err()).unwrap();
    assert!(matches!(err, SignInError::Tls(_)), "{err:?}");

    for bad in ["ftp://x", "cwa.example.com", "https://"] {
        let err = CwaSession::sign_in(&ClientConfig::new(bad), "a", "b")
            .err()
            .unwrap();
        assert!(matches!(err, SignInError::Config(_)), "{bad}: {err:?}");
    }
    let config = ClientConfig {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..ClientConfig::new("https://127.0.0.1:1")
    };
    assert!(matches!(
        CwaSession::sign_in(&config, "a", "b").err().unwrap(),
        SignInError::Config(_)
    ));
}

#[test]
fn evil_iwa_without_challenge_falls_back_to_forms() {
    let server = EvilServer::start(|r| match r.path() {
        "/iwa/logon.html" => send(401, &[("WWW-Authenticate", "Negotiate")], ""),
        "/forms/logon.html" => send(200, &[("CWA-Ticket", "T1")], LOGON_OK),
        "/cwa/MainCommandHandler.ashx" => send(200, &[], SESSION_OK),
        _ => send(404, &[], ""),
    });
    let config = ClientConfig {
        auth_mode: AuthMode::IwaThenForms,
        ..evil_config(&server.base_url())
    };
    let c = config.clone();
    let session = within("fallback", move || {
        CwaSession::sign_in(&c, r"EX\alice", "pw")
    })
    .expect("forms fallback");
    assert_eq!(session.info().via, SignedInVia::Forms);
    assert_eq!(session.info().sid, "5");
    assert_eq!(session.info().own_uri, "sip:alice@example.com");
    let seen = server.seen();
    assert!(seen[0]
        .header("Authorization")
        .unwrap()
        .starts_with("NTLM "));
    assert_eq!(seen[1].path(), "/forms/logon.html");
    // initiateSession echoed signInData and carried the ticket.
    assert!(seen[2]
        .body_text()
        .contains("<signInData>ZGF0YQ==</signInData>"));
    assert_eq!(seen[2].header("CWA-Ticket"), Some("T1"));

    let iwa_only = ClientConfig {
        auth_mode: AuthMode::Iwa,
        ..config
    };
    let err = within("iwa only", move || {
        CwaSession::sign_in(&iwa_only, r"EX\alice", "pw").err()
    })
    .unwrap();
    assert!(matches!(err, SignInError::Protocol(_)), "{err:?}");
}

/// Signs in to an evil CWA and splits the session.
fn open(server: &EvilServer) -> (collabd::cwa::CommandChannel, collabd::cwa::EventChannel) {
    let config = evil_config(&server.base_url());
    within("sign-in", move || {
        CwaSession::sign_in(&config, r"EX\alice", "pw")
    })
    .expect("sign-in")
    .split()
}

#[test]
fn evil_events_unknown_malformed_nested_and_huge() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = fake_cwa(move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => send(
                200,
                &[],
                r#"<cwaEvents sid="5" ackId="2" pollWaitTime="0"><holographicCall eid="1"/><conference eid="2" confId="3"><messageReceived sender="sip:bob@example.com"><message><format>text/plain</format><content>hi &lt;there&gt;</content></message></messageReceived></conference></cwaEvents>"#,
            ),
            1 => send(200, &[], r#"<cwaEvents ackId="3"><conference eid="3""#),
            2 => Reply::Send(response(200, &[], &b"<cwaEvents>".repeat(100_000))),
            3 => {
                let mut body = br#"<cwaEvents ackId="3"><x eid="3">"#.to_vec();
                body.resize(2 * 1024 * 1024, b'x');
                Reply::Send(response(200, &[], &body))
            }
            _ => send(
                200,
                &[],
                r#"<cwaEvents ackId="3" pollWaitTime="0"><conference eid="3" confId="3"><imSessionState>terminated</imSessionState></conference></cwaEvents>"#,
            ),
        }
    });
    let (_commands, mut events) = open(&server);
    let batch = within("poll", move || {
        let b = events.poll();
        (b, events)
    });
    let (batch, mut events) = (batch.0.expect("first batch"), batch.1);
    assert_eq!(batch.ack_id, 2);
    assert_eq!(batch.events[0], Event::Unknown("holographicCall".into()));
    assert_eq!(
        batch.events[1],
        Event::Conference {
            conf_id: "3".into(),
            item: ConferenceItem::MessageReceived {
                sender: "sip:bob@example.com".into(),
                message: ImMessage::plain("hi <there>"),
            },
        }
    );
    events.ack(&batch);
    let (results, events) = within("bad polls", move || {
        let r: Vec<_> = (0..3).map(|_| events.poll()).collect();
        (r, events)
    });
    for r in &results {
        assert!(matches!(r, Err(SessionError::Protocol(_))), "{r:?}");
    }
    let mut events = events;
    let batch = within("recovery", move || events.poll()).expect("recovered");
    assert!(matches!(
        &batch.events[0],
        Event::Conference { item: ConferenceItem::ImSessionState(s), .. } if s == "terminated"
    ));
    // The AckId only moved when a batch was acknowledged.
    let acks: Vec<_> = server
        .seen()
        .iter()
        .filter(|r| r.path() == "/cwa/AsyncDataChannel.ashx")
        .map(|r| r.query("AckId").unwrap())
        .collect();
    assert_eq!(acks, ["0", "2", "2", "2", "2"]);
}

#[test]
fn evil_dropped_get_is_resent_with_the_same_ack_id() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = fake_cwa(move |r| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => Reply::Close,
            1 => Reply::SendThenStall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n<cwa".to_vec(),
                Duration::ZERO,
            ),
            _ => send(
                200,
                &[],
                &format!(
                    r#"<cwaEvents ackId="{0}" pollWaitTime="0"><requestSucceeded eid="{0}" rid="77"/></cwaEvents>"#,
                    r.query("AckId").unwrap().parse::<u64>().unwrap() + 1
                ),
            ),
        }
    });
    let (_commands, mut events) = open(&server);
    let batch = within("poll", move || events.poll()).expect("events after two drops");
    assert_eq!(batch.ack_id, 1);
    assert_eq!(batch.events.len(), 1);
    let gets: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|r| r.path() == "/cwa/AsyncDataChannel.ashx")
        .collect();
    assert_eq!(gets.len(), 3);
    assert!(gets
        .iter()
        .all(|r| r.query("AckId").as_deref() == Some("0")));
}

#[test]
fn evil_busy_event_channel_backs_off_then_gives_up() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = fake_cwa(move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        match n {
            0 => send(503, &[], ""),
            1 => send(
                200,
                &[],
                r#"<cwaEvents><error code="18101" reason="throttled"/></cwaEvents>"#,
            ),
            2 => send(
                200,
                &[],
                r#"<cwaEvents ackId="1" pollWaitTime="0"><subscribers eid="1"/></cwaEvents>"#,
            ),
            _ => send(503, &[], ""),
        }
    });
    let (_commands, mut events) = open(&server);
    let (first, second) = within("busy", move || {
        let first = events.poll();
        let second = events.poll();
        (first, second)
    });
    let first = first.expect("poll absorbs two busy answers");
    assert!(matches!(first.events[0], Event::Subscribers { .. }));
    // 1 + max_busy_retries (3) busy answers in a row, then Busy.
    assert_eq!(second, Err(SessionError::Busy));
    assert_eq!(count.load(Ordering::SeqCst), 3 + 4);
}

#[test]
fn evil_session_gone_and_redirect_on_the_event_channel() {
    for (reply, want_gone) in [
        (send(401, &[], ""), true),
        (
            send(
                200,
                &[],
                r#"<cwaResponses><error code="18100" reason="Session not found"/></cwaResponses>"#,
            ),
            true,
        ),
        (
            send(200, &[], r#"<cwaEvents><error code="18100"/></cwaEvents>"#),
            true,
        ),
        (send(302, &[("Location", "http://127.0.0.1:1/")], ""), false),
    ] {
        let bytes = match reply {
            Reply::Send(b) => b,
            _ => unreachable!(),
        };
        let server = fake_cwa(move |_| Reply::Send(bytes.clone()));
        let (_c, mut events) = open(&server);
        let err = within("poll", move || events.poll()).unwrap_err();
        if want_gone {
            assert!(matches!(err, SessionError::SessionGone(_)), "{err:?}");
            assert!(err.is_final());
            assert_eq!(err.device_status().code(), 310);
        } else {
            assert!(matches!(err, SessionError::Protocol(_)), "{err:?}");
        }
    }
}

#[test]
fn evil_ticket_rotation_embedded_events_and_correlation() {
    let server = fake_cwa_with(
        |r| {
            let rid = rid_of(r);
            if r.body_text().contains("<conference") {
                // initiateImSessionAccepted with events nested in the reply.
                send(
                    200,
                    &[],
                    &format!(
                        r#"<cwaResponses><initiateImSessionAccepted rid="{rid}" confId="9"/><cwaEvents ackId="1"><conference eid="1" confId="9"><imSessionState>connecting</imSessionState></conference></cwaEvents></cwaResponses>"#
                    ),
                )
            } else {
                send(
                    200,
                    &[],
                    &format!(r#"<cwaResponses><requestAccepted rid="{rid}"/></cwaResponses>"#),
                )
            }
        },
        |r| {
            let ack = r.query("AckId").unwrap();
            if ack == "0" {
                // Replays eid 1 (already seen with the command reply),
                // rotates the ticket and completes rid 3 asynchronously.
                send(
                    200,
                    &[("CWA-Ticket", "T2")],
                    r#"<cwaEvents ackId="2" pollWaitTime="0"><conference eid="1" confId="9"><imSessionState>connecting</imSessionState></conference><requestSucceeded eid="2" rid="3"/></cwaEvents>"#,
                )
            } else {
                send(200, &[], r#"<cwaEvents ackId="2" pollWaitTime="0"/>"#)
            }
        },
    );
    let (mut commands, mut events) = open(&server);
    let reply = commands
        .send(&Command::InitiateImSession {
            uris: vec!["sip:bob@example.com".into()],
            message: Some(ImMessage::plain("hello")),
            subject: None,
        })
        .expect("initiateImSession");
    assert_eq!(reply.rid, 2);
    assert_eq!(
        reply.outcome,
        Outcome::ImSessionAccepted {
            conf_id: "9".into()
        }
    );
    assert_eq!(
        reply.events.len(),
        1,
        "embedded event handed out with the reply"
    );
    let add = commands
        .send(&Command::AddGroup {
            name: "Team".into(),
            external_uri: None,
        })
        .unwrap();
    assert_eq!((add.rid, add.outcome), (3, Outcome::Accepted));

    let batch = within("poll", move || {
        let b = events.poll();
        (b, events)
    });
    let (batch, mut events) = (batch.0.unwrap(), batch.1);
    assert_eq!(
        batch.events,
        vec![Event::RequestSucceeded {
            rid: Some(3),
            kind: Some(CommandKind::AddGroup)
        }],
        "eid 1 must not be handed out twice"
    );
    events.ack(&batch);
    assert_eq!(events.ticket_rotations(), 1);
    // The next command carries the rotated ticket.
    commands
        .send(&Command::SendMessage {
            conf_id: "9".into(),
            message: ImMessage::plain("second"),
        })
        .unwrap();
    let seen = server.seen();
    let last = seen.iter().rev().find(|r| r.method == "POST").unwrap();
    assert_eq!(last.header("CWA-Ticket"), Some("T2"));
    assert!(last.body_text().contains(r#"confId="9""#));
}

#[test]
fn evil_channels_do_not_block_each_other() {
    // The server holds the event GET until it has received a command POST:
    // if a held GET blocked the command channel, this would never finish.
    let got_command = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let gc = got_command.clone();
    let gg = got_command.clone();
    let server = fake_cwa_with(
        move |r| {
            let (lock, cv) = &*gc;
            *lock.lock().unwrap() = true;
            cv.notify_all();
            send(
                200,
                &[],
                &format!(
                    r#"<cwaResponses><requestAccepted rid="{}"/></cwaResponses>"#,
                    rid_of(r)
                ),
            )
        },
        move |_| {
            let (lock, cv) = &*gg;
            let guard = lock.lock().unwrap();
            let _unused = cv
                .wait_timeout_while(guard, Duration::from_secs(60), |got| !*got)
                .unwrap();
            send(
                200,
                &[],
                r#"<cwaEvents ackId="1" pollWaitTime="0"><selfPresence eid="1"/></cwaEvents>"#,
            )
        },
    );
    let config = ClientConfig {
        recv_timeout: Duration::from_secs(30),
        ..evil_config(&server.base_url())
    };
    let (mut commands, mut events) = CwaSession::sign_in(&config, r"EX\alice", "pw")
        .unwrap()
        .split();
    let poller = thread::spawn(move || events.poll());
    // Give the GET a head start so it is really held when we POST; the
    // test is correct either way.
    thread::sleep(Duration::from_millis(200));
    let reply = within("command during held GET", move || {
        commands.send(&Command::QueryPresence {
            uris: vec!["sip:bob@example.com".into()],
        })
    })
    .unwrap();
    assert_eq!(reply.outcome, Outcome::Accepted);
    let batch = poller.join().unwrap().unwrap();
    assert!(matches!(batch.events[0], Event::SelfPresence { .. }));
    // The forms logon's own connection (closed after its reply, so that no
    // pooled buffer keeps the password), then one GET and one POST
    // connection at most for this session.
    assert!(server.connections.load(Ordering::SeqCst) <= 3);
}

#[test]
fn evil_command_failures_are_classified() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = fake_cwa_with(
        move |r| match c.fetch_add(1, Ordering::SeqCst) {
            0 => send(503, &[], ""),
            1 => send(
                200,
                &[],
                &format!(
                    r#"<cwaResponses><requestFailed rid="{}"><error code="18101"/></requestFailed></cwaResponses>"#,
                    rid_of(r)
                ),
            ),
            2 => send(
                200,
                &[],
                &format!(
                    r#"<cwaResponses><requestFailed rid="{}"><error code="18201" reason="Operation failed"><sipResponse code="485" reason="Ambiguous"/></error></requestFailed></cwaResponses>"#,
                    rid_of(r)
                ),
            ),
            3 => Reply::SendThenStall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n<cwaResp".to_vec(),
                Duration::from_secs(30),
            ),
            4 => send(200, &[], "<cwaResponses>"),
            5 => send(307, &[("Location", "http://127.0.0.1:1/")], ""),
            _ => send(
                200,
                &[],
                r#"<cwaResponses><error code="18100"/></cwaResponses>"#,
            ),
        },
        |_| send(200, &[], "<cwaEvents/>"),
    );
    let (commands, _events) = open(&server);
    let results = within("commands", move || {
        let mut commands = commands;
        let cmd = Command::AddGroup {
            name: "Dup".into(),
            external_uri: None,
        };
        let r: Vec<_> = (0..7).map(|_| commands.send(&cmd)).collect();
        let after = commands.send(&cmd);
        (r, after)
    });
    let (r, _) = results;
    assert_eq!(r[0], Err(SessionError::Busy));
    assert_eq!(r[1], Err(SessionError::Busy));
    match &r[2] {
        Ok(reply) => {
            assert!(matches!(&reply.outcome, Outcome::Failed(e) if e.sip_code == Some(485)))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r[3], Err(SessionError::Timeout(_))), "{:?}", r[3]);
    assert!(matches!(r[4], Err(SessionError::Protocol(_))), "{:?}", r[4]);
    assert!(matches!(r[5], Err(SessionError::Protocol(_))), "{:?}", r[5]);
    assert!(
        matches!(r[6], Err(SessionError::SessionGone(_))),
        "{:?}",
        r[6]
    );
}

// ---------------------------------------------------------------------
// Against the real cwa-sim binary.

use collabd::cwa::{ContactSpec, EventChannel, SearchQuery};
use support::cutting_proxy::CuttingProxy;
use support::sim::SimProcess as Sim;
use support::tls::TestCa;

const USERS: &str = "\
CONTOSO\\alice pw-alice sip:alice@contoso.com name=Alice_Example contacts=sip:bob@contoso.com
CONTOSO\\bob pw-bob sip:bob@contoso.com name=Bob_Builder contacts=sip:alice@contoso.com
CONTOSO\\carol pw-carol sip:carol@contoso.com name=Carol_Forms iwa=no
CONTOSO\\dave pw-dave sip:dave@contoso.com enabled=no
";

/// Fast polling so tests do not wait on pollWaitTime; a short hold so a
/// pump notices sign-out quickly.
const FAST: [&str; 4] = ["--poll-wait-ms", "0", "--hold-ms", "2000"];

fn sim_config(base: &str, ca: Option<&TestCa>) -> ClientConfig {
    ClientConfig {
        ca_file: ca.map(|c| c.ca_path.clone()),
        connect_timeout: Duration::from_secs(10),
        send_timeout: Duration::from_secs(10),
        recv_timeout: Duration::from_secs(20),
        poll_hold_margin: Duration::from_secs(10),
        busy_backoff_cap: Duration::from_millis(400),
        max_busy_retries: 4,
        ..ClientConfig::new(base)
    }
}

fn sign_in(config: &ClientConfig, login: &str, password: &str) -> CwaSession {
    let (c, l, p) = (config.clone(), login.to_string(), password.to_string());
    within("sign-in", move || CwaSession::sign_in(&c, &l, &p))
        .unwrap_or_else(|e| panic!("sign-in of {login}: {e}"))
}

fn sign_in_error(config: &ClientConfig, login: &str, password: &str) -> SignInError {
    let (c, l, p) = (config.clone(), login.to_string(), password.to_string());
    within("sign-in", move || CwaSession::sign_in(&c, &l, &p).err())
        .unwrap_or_else(|| panic!("sign-in of {login} should fail"))
}

/// Runs an event channel on its own thread, as collabd does: poll, hand
/// every event over (here: a channel), then ack.
struct Pump {
    rx: mpsc::Receiver<Result<Event, SessionError>>,
    /// Everything received so far, events and errors, with whether a
    /// `wait` already returned it (events of different sources may arrive
    /// in any order, so a wait may match an earlier one).
    log: Vec<(Result<Event, SessionError>, bool)>,
}

impl Pump {
    fn start(mut events: EventChannel) -> Pump {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || loop {
            match events.poll() {
                Ok(batch) => {
                    for e in &batch.events {
                        if tx.send(Ok(e.clone())).is_err() {
                            return;
                        }
                    }
                    events.ack(&batch);
                }
                Err(e) => {
                    let last = e.is_final();
                    if tx.send(Err(e)).is_err() || last {
                        return;
                    }
                }
            }
        });
        Pump {
            rx,
            log: Vec::new(),
        }
    }

    fn take(
        &mut self,
        what: &str,
        wait: Duration,
        pred: impl Fn(&Result<Event, SessionError>) -> bool,
    ) -> Result<Event, SessionError> {
        if let Some((item, used)) = self.log.iter_mut().find(|(i, used)| !*used && pred(i)) {
            *used = true;
            return item.clone();
        }
        loop {
            let item = self
                .rx
                .recv_timeout(wait)
                .unwrap_or_else(|_| panic!("no {what}; got {:#?}", self.log));
            let hit = pred(&item);
            self.log.push((item.clone(), hit));
            if hit {
                return item;
            }
        }
    }

    /// The first event not yet returned that matches `pred`.
    fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        self.take(what, Duration::from_secs(30), |i| {
            i.as_ref().is_ok_and(&pred)
        })
        .unwrap()
    }

    /// The first error not yet returned that matches `pred`.
    fn wait_error(&mut self, what: &str, pred: impl Fn(&SessionError) -> bool) -> SessionError {
        self.take(what, Duration::from_secs(60), |i| {
            i.as_ref().err().is_some_and(&pred)
        })
        .unwrap_err()
    }

    fn errors(&self) -> Vec<&SessionError> {
        self.log
            .iter()
            .filter_map(|(r, _)| r.as_ref().err())
            .collect()
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.log.iter().filter_map(|(r, _)| r.as_ref().ok())
    }
}

fn conf_item(e: &Event) -> Option<(&str, &ConferenceItem)> {
    match e {
        Event::Conference { conf_id, item } => Some((conf_id.as_str(), item)),
        _ => None,
    }
}

fn accepted(r: Result<collabd::cwa::CommandReply, SessionError>) -> u64 {
    let r = r.expect("command");
    assert_eq!(r.outcome, Outcome::Accepted, "{r:?}");
    r.rid
}

fn succeeded(pump: &mut Pump, rid: u64, kind: CommandKind) {
    let e = pump.wait("requestSucceeded", |e| {
        matches!(e, Event::RequestSucceeded { rid: Some(r), .. } | Event::RequestFailed { rid: Some(r), .. } if *r == rid)
    });
    assert_eq!(
        e,
        Event::RequestSucceeded {
            rid: Some(rid),
            kind: Some(kind)
        }
    );
}

/// Every connection the simulator has open was used by at most one user,
/// and no user holds more than two.
fn assert_connections_unshared(sim: &Sim, users: &[&str]) {
    let conns = sim.connections();
    let mut per_user = std::collections::HashMap::<String, usize>::new();
    for c in &conns {
        let who = c.users();
        assert!(who.len() <= 1, "a connection shared by users: {c:?}");
        if let Some(u) = who.into_iter().next() {
            *per_user.entry(u).or_default() += 1;
        }
    }
    for user in users {
        let n = per_user.get(*user).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&n),
            "{user} holds {n} connections: {conns:#?}"
        );
    }
}

/// A two-user conversation through the client API, observing every event
/// kind the device protocol needs.
fn conversation(sim: &Sim, ca: Option<&TestCa>) {
    let config = ClientConfig {
        republish_interval: Duration::ZERO,
        ..sim_config(&sim.base_url(), ca)
    };
    let alice = sign_in(&config, r"CONTOSO\alice", "pw-alice");
    assert_eq!(alice.info().via, SignedInVia::Iwa);
    assert_eq!(alice.info().own_uri, "sip:alice@contoso.com");
    let bob = sign_in(&config, r"CONTOSO\bob", "pw-bob");
    assert_eq!(bob.info().via, SignedInVia::Iwa);
    let (mut a, a_events) = alice.split();
    let (mut b, b_events) = bob.split();
    let mut ap = Pump::start(a_events);
    let mut bp = Pump::start(b_events);

    // Sign-in events.
    ap.wait("configuration", |e| matches!(e, Event::Configuration(_)));
    let list = ap.wait("contact list", |e| {
        matches!(
            e,
            Event::ContactGroup {
                full_list: true,
                ..
            }
        )
    });
    let Event::ContactGroup { contacts, .. } = list else {
        unreachable!()
    };
    assert!(
        contacts.iter().any(|c| c.uri == "sip:bob@contoso.com"),
        "{contacts:?}"
    );
    ap.wait("selfPresence", |e| matches!(e, Event::SelfPresence { .. }));

    // Presence with a note that needs escaping; bob subscribes and queries.
    let note = "in a <meeting> & \"busy\"";
    let rid = accepted(a.send(&Command::PublishPresence {
        availability: 6500,
        note: Some(note.into()),
    }));
    succeeded(&mut ap, rid, CommandKind::PublishPresence);
    let rid = accepted(b.send(&Command::SubscribePresence {
        uris: vec!["sip:alice@contoso.com".into()],
    }));
    let busy_alice = |e: &Event| {
        matches!(e, Event::UserPresence { users } if users.iter().any(|u|
            u.uri == "sip:alice@contoso.com" && u.availability() == Some(6500) && u.note() == Some(note)))
    };
    bp.wait("alice's presence", busy_alice);
    succeeded(&mut bp, rid, CommandKind::SubscribePresence);
    accepted(b.send(&Command::QueryPresence {
        uris: vec!["sip:alice@contoso.com".into()],
    }));
    bp.wait("queried presence", busy_alice);
    ap.wait("subscribers", |e| {
        matches!(e, Event::Subscribers { subscribers } if subscribers.iter().any(|s| s.uri == "sip:bob@contoso.com"))
    });
    // The five-minute republish (interval 0 here, so it is due).
    assert!(a.republish_due());
    let rid = accepted(a.republish());
    succeeded(&mut ap, rid, CommandKind::PublishPresence);
    // A publish without a note (collabd's Away) keeps the note, so the
    // republish goes on carrying it.
    let rid = accepted(a.send(&Command::PublishPresence {
        availability: 15500,
        note: None,
    }));
    succeeded(&mut ap, rid, CommandKind::PublishPresence);
    assert_eq!(a.presence(), (15500, Some(note.to_string())));

    // Directory search.
    let rid = accepted(a.send(&Command::Search(SearchQuery {
        display_name: "Builder".into(),
        ..SearchQuery::default()
    })));
    let found = ap.wait("search result", |e| matches!(e, Event::SearchResult { .. }));
    assert!(
        matches!(&found, Event::SearchResult { rid: Some(r), users, .. } if *r == rid && users.iter().any(|u| u.uri == "sip:bob@contoso.com")),
        "{found:?}"
    );

    // Groups and contacts.
    let rid = accepted(a.send(&Command::AddGroup {
        name: "Team & Co".into(),
        external_uri: None,
    }));
    let added = ap.wait("group added", |e| {
        matches!(e, Event::ContactGroup { groups, .. } if groups.iter().any(|g| g.name == "Team & Co"))
    });
    succeeded(&mut ap, rid, CommandKind::AddGroup);
    let Event::ContactGroup { groups, .. } = added else {
        unreachable!()
    };
    let gid = groups
        .iter()
        .find(|g| g.name == "Team & Co")
        .unwrap()
        .id
        .clone();
    let rid = accepted(a.send(&Command::UpdateGroup {
        id: gid.clone(),
        name: "Team".into(),
    }));
    succeeded(&mut ap, rid, CommandKind::UpdateGroup);
    let carol = ContactSpec {
        uri: "sip:carol@contoso.com".into(),
        name: "Carol".into(),
        subscribed: true,
        tag: false,
        groups: vec![gid.clone()],
    };
    let rid = accepted(a.send(&Command::AddContact(carol.clone())));
    ap.wait("contact added", |e| {
        matches!(e, Event::ContactGroup { contacts, .. } if contacts.iter().any(|c| c.uri == "sip:carol@contoso.com" && c.groups.contains(&gid)))
    });
    succeeded(&mut ap, rid, CommandKind::AddContact);
    let rid = accepted(a.send(&Command::UpdateContact(ContactSpec {
        name: "Carol F.".into(),
        ..carol
    })));
    succeeded(&mut ap, rid, CommandKind::UpdateContact);
    let rid = accepted(a.send(&Command::DeleteContact {
        uri: "sip:carol@contoso.com".into(),
    }));
    succeeded(&mut ap, rid, CommandKind::DeleteContact);
    let rid = accepted(a.send(&Command::DeleteGroup { id: gid }));
    succeeded(&mut ap, rid, CommandKind::DeleteGroup);

    // A conversation: confId 0, then the one CWA assigned.
    let started = a
        .send(&Command::InitiateImSession {
            uris: vec!["sip:bob@contoso.com".into()],
            message: Some(ImMessage::plain("hello bob")),
            subject: Some("lunch?".into()),
        })
        .unwrap();
    let Outcome::ImSessionAccepted { conf_id } = started.outcome else {
        panic!("{started:?}")
    };
    // Sends fail until the conversation is connected (cwa-sim(1), EVENTS).
    let rid = accepted(a.send(&Command::SendMessage {
        conf_id: conf_id.clone(),
        message: ImMessage::plain("too early"),
    }));
    ap.wait("send failed", |e| {
        matches!(
            conf_item(e),
            Some((_, ConferenceItem::MessageSendFailed { .. }))
        )
    });
    let failed = ap.wait("requestFailed", |e| {
        matches!(e, Event::RequestFailed { .. })
    });
    assert!(
        matches!(&failed, Event::RequestFailed { rid: Some(r), kind: Some(CommandKind::SendMessage), .. } if *r == rid),
        "{failed:?}"
    );
    let invite = bp.wait("invitation", |e| {
        matches!(
            conf_item(e),
            Some((_, ConferenceItem::ImSessionReceived { .. }))
        )
    });
    let Some((
        b_conf,
        ConferenceItem::ImSessionReceived {
            inviter_uri,
            message,
            ..
        },
    )) = conf_item(&invite)
    else {
        unreachable!()
    };
    assert_eq!(b_conf, conf_id);
    assert_eq!(inviter_uri, "sip:alice@contoso.com");
    assert_eq!(
        message.as_ref().map(|m| m.content.as_str()),
        Some("hello bob")
    );
    let b_conf = b_conf.to_string();
    accepted(b.send(&Command::AcceptImSession {
        conf_id: b_conf.clone(),
    }));
    ap.wait("connected", |e| {
        matches!(conf_item(e), Some((c, ConferenceItem::ImSessionState(s))) if c == conf_id && s == "connected")
    });
    ap.wait("participant bob", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::Participant(p))) if p.uri == "sip:bob@contoso.com")
    });
    accepted(a.send(&Command::NotifyComposing {
        conf_id: conf_id.clone(),
        composing: true,
    }));
    bp.wait("typing", |e| {
        matches!(
            conf_item(e),
            Some((
                _,
                ConferenceItem::ComposingState {
                    composing: true,
                    ..
                }
            ))
        )
    });
    let text = "hi alice <3 & \"co\"";
    accepted(b.send(&Command::SendMessage {
        conf_id: b_conf.clone(),
        message: ImMessage::plain(text),
    }));
    ap.wait("message", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::MessageReceived { sender, message }))
            if sender == "sip:bob@contoso.com" && message.content == text)
    });
    // carol has no session: the invitation fails.
    accepted(a.send(&Command::InviteParticipants {
        conf_id: conf_id.clone(),
        uris: vec!["sip:carol@contoso.com".into()],
    }));
    ap.wait("invite failed", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::InviteFailed { uri })) if uri == "sip:carol@contoso.com")
    });
    // bob leaves: the two-party conversation is over.
    accepted(b.send(&Command::TerminateImSession { conf_id: b_conf }));
    ap.wait("bob left", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::ParticipantRemoved { uri })) if uri == "sip:bob@contoso.com")
    });
    ap.wait("terminated", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::ImSessionState(s))) if s == "terminated")
    });

    // Each user's CWA connections are theirs alone; the IWA handshake
    // authenticated one connection per user (NTLM is per connection).
    assert_connections_unshared(sim, &["sip:alice@contoso.com", "sip:bob@contoso.com"]);
    let conns = sim.connections();
    for user in ["sip:alice@contoso.com", "sip:bob@contoso.com"] {
        let ntlm = conns.iter().filter(|c| c.ntlm == [user]).count();
        assert_eq!(ntlm, 1, "{user}: {conns:#?}");
    }

    // No event was unknown and nothing failed on the event channels.
    assert!(ap.errors().is_empty(), "{:?}", ap.errors());
    assert!(bp.errors().is_empty(), "{:?}", bp.errors());
    assert!(!ap.events().any(|e| matches!(e, Event::Unknown(_))));

    // Sign-out ends both channels.
    a.sign_out().expect("alice signs out");
    b.sign_out().expect("bob signs out");
    assert_eq!(
        ap.wait_error("closed", |e| e.is_final()),
        SessionError::Closed
    );
    assert_eq!(
        bp.wait_error("closed", |e| e.is_final()),
        SessionError::Closed
    );
    assert_eq!(
        a.send(&Command::QueryPresence { uris: vec![] })
            .unwrap_err(),
        SessionError::Closed
    );
    let status = sim.status();
    assert_eq!(status["sessions"], "0", "{status:?}");
}

#[test]
fn sim_conversation_over_http() {
    let sim = Sim::start_with(USERS, &FAST);
    conversation(&sim, None);
}

#[test]
fn sim_conversation_over_https_with_the_test_ca() {
    let ca = TestCa::new();
    let sim = Sim::start_tls(USERS, &ca, &FAST);
    conversation(&sim, Some(&ca));
}

/// Every sign-in made from one configuration shares its TLS context: later
/// connections resume a cached TLS session, yet certificates are still
/// verified (a server the configured CA does not vouch for is refused while
/// the context is in use, and so is a certificate for another name) and
/// each user keeps their own connections.
#[test]
fn sim_shared_tls_context_resumes_verifies_and_keeps_users_apart() {
    let ca = TestCa::new();
    let sim = Sim::start_tls(USERS, &ca, &FAST);
    let config = sim_config(&sim.base_url(), Some(&ca));
    let alice = sign_in(&config, r"CONTOSO\alice", "pw-alice");
    let bob = sign_in(&config, r"CONTOSO\bob", "pw-bob");
    let (mut a, a_events) = alice.split();
    let (mut b, b_events) = bob.split();
    let mut ap = Pump::start(a_events);
    let mut bp = Pump::start(b_events);
    ap.wait("alice's configuration", |e| {
        matches!(e, Event::Configuration(_))
    });
    bp.wait("bob's configuration", |e| {
        matches!(e, Event::Configuration(_))
    });
    for (channel, pump) in [(&mut a, &mut ap), (&mut b, &mut bp)] {
        let rid = accepted(channel.send(&Command::PublishPresence {
            availability: 3500,
            note: None,
        }));
        succeeded(pump, rid, CommandKind::PublishPresence);
    }
    // Both users' event GETs are held and their command connections are
    // pooled: still one user per connection.
    assert_connections_unshared(&sim, &["sip:alice@contoso.com", "sip:bob@contoso.com"]);
    let conns = sim.connections();
    assert!(conns.iter().all(|c| c.tls), "{conns:#?}");
    let handshakes = config.transport.tls_handshakes();
    assert!(
        handshakes.full >= 1 && handshakes.resumed >= 1,
        "later connections resume the first TLS session: {handshakes:?}"
    );

    // A server whose certificate comes from another CA, reached through the
    // same shared context: refused, and the context keeps serving.
    let stranger_ca = TestCa::new();
    let stranger = Sim::start_tls(USERS, &stranger_ca, &FAST);
    let to_stranger = ClientConfig {
        base_url: stranger.base_url(),
        ..config.clone()
    };
    let e = sign_in_error(&to_stranger, r"CONTOSO\carol", "pw-carol");
    assert!(matches!(e, SignInError::Tls(_)), "{e:?}");
    assert_eq!(e.device_status().code(), 306);
    assert!(stranger.connections().iter().all(|c| c.users().is_empty()));
    // A server with a certificate from the trusted CA but for another
    // name: the host name check refuses it.
    let misnamed_ca = TestCa::for_name("cwa.example.com", None);
    let misnamed = Sim::start_tls(USERS, &misnamed_ca, &FAST);
    let e = sign_in_error(
        &sim_config(&misnamed.base_url(), Some(&misnamed_ca)),
        r"CONTOSO\carol",
        "pw-carol",
    );
    assert!(
        matches!(&e, SignInError::Tls(why) if why.contains("hostname mismatch")),
        "{e:?}"
    );
    let carol = sign_in(&config, r"CONTOSO\carol", "pw-carol");
    assert_eq!(carol.info().own_uri, "sip:carol@contoso.com");
    assert_connections_unshared(
        &sim,
        &[
            "sip:alice@contoso.com",
            "sip:bob@contoso.com",
            "sip:carol@contoso.com",
        ],
    );
    let (mut c, _c_events) = carol.split();
    c.sign_out().expect("carol signs out");
    a.sign_out().expect("alice signs out");
    b.sign_out().expect("bob signs out");
}

#[test]
fn sim_forms_fallback_for_an_iwa_no_user() {
    let sim = Sim::start_with(USERS, &FAST);
    let config = sim_config(&sim.base_url(), None);
    let carol = sign_in(&config, r"CONTOSO\carol", "pw-carol");
    assert_eq!(carol.info().via, SignedInVia::Forms);
    assert_eq!(carol.info().own_uri, "sip:carol@contoso.com");
    // The connection that carried the password is not kept for the
    // session (the simulator forgets it once closed); the session goes on
    // over another.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut conns = sim.connections();
    while conns.iter().any(|c| !c.forms.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "{conns:#?}");
        thread::sleep(Duration::from_millis(10));
        conns = sim.connections();
    }
    assert!(
        conns.iter().any(|c| c.tickets == ["sip:carol@contoso.com"]),
        "{conns:#?}"
    );
    let (mut c, events) = carol.split();
    let mut pump = Pump::start(events);
    pump.wait("configuration", |e| matches!(e, Event::Configuration(_)));
    c.sign_out().unwrap();
    pump.wait_error("closed", |e| e.is_final());
}

#[test]
fn sim_every_sign_in_failure_class() {
    let sim = Sim::start_with(USERS, &FAST);
    let base = sim.base_url();
    let mode = |auth_mode| ClientConfig {
        auth_mode,
        ..sim_config(&base, None)
    };
    for auth in [AuthMode::IwaThenForms, AuthMode::Forms, AuthMode::Iwa] {
        let e = sign_in_error(&mode(auth), r"CONTOSO\alice", "wrong");
        assert_eq!(e, SignInError::BadCredentials, "{auth:?}");
        assert_eq!(e.device_status().code(), 303);
        let e = sign_in_error(&mode(auth), r"CONTOSO\nobody", "x");
        assert_eq!(e, SignInError::BadCredentials, "{auth:?}");
        let e = sign_in_error(&mode(auth), r"CONTOSO\dave", "pw-dave");
        assert_eq!(e, SignInError::NotEnabled, "{auth:?}");
        assert_eq!(e.device_status().code(), 305);
    }
    // iwa=no: refused on IWA alone, fine with forms.
    let e = sign_in_error(&mode(AuthMode::Iwa), r"CONTOSO\carol", "pw-carol");
    assert_eq!(e, SignInError::BadCredentials);
    sign_in(&mode(AuthMode::Forms), r"CONTOSO\carol", "pw-carol");

    // 18101: busy.
    sim.faults("throttle=1");
    let e = sign_in_error(&mode(AuthMode::IwaThenForms), r"CONTOSO\alice", "pw-alice");
    assert_eq!(e, SignInError::ServerBusy);
    assert_eq!(e.device_status().code(), 306);

    // 503: over the connection limit.
    // Wait until the simulator has let go of the sign-in connections above,
    // then until it holds the hog as its one connection; otherwise the hog
    // itself may be the one refused.
    let quiet = Instant::now() + Duration::from_secs(20);
    while !sim.connections().is_empty() {
        assert!(
            Instant::now() < quiet,
            "the simulator never dropped old connections"
        );
        thread::sleep(Duration::from_millis(20));
    }
    sim.faults("max_connections=1");
    let hog = std::net::TcpStream::connect(sim.addr()).unwrap();
    let hog_addr = hog.local_addr().unwrap();
    while !sim.connections().iter().any(|c| c.peer == hog_addr) {
        assert!(
            Instant::now() < quiet,
            "the simulator never accepted the hog"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let e = sign_in_error(&mode(AuthMode::Forms), r"CONTOSO\alice", "pw-alice");
    assert_eq!(e, SignInError::ServerBusy);
    drop(hog);
    sim.faults("max_connections=0");

    // Both forms of the initiateSession reply.
    let elements = Sim::start_with(
        USERS,
        &["--session-reply", "elements", "--poll-wait-ms", "0"],
    );
    let s = sign_in(
        &sim_config(&elements.base_url(), None),
        r"CONTOSO\alice",
        "pw-alice",
    );
    assert!(!s.info().sid.is_empty());
    assert_eq!(s.info().own_uri, "sip:alice@contoso.com");
}

#[test]
fn sim_certificate_that_does_not_verify() {
    let ca = TestCa::new();
    let sim = Sim::start_tls(USERS, &ca, &FAST);
    // Platform roots do not know the test CA.
    let e = sign_in_error(
        &sim_config(&sim.base_url(), None),
        r"CONTOSO\alice",
        "pw-alice",
    );
    assert!(matches!(e, SignInError::Tls(_)), "{e:?}");
    assert_eq!(e.device_status().code(), 306);
    // Nor does another CA.
    let other = TestCa::new();
    let e = sign_in_error(
        &sim_config(&sim.base_url(), Some(&other)),
        r"CONTOSO\alice",
        "pw-alice",
    );
    assert!(matches!(e, SignInError::Tls(_)), "{e:?}");
    // The right CA works; plain HTTP to the TLS port does not.
    sign_in(
        &sim_config(&sim.base_url(), Some(&ca)),
        r"CONTOSO\alice",
        "pw-alice",
    );
    let e = sign_in_error(
        &sim_config(&format!("http://{}", sim.addr()), None),
        r"CONTOSO\alice",
        "pw-alice",
    );
    assert!(
        matches!(e, SignInError::Unavailable(_) | SignInError::Protocol(_)),
        "{e:?}"
    );
}

#[test]
fn sim_ticket_rotation_is_followed() {
    // A ticket is replaced when presented 500 ms or more after it was
    // issued, and the one before it dies 3 s later: a client that kept its
    // first ticket would be refused once 3.5 s have passed. The grace is
    // generous so that a slow machine, late to read the newest ticket off
    // a reply, is not taken for a client that ignores it; the loop runs
    // until three rotations and that time have both passed.
    let sim = Sim::start_with(
        USERS,
        &[
            "--poll-wait-ms",
            "0",
            "--hold-ms",
            "300",
            "--ticket-rotate-ms",
            "500",
            "--ticket-grace-ms",
            "3000",
        ],
    );
    let config = sim_config(&sim.base_url(), None);
    let (mut a, events) = sign_in(&config, r"CONTOSO\alice", "pw-alice").split();
    let mut pump = Pump::start(events);
    let started = std::time::Instant::now();
    while a.ticket_rotations() < 3 || started.elapsed() < Duration::from_millis(4000) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} rotations",
            a.ticket_rotations()
        );
        let rid = accepted(a.send(&Command::QueryPresence {
            uris: vec!["sip:bob@contoso.com".into()],
        }));
        succeeded(&mut pump, rid, CommandKind::QueryPresence);
        thread::sleep(Duration::from_millis(200));
    }
    assert!(pump.errors().is_empty(), "{:?}", pump.errors());
    a.sign_out().unwrap();
}

#[test]
fn sim_dropped_gets_lose_and_duplicate_nothing() {
    let sim = Sim::start_with(USERS, &["--poll-wait-ms", "0", "--hold-ms", "20000"]);
    let proxy = CuttingProxy::start(sim.addr());
    // alice reaches CWA through the proxy; bob directly.
    let (mut a, a_events) = sign_in(
        &sim_config(&proxy.base_url(), None),
        r"CONTOSO\alice",
        "pw-alice",
    )
    .split();
    let (mut b, b_events) =
        sign_in(&sim_config(&sim.base_url(), None), r"CONTOSO\bob", "pw-bob").split();
    let mut ap = Pump::start(a_events);
    let mut bp = Pump::start(b_events);
    let started = b
        .send(&Command::InitiateImSession {
            uris: vec!["sip:alice@contoso.com".into()],
            message: Some(ImMessage::plain("m0")),
            subject: None,
        })
        .unwrap();
    let Outcome::ImSessionAccepted { conf_id } = started.outcome else {
        panic!("{started:?}")
    };
    ap.wait("invitation", |e| {
        matches!(
            conf_item(e),
            Some((_, ConferenceItem::ImSessionReceived { .. }))
        )
    });
    accepted(a.send(&Command::AcceptImSession {
        conf_id: conf_id.clone(),
    }));
    bp.wait("connected", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::ImSessionState(s))) if s == "connected")
    });
    let sent: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    for (i, text) in sent.iter().enumerate() {
        if i % 2 == 0 {
            // The response carrying this message never reaches alice.
            proxy.swallow_next_response();
        }
        accepted(b.send(&Command::SendMessage {
            conf_id: conf_id.clone(),
            message: ImMessage::plain(text),
        }));
        ap.wait(text, |e| {
            matches!(conf_item(e), Some((_, ConferenceItem::MessageReceived { message, .. })) if &message.content == text)
        });
    }
    // A last message flushes anything still queued.
    accepted(b.send(&Command::SendMessage {
        conf_id,
        message: ImMessage::plain("end"),
    }));
    ap.wait("end", |e| {
        matches!(conf_item(e), Some((_, ConferenceItem::MessageReceived { message, .. })) if message.content == "end")
    });
    assert_eq!(
        proxy.swallowed.load(Ordering::SeqCst),
        3,
        "three GETs were dropped"
    );
    let received: Vec<&str> = ap
        .events()
        .filter_map(|e| match conf_item(e) {
            Some((_, ConferenceItem::MessageReceived { message, .. })) => {
                Some(message.content.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(received, ["m1", "m2", "m3", "m4", "m5", "m6", "end"]);
    assert!(
        ap.errors().is_empty(),
        "drops are retried inside poll: {:?}",
        ap.errors()
    );
}

#[test]
fn sim_backs_off_on_18101_and_503() {
    let sim = Sim::start_with(USERS, &["--poll-wait-ms", "0", "--hold-ms", "300"]);
    let config = sim_config(&sim.base_url(), None);
    let (mut a, a_events) = sign_in(&config, r"CONTOSO\alice", "pw-alice").split();
    let (mut b, _b_events) = sign_in(&config, r"CONTOSO\bob", "pw-bob").split();
    let mut ap = Pump::start(a_events);
    ap.wait("configuration", |e| matches!(e, Event::Configuration(_)));

    // Two throttled answers are absorbed by the event channel's back-off.
    sim.faults("throttle=2");
    let mut waited = 0;
    while sim.status()["throttle"] != "off" {
        thread::sleep(Duration::from_millis(100));
        waited += 1;
        assert!(waited < 300, "the throttle was never consumed");
    }
    accepted(b.send(&Command::SubscribePresence {
        uris: vec!["sip:alice@contoso.com".into()],
    }));
    ap.wait("subscribers after back-off", |e| {
        matches!(e, Event::Subscribers { .. })
    });
    assert!(ap.errors().is_empty(), "{:?}", ap.errors());

    // Throttled for good: commands say Busy at once, the event channel
    // after its retries; then it recovers.
    sim.faults("throttle=on");
    assert_eq!(
        a.send(&Command::QueryPresence {
            uris: vec!["sip:bob@contoso.com".into()]
        })
        .unwrap_err(),
        SessionError::Busy
    );
    let e = ap.wait_error("busy", |e| *e == SessionError::Busy);
    assert_eq!(e.device_status().code(), 306);
    sim.faults("throttle=off");
    accepted(b.send(&Command::PublishPresence {
        availability: 9500,
        note: None,
    }));
    ap.wait("presence after recovery", |e| {
        matches!(e, Event::UserPresence { users } if users.iter().any(|u| u.availability() == Some(9500)))
    });

    // 503 for new connections: alice's pooled connections are busy or
    // idle; a new session cannot even sign in.
    sim.faults("max_connections=1");
    let e = sign_in_error(&config, r"CONTOSO\carol", "pw-carol");
    assert_eq!(e, SignInError::ServerBusy);
    sim.faults("max_connections=0");
    a.sign_out().unwrap();
}

#[test]
fn sim_expired_and_dropped_sessions_are_detected() {
    let sim = Sim::start_with(
        USERS,
        &[
            "--poll-wait-ms",
            "0",
            "--hold-ms",
            "500",
            "--session-timeout-s",
            "1",
        ],
    );
    let config = sim_config(&sim.base_url(), None);
    // No activity (UA=false, no commands): the session expires.
    let (mut a, events) = sign_in(&config, r"CONTOSO\alice", "pw-alice").split();
    let mut pump = Pump::start(events);
    let e = pump.wait_error("expiry", |e| e.is_final());
    assert!(matches!(e, SessionError::SessionGone(_)), "{e:?}");
    assert_eq!(e.device_status().code(), 310);
    assert!(matches!(
        a.send(&Command::QueryPresence {
            uris: vec!["sip:bob@contoso.com".into()]
        }),
        Err(SessionError::SessionGone(_))
    ));

    // Dropped by the administrator while a command is about to be sent.
    let sim = Sim::start_with(USERS, &FAST);
    let config = sim_config(&sim.base_url(), None);
    let session = sign_in(&config, r"CONTOSO\bob", "pw-bob");
    let sid = session.info().sid.clone();
    let (mut b, events) = session.split();
    let mut pump = Pump::start(events);
    pump.wait("configuration", |e| matches!(e, Event::Configuration(_)));
    sim.faults(&format!("drop_session={sid}"));
    let e = pump.wait_error("drop", |e| e.is_final());
    assert!(matches!(e, SessionError::SessionGone(_)), "{e:?}");
    assert!(matches!(
        b.send(&Command::QueryPresence {
            uris: vec!["sip:alice@contoso.com".into()]
        }),
        Err(SessionError::SessionGone(_))
    ));
    // Signing out of a session that is already gone is not an error.
    b.sign_out().unwrap();
}

#[test]
fn evil_event_get_that_stalls_mid_body_times_out_and_keeps_the_ack_id() {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let server = fake_cwa(move |_| match c.fetch_add(1, Ordering::SeqCst) {
        0 => Reply::SendThenStall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n<cwaEvents ackId=\"9\">".to_vec(),
            Duration::from_secs(30),
        ),
        _ => send(
            200,
            &[],
            r#"<cwaEvents ackId="1" pollWaitTime="0"><selfPresence eid="1"/></cwaEvents>"#,
        ),
    });
    let (_commands, events) = open(&server);
    let (first, second) = within("stalled GET", move || {
        let mut events = events;
        let first = events.poll();
        let second = events.poll();
        (first, second)
    });
    assert!(matches!(first, Err(SessionError::Timeout(_))), "{first:?}");
    assert_eq!(second.unwrap().ack_id, 1);
    let acks: Vec<_> = server
        .seen()
        .iter()
        .filter(|r| r.path() == "/cwa/AsyncDataChannel.ashx")
        .map(|r| r.query("AckId").unwrap())
        .collect();
    assert_eq!(acks, ["0", "0"]);
}

#[test]
fn evil_command_connection_closed_while_pooled_is_not_reused() {
    // Every command is answered in full, without `Connection: close`, and
    // then the connection is closed: the client must find that out when it
    // takes the connection from its pool (a command is never resent, so
    // sending it on the closed connection would fail it).
    let server = fake_cwa_with(
        |r| {
            Reply::SendThenStall(
                response(
                    200,
                    &[],
                    format!(
                        r#"<cwaResponses><requestAccepted rid="{}"/></cwaResponses>"#,
                        rid_of(r)
                    )
                    .as_bytes(),
                ),
                Duration::ZERO,
            )
        },
        |_| send(200, &[], "<cwaEvents/>"),
    );
    let (commands, _events) = open(&server);
    let before = server.connections.load(Ordering::SeqCst);
    let results = within("commands", move || {
        let mut commands = commands;
        let cmd = Command::AddGroup {
            name: "Friends".into(),
            external_uri: None,
        };
        (0..3)
            .map(|_| {
                // Time for the close to arrive, as between a device's
                // messages.
                thread::sleep(Duration::from_millis(50));
                commands.send(&cmd).map(|_| ())
            })
            .collect::<Vec<_>>()
    });
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "command {i}: {r:?}");
    }
    // The first may have reused the sign-in's connection; each one after
    // it needed a new one.
    assert!(
        server.connections.load(Ordering::SeqCst) - before >= 2,
        "the closed connections were not reused"
    );
}
