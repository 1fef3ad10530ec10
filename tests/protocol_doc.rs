//! collab-protocol(7) against the code: the worked example's hex blocks are
//! rebuilt from the same fixed inputs with the library and compared byte
//! for byte, the example runs through the real handshake functions, and
//! every status code, frame type, message and event is documented.

use std::collections::BTreeMap;

use collabd::wire::channel::{accept_with_random, connect_with_random};
use collabd::wire::crypto::{self, Direction};
use collabd::wire::frame::{Frame, FrameType, Header};
use collabd::wire::status::ALL_STATUSES;
use collabd::wire::{DeviceMessage, Secret};

const MAN_SOURCE: &str = include_str!("../man/collab-protocol.7");

const PIN: u32 = 0x2a00_b1c3;
const USER: &str = "alice@contoso.com";
const PASSWORD: &str = "secret";

fn key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}
fn device_random() -> [u8; 32] {
    std::array::from_fn(|i| 0x40 + i as u8)
}
fn service_random() -> [u8; 32] {
    std::array::from_fn(|i| 0x80 + i as u8)
}

/// The page with roff's escapes for hyphen-minus and backslash undone.
fn man() -> String {
    MAN_SOURCE.replace("\\-", "-").replace("\\e", "\\")
}

/// Hex blocks in the page: a line `name:` inside an example, followed by
/// lines of hex digit groups, ended by a line that is not hex.
fn man_blocks() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in man().lines() {
        let t = line.trim();
        let is_hex = !t.is_empty()
            && t.split(' ')
                .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if let Some((name, hex)) = current.as_mut() {
            if is_hex {
                hex.push_str(&t.replace(' ', ""));
                continue;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            out.insert(name.clone(), bytes);
            current = None;
        }
        if let Some(name) = t.strip_prefix("hex ").and_then(|r| r.strip_suffix(':')) {
            current = Some((name.to_string(), String::new()));
        }
    }
    out
}

fn hex_block(name: &str, bytes: &[u8]) -> String {
    let mut s = format!("hex {name}:\n");
    for line in bytes.chunks(16) {
        let groups: Vec<String> = line
            .chunks(4)
            .map(|g| g.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        s.push_str(&groups.join(" "));
        s.push('\n');
    }
    s
}

/// The example, rebuilt with the library.
fn example() -> Vec<(&'static str, Vec<u8>)> {
    let (k, rc, rs) = (key(), device_random(), service_random());
    let hello = Frame::new(Header::new(FrameType::Hello, PIN, 0), rc.to_vec());
    let mut salt = rc.to_vec();
    salt.extend_from_slice(&rs);
    let prk = crypto::hmac_sha256(&salt, &k).unwrap();
    let keys = crypto::derive_keys(&k, PIN, &rc, &rs).unwrap();
    let mut info = crypto::LABEL_DEVICE_TO_SERVICE.to_vec();
    info.extend_from_slice(&PIN.to_be_bytes());
    let mut challenge_body = rs.to_vec();
    challenge_body.extend_from_slice(&keys.service_confirmation().unwrap());
    let challenge = Frame::new(Header::new(FrameType::Challenge, PIN, 0), challenge_body);
    let confirm = Frame::new(
        Header::new(FrameType::Confirm, PIN, 0),
        keys.device_confirmation().unwrap().to_vec(),
    );
    let login = DeviceMessage::Login {
        user: USER.into(),
        password: Secret::new(PASSWORD),
        resume: None,
    }
    .encode();
    // The deflated bytes are taken from the page when present (another
    // deflate implementation may legitimately choose other bytes), and
    // must inflate to the login message.
    let deflated = man_blocks()
        .remove("login-deflated")
        .unwrap_or_else(|| crypto::deflate(&login));
    assert_eq!(crypto::inflate(&deflated, 1 << 20).unwrap(), login);
    let header = Header::new(FrameType::Data, PIN, 1);
    let body = crypto::seal(
        &keys.device_to_service,
        Direction::DeviceToService,
        &header.to_bytes(),
        1,
        &deflated,
    )
    .unwrap();
    let data = Frame::new(header, body);
    vec![
        ("transport-key", k.to_vec()),
        ("device-random", rc.to_vec()),
        ("service-random", rs.to_vec()),
        ("hello-frame", hello.to_bytes()),
        ("salt", salt),
        ("prk", prk.to_vec()),
        ("info-device-to-service", info),
        ("key-device-to-service", keys.device_to_service.to_vec()),
        ("key-service-to-device", keys.service_to_device.to_vec()),
        ("key-confirm", keys.confirm.to_vec()),
        (
            "service-confirm",
            keys.service_confirmation().unwrap().to_vec(),
        ),
        ("challenge-frame", challenge.to_bytes()),
        (
            "device-confirm",
            keys.device_confirmation().unwrap().to_vec(),
        ),
        ("confirm-frame", confirm.to_bytes()),
        ("login-xml", login),
        ("login-deflated", deflated),
        ("data-header", header.to_bytes().to_vec()),
        (
            "nonce",
            crypto::nonce(Direction::DeviceToService, 1).to_vec(),
        ),
        ("data-frame", data.to_bytes()),
    ]
}

#[test]
fn worked_example_matches_the_code() {
    let blocks = man_blocks();
    let mut missing = String::new();
    for (name, bytes) in example() {
        match blocks.get(name) {
            Some(b) if *b == bytes => {}
            _ => missing.push_str(&hex_block(name, &bytes)),
        }
    }
    assert!(
        missing.is_empty(),
        "collab-protocol.7 worked example differs from the code; expected blocks:\n{missing}"
    );
}

#[test]
fn worked_example_runs_through_the_real_handshake() {
    // The page's frames, fed to the service and device halves of the
    // library with the page's randoms, are accepted and give the login.
    let blocks = man_blocks();
    let mut device_bytes = blocks["hello-frame"].clone();
    device_bytes.extend(&blocks["confirm-frame"]);
    device_bytes.extend(&blocks["data-frame"]);
    let mut service_stream = Duplex(std::io::Cursor::new(device_bytes), Vec::new());
    let mut ch = accept_with_random(&mut service_stream, |_| Ok(key()), service_random()).unwrap();
    match ch.recv_device().unwrap() {
        DeviceMessage::Login { user, password, .. } => {
            assert_eq!(user, USER);
            assert_eq!(password.expose(), PASSWORD);
        }
        other => panic!("{other:?}"),
    }
    drop(ch);
    assert_eq!(service_stream.1, blocks["challenge-frame"]);
    let mut device_stream = Duplex(
        std::io::Cursor::new(blocks["challenge-frame"].clone()),
        Vec::new(),
    );
    connect_with_random(&mut device_stream, PIN, &key(), device_random()).unwrap();
    let mut sent = blocks["hello-frame"].clone();
    sent.extend(&blocks["confirm-frame"]);
    assert_eq!(device_stream.1, sent);
}

struct Duplex(std::io::Cursor<Vec<u8>>, Vec<u8>);

impl std::io::Read for Duplex {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl std::io::Write for Duplex {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn every_status_frame_type_message_and_event_is_documented() {
    let man = man();
    for s in ALL_STATUSES {
        let row = format!("{}\t{}\t{}", s.code(), s.name(), s.text());
        assert!(man.contains(&row), "status row missing: {row:?}");
    }
    for (code, name) in [
        (1, "Hello"),
        (2, "Challenge"),
        (3, "Confirm"),
        (4, "Data"),
        (5, "Refused"),
    ] {
        assert!(
            man.contains(&format!("{code}\t{name}\t")),
            "frame type {name}"
        );
    }
    for label in [
        crypto::LABEL_DEVICE_TO_SERVICE,
        crypto::LABEL_SERVICE_TO_DEVICE,
        crypto::LABEL_CONFIRM,
        crypto::CONFIRM_SERVICE,
        crypto::CONFIRM_DEVICE,
    ] {
        let l = std::str::from_utf8(label).unwrap();
        assert!(man.contains(&format!("\"{l}\"")), "label {l}");
    }
    for element in [
        "login",
        "password",
        "resume",
        "status",
        "command",
        "ack",
        "logout",
        "set-presence",
        "add-contact",
        "remove-contact",
        "add-group",
        "rename-group",
        "remove-group",
        "search",
        "start-conversation",
        "send",
        "typing",
        "accept",
        "leave",
        "invite",
        "subscribe-presence",
        "login-result",
        "command-result",
        "event",
        "session-ended",
        "service-stopping",
        "contact-list",
        "in-group",
        "removed-group",
        "removed-contact",
        "presence",
        "self-presence",
        "invitation",
        "message",
        "conversation-state",
        "participants",
        "delivery-failed",
        "search-result",
        "entry",
    ] {
        assert!(
            man.contains(&format!("<{element}")),
            "element <{element}> undocumented"
        );
    }
}
