//! The protocol as collab-protocol(7) states it, against the built
//! `collabd` with a real `cwa-sim` and Config DB: one message per frame
//! (a second element, also after a login, is 308), acknowledgements never
//! beyond the last event sent (an ack is Refused 308, a resume is
//! login-result 308, and no event is dropped), a text over the relay
//! limit answered with command-result 300 every time, never 306 or 308,
//! a command sent again after a resume run only once, and a session's
//! life as the page tells it (start order, self-presence echo, login form,
//! default group, replacement, resume or new session).

use crate::support;

use collabd::configdb::InstanceSettings;
use collabd::device::{DeviceClient, DeviceError};
use collabd::service::translate::MAX_TEXT_BYTES;
use collabd::wire::{
    DeviceCommand, DeviceEvent, Resume, Secret, ServiceMessage, Status, WireError,
};

use support::collabd::{sim_line, wait_until, Stack, TestDevice, TestUser, WAIT};

fn stack(names: &[&str]) -> (Stack, Vec<TestDevice>) {
    let users: Vec<TestUser> = names.iter().map(|n| TestUser::new(n)).collect();
    let mut sim_users = String::new();
    for u in &users {
        let others: Vec<&str> = users
            .iter()
            .filter(|o| o.sip != u.sip)
            .map(|o| o.sip.as_str())
            .collect();
        sim_users.push_str(&sim_line(u, &format!("contacts={}", others.join(","))));
    }
    let settings = InstanceSettings {
        max_sessions: Some(10),
        ..InstanceSettings::default()
    };
    let mut stack = Stack::new(&sim_users, settings);
    let mut devices = Vec::new();
    for u in &users {
        stack.add_user(u, true);
        devices.push(stack.add_device(u));
    }
    stack.start_collabd(&[]);
    (stack, devices)
}

fn login(stack: &Stack, dev: &TestDevice, resume: Option<Resume>) -> (DeviceClient, String) {
    let mut c = stack.library_client(dev);
    let ok = c
        .login(
            &dev.user.login,
            &Secret::new(dev.user.password.clone()),
            resume,
        )
        .expect("login");
    (c, ok.session_id.expect("session id"))
}

/// Reads until the service refuses the link; returns the status and every
/// message seen before.
fn until_refused(c: &mut DeviceClient) -> (Status, Vec<ServiceMessage>) {
    let mut seen = Vec::new();
    loop {
        match c.poll(WAIT) {
            Ok(Some(m)) => seen.push(m),
            Ok(None) => panic!("not refused within {WAIT:?}; saw {seen:?}"),
            Err(DeviceError::Wire(WireError::Refused(status, _))) => return (status, seen),
            Err(e) => panic!("{e} instead of a Refused frame; saw {seen:?}"),
        }
    }
}

/// The result of command `id`, keeping the events seen meanwhile.
fn result_of(
    c: &mut DeviceClient,
    id: u64,
    events: &mut Vec<(u64, DeviceEvent)>,
) -> (Status, String) {
    loop {
        match c.poll(WAIT).expect("poll") {
            Some(ServiceMessage::CommandResult {
                id: got,
                status,
                text,
                ..
            }) if got == id => return (status, text),
            Some(ServiceMessage::Event { seq, event }) => events.push((seq, event)),
            Some(_) => {}
            None => panic!("no result for command {id} within {WAIT:?}"),
        }
    }
}

#[test]
fn two_elements_in_one_frame_are_refused_308_also_after_a_login() {
    let (mut stack, devices) = stack(&["alice", "bob"]);
    let (mut alice, _) = login(&stack, &devices[0], None);
    // A status and a command in one frame: neither is acted on.
    let payload = br#"<status coverage="active"/><command id="77"><search><query>bob</query></search></command>"#;
    alice.channel_mut().send(payload).unwrap();
    let (status, seen) = until_refused(&mut alice);
    assert_eq!(status, Status::ProtocolError);
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ServiceMessage::CommandResult { id: 77, .. })),
        "the second element was answered: {seen:?}"
    );
    // The session stays, out of coverage, for a resume.
    wait_until("alice's session to be out of coverage", || {
        stack.session_coverage(devices[0].pin).as_deref() == Some("out")
    });

    // A login followed by a logout in the same frame: refused, no session.
    let bob = &devices[1];
    let mut c = stack.library_client(bob);
    let login = format!(
        r#"<login user="{}"><password>{}</password></login><logout/>"#,
        bob.user.login, bob.user.password
    );
    c.channel_mut().send(login.as_bytes()).unwrap();
    c.channel_mut().get_ref().set_read_timeout(WAIT).unwrap();
    match c.channel_mut().recv_service() {
        Err(WireError::Refused(status, _)) => assert_eq!(status, Status::ProtocolError),
        other => panic!("a login with a trailing element got {other:?}"),
    }
    assert_eq!(stack.session_coverage(bob.pin), None, "no session for bob");
}

#[test]
fn acks_beyond_the_last_event_sent_are_refused_and_nothing_is_dropped() {
    let (stack, devices) = stack(&["alice", "bob"]);
    let dev = &devices[0];
    let (mut alice, session) = login(&stack, dev, None);
    // Take the first event (the contact list) and nothing more.
    let (first, _) = loop {
        match alice.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => break (seq, event),
            Some(_) => continue,
            None => panic!("no event within {WAIT:?}"),
        }
    };
    assert_eq!(first, 1);
    // An ack far beyond anything sent: Refused 308, the buffer untouched.
    alice.ack(1_000_000).unwrap();
    let (status, _) = until_refused(&mut alice);
    assert_eq!(status, Status::ProtocolError);
    drop(alice);

    // A resume that claims the same: login-result 308, session kept.
    let mut c = stack.library_client(dev);
    let refused = c.login(
        &dev.user.login,
        &Secret::new(dev.user.password.clone()),
        Some(Resume {
            session_id: session.clone(),
            last_acked_seq: 1_000_000,
        }),
    );
    assert!(
        matches!(
            refused,
            Err(DeviceError::LoginRefused(Status::ProtocolError, _))
        ),
        "{refused:?}"
    );
    drop(c);

    // A resume after event 1 gets event 2 onwards: nothing was dropped.
    let (mut alice, resumed) = login(
        &stack,
        dev,
        Some(Resume {
            session_id: session.clone(),
            last_acked_seq: 0,
        }),
    );
    assert_eq!(resumed, session);
    let (seq, event) = loop {
        match alice.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => break (seq, event),
            Some(_) => continue,
            None => panic!("no replay within {WAIT:?}"),
        }
    };
    assert_eq!(
        seq, 1,
        "replay starts after what was acknowledged (nothing)"
    );
    assert!(matches!(event, DeviceEvent::ContactList(_)), "{event:?}");
    let seen = alice.logout().expect("logout");
    assert!(seen
        .iter()
        .any(|m| matches!(m, ServiceMessage::SessionEnded { .. })));
}

#[test]
fn a_text_over_the_relay_limit_is_answered_300_every_time() {
    let (stack, devices) = stack(&["alice", "bob"]);
    let (mut alice, _) = login(&stack, &devices[0], None);
    let (mut bob, _) = login(&stack, &devices[1], None);
    let mut events = Vec::new();
    let start = |text: String| DeviceCommand::StartConversation {
        to: vec![devices[1].user.sip.clone()],
        subject: None,
        text: Some(text),
    };
    // Just over the limit, and far over it (what used to be 306 or 308):
    // the same 300 every time, and the link stays up.
    for len in [
        MAX_TEXT_BYTES + 1,
        70 * 1024,
        MAX_TEXT_BYTES + 1,
        200 * 1024,
    ] {
        for _ in 0..3 {
            let id = alice.send_command(start("y".repeat(len))).unwrap();
            let (status, text) = result_of(&mut alice, id, &mut events);
            assert_eq!(status, Status::Failed, "{len} bytes: {text}");
            assert!(text.contains("8192"), "{text}");
        }
    }
    // A text at the limit is relayed whole.
    let id = alice
        .send_command(start("x".repeat(MAX_TEXT_BYTES)))
        .unwrap();
    let (status, text) = result_of(&mut alice, id, &mut events);
    assert_eq!(status, Status::Ok, "{text}");
    let got = loop {
        match bob.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event {
                event: DeviceEvent::Invitation { text, .. },
                ..
            }) => break text,
            Some(_) => continue,
            None => panic!("bob got no invitation within {WAIT:?}"),
        }
    };
    assert_eq!(got.map(|t| t.len()), Some(MAX_TEXT_BYTES));
}

/// A command sent again after a resume, with its id and unchanged, is run
/// once: the newer link gets the remembered result, and CWA saw one
/// request. The same id with another command is a new command.
#[test]
fn a_command_sent_again_after_a_resume_runs_once() {
    let (running, devices) = stack(&["alice"]);
    let stack = &running;
    let (mut alice, session) = login(stack, &devices[0], None);
    let add = DeviceCommand::AddGroup {
        name: "Project X".into(),
    };
    let mut events = Vec::new();
    let id = alice.send_command(add.clone()).unwrap();
    let (status, text) = result_of(&mut alice, id, &mut events);
    assert_eq!(status, Status::Ok, "{text}");
    // Wait for the group's delta, then lose the link without a word.
    while !events.iter().any(|(_, e)| added_group(e, "Project X")) {
        match alice.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => events.push((seq, event)),
            Some(_) => {}
            None => panic!("no contact-list delta for the new group: {events:?}"),
        }
    }
    let last = events.iter().map(|(s, _)| *s).max().unwrap();
    alice.ack(last).unwrap();
    drop(alice);

    let (mut alice, resumed) = login(
        stack,
        &devices[0],
        Some(Resume {
            session_id: session.clone(),
            last_acked_seq: last,
        }),
    );
    assert_eq!(resumed, session);
    alice.send_command_again(id, add.clone()).unwrap();
    let mut later = Vec::new();
    let (status, text) = result_of(&mut alice, id, &mut later);
    // Run twice, CWA would refuse the duplicate group name.
    assert_eq!(status, Status::Ok, "the remembered result: {text}");
    // The same id with another command is a new command, and runs.
    let other = DeviceCommand::AddGroup {
        name: "Project Y".into(),
    };
    alice.send_command_again(id, other).unwrap();
    let (status, text) = result_of(&mut alice, id, &mut later);
    assert_eq!(status, Status::Ok, "{text}");
    while !later.iter().any(|(_, e)| added_group(e, "Project Y")) {
        match alice.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => later.push((seq, event)),
            Some(_) => {}
            None => panic!("no delta for Project Y: {later:?}"),
        }
    }
    assert!(
        !later.iter().any(|(_, e)| added_group(e, "Project X")),
        "Project X was added once: {later:?}"
    );
}

fn added_group(e: &DeviceEvent, name: &str) -> bool {
    matches!(e, DeviceEvent::ContactList(l) if !l.complete && l.groups.iter().any(|g| g.name == name))
}

/// The next event, skipping command results; panics after [`WAIT`].
fn next_event(c: &mut DeviceClient) -> (u64, DeviceEvent) {
    loop {
        match c.poll(WAIT).expect("poll") {
            Some(ServiceMessage::Event { seq, event }) => return (seq, event),
            Some(_) => {}
            None => panic!("no event within {WAIT:?}"),
        }
    }
}

/// What collab-protocol(7) says about a session's life, against the real
/// service: the order a session starts in, set-presence echoed as
/// self-presence (and <note/> clearing the note), the login form, the
/// default group, a plain login replacing a live session with its reason,
/// and how a client tells a resume from a new session.
#[test]
fn a_session_lives_as_the_page_says() {
    use collabd::wire::Availability;
    let (running, devices) = stack(&["alice", "bob"]);
    let stack = &running;
    let alice_dev = &devices[0];
    let password = Secret::new(alice_dev.user.password.clone());

    // The other form of Alice's login (she is registered as CONTOSO\alice).
    let mut c = stack.library_client(alice_dev);
    let refused = c.login("alice@contoso.com", &password, None);
    assert!(
        matches!(&refused, Err(DeviceError::LoginRefused(s, _)) if *s == Status::WrongUser),
        "{refused:?}"
    );

    let (mut alice, session) = login(stack, alice_dev, None);
    // Contact list, then self presence, then the watchers (if any) and the
    // access levels, then each contact's presence.
    let (seq, first) = next_event(&mut alice);
    assert_eq!(seq, 1);
    assert!(
        matches!(&first, DeviceEvent::ContactList(l) if l.complete && l.part.is_none()),
        "{first:?}"
    );
    let (_, second) = next_event(&mut alice);
    assert!(
        matches!(second, DeviceEvent::SelfPresence { .. }),
        "{second:?}"
    );
    let (_, mut third) = next_event(&mut alice);
    if matches!(third, DeviceEvent::Watchers(_)) {
        third = next_event(&mut alice).1;
    }
    assert!(
        matches!(third, DeviceEvent::AccessLevels { .. }),
        "{third:?}"
    );
    let (_, third) = next_event(&mut alice);
    assert!(
        matches!(&third, DeviceEvent::Presence(p) if p.uri == "sip:bob@contoso.com"),
        "{third:?}"
    );
    let default_group = match &first {
        DeviceEvent::ContactList(l) => l.groups.iter().find(|g| g.name == "~").cloned(),
        _ => None,
    };
    assert_eq!(default_group.map(|g| g.id).as_deref(), Some("1"));

    // set-presence comes back as self-presence; <note/> clears the note.
    let mut events = Vec::new();
    let id = alice
        .send_command(DeviceCommand::SetPresence {
            availability: Availability::Busy,
            note: Some("  ".into()),
        })
        .unwrap();
    assert_eq!(result_of(&mut alice, id, &mut events).0, Status::Ok);
    let echoed = |alice: &mut DeviceClient, events: &mut Vec<(u64, DeviceEvent)>| loop {
        if let Some(i) = events
            .iter()
            .position(|(_, e)| matches!(e, DeviceEvent::SelfPresence { .. }))
        {
            return events.remove(i).1;
        }
        events.push(next_event(alice));
    };
    assert_eq!(
        echoed(&mut alice, &mut events),
        DeviceEvent::SelfPresence {
            availability: Availability::Busy,
            note: Some("  ".into()),
        },
        "a note of spaces arrives as sent"
    );
    let id = alice
        .send_command(DeviceCommand::SetPresence {
            availability: Availability::Online,
            note: Some(String::new()),
        })
        .unwrap();
    assert_eq!(result_of(&mut alice, id, &mut events).0, Status::Ok);
    assert_eq!(
        echoed(&mut alice, &mut events),
        DeviceEvent::SelfPresence {
            availability: Availability::Online,
            note: None,
        }
    );

    // group="~" names no group.
    let id = alice
        .send_command(DeviceCommand::AddContact {
            uri: "sip:carol@contoso.com".into(),
            name: None,
            group: Some("~".into()),
        })
        .unwrap();
    assert_eq!(result_of(&mut alice, id, &mut events).0, Status::Failed);

    // A resume: the same session id, "OK (resumed)".
    drop(alice);
    let mut again = stack.library_client(alice_dev);
    let resumed = again
        .login(
            &alice_dev.user.login,
            &password,
            Some(Resume {
                session_id: session.clone(),
                last_acked_seq: 0,
            }),
        )
        .expect("resume");
    assert_eq!(resumed.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(resumed.text, "OK (resumed)");
    assert_eq!(next_event(&mut again).0, 1, "replayed from the start");

    // A plain login replaces the live session, which is told why.
    let (mut fresh, new_session) = login(stack, alice_dev, None);
    assert_ne!(new_session, session);
    let told = loop {
        match again.poll(WAIT) {
            Ok(Some(ServiceMessage::SessionEnded { status, reason })) => break (status, reason),
            Ok(Some(_)) => {}
            other => panic!("{other:?} instead of session-ended"),
        }
    };
    assert_eq!(
        told,
        (
            Status::SessionEnded,
            "replaced by a new login from the same device".to_string()
        )
    );
    assert!(matches!(
        next_event(&mut fresh),
        (1, DeviceEvent::ContactList(_))
    ));
    drop(fresh);

    // A resume of the replaced session starts a new one: another id, events
    // from 1 with the contact list.
    let mut late = stack.library_client(alice_dev);
    let started = late
        .login(
            &alice_dev.user.login,
            &password,
            Some(Resume {
                session_id: session.clone(),
                last_acked_seq: 0,
            }),
        )
        .expect("login");
    assert_ne!(started.session_id.as_deref(), Some(session.as_str()));
    assert_eq!(started.text, "OK");
    assert!(matches!(
        next_event(&mut late),
        (1, DeviceEvent::ContactList(_))
    ));
}
