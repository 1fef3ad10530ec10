//! The protocol as collab-protocol(7) states it, against the built
//! `collabd` with a real `cwa-sim` and Config DB: one message per frame
//! (a second element, also after a login, is 308), acknowledgements never
//! beyond the last event sent (an ack is Refused 308, a resume is
//! login-result 308, and no event is dropped), and a text over the relay
//! limit answered with command-result 300 every time, never 306 or 308.

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
