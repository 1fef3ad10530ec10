//! collabd end to end: the built `collabd` binary between real
//! `collab-device --script` processes (or the device library, for resume)
//! and a real `cwa-sim`, with its Config DB in a real scratch PostgreSQL.
//! Each test builds its own stack (see `support::collabd`). Waits are
//! generous and only bound a broken build; nothing is timed.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use collabd::configdb::InstanceSettings;
use collabd::device::DeviceClient;
use collabd::wire::{DeviceCommand, DeviceEvent, Resume, Secret, ServiceMessage};

use support::collabd::{field, finish, sim_line, wait_until, Stack, TestUser, WAIT};

fn users(names: &[&str]) -> Vec<TestUser> {
    names.iter().map(|n| TestUser::new(n)).collect()
}

/// A stack with these users in the simulator (each with the others as
/// contacts) and in the Config DB (allowed), one device each.
fn stack_with(
    names: &[&str],
    settings: InstanceSettings,
) -> (Stack, Vec<support::collabd::TestDevice>) {
    let users = users(names);
    let mut sim_users = String::new();
    for u in &users {
        let contacts: Vec<&str> = users
            .iter()
            .filter(|o| o.sip != u.sip)
            .map(|o| o.sip.as_str())
            .collect();
        let options = if contacts.is_empty() {
            String::new()
        } else {
            format!("contacts={}", contacts.join(","))
        };
        sim_users.push_str(&sim_line(u, &options));
    }
    let mut stack = Stack::new(&sim_users, settings);
    let mut devices = Vec::new();
    for u in &users {
        stack.add_user(u, true);
        devices.push(stack.add_device(u));
    }
    (stack, devices)
}

fn settings(max_sessions: Option<u32>) -> InstanceSettings {
    InstanceSettings {
        max_sessions,
        ..InstanceSettings::default()
    }
}

/// Sends a `start` and returns the conversation id from its result.
fn start_conversation(
    d: &mut support::device_peer::DeviceProcess,
    to: &[&str],
    text: &str,
) -> String {
    let tos: Vec<String> = to.iter().map(|t| format!("to={t}")).collect();
    d.send(&format!("start {} text={text}", tos.join(" ")));
    let result = d.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    field(&result, "conv").unwrap_or_else(|| panic!("no conv in {result}"))
}

#[test]
fn two_devices_see_presence_exchange_messages_and_a_third_joins() {
    let (mut stack, devices) = stack_with(&["alice", "bob", "carol"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (alice_dev, bob_dev, carol_dev) = (&devices[0], &devices[1], &devices[2]);

    let (mut alice, line) = stack.signed_in(alice_dev);
    assert!(line.contains("sip=sip:alice@contoso.com"), "{line}");
    assert!(field(&line, "session").unwrap().starts_with("s-"), "{line}");
    let (mut bob, _) = stack.signed_in(bob_dev);
    // Each sees the other's presence (they are each other's contacts).
    alice.expect("event presence seq=");
    let seen = alice
        .transcript
        .iter()
        .chain(std::iter::once(&String::new()))
        .any(|l| l.contains("uri=sip:bob@contoso.com") && l.contains("availability=online"));
    if !seen {
        loop {
            let l = alice.expect("event presence ");
            if l.contains("uri=sip:bob@contoso.com") && l.contains("availability=online") {
                break;
            }
        }
    }
    loop {
        let l = bob.expect("event presence ");
        if l.contains("uri=sip:alice@contoso.com") && l.contains("availability=online") {
            break;
        }
    }

    // Alice starts a conversation with Bob; Bob accepts and answers.
    let conv = start_conversation(&mut alice, &["sip:bob@contoso.com"], "hello\\sbob");
    let invitation = bob.expect("event invitation ");
    assert_eq!(field(&invitation, "conv").as_deref(), Some(conv.as_str()));
    assert_eq!(
        field(&invitation, "from").as_deref(),
        Some("sip:alice@contoso.com")
    );
    bob.send(&format!("accept conv={conv}"));
    bob.expect("result ");
    bob.send(&format!("send conv={conv} text=hi\\salice"));
    let result = bob.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    let msg = alice.expect("event message ");
    assert_eq!(field(&msg, "text").as_deref(), Some("hi\\salice"), "{msg}");
    assert_eq!(field(&msg, "from").as_deref(), Some("sip:bob@contoso.com"));
    alice.send(&format!("send conv={conv} text=how\\sare\\syou"));
    alice.expect("result ");
    let msg = bob.expect("event message ");
    assert_eq!(field(&msg, "text").as_deref(), Some("how\\sare\\syou"));

    // Carol joins: Alice invites her into the same conversation.
    let (mut carol, _) = stack.signed_in(carol_dev);
    alice.send(&format!("invite conv={conv} to=sip:carol@contoso.com"));
    alice.expect("result ");
    let invitation = carol.expect("event invitation ");
    assert_eq!(field(&invitation, "conv").as_deref(), Some(conv.as_str()));
    carol.send(&format!("accept conv={conv}"));
    carol.expect("result ");
    carol.send(&format!("send conv={conv} text=carol\\shere"));
    carol.expect("result ");
    for d in [&mut alice, &mut bob] {
        loop {
            let msg = d.expect("event message ");
            if field(&msg, "text").as_deref() == Some("carol\\shere") {
                assert_eq!(
                    field(&msg, "from").as_deref(),
                    Some("sip:carol@contoso.com")
                );
                break;
            }
        }
    }

    for d in [alice, bob, carol] {
        let (code, lines) = finish(d);
        assert_eq!(code, 0, "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("ended code=310")),
            "{lines:?}"
        );
    }
    wait_until("the registry to show no session", || {
        stack.active_sessions() == 0
    });
    for d in [alice_dev, bob_dev, carol_dev] {
        assert!(stack.audited("login_admitted", d.pin, "s-"));
        wait_until("the logout audit", || stack.audited("logout", d.pin, ""));
    }
}

#[test]
fn busy_at_max_sessions_then_an_out_of_coverage_session_is_evicted() {
    let (mut stack, devices) = stack_with(
        &["alice", "bob"],
        InstanceSettings {
            max_sessions: Some(1),
            idle_timeout_ms: Some(600_000),
            ..InstanceSettings::default()
        },
    );
    stack.start_collabd(&[]);
    let (alice, _) = stack.signed_in(&devices[0]);
    // Alice is in coverage and fresh: nobody can be signed out.
    let mut bob = stack.device(&devices[1]);
    let refused = bob.expect("login ");
    assert!(
        refused.starts_with("login refused code=301 name=ServerBusy"),
        "{refused}"
    );
    let (code, _) = finish(bob);
    assert_eq!(code, 2);
    assert!(stack.audited("login_refused", devices[1].pin, "301"));

    // Alice's device vanishes without a logout: out of coverage.
    let mut alice = alice;
    alice.child.kill().unwrap();
    let _ = alice.child.wait();
    wait_until("alice's session to be out of coverage", || {
        stack.session_coverage(devices[0].pin).as_deref() == Some("out")
    });
    let (bob, _) = stack.signed_in(&devices[1]);
    wait_until("alice's eviction to be recorded", || {
        stack.audited("evicted", devices[0].pin, "out of coverage")
    });
    assert_eq!(stack.session_coverage(devices[0].pin), None);
    assert_eq!(
        stack.session_coverage(devices[1].pin).as_deref(),
        Some("in")
    );
    let (code, _) = finish(bob);
    assert_eq!(code, 0);
}

#[test]
fn without_max_sessions_login_beyond_http_max_connections_fails() {
    let (mut stack, devices) = stack_with(
        &["alice", "bob"],
        InstanceSettings {
            max_sessions: None,
            http_max_connections: 1,
            ..InstanceSettings::default()
        },
    );
    stack.start_collabd(&[]);
    let (alice, _) = stack.signed_in(&devices[0]);
    let mut bob = stack.device(&devices[1]);
    let refused = bob.expect("login ");
    assert!(
        refused.starts_with("login refused code=300 name=Failed"),
        "{refused}"
    );
    assert_eq!(finish(bob).0, 2);
    assert!(stack.audited("login_refused", devices[1].pin, "300"));
    assert_eq!(finish(alice).0, 0);
}

#[test]
fn a_storm_of_4n_concurrent_logins_admits_exactly_n() {
    const N: usize = 3;
    let names: Vec<String> = (0..4 * N).map(|i| format!("user{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (mut stack, devices) = stack_with(&names, settings(Some(N as u32)));
    stack.start_collabd(&[]);
    let mut procs: Vec<_> = devices.iter().map(|d| stack.device(d)).collect();
    let mut admitted = 0;
    let mut busy = 0;
    for p in &mut procs {
        let line = p.expect("login ");
        if line.starts_with("login ok") {
            admitted += 1;
        } else if line.starts_with("login refused code=301") {
            busy += 1;
        } else {
            panic!("unexpected {line}");
        }
    }
    assert_eq!((admitted, busy), (N, 3 * N));
    wait_until("the heartbeat to count the sessions", || {
        stack.heartbeat_in_use() == N as u32
    });
    assert_eq!(stack.active_sessions(), N);
    for p in procs {
        let (code, lines) = finish(p);
        assert!(code == 0 || code == 2, "{code} {lines:?}");
    }
}

#[test]
fn refusals_give_their_status_are_audited_and_leave_nothing_in_the_table() {
    let alice = TestUser::new("alice");
    let bob = TestUser::new("bob");
    let dave = TestUser::new("dave");
    let erin = TestUser::new("erin");
    let sim_users = format!(
        "{}{}{}{}",
        sim_line(&alice, ""),
        sim_line(&bob, ""),
        sim_line(&dave, ""),
        sim_line(&erin, "enabled=no")
    );
    let mut stack = Stack::new(&sim_users, settings(Some(1)));
    stack.add_user(&alice, true);
    stack.add_user(&bob, true);
    stack.add_user(&dave, false);
    stack.add_user(&erin, true);
    let alice_dev = stack.add_device(&alice);
    let bob_dev = stack.add_device(&bob);
    let dave_dev = stack.add_device(&dave);
    let erin_dev = stack.add_device(&erin);
    stack.start_collabd(&[]);

    let expect_refused = |stack: &Stack,
                          dev: &support::collabd::TestDevice,
                          who: &TestUser,
                          pw: &str,
                          prefix: &str| {
        let mut d = stack.device_as(dev, who, pw, &[]);
        let line = d.expect("login ");
        assert!(line.starts_with(prefix), "expected {prefix}, got {line}");
        assert_eq!(finish(d).0, 2);
    };
    // Not permitted (im_enabled off in the Config DB).
    expect_refused(
        &stack,
        &dave_dev,
        &dave,
        &dave.password,
        "login refused code=302",
    );
    // Bad credentials (CWA refuses the password).
    expect_refused(
        &stack,
        &alice_dev,
        &alice,
        "wrong",
        "login refused code=303",
    );
    // Wrong user for the PIN: Alice's device signing in as Bob.
    expect_refused(
        &stack,
        &alice_dev,
        &bob,
        &bob.password,
        "login refused code=304",
    );
    // Not enabled for Communications Server (CWA says 403).
    expect_refused(
        &stack,
        &erin_dev,
        &erin,
        &erin.password,
        "login refused code=305",
    );
    assert!(stack.audited("login_refused", dave_dev.pin, "302"));
    assert!(stack.audited("login_refused", alice_dev.pin, "303"));
    assert!(stack.audited("login_refused", alice_dev.pin, "304"));
    assert!(stack.audited("login_refused", erin_dev.pin, "305"));
    assert!(
        stack
            .audit()
            .iter()
            .all(|r| !r.event.reason.as_deref().unwrap_or("").contains("pw-")),
        "no password in the audit"
    );

    // Nothing was left in the table: at max_sessions = 1 a login succeeds,
    // and its logout frees the slot for the next one.
    let (a, _) = stack.signed_in(&alice_dev);
    let (code, lines) = finish(a);
    assert_eq!(code, 0);
    assert!(
        lines
            .iter()
            .any(|l| l == "ended code=310 name=SessionEnded reason=logout"),
        "{lines:?}"
    );
    let (b, _) = stack.signed_in(&bob_dev);
    assert_eq!(finish(b).0, 0);
    wait_until("the logout audit", || {
        stack.audited("logout", alice_dev.pin, "")
    });

    // An unknown PIN is refused in the handshake.
    let mut ghost = alice_dev.clone();
    ghost.pin = 0x0bad_0001;
    let mut d = stack.device(&ghost);
    let line = d.expect("refused ");
    assert!(line.starts_with("refused code=312"), "{line}");
    assert_eq!(finish(d).0, 2);

    // CWA down: the device gets 306, not a hang, and no slot stays taken.
    stack.sim_kill();
    expect_refused(
        &stack,
        &alice_dev,
        &alice,
        &alice.password,
        "login refused code=306",
    );
    assert!(stack.audited("login_refused", alice_dev.pin, "306"));
    wait_until("the heartbeat to show no session", || {
        stack.heartbeat_in_use() == 0
    });
    assert_eq!(stack.active_sessions(), 0);
}

#[test]
fn postgres_down_refuses_new_logins_while_running_sessions_carry_on() {
    let (mut stack, devices) = stack_with(&["alice", "bob", "carol"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    let (mut bob, _) = stack.signed_in(&devices[1]);
    let conv = start_conversation(&mut alice, &["sip:bob@contoso.com"], "before");
    bob.expect("event invitation ");
    bob.send(&format!("accept conv={conv}"));
    bob.expect("result ");

    // The scratch database refuses new connections and drops the open ones.
    let mut outage = support::pg::Outage::start(&stack.db_url);

    let mut carol = stack.device(&devices[2]);
    let line = carol.expect("refused ");
    assert!(
        line.starts_with("refused code=307 name=ConfigUnavailable"),
        "{line}"
    );
    assert_eq!(finish(carol).0, 2);

    // The running sessions still exchange messages both ways.
    alice.send(&format!("send conv={conv} text=db\\sis\\sdown"));
    let result = alice.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    loop {
        let m = bob.expect("event message ");
        if field(&m, "text").as_deref() == Some("db\\sis\\sdown") {
            break;
        }
    }
    bob.send(&format!("send conv={conv} text=still\\shere"));
    bob.expect("result ");
    loop {
        let m = alice.expect("event message ");
        if field(&m, "text").as_deref() == Some("still\\shere") {
            break;
        }
    }

    outage.end();
    // The Config DB is back: new logins work again (the pool reconnects).
    wait_until("a login to succeed again", || {
        let mut carol = stack.device(&devices[2]);
        let line = carol.expect("");
        let line = if line.starts_with("connected") {
            carol.expect("")
        } else {
            line
        };
        let ok = line.starts_with("login ok");
        let _ = finish(carol);
        ok
    });
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn silent_garbage_and_stalled_connections_never_hold_a_slot() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(1)));
    let addr = stack.start_collabd(&["--handshake-timeout-ms", "500"]);
    let silent = TcpStream::connect(addr).unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut stalled = TcpStream::connect(addr).unwrap();
    // A frame header announcing 48 bytes, then nothing more.
    stalled.write_all(&[0, 0, 0, 48, 1, 1, 0, 0]).unwrap();

    // With all three open, the one session slot is still free.
    let (alice, _) = stack.signed_in(&devices[0]);

    // Each bad connection is closed by collabd (EOF or reset, never a hang).
    for (name, mut s) in [
        ("silent", silent),
        ("garbage", garbage),
        ("stalled", stalled),
    ] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        let outcome = s.read_to_end(&mut buf);
        assert!(
            outcome.is_ok()
                || outcome.as_ref().unwrap_err().kind() != std::io::ErrorKind::WouldBlock,
            "{name}: still open"
        );
    }
    assert_eq!(finish(alice).0, 0);
    assert!(stack.audited("login_admitted", devices[0].pin, "s-"));
}

#[test]
fn a_refused_frame_gets_its_308_and_an_orderly_end_even_with_input_in_flight() {
    let (mut stack, _devices) = stack_with(&["alice"], settings(Some(1)));
    let addr = stack.start_collabd(&[]);
    for attempt in 0..3 {
        let mut device = TcpStream::connect(addr).unwrap();
        device.set_read_timeout(Some(WAIT)).unwrap();
        device.set_write_timeout(Some(WAIT)).unwrap();
        // A Hello announcing 200,000 bytes (the limit is 65,536), and all
        // of them sent: collabd refuses on the length and stops reading,
        // while most of the frame is still on its way.
        let len = 200_000usize;
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 7]);
        frame.resize(4 + len, 0xa5);
        let mut writer = device.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&frame));
        let mut got = Vec::new();
        let read = device.read_to_end(&mut got);
        let sent = sender.join().unwrap();
        // A reset would fail the read (after or instead of the refusal) and
        // the rest of the device's writes.
        assert!(
            read.is_ok(),
            "try {attempt}: read ended with {read:?} after {} bytes",
            got.len()
        );
        assert!(sent.is_ok(), "try {attempt}: the device's writes: {sent:?}");
        let refused = collabd::wire::read_frame(&mut &got[..], collabd::wire::MAX_FRAME_LEN)
            .expect("a whole Refused frame");
        let (status, text) = refused.refusal().unwrap();
        assert_eq!(status.code(), 308, "{text}");
    }
}

/// Waits for the next event, answering nothing else.
fn next_event(client: &mut DeviceClient) -> (u64, DeviceEvent) {
    loop {
        match client.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => return (seq, event),
            Some(_) => continue,
            None => panic!("no event within {WAIT:?}"),
        }
    }
}

#[test]
fn a_device_that_comes_back_resumes_its_session_with_nothing_lost_or_duplicated() {
    let (mut stack, devices) = stack_with(&["alice", "bob"], settings(Some(10)));
    stack.start_collabd(&[]);
    let alice_dev = &devices[0];
    let password = Secret::new(alice_dev.user.password.clone());
    let mut alice = stack.library_client(alice_dev);
    let accepted = alice
        .login(&alice_dev.user.login, &password, None)
        .expect("login");
    let session_id = accepted.session_id.expect("session id");

    let (mut bob, _) = stack.signed_in(&devices[1]);
    let conv = start_conversation(&mut bob, &["sip:alice@contoso.com"], "m0");
    let mut texts: Vec<String> = Vec::new();
    let mut last_seq = 0;
    // Alice takes every event up to the invitation, accepts, and reads m1.
    loop {
        let (seq, event) = next_event(&mut alice);
        assert_eq!(seq, last_seq + 1, "no gap");
        last_seq = seq;
        if let DeviceEvent::Invitation {
            conversation, text, ..
        } = event
        {
            assert_eq!(conversation, conv);
            texts.extend(text);
            break;
        }
    }
    let accept = alice
        .send_command(DeviceCommand::Accept {
            conversation: conv.clone(),
        })
        .unwrap();
    // Sends fail until Alice has joined: wait for her accept's result
    // (taking any event that comes first, in order).
    loop {
        match alice.poll(WAIT).expect("poll") {
            Some(ServiceMessage::CommandResult { id, status, .. }) if id == accept => {
                assert_eq!(status.code(), 0, "accept failed");
                break;
            }
            Some(ServiceMessage::Event { seq, event }) => {
                assert_eq!(seq, last_seq + 1, "no gap");
                last_seq = seq;
                if let DeviceEvent::Message { text, .. } = event {
                    texts.push(text);
                }
            }
            Some(_) => continue,
            None => panic!("no accept result within {WAIT:?}"),
        }
    }
    bob.send(&format!("send conv={conv} text=m1"));
    let r = bob.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    loop {
        let (seq, event) = next_event(&mut alice);
        assert_eq!(seq, last_seq + 1, "no gap");
        last_seq = seq;
        if let DeviceEvent::Message { text, .. } = event {
            texts.push(text);
            break;
        }
    }
    alice.ack(last_seq).unwrap();
    // Alice's link drops (no logout); Bob goes on talking meanwhile.
    drop(alice);
    wait_until("alice's session to be out of coverage", || {
        stack.session_coverage(alice_dev.pin).as_deref() == Some("out")
    });
    for i in 2..6 {
        bob.send(&format!("send conv={conv} text=m{i}"));
        let r = bob.expect("result ");
        assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    }
    // A wrong password cannot take the session over.
    let mut intruder = stack.library_client(alice_dev);
    let refused = intruder.login(
        &alice_dev.user.login,
        &Secret::new("guess"),
        Some(Resume {
            session_id: session_id.clone(),
            last_acked_seq: last_seq,
        }),
    );
    assert!(
        matches!(refused, Err(collabd::device::DeviceError::LoginRefused(s, _)) if s.code() == 303),
        "{refused:?}"
    );

    // Alice comes back and resumes after the last event she acknowledged.
    let mut alice = stack.library_client(alice_dev);
    let resumed = alice
        .login(
            &alice_dev.user.login,
            &password,
            Some(Resume {
                session_id: session_id.clone(),
                last_acked_seq: last_seq,
            }),
        )
        .expect("resume");
    assert_eq!(resumed.session_id.as_deref(), Some(session_id.as_str()));
    while texts.len() < 6 {
        let (seq, event) = next_event(&mut alice);
        assert_eq!(seq, last_seq + 1, "replayed in order, no gap, no duplicate");
        last_seq = seq;
        if let DeviceEvent::Message { text, .. } = event {
            texts.push(text);
        }
    }
    assert_eq!(texts, vec!["m0", "m1", "m2", "m3", "m4", "m5"]);
    alice.ack(last_seq).unwrap();
    wait_until("the registry to show alice in coverage again", || {
        stack.session_coverage(alice_dev.pin).as_deref() == Some("in")
    });
    // Audit rows are written behind the session's back (the spool).
    wait_until("the resume and the refusal to be audited", || {
        stack.audited("login_resumed", alice_dev.pin, &session_id)
            && stack.audited("login_refused", alice_dev.pin, "303")
    });
    let seen = alice.logout().expect("logout");
    assert!(
        seen.iter().any(
            |m| matches!(m, ServiceMessage::SessionEnded { reason, .. } if reason == "logout")
        ),
        "{seen:?}"
    );
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn sigterm_tells_devices_311_signs_out_and_exits_0() {
    let (mut stack, devices) = stack_with(&["alice", "bob"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (alice, _) = stack.signed_in(&devices[0]);
    let (bob, _) = stack.signed_in(&devices[1]);
    let code = stack.collabd().signal_and_wait(libc::SIGTERM);
    assert_eq!(code, Some(0), "{}", stack.collabd().log());
    for d in [alice, bob] {
        let (code, lines) = finish(d);
        assert!(lines.iter().any(|l| l == "stopping"), "{lines:?}");
        assert_eq!(code, 5, "{lines:?}");
    }
    assert_eq!(stack.active_sessions(), 0);
    for d in &devices {
        assert!(stack.audited("service_stopping", d.pin, "stopping"));
    }
    // The simulator's sessions were signed out.
    wait_until("the CWA sessions to be signed out", || {
        stack.sim.status().get("sessions").map(String::as_str) == Some("0")
    });
    let instance = stack.db.instance(support::collabd::INSTANCE).unwrap();
    assert!(!instance.healthy);
}

#[test]
fn a_lost_cwa_session_ends_with_310_or_signs_in_again_with_password_caching() {
    // Without password caching: the device is told, the session ends.
    let (mut stack, devices) = stack_with(&["alice", "bob"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    stack.sim.faults("drop_user=sip:alice@contoso.com");
    let ended = alice.expect("ended ");
    assert!(
        ended.starts_with("ended code=310 name=SessionEnded reason=CWA\\ssession\\slost"),
        "{ended}"
    );
    assert_eq!(finish(alice).0, 5);
    wait_until("the audit of the lost session", || {
        stack.audited("cwa_session_lost", devices[0].pin, "CWA session lost")
    });
    assert_eq!(stack.active_sessions(), 0);

    // With password caching: collabd signs in again and the session goes on.
    stack.set_instance(collabd::configdb::InstanceChange {
        password_caching: Some(true),
        ..Default::default()
    });
    let code = stack.collabd().signal_and_wait(libc::SIGTERM);
    assert_eq!(code, Some(0));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    let (mut bob, _) = stack.signed_in(&devices[1]);
    stack.sim.faults("drop_user=sip:alice@contoso.com");
    wait_until("alice's CWA session to be back", || {
        let status = stack.sim.status();
        status.get("sessions").map(String::as_str) == Some("2")
            && status.get("sessions_ended").map(String::as_str) != Some("0")
    });
    let conv = start_conversation(&mut bob, &["sip:alice@contoso.com"], "are\\syou\\sthere");
    loop {
        let inv = alice.expect("event invitation ");
        if field(&inv, "conv").as_deref() == Some(conv.as_str()) {
            break;
        }
    }
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn the_inactivity_timeout_ends_a_silent_session() {
    let (mut stack, devices) = stack_with(
        &["alice"],
        InstanceSettings {
            max_sessions: Some(10),
            inactivity_timeout_ms: Some(1_500),
            ..InstanceSettings::default()
        },
    );
    stack.start_collabd(&[]);
    let dev = &devices[0];
    let mut alice = stack.device_as(
        dev,
        &dev.user,
        &dev.user.password,
        &["--status-interval", "0"],
    );
    assert!(alice.expect("login ").starts_with("login ok"));
    let ended = alice.expect("ended ");
    assert!(
        ended.starts_with("ended code=310 name=SessionEnded reason=inactivity\\stimeout"),
        "{ended}"
    );
    assert_eq!(finish(alice).0, 5);
    wait_until("the inactivity audit", || {
        stack.audited("inactive", dev.pin, "inactivity")
    });
}

/// collabd.conf(5): a signed-in device that sends nothing for
/// `status_timeout_ms` is taken as disconnected: its connection is closed
/// and its session stays, out of coverage. The link thread's quiet moment
/// before it gives its stack back counts towards that time.
#[test]
fn a_device_silent_for_the_status_timeout_is_dropped_and_its_session_kept() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&["--status-timeout-ms", "1500"]);
    let dev = &devices[0];
    let mut alice = stack.device_as(
        dev,
        &dev.user,
        &dev.user.password,
        &["--status-interval", "0", "--reconnect", "0"],
    );
    assert!(alice.expect("login ").starts_with("login ok"));
    let signed_in = std::time::Instant::now();
    let lost = alice.expect("lost ");
    let silent_for = signed_in.elapsed();
    assert!(lost.starts_with("lost kind=connection"), "{lost}");
    // Not before the timeout (the device's own clock started after the
    // service's, so this bound is safe).
    assert!(silent_for >= Duration::from_millis(1_400), "{silent_for:?}");
    assert_eq!(finish(alice).0, 3);
    wait_until("alice's session to be out of coverage", || {
        stack.session_coverage(dev.pin).as_deref() == Some("out")
    });
}

#[test]
fn beyond_the_unauthenticated_cap_a_connection_is_refused_301() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    let addr = stack.start_collabd(&["--max-unauthenticated", "1"]);
    // One connection signing in (silent) takes the only place.
    let _silent = TcpStream::connect(addr).unwrap();
    let mut d = stack.device(&devices[0]);
    let line = d.expect("refused ");
    assert!(
        line.starts_with("refused code=301 name=ServerBusy"),
        "{line}"
    );
    assert_eq!(finish(d).0, 2);
}

#[test]
fn tls_on_the_device_link_and_https_to_cwa_with_a_private_ca() {
    let ca = support::tls::TestCa::new();
    let alice = TestUser::new("alice");
    let bob = TestUser::new("bob");
    let sim_users = format!("{}{}", sim_line(&alice, ""), sim_line(&bob, ""));
    let mut stack = Stack::new_tls(&sim_users, settings(Some(10)), &ca);
    stack.add_user(&alice, true);
    stack.add_user(&bob, true);
    let alice_dev = stack.add_device(&alice);
    let bob_dev = stack.add_device(&bob);
    let (cert, key, ca_path) = (
        ca.cert_path.display().to_string(),
        ca.key_path.display().to_string(),
        ca.ca_path.display().to_string(),
    );
    stack.start_collabd(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--cwa-ca-file",
        &ca_path,
    ]);
    let tls = ["--tls", "--ca", ca_path.as_str(), "--tls-name", "localhost"];
    let mut a = stack.device_as(&alice_dev, &alice, &alice.password, &tls);
    assert!(a.expect("login ").starts_with("login ok"));
    let mut b = stack.device_as(&bob_dev, &bob, &bob.password, &tls);
    assert!(b.expect("login ").starts_with("login ok"));
    let conv = start_conversation(&mut a, &["sip:bob@contoso.com"], "over\\stls");
    let inv = b.expect("event invitation ");
    assert_eq!(field(&inv, "conv").as_deref(), Some(conv.as_str()));
    assert_eq!(field(&inv, "text").as_deref(), Some("over\\stls"));
    // A device that does not trust the certificate never gets in.
    let untrusting = stack.device_as(&bob_dev, &bob, &bob.password, &["--tls"]);
    let (code, lines, stderr) = untrusting.finish();
    assert_eq!(code, 3, "{lines:?}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    assert_eq!(finish(a).0, 0);
    assert_eq!(finish(b).0, 0);
}

#[test]
fn a_wrong_password_at_the_limit_evicts_nobody() {
    let (mut stack, devices) = stack_with(
        &["alice", "bob"],
        InstanceSettings {
            max_sessions: Some(1),
            idle_timeout_ms: Some(600_000),
            ..InstanceSettings::default()
        },
    );
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    // Alice's device vanishes: her session is the one an admitted login
    // would sign out.
    alice.child.kill().unwrap();
    let _ = alice.child.wait();
    wait_until("alice's session to be out of coverage", || {
        stack.session_coverage(devices[0].pin).as_deref() == Some("out")
    });
    let bob = &devices[1].user;
    let mut wrong = stack.device_as(&devices[1], bob, "not-bobs-password", &[]);
    let refused = wrong.expect("login ");
    assert!(refused.starts_with("login refused code=303"), "{refused}");
    assert_eq!(finish(wrong).0, 2);
    assert!(stack.audited("login_refused", devices[1].pin, "303"));
    // Nobody was signed out for it.
    assert_eq!(
        stack.session_coverage(devices[0].pin).as_deref(),
        Some("out")
    );
    assert!(!stack.audited("evicted", devices[0].pin, ""));
    // The right password is admitted, and only that signs Alice out.
    let (bob_dev, _) = stack.signed_in(&devices[1]);
    wait_until("alice's eviction to be recorded", || {
        stack.audited("evicted", devices[0].pin, "out of coverage")
    });
    assert_eq!(finish(bob_dev).0, 0);
}

#[test]
fn a_wrong_password_from_the_same_device_leaves_its_live_session_running() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    // Someone with the device's key but not the password signs in again.
    let user = &devices[0].user;
    let mut wrong = stack.device_as(&devices[0], user, "guess", &[]);
    let refused = wrong.expect("login ");
    assert!(refused.starts_with("login refused code=303"), "{refused}");
    assert_eq!(finish(wrong).0, 2);
    // The live session was not replaced: its device keeps working.
    alice.send("presence availability=away");
    let result = alice.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    assert!(!stack.audited("replaced", devices[0].pin, ""));
    assert_eq!(stack.active_sessions(), 1);
    alice.send("logout");
    let (code, lines) = finish(alice);
    assert_eq!(code, 0, "{lines:?}");
    wait_until("the logout audit", || {
        stack.audited("logout", devices[0].pin, "")
    });
}

/// A raw handshake for `pin` up to the Challenge; returns the stream.
fn hello(addr: std::net::SocketAddr, pin: u32) -> TcpStream {
    use collabd::wire::{write_frame, Frame, FrameReader, FrameType, Header, MAX_FRAME_LEN};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write_frame(
        &mut s,
        &Frame::new(Header::new(FrameType::Hello, pin, 0), vec![7u8; 32]),
    )
    .unwrap();
    let challenge = FrameReader::new(MAX_FRAME_LEN).read(&mut s).unwrap();
    assert_eq!(challenge.header.frame_type, FrameType::Challenge);
    s
}

#[test]
fn a_wrong_key_or_no_key_proof_is_refused_and_audited_at_a_bounded_rate() {
    use collabd::wire::{write_frame, Frame, FrameType, Header};
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&["--key-proof-timeout-ms", "300"]);
    let addr = stack.collabd.as_ref().unwrap().addr;
    let pin = devices[0].pin;

    // A Hello, then silence: cut at the key-proof deadline, long before
    // the sign-in deadline (10 s).
    let mut s = hello(addr, pin);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    wait_until("the missing key proof's audit row", || {
        stack.audited("handshake_failed", pin, "no key proof within 300 ms")
    });

    // Confirms that do not prove the key, more than the audit rate allows.
    for _ in 0..8 {
        let mut s = hello(addr, pin);
        write_frame(
            &mut s,
            &Frame::new(Header::new(FrameType::Confirm, pin, 0), vec![0u8; 32]),
        )
        .unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let refused = collabd::wire::read_frame(&mut reply.as_slice(), 4096).unwrap();
        assert_eq!(refused.header.frame_type, FrameType::Refused);
        assert_eq!(refused.refusal().unwrap().0.code(), 308);
    }
    wait_until("the wrong key's audit row", || {
        stack.audited("handshake_failed", pin, "from 127.0.0.1: wrong key")
    });
    wait_until("the failures past the rate to be logged", || {
        stack.collabd().log().contains("over the audit rate")
    });
    let rows = stack
        .audit()
        .iter()
        .filter(|r| r.event.event == "handshake_failed" && r.event.pin == Some(pin))
        .count();
    assert_eq!(rows, 5, "at most 5 rows a minute per PIN");

    // The honest device still signs in.
    let (alice, _) = stack.signed_in(&devices[0]);
    assert_eq!(finish(alice).0, 0);
    let log = stack.collabd().log();
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("127.0.0.1") && l.contains("wrong key")),
        "{log}"
    );
}

#[test]
fn one_address_holding_handshakes_is_capped_unless_it_is_a_relay() {
    use collabd::wire::FrameType;
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    // Long enough a key-proof deadline that the held handshakes stay.
    stack.start_collabd(&[
        "--max-unauthenticated-per-address",
        "2",
        "--key-proof-timeout-ms",
        "10000",
    ]);
    let addr = stack.collabd.as_ref().unwrap().addr;
    let pin = devices[0].pin;
    // Two held handshakes from 127.0.0.1 use up its places...
    let held: Vec<TcpStream> = (0..2).map(|_| hello(addr, pin)).collect();
    // ...so a third from there is refused 301 in clear at once.
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let refused = collabd::wire::read_frame(&mut third, 4096).unwrap();
    assert_eq!(refused.header.frame_type, FrameType::Refused);
    assert_eq!(refused.refusal().unwrap().0.code(), 301);
    // The places come back when the held connections go.
    drop(held);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut d = stack.device(&devices[0]);
        // Refused in clear (`refused ...`) or at the login (`login ...`).
        let line = loop {
            let line = d.expect("");
            if line.starts_with("login ") || line.starts_with("refused ") {
                break line;
            }
        };
        if line.starts_with("login ok") {
            assert_eq!(finish(d).0, 0);
            break;
        }
        assert!(line.contains("code=301"), "{line}");
        assert!(
            std::time::Instant::now() < deadline,
            "places never freed: {line}"
        );
        finish(d);
        std::thread::sleep(Duration::from_millis(100));
    }

    // A configured relay is never capped.
    stack.collabd = None;
    stack.start_collabd(&[
        "--max-unauthenticated-per-address",
        "2",
        "--relay-addresses",
        "10.9.9.9, 127.0.0.1",
    ]);
    let addr = stack.collabd.as_ref().unwrap().addr;
    let _held: Vec<TcpStream> = (0..3).map(|_| hello(addr, pin)).collect();
    let (d, _) = stack.signed_in(&devices[0]);
    assert_eq!(finish(d).0, 0);
}

#[test]
fn administrators_end_live_sessions_and_the_devices_are_told_why() {
    use collabd::configdb::SessionTarget;
    let (mut stack, devices) = stack_with(&["alice", "bob", "carol"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    let (mut bob, _) = stack.signed_in(&devices[1]);
    let (mut carol, _) = stack.signed_in(&devices[2]);
    assert_eq!(stack.active_sessions(), 3);

    // collabctl session end PIN --reason ...
    let ids = stack
        .db
        .request_session_end(SessionTarget::Pin(devices[0].pin), "phone lost", "the test")
        .unwrap();
    assert_eq!(ids.len(), 1);
    let ended = alice.expect("ended ");
    assert!(
        ended.starts_with(
            "ended code=310 name=SessionEnded reason=ended\\sby\\san\\sadministrator:\\sphone\\slost"
        ),
        "{ended}"
    );
    assert_eq!(finish(alice).0, 5);

    // collabctl device remove PIN
    stack.db.remove_device(devices[1].pin).unwrap();
    let ended = bob.expect("ended ");
    assert!(ended.contains("device\\sremoved"), "{ended}");
    assert_eq!(finish(bob).0, 5);

    // collabctl user revoke LOGIN
    stack
        .db
        .set_im_enabled(&devices[2].user.login, false)
        .unwrap();
    let ended = carol.expect("ended ");
    assert!(ended.contains("user\\srevoked"), "{ended}");
    assert_eq!(finish(carol).0, 5);

    wait_until("every registry row to be ended", || {
        stack.active_sessions() == 0
    });
    for (dev, why) in devices
        .iter()
        .zip(["phone lost", "device removed", "user revoked"])
    {
        assert!(stack.audited("session_ended_by_admin", dev.pin, why));
    }
    let requested = stack
        .db
        .list_audit(1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.event == "session_end_requested")
        .count();
    assert_eq!(requested, 3);
    wait_until("the CWA sessions to be signed out", || {
        stack.sim.status().get("sessions").map(String::as_str) == Some("0")
    });
    // Nothing left to end: a request names no active session.
    assert!(stack
        .db
        .request_session_end(SessionTarget::Pin(devices[0].pin), "again", "the test")
        .is_err());
}

#[test]
fn a_killed_instance_leaves_no_active_session_once_another_notices() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (alice, _) = stack.signed_in(&devices[0]);
    let mut other_settings = settings(Some(10));
    other_settings.cwa_url = stack.sim.base_url();
    stack.db.add_instance("survivor", &other_settings).unwrap();
    let mut survivor = support::collabd::Collabd::start(
        &stack.dir,
        &stack.db_url,
        &["--instance", "survivor", "--instance-lost-after-ms", "1500"],
    );
    assert_eq!(stack.active_sessions(), 1);

    assert_eq!(stack.collabd().signal_and_wait(libc::SIGKILL), None);
    drop(alice);
    wait_until("the killed instance's session to be ended", || {
        stack.active_sessions() == 0
    });
    let rows: Vec<_> = stack
        .db
        .list_audit(1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.event == "session_ended" && r.event.pin == Some(devices[0].pin))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let reason = rows[0].event.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("instance lost") && reason.contains("survivor"),
        "{reason}"
    );
    let noticed = format!("instance {} lost", support::collabd::INSTANCE);
    assert!(survivor.log().contains(&noticed), "{}", survivor.log());
    assert_eq!(survivor.signal_and_wait(libc::SIGTERM), Some(0));
}

#[test]
fn a_cwa_slower_than_the_sign_in_deadline_gives_306_and_leaves_nothing() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&["--handshake-timeout-ms", "3000"]);
    // Every CWA answer comes after the device's whole sign-in deadline.
    stack.sim.faults("latency_ms=6000");
    let mut alice = stack.device(&devices[0]);
    let refused = alice.expect("login ");
    assert!(
        refused.starts_with("login refused code=306 name=CwaUnavailable"),
        "{refused}"
    );
    finish(alice);
    wait_until("the refusal's audit", || {
        stack.audited("login_refused", devices[0].pin, "306")
    });
    // The sign-in ended with the refusal: no session, no row, and nothing
    // left to finish it later.
    assert_eq!(stack.active_sessions(), 0);
    assert_eq!(
        stack.sim.status().get("sessions").map(String::as_str),
        Some("0")
    );
    assert!(!stack.collabd().log().contains("admitted"));

    // CWA recovers: the same device signs in.
    stack.sim.faults("latency_ms=0");
    let (alice, _) = stack.signed_in(&devices[0]);
    assert_eq!(stack.active_sessions(), 1);
    assert_eq!(finish(alice).0, 0);
}

#[test]
fn a_command_whose_cwa_outcome_never_comes_is_answered_306() {
    let (mut stack, devices) = stack_with(&["alice"], settings(Some(10)));
    stack.start_collabd(&["--command-timeout-ms", "1000"]);
    // Short holds: the event channel comes back often, as a busy CWA's does.
    stack.sim.faults("hold_ms=200");
    let (mut alice, _) = stack.signed_in(&devices[0]);
    stack.sim.faults("withhold_outcomes=on");
    alice.send("presence availability=busy");
    let sent = alice.expect("sent id=");
    let result = alice.expect("result ");
    assert_eq!(field(&result, "id"), field(&sent, "id"), "{result}");
    assert!(
        result.contains("status=failed code=306") && result.contains("no\\soutcome"),
        "{result}"
    );

    // Outcomes flow again: the next command is answered from its outcome.
    stack.sim.faults("withhold_outcomes=off");
    alice.send("presence availability=online");
    let result = alice.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    assert_eq!(finish(alice).0, 0);
}

#[test]
fn a_stalled_heartbeat_stops_the_watchdog_and_says_so() {
    use std::os::unix::net::UnixDatagram;
    let (mut stack, _devices) = stack_with(&["alice"], settings(Some(10)));
    let socket_path = stack.dir.join("notify.sock");
    let notifications = UnixDatagram::bind(&socket_path).unwrap();
    notifications
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        loop {
            match notifications.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).to_string(),
                // Other tests' children end meanwhile (SIGCHLD).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no notification: {e}"),
            }
        }
    };
    let socket = socket_path.display().to_string();
    let collabd = support::collabd::Collabd::start_with_env(
        &stack.dir,
        &stack.db_url,
        &["--heartbeat-stall-ms", "2000"],
        // Pings every 200 ms.
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );
    while !next().contains("WATCHDOG=1") {}

    // Another transaction holds the instance row: the heartbeat's write
    // waits behind it, as behind a PostgreSQL that stopped answering.
    let mut locker = postgres::Client::connect(&stack.db_url, postgres::NoTls).unwrap();
    let mut held = locker.transaction().unwrap();
    held.execute(
        "SELECT 1 FROM instance WHERE name = $1 FOR UPDATE",
        &[&support::collabd::INSTANCE],
    )
    .unwrap();
    loop {
        let n = next();
        if n.contains("STATUS=heartbeat stalled") {
            break;
        }
    }
    // While it stays stalled, no ping: only the stalled status again.
    notifications
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..5 {
        let mut buf = [0u8; 512];
        if let Ok(n) = notifications.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(!text.contains("WATCHDOG=1"), "pinged while stalled: {text}");
        }
    }
    held.rollback().unwrap();
    notifications
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    while !next().contains("WATCHDOG=1") {}
    stack.collabd = Some(collabd);
    assert_eq!(stack.collabd().signal_and_wait(libc::SIGTERM), Some(0));
}

#[test]
fn writes_made_while_postgres_is_down_reach_it_when_it_is_back() {
    let (mut stack, devices) = stack_with(&["alice", "bob", "carol"], settings(Some(10)));
    stack.start_collabd(&[]);
    let (mut alice, _) = stack.signed_in(&devices[0]);
    let (mut bob, _) = stack.signed_in(&devices[1]);
    let alice_row = stack.db.list_sessions(None).unwrap()[0].id;

    // The Config DB goes away: new connections refused, open ones dropped.
    let mut outage = support::pg::Outage::start(&stack.db_url);
    let outage_started = std::time::SystemTime::now();

    // Meanwhile a session ends and another's device goes dormant; a new
    // login is refused 307, as the man page says.
    alice.send("logout");
    alice.expect("ended code=310");
    assert_eq!(finish(alice).0, 0);
    bob.send("status coverage=dormant");
    bob.expect("sent status");
    let mut carol = stack.device(&devices[2]);
    assert!(carol.expect("refused ").starts_with("refused code=307"));
    finish(carol);
    let spool = stack.collabd().state.join("registry.spool");
    wait_until("the writes to be spooled", || {
        std::fs::read_to_string(&spool)
            .map(|s| s.lines().count() >= 3)
            .unwrap_or(false)
    });
    assert!(!std::fs::read_to_string(&spool)
        .unwrap()
        .contains(&devices[0].user.password));
    // An outage of ten seconds, as an operator's PostgreSQL restart takes:
    // the writes wait in the spool meanwhile.
    let down_for = std::time::SystemTime::now()
        .duration_since(outage_started)
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_for));
    assert!(spool.exists());

    outage.end();
    let outage_ended = std::time::SystemTime::now();
    wait_until("the spool to be written", || !spool.exists());
    // The test's own connection was dropped with the others.
    stack.db = collabd::configdb::ConfigDb::connect(&stack.db_url).unwrap();
    let row = stack.db.session(alice_row).unwrap();
    assert_eq!(row.state, collabd::configdb::SessionState::Ended);
    assert_eq!(row.end_reason.as_deref(), Some("logged out"));
    assert_eq!(
        stack.session_coverage(devices[1].pin).as_deref(),
        Some("dormant")
    );
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    let logout = stack
        .audit()
        .into_iter()
        .find(|r| r.event.event == "logout" && r.event.pin == Some(devices[0].pin))
        .expect("the logout audited");
    // Recorded with the time it happened, not the time it was written.
    assert!(
        logout.at_ms >= ms(outage_started) - 1000 && logout.at_ms <= ms(outage_ended),
        "{logout:?}"
    );
    assert_eq!(finish(bob).0, 0);
}

/// The `GLIBC_TUNABLES` a running process was started with.
fn tunables_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("GLIBC_TUNABLES=").map(str::to_string))
}

#[test]
fn collabd_runs_without_glibc_thread_caches_unless_the_operator_chose() {
    let (mut stack, _) = stack_with(&["tess"], settings(None));
    stack.start_collabd(&[]);
    let pid = stack.collabd().pid();
    let tunables = tunables_of(pid);
    assert!(
        tunables
            .as_deref()
            .is_some_and(|t| t.split(':').any(|s| s == "glibc.malloc.tcache_count=0")),
        "collabd re-executed itself without thread caches: {tunables:?}"
    );
    // Stopped (SIGKILL) and started again with the operator's setting.
    stack.collabd = None;
    let again = support::collabd::Collabd::start_with_env(
        &stack.dir,
        &stack.db_url,
        &[],
        &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3")],
    );
    assert_eq!(
        tunables_of(again.pid()).as_deref(),
        Some("glibc.malloc.tcache_count=3"),
        "an operator's own setting is kept"
    );
}
