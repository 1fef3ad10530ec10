//! Test peers for the device protocol: an in-memory duplex stream, a small
//! deterministic PRNG, frame-level helpers, and a TCP test service built on
//! the `collabd::wire` library (handshake, login, events, acknowledgements)
//! that runs on 127.0.0.1:0 in a thread.
#![allow(dead_code)]

use std::io::{self, Cursor, Read, Write};

/// xorshift64*: a small deterministic PRNG so failures reproduce.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A stream that reads from a fixed input and records what is written.
pub struct Duplex {
    pub input: Cursor<Vec<u8>>,
    pub output: Vec<u8>,
}

impl Duplex {
    pub fn new(input: Vec<u8>) -> Duplex {
        Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A stream wrapper that records every byte written through it.
pub struct Tap<S> {
    pub inner: S,
    pub written: Vec<u8>,
}

impl<S: Read> Read for Tap<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<S: Write> Write for Tap<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Splits a byte stream into whole frames (length prefix included).
pub fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let end = (4 + len).min(bytes.len());
        out.push(bytes[..end].to_vec());
        bytes = &bytes[end..];
    }
    out
}

use collabd::wire::{AccessEntry, AccessLevel, Watcher};
use collabd::wire::{
    Availability, Contact, ContactList, ConversationState, Coverage, DeviceCommand, DeviceEvent,
    DeviceMessage, Group, ListPart, Presence, Resume, SearchEntry, Secret, ServiceMessage, Status,
};

/// The access-level and watcher commands.
pub fn sample_access_commands(t: &str) -> Vec<DeviceCommand> {
    let mut out: Vec<DeviceCommand> = AccessLevel::ALL
        .into_iter()
        .map(|level| DeviceCommand::SetAccess {
            uri: "sip:bob@example.com".into(),
            level,
        })
        .collect();
    out.push(DeviceCommand::AcknowledgeWatcher {
        uri: "sip:carol@example.com".into(),
        add_contact: true,
        name: Some(t.into()),
        group: Some("2".into()),
    });
    out.push(DeviceCommand::AcknowledgeWatcher {
        uri: "sip:carol@example.com".into(),
        add_contact: false,
        name: None,
        group: None,
    });
    out
}

/// The access-level and watcher events.
pub fn sample_access_events(t: &str) -> Vec<DeviceEvent> {
    vec![
        DeviceEvent::AccessLevels {
            default: Some(AccessLevel::Company),
            entries: AccessLevel::ALL
                .into_iter()
                .enumerate()
                .map(|(i, level)| AccessEntry {
                    uri: format!("sip:u{i}@example.com"),
                    level,
                })
                .collect(),
        },
        DeviceEvent::AccessLevels {
            default: None,
            entries: vec![],
        },
        DeviceEvent::Watchers(vec![
            Watcher {
                uri: "sip:carol@example.com".into(),
                name: Some(t.into()),
                acknowledged: false,
            },
            Watcher {
                uri: "sip:dave@example.com".into(),
                name: None,
                acknowledged: true,
            },
        ]),
    ]
}

/// One of every device message and command, with text that needs escaping.
pub fn sample_device_messages(t: &str) -> Vec<DeviceMessage> {
    let s = |x: &str| x.to_string();
    let cmds = vec![
        DeviceCommand::SetPresence {
            availability: Availability::Busy,
            note: Some(t.into()),
        },
        DeviceCommand::SetPresence {
            availability: Availability::Code(4500),
            note: None,
        },
        DeviceCommand::AddContact {
            uri: s("sip:bob@example.com"),
            name: Some(t.into()),
            group: Some(s("2")),
        },
        DeviceCommand::AddContact {
            uri: s("sip:carol@example.com"),
            name: None,
            group: None,
        },
        DeviceCommand::RemoveContact {
            uri: s("sip:bob@example.com"),
        },
        DeviceCommand::AddGroup { name: t.into() },
        DeviceCommand::RenameGroup {
            group: s("2"),
            name: t.into(),
        },
        DeviceCommand::RemoveGroup { group: s("2") },
        DeviceCommand::Search { query: t.into() },
        DeviceCommand::StartConversation {
            to: vec![s("sip:bob@example.com"), s("sip:carol@example.com")],
            subject: Some(t.into()),
            text: Some(t.into()),
        },
        DeviceCommand::StartConversation {
            to: vec![s("sip:bob@example.com")],
            subject: None,
            text: None,
        },
        DeviceCommand::Send {
            conversation: s("c1"),
            text: t.into(),
        },
        DeviceCommand::Typing {
            conversation: s("c1"),
            composing: true,
        },
        DeviceCommand::Typing {
            conversation: s("c1"),
            composing: false,
        },
        DeviceCommand::Accept {
            conversation: s("c2"),
        },
        DeviceCommand::Leave {
            conversation: s("c2"),
        },
        DeviceCommand::Invite {
            conversation: s("c1"),
            uris: vec![s("sip:dave@example.com")],
        },
        DeviceCommand::SubscribePresence {
            uris: vec![s("sip:erin@example.com"), s("sip:frank@example.com")],
        },
    ];
    let cmds = [cmds, sample_access_commands(t)].concat();
    let mut out = vec![
        DeviceMessage::Login {
            user: s("CONTOSO\\alice"),
            password: Secret::new(t),
            resume: None,
        },
        DeviceMessage::Login {
            user: s("alice@contoso.com"),
            password: Secret::new("pw"),
            resume: Some(Resume {
                session_id: s("s-17"),
                last_acked_seq: u64::MAX,
            }),
        },
        DeviceMessage::Status {
            coverage: Coverage::InCoverage,
        },
        DeviceMessage::Status {
            coverage: Coverage::Dormant,
        },
        DeviceMessage::Status {
            coverage: Coverage::Active,
        },
        DeviceMessage::Ack { seq: 0 },
        DeviceMessage::Ack { seq: 42 },
        DeviceMessage::Logout,
    ];
    out.extend(
        cmds.into_iter()
            .enumerate()
            .map(|(i, command)| DeviceMessage::Command {
                id: i as u64 + 1,
                command,
            }),
    );
    out
}

/// One of every service message and event, with text that needs escaping.
pub fn sample_service_messages(t: &str) -> Vec<ServiceMessage> {
    let s = |x: &str| x.to_string();
    let events = vec![
        DeviceEvent::ContactList(ContactList {
            complete: true,
            groups: vec![
                Group {
                    id: s("~"),
                    name: s("Other Contacts"),
                },
                Group {
                    id: s("2"),
                    name: t.into(),
                },
            ],
            contacts: vec![
                Contact {
                    uri: s("sip:bob@example.com"),
                    name: Some(t.into()),
                    groups: vec![s("~"), s("2")],
                },
                Contact {
                    uri: s("sip:carol@example.com"),
                    name: None,
                    groups: vec![],
                },
            ],
            removed_groups: vec![],
            removed_contacts: vec![],
            part: None,
        }),
        DeviceEvent::ContactList(ContactList {
            complete: false,
            groups: vec![],
            contacts: vec![],
            removed_groups: vec![s("3")],
            removed_contacts: vec![s("sip:old@example.com")],
            part: Some(ListPart { number: 2, of: 3 }),
        }),
        DeviceEvent::Presence(Presence {
            uri: s("sip:bob@example.com"),
            availability: Availability::Away,
            note: Some(t.into()),
            display_name: Some(t.into()),
        }),
        DeviceEvent::Presence(Presence {
            uri: s("sip:carol@example.com"),
            availability: Availability::Code(7500),
            note: None,
            display_name: None,
        }),
        DeviceEvent::SelfPresence {
            availability: Availability::DoNotDisturb,
            note: Some(t.into()),
        },
        DeviceEvent::SelfPresence {
            availability: Availability::Online,
            note: None,
        },
        DeviceEvent::Invitation {
            conversation: s("c2"),
            from: s("sip:bob@example.com"),
            subject: Some(t.into()),
            text: Some(t.into()),
        },
        DeviceEvent::Invitation {
            conversation: s("c3"),
            from: s("sip:bob@example.com"),
            subject: None,
            text: None,
        },
        DeviceEvent::Message {
            conversation: s("c1"),
            from: s("sip:bob@example.com"),
            text: t.into(),
        },
        DeviceEvent::Typing {
            conversation: s("c1"),
            from: s("sip:bob@example.com"),
            composing: true,
        },
        DeviceEvent::ConversationState {
            conversation: s("c1"),
            state: ConversationState::Connecting,
        },
        DeviceEvent::ConversationState {
            conversation: s("c1"),
            state: ConversationState::Incoming,
        },
        DeviceEvent::ConversationState {
            conversation: s("c1"),
            state: ConversationState::Connected,
        },
        DeviceEvent::ConversationState {
            conversation: s("c1"),
            state: ConversationState::Terminated,
        },
        DeviceEvent::Participants {
            conversation: s("c1"),
            joined: vec![s("sip:dave@example.com")],
            left: vec![s("sip:bob@example.com"), s("sip:erin@example.com")],
        },
        DeviceEvent::DeliveryFailed {
            conversation: s("c1"),
            uri: Some(s("sip:bob@example.com")),
            reason: t.into(),
        },
        DeviceEvent::DeliveryFailed {
            conversation: s("c1"),
            uri: None,
            reason: s(""),
        },
        DeviceEvent::SearchResult {
            command: 9,
            entries: vec![
                SearchEntry {
                    uri: s("sip:bob@example.com"),
                    name: Some(t.into()),
                    title: Some(s("Engineer")),
                    office: Some(s("B2")),
                    phone: Some(s("+1 555 0100")),
                    email: Some(s("bob@example.com")),
                    availability: Some(Availability::Busy),
                },
                SearchEntry {
                    uri: s("sip:bobby@example.com"),
                    name: None,
                    title: None,
                    office: None,
                    phone: None,
                    email: None,
                    availability: None,
                },
            ],
        },
        DeviceEvent::SearchResult {
            command: 10,
            entries: vec![],
        },
    ];
    let events = [events, sample_access_events(t)].concat();
    let mut out = vec![
        ServiceMessage::LoginResult {
            status: Status::Ok,
            text: s("OK"),
            session_id: Some(s("s-17")),
            sip_uri: Some(s("sip:alice@example.com")),
        },
        ServiceMessage::LoginResult {
            status: Status::ServerBusy,
            text: t.into(),
            session_id: None,
            sip_uri: None,
        },
        ServiceMessage::CommandResult {
            id: 4,
            status: Status::Ok,
            text: s(""),
            conversation: Some(s("c9")),
        },
        ServiceMessage::CommandResult {
            id: 5,
            status: Status::CwaUnavailable,
            text: t.into(),
            conversation: None,
        },
        ServiceMessage::SessionEnded {
            status: Status::SessionEnded,
            reason: t.into(),
        },
        ServiceMessage::ServiceStopping,
    ];
    out.extend(
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| ServiceMessage::Event {
                seq: i as u64 + 1,
                event,
            }),
    );
    out
}
