//! Tests of the access-level and watcher messages through the device
//! protocol's encoder and decoder (`message/`), apart from `access.rs`,
//! which the message module imports.

use super::access::*;
use crate::wire::{DeviceCommand, DeviceEvent, DeviceMessage, ServiceMessage, WireError};

fn command(c: DeviceCommand) -> DeviceMessage {
    DeviceMessage::Command { id: 7, command: c }
}

#[test]
fn access_and_watcher_messages_round_trip() {
    for c in [
        DeviceCommand::SetAccess {
            uri: "sip:bob@contoso.com".into(),
            level: AccessLevel::Blocked,
        },
        DeviceCommand::AcknowledgeWatcher {
            uri: "sip:bob@contoso.com".into(),
            add_contact: true,
            name: Some("Bob <the builder>".into()),
            group: Some("3".into()),
        },
        DeviceCommand::AcknowledgeWatcher {
            uri: "sip:bob@contoso.com".into(),
            add_contact: false,
            name: None,
            group: None,
        },
    ] {
        let m = command(c);
        assert_eq!(DeviceMessage::decode(&m.encode()).unwrap(), m);
    }
    for event in [
        DeviceEvent::AccessLevels {
            default: Some(AccessLevel::Company),
            entries: vec![AccessEntry {
                uri: "sip:eve@contoso.com".into(),
                level: AccessLevel::Personal,
            }],
        },
        DeviceEvent::AccessLevels {
            default: None,
            entries: Vec::new(),
        },
        DeviceEvent::Watchers(vec![Watcher {
            uri: "sip:alice@contoso.com".into(),
            name: Some("Alice".into()),
            acknowledged: false,
        }]),
    ] {
        let m = ServiceMessage::Event { seq: 3, event };
        assert_eq!(ServiceMessage::decode(&m.encode()).unwrap(), m);
    }
    let wire = String::from_utf8(
        command(DeviceCommand::SetAccess {
            uri: "sip:b@x".into(),
            level: AccessLevel::Team,
        })
        .encode(),
    )
    .unwrap();
    assert_eq!(
        wire,
        r#"<command id="7"><set-access level="team" uri="sip:b@x" /></command>"#
    );
}

#[test]
fn malformed_access_and_watcher_messages_get_a_clear_error() {
    let device = |s: &str| match DeviceMessage::decode(s.as_bytes()) {
        Err(WireError::Protocol(why)) => why,
        other => panic!("{s}: {other:?}"),
    };
    let service = |s: &str| match ServiceMessage::decode(s.as_bytes()) {
        Err(WireError::Protocol(why)) => why,
        other => panic!("{s}: {other:?}"),
    };
    for (doc, why) in [
        (
            r#"<command id="1"><set-access uri="sip:b@x"/></command>"#,
            "without level=",
        ),
        (
            r#"<command id="1"><set-access level="team"/></command>"#,
            "without uri=",
        ),
        (
            r#"<command id="1"><set-access uri="sip:b@x" level="friends"/></command>"#,
            "is not blocked, public",
        ),
        (
            r#"<command id="1"><acknowledge-watcher/></command>"#,
            "without uri=",
        ),
        (
            r#"<command id="1"><acknowledge-watcher uri="sip:b@x" add-contact="yes"/></command>"#,
            "not true or false",
        ),
        (
            r#"<command id="1"><acknowledge-watcher uri="sip:b@x" group="2"/></command>"#,
            "only with add-contact",
        ),
        (
            r#"<command id="1"><acknowledge-watcher uri="sip:b@x"><name><b/></name></acknowledge-watcher></command>"#,
            "only text",
        ),
    ] {
        let got = device(doc);
        assert!(got.contains(why), "{doc}: {got}");
    }
    for (doc, why) in [
        (
            r#"<event seq="1"><access-levels default="friends"/></event>"#,
            "default=\"friends\"",
        ),
        (
            r#"<event seq="1"><access-levels><access uri="sip:b@x"/></access-levels></event>"#,
            "without level=",
        ),
        (
            r#"<event seq="1"><access-levels><access level="team"/></access-levels></event>"#,
            "without uri=",
        ),
        (
            r#"<event seq="1"><watchers><watcher uri="sip:b@x"/></watchers></event>"#,
            "without acknowledged=",
        ),
        (
            r#"<event seq="1"><watchers><watcher acknowledged="true"/></watchers></event>"#,
            "without uri=",
        ),
    ] {
        let got = service(doc);
        assert!(got.contains(why), "{doc}: {got}");
    }
    // Bounded: more elements than a message may hold is refused
    // before any of them is looked at.
    let mut big = String::from(r#"<event seq="1"><access-levels>"#);
    for _ in 0..crate::wire::message::MAX_ELEMENTS {
        big.push_str(r#"<access uri="sip:b@x" level="team"/>"#);
    }
    big.push_str("</access-levels></event>");
    assert!(ServiceMessage::decode(big.as_bytes()).is_err());
}
