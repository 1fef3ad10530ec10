//! Integration tests of the CWA client (`collabd::cwa`).
//!
//! Two kinds of peer, both real sockets on 127.0.0.1:
//! - "evil" raw-TCP servers (tests/support/evil_http.rs) that misbehave in
//!   one precise way each: malformed XML, unknown events, huge bodies, no
//!   ticket, redirects, stalls, dropped connections, busy answers;
//! - the real `cwa-sim` binary, over HTTP and over HTTPS with the test CA
//!   (further down).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

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
            [303, 305, 306, 308].contains(&err.device_status()),
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
    assert_eq!(err.device_status(), 308);
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
            assert_eq!(err.device_status(), 310);
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
    // One GET and one POST connection at most for this session.
    assert!(server.connections.load(Ordering::SeqCst) <= 2);
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
