//! Access levels and watchers end to end: real `collab-device --script`
//! processes through the built `collab-dispatcher` to a real `collabd`,
//! which signs in to a real `cwa-sim` (support::collabd's Stack).
//!
//! Two users who are each other's contacts set each other's access levels
//! and see presence follow them (cwa-sim filters it as OCS 2007 does: a
//! blocked watcher sees Offline and cannot invite, Public sees no note,
//! Company and up see the note); a user who is added by a third gets a
//! watcher event, acknowledges it and adds the watcher back with one
//! command. Also: the examples of collab-protocol(7)'s access section
//! decode to the messages the text describes.

use crate::support;

use collabd::configdb::InstanceSettings;
use collabd::service::access;
use collabd::wire::{
    AccessEntry, AccessLevel, DeviceCommand, DeviceEvent, DeviceMessage, ServiceMessage, Watcher,
};

use support::collabd::{field, finish, sim_line, wait_until, Stack, TestDevice, TestUser};
use support::device_peer::DeviceProcess;
use support::dispatch::Dispatcher;

/// A stack (simulator, database, collabd) with `users` (and their
/// simulator contact lists), a device each, and the dispatcher in front,
/// routing to the instance.
struct Rig {
    // Dropped first: the dispatcher, then the stack.
    dispatcher: Dispatcher,
    stack: Stack,
    devices: Vec<TestDevice>,
}

impl Rig {
    fn new(users: &[(&str, &[&str])]) -> Rig {
        let mut sim_users = String::new();
        for (name, contacts) in users {
            let contacts: Vec<String> = contacts.iter().map(|c| sip(c)).collect();
            let options = if contacts.is_empty() {
                String::new()
            } else {
                format!("contacts={}", contacts.join(","))
            };
            sim_users.push_str(&sim_line(&TestUser::new(name), &options));
        }
        let mut stack = Stack::new(&sim_users, InstanceSettings::default());
        let mut devices = Vec::new();
        for (name, _) in users {
            let u = TestUser::new(name);
            stack.add_user(&u, true);
            devices.push(stack.add_device(&u));
        }
        stack.start_collabd(&[]);
        let dispatcher = Dispatcher::start(&stack.db_url, &[]);
        let live = format!("live instances: {}\n", support::collabd::INSTANCE);
        wait_until("the dispatcher to route to the instance", || {
            dispatcher.log().contains(&live)
        });
        Rig {
            dispatcher,
            stack,
            devices,
        }
    }

    /// `name`'s collab-device, through the dispatcher, signed in.
    fn sign_in(&self, name: &str) -> DeviceProcess {
        let dev = self
            .devices
            .iter()
            .find(|d| d.user.sip == sip(name))
            .unwrap_or_else(|| panic!("no device for {name}"));
        self.stack.signed_in_at(self.dispatcher.addr, dev)
    }
}

impl Rig {
    /// `name`'s collab-device in interactive mode, through the dispatcher,
    /// signed in.
    fn interactive(&self, name: &str) -> DeviceProcess {
        let dev = self
            .devices
            .iter()
            .find(|d| d.user.sip == sip(name))
            .unwrap_or_else(|| panic!("no device for {name}"));
        let pw = self.stack.dir.join(&format!("{name}-interactive.pw"));
        std::fs::write(&pw, format!("{}\n", dev.user.password)).unwrap();
        let args: Vec<String> = [
            "--connect".to_string(),
            self.dispatcher.addr.to_string(),
            "--pin".into(),
            format!("{:08x}", dev.pin),
            "--key-file".into(),
            dev.key_file.display().to_string(),
            "--user".into(),
            dev.user.login.clone(),
            "--password-file".into(),
            pw.display().to_string(),
            "--timeout".into(),
            "30".into(),
        ]
        .into();
        let mut d = DeviceProcess::spawn(env!("CARGO_BIN_EXE_collab-device"), &args);
        d.expect("signed in as");
        d
    }
}

fn sip(name: &str) -> String {
    format!("sip:{name}@contoso.com")
}

/// Sends a command line and returns its result record, which must be ok.
fn command_ok(d: &mut DeviceProcess, line: &str) -> String {
    d.send(line);
    let r = d.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{line}: {r}");
    r
}

/// Reads `d`'s presence events for `uri` until one with `availability`
/// arrives; returns it.
fn presence(d: &mut DeviceProcess, uri: &str, availability: &str) -> String {
    loop {
        let p = d.expect("event presence ");
        if field(&p, "uri").as_deref() == Some(uri)
            && field(&p, "availability").as_deref() == Some(availability)
        {
            return p;
        }
    }
}

/// Sends `line` and reads records until its result and one record that
/// `also` accepts have both arrived, in either order (a command's result
/// and the events it causes travel separately). The result must be ok;
/// returns it and the other record.
fn command_and(d: &mut DeviceProcess, line: &str, also: impl Fn(&str) -> bool) -> (String, String) {
    d.send(line);
    let (mut result, mut other) = (None, None);
    while result.is_none() || other.is_none() {
        let l = d.expect("");
        if l.starts_with("result ") && result.is_none() {
            assert_eq!(field(&l, "status").as_deref(), Some("ok"), "{line}: {l}");
            result = Some(l);
        } else if other.is_none() && also(&l) {
            other = Some(l);
        }
    }
    (result.unwrap(), other.unwrap())
}

/// Sets `uri`'s level on `d` and waits for the access-levels list that
/// shows it; returns how many people that list holds.
fn set_access(d: &mut DeviceProcess, uri: &str, level: &str) -> usize {
    command_and(d, &format!("set-access uri={uri} level={level}"), |l| {
        l.starts_with("event access seq=")
            && field(l, "uri").as_deref() == Some(uri)
            && field(l, "level").as_deref() == Some(level)
    });
    // The list's head came just before its entries, with the same seq.
    let head = d
        .transcript
        .iter()
        .rev()
        .find(|l| l.starts_with("event access-levels "))
        .expect("the access-levels head")
        .clone();
    field(&head, "entries").unwrap().parse().unwrap()
}

#[test]
fn presence_follows_the_access_level_a_user_gives_a_watcher() {
    let rig = Rig::new(&[("alice", &["bob"]), ("bob", &["alice"])]);
    let (alice_sip, bob_sip) = (sip("alice"), sip("bob"));
    let mut bob = rig.sign_in("bob");
    // Bob's session starts with his access levels: nobody of his own yet,
    // and his company at Company.
    let head = bob.expect("event access-levels ");
    assert_eq!(
        field(&head, "default").as_deref(),
        Some("company"),
        "{head}"
    );
    assert_eq!(field(&head, "entries").as_deref(), Some("0"), "{head}");
    command_ok(&mut bob, "presence availability=busy note=In\\sa\\smeeting");

    let mut alice = rig.sign_in("alice");
    // Company (the default): the real state and the note.
    let p = presence(&mut alice, &bob_sip, "busy");
    assert_eq!(
        field(&p, "note").as_deref(),
        Some("In\\sa\\smeeting"),
        "{p}"
    );

    // Blocked: Alice sees Bob offline, without the note, and cannot
    // reach him.
    assert_eq!(set_access(&mut bob, &alice_sip, "blocked"), 1);
    let p = presence(&mut alice, &bob_sip, "offline");
    assert_eq!(field(&p, "note"), None, "{p}");
    let (r, failed) = command_and(
        &mut alice,
        &format!("start to={bob_sip} text=hello?"),
        |l| l.starts_with("event delivery-failed "),
    );
    let conv = field(&r, "conv").expect("conversation id");
    assert_eq!(
        field(&failed, "conv").as_deref(),
        Some(conv.as_str()),
        "{failed}"
    );

    // Public: the real state, no note.
    assert_eq!(set_access(&mut bob, &alice_sip, "public"), 1);
    let p = presence(&mut alice, &bob_sip, "busy");
    assert_eq!(field(&p, "note"), None, "{p}");

    // Team and Personal: the real state and the note; one level at a
    // time (the move leaves Alice at exactly one level).
    assert_eq!(set_access(&mut bob, &alice_sip, "team"), 1);
    let p = presence(&mut alice, &bob_sip, "busy");
    assert_eq!(
        field(&p, "note").as_deref(),
        Some("In\\sa\\smeeting"),
        "{p}"
    );
    assert_eq!(set_access(&mut bob, &alice_sip, "personal"), 1);
    // Bob's later changes reach Alice in full.
    command_ok(&mut bob, "presence availability=away note=Lunch");
    let p = presence(&mut alice, &bob_sip, "away");
    assert_eq!(field(&p, "note").as_deref(), Some("Lunch"), "{p}");

    // And the other way round, Alice blocks Bob: independent of Bob's
    // setting for her.
    command_ok(&mut alice, "presence availability=online note=Here");
    presence(&mut bob, &alice_sip, "online");
    set_access(&mut alice, &bob_sip, "blocked");
    presence(&mut bob, &alice_sip, "offline");

    // A level the protocol does not know never leaves the device.
    bob.send(&format!("set-access uri={alice_sip} level=friends"));
    let e = bob.expect("error ");
    assert!(e.contains("unknown\\slevel"), "{e}");

    for d in [alice, bob] {
        d.send_logout();
    }
}

/// Sends `logout` and checks the device signed out cleanly.
trait Logout {
    fn send_logout(self);
}

impl Logout for DeviceProcess {
    fn send_logout(mut self) {
        self.send("logout");
        let (code, lines) = finish(self);
        assert_eq!(code, 0, "{lines:?}");
    }
}

#[test]
fn a_new_watcher_is_acknowledged_and_added_back_in_one_step() {
    // Carol has Alice as a contact already (an old watcher Alice never
    // acknowledged); Dave adds Alice while she is signed in.
    let rig = Rig::new(&[("alice", &[]), ("carol", &["alice"]), ("dave", &[])]);
    let (alice_sip, carol_sip, dave_sip) = (sip("alice"), sip("carol"), sip("dave"));
    let mut alice = rig.sign_in("alice");
    let head = alice.expect("event watchers ");
    assert_eq!(field(&head, "count").as_deref(), Some("1"), "{head}");
    let w = alice.expect("event watcher ");
    assert_eq!(field(&w, "uri").as_deref(), Some(carol_sip.as_str()), "{w}");
    assert_eq!(field(&w, "acknowledged").as_deref(), Some("false"), "{w}");

    let mut dave = rig.sign_in("dave");
    command_ok(&mut dave, &format!("add-contact uri={alice_sip}"));
    let w = loop {
        let w = alice.expect("event watcher ");
        if field(&w, "uri").as_deref() == Some(dave_sip.as_str()) {
            break w;
        }
    };
    assert_eq!(field(&w, "acknowledged").as_deref(), Some("false"), "{w}");
    assert_eq!(field(&w, "name").as_deref(), Some("dave"), "{w}");

    // One command: acknowledged, and Dave is Alice's contact.
    let is_dave = |l: &str| field(l, "uri").as_deref() == Some(dave_sip.as_str());
    let (_, c) = command_and(
        &mut alice,
        &format!("acknowledge-watcher uri={dave_sip} add-contact=true name=Dave\\sD"),
        |l| l.starts_with("event contact-list-contact ") && is_dave(l),
    );
    assert_eq!(field(&c, "name").as_deref(), Some("Dave\\sD"), "{c}");
    let acked = alice
        .transcript
        .iter()
        .any(|l| l.starts_with("event watcher ") && is_dave(l) && l.contains("acknowledged=true"));
    assert!(acked, "{:#?}", alice.transcript);
    // As a contact, Dave's presence now reaches Alice (perhaps already
    // read above, while waiting for the result).
    let dave_online = |l: &str| {
        l.starts_with("event presence ") && is_dave(l) && l.contains("availability=online")
    };
    if !alice.transcript.iter().any(|l| dave_online(l)) {
        presence(&mut alice, &dave_sip, "online");
    }
    // Dave learns that Alice added him back.
    loop {
        let w = dave.expect("event watcher ");
        if field(&w, "uri").as_deref() == Some(alice_sip.as_str()) {
            break;
        }
    }

    // Carol is acknowledged without being added.
    let (_, w) = command_and(
        &mut alice,
        &format!("acknowledge-watcher uri={carol_sip}"),
        |l| {
            l.starts_with("event watcher ")
                && field(l, "uri").as_deref() == Some(carol_sip.as_str())
        },
    );
    assert_eq!(field(&w, "acknowledged").as_deref(), Some("true"), "{w}");
    // A name without add-contact is refused before it is sent.
    alice.send(&format!("acknowledge-watcher uri={carol_sip} name=C"));
    let e = alice.expect("error ");
    assert!(e.contains("add-contact=true"), "{e}");
    alice.send_logout();

    // The acknowledgement lasts: at the next sign-in both watchers are
    // listed as acknowledged, and Dave is in Alice's contact list.
    let mut alice = rig.sign_in("alice");
    let mut contacts = Vec::new();
    loop {
        let line = alice.expect("event ");
        if line.starts_with("event contact-list-contact ") {
            contacts.push(field(&line, "uri").unwrap());
        }
        if line.starts_with("event watchers ") {
            assert_eq!(field(&line, "count").as_deref(), Some("2"), "{line}");
            break;
        }
    }
    assert_eq!(contacts, vec![dave_sip.clone()]);
    for _ in 0..2 {
        let w = alice.expect("event watcher ");
        assert_eq!(field(&w, "acknowledged").as_deref(), Some("true"), "{w}");
    }
    alice.send_logout();
    dave.send_logout();
}

#[test]
fn interactive_commands_answer_a_watcher_and_set_a_level() {
    // Alice has Bob as a contact: Bob has a watcher he never acknowledged.
    let rig = Rig::new(&[("alice", &["bob"]), ("bob", &[])]);
    let (alice_sip, bob_sip) = (sip("alice"), sip("bob"));
    let mut alice = rig.sign_in("alice");
    let mut bob = rig.interactive("bob");
    bob.expect(&format!(
        "* alice <{alice_sip}> added you (/allow {alice_sip}"
    ));
    bob.send("/watchers");
    let row = bob.expect(&format!("  alice <{alice_sip}>"));
    assert!(row.ends_with("(new: /allow or /addback)"), "{row}");
    bob.send(&format!("/addback {alice_sip}"));
    bob.expect("* contact list: 1 contacts");
    bob.send(&format!("/access {alice_sip} blocked"));
    bob.expect("* access levels: 1 people with their own");
    bob.send("/contacts");
    let row = bob.expect(&format!("  alice <{alice_sip}>"));
    assert!(row.ends_with("[blocked]"), "{row}");
    bob.send("/access");
    bob.expect("  everyone else: company");
    let row = bob.expect(&format!("  alice <{alice_sip}>"));
    assert!(row.ends_with(" blocked"), "{row}");
    bob.send("/watchers");
    let row = bob.expect(&format!("  alice <{alice_sip}>"));
    assert!(!row.contains("new"), "{row}");
    bob.send("/access sip:x@contoso.com friends");
    bob.expect("level: blocked public company team personal");
    // What Bob did reached Alice: she sees him offline now.
    presence(&mut alice, &bob_sip, "offline");
    bob.send("/quit");
    let (code, out, _) = bob.finish();
    assert_eq!(code, 0, "{out:?}");
    alice.send_logout();
}

/// The page's examples for the access section, in the order they appear,
/// and the bounds it states.
#[test]
fn the_access_examples_of_the_protocol_page_decode() {
    let page = include_str!("../../man/collab-protocol.7")
        .replace("\\-", "-")
        .replace("\\e", "\\");
    let section = page
        .split(".SS Access levels and watchers")
        .nth(1)
        .and_then(|s| s.split(".SH ").next())
        .expect("the access section");
    let flat = section.split_whitespace().collect::<Vec<_>>().join(" ");
    let bounds = [
        format!(
            "At most {} people are listed, in URI order, with at most {} bytes of URIs",
            access::MAX_ACCESS_ENTRIES,
            access::MAX_EVENT_TEXT_BYTES
        ),
        format!(
            "A list of more than {} watchers, or of more than {} bytes of URIs and names, comes in several",
            access::MAX_WATCHERS_PER_EVENT,
            access::MAX_EVENT_TEXT_BYTES
        ),
    ];
    for bound in bounds {
        assert!(flat.contains(&bound), "the page does not say {bound:?}");
    }
    // Examples are between .EX and .EE; one message may span lines.
    let mut messages = Vec::new();
    for block in section.split(".EX\n").skip(1) {
        let block = block.split(".EE").next().unwrap();
        let mut current = String::new();
        for line in block.lines() {
            if line.starts_with('<') && !current.is_empty() {
                messages.push(std::mem::take(&mut current));
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(line.trim());
        }
        messages.push(current);
    }
    let commands: Vec<DeviceCommand> = messages
        .iter()
        .filter(|m| m.starts_with("<command"))
        .map(|m| match DeviceMessage::decode(m.as_bytes()) {
            Ok(DeviceMessage::Command { command, .. }) => command,
            other => panic!("{m}: {other:?}"),
        })
        .collect();
    assert_eq!(
        commands,
        vec![
            DeviceCommand::SetAccess {
                uri: sip("bob"),
                level: AccessLevel::Blocked
            },
            DeviceCommand::AcknowledgeWatcher {
                uri: sip("carol"),
                add_contact: false,
                name: None,
                group: None
            },
            DeviceCommand::AcknowledgeWatcher {
                uri: sip("carol"),
                add_contact: true,
                name: Some("Carol".into()),
                group: Some("1".into())
            },
        ]
    );
    let events: Vec<DeviceEvent> = messages
        .iter()
        .filter(|m| m.starts_with("<event"))
        .map(|m| match ServiceMessage::decode(m.as_bytes()) {
            Ok(ServiceMessage::Event { event, .. }) => event,
            other => panic!("{m}: {other:?}"),
        })
        .collect();
    assert_eq!(
        events,
        vec![
            DeviceEvent::AccessLevels {
                default: Some(AccessLevel::Company),
                entries: vec![
                    AccessEntry {
                        uri: sip("bob"),
                        level: AccessLevel::Blocked
                    },
                    AccessEntry {
                        uri: sip("carol"),
                        level: AccessLevel::Team
                    },
                ]
            },
            DeviceEvent::Watchers(vec![Watcher {
                uri: sip("carol"),
                name: Some("Carol".into()),
                acknowledged: false
            }]),
        ]
    );
}
