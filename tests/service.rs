//! collabd end to end: the built `collabd` binary between real
//! `collab-device --script` processes (or the device library, for resume)
//! and a real `cwa-sim`, with its Config DB in a real scratch PostgreSQL.
//! Each test builds its own stack (see `support::collabd`). Waits are
//! generous and only bound a broken build; nothing is timed.

mod support;

use collabd::configdb::InstanceSettings;

use support::collabd::{field, finish, sim_line, wait_until, Stack, TestUser};

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
        assert!(stack.audited("logout", d.pin, ""));
    }
}
