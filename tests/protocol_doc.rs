//! collab-protocol(7) against the code: the worked example's hex blocks are
//! rebuilt from the same fixed inputs with the library and compared byte
//! for byte, the example runs through the real handshake functions,
//! every status code, frame type, message and event is documented, and
//! every limit and timeout the page (and collab-device(1)'s reconnect
//! bounds) states is the constant or default the code uses.

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

/// The rows of the page's table that follows the section heading `section`
/// (its first row, the column names, left out), each split at tabs.
fn table_rows(section: &str) -> Vec<Vec<String>> {
    let man = man();
    let start = man
        .find(&format!(".SH {section}\n"))
        .unwrap_or_else(|| panic!("no section {section}"));
    let rest = &man[start..];
    let ts = rest.find(".TS\n").expect("a table") + 4;
    let te = rest[ts..].find(".TE\n").expect("the table's end") + ts;
    rest[ts..te]
        .lines()
        .filter(|l| l.contains('\t'))
        .skip(1)
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// The value column of the table row whose first column is `name`.
fn row_value(rows: &[Vec<String>], name: &str) -> String {
    rows.iter()
        .find(|r| r[0] == name)
        .unwrap_or_else(|| panic!("no row {name:?} in {rows:?}"))[1]
        .clone()
}

/// Every number in `text`, in order.
fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

/// collabd's configuration with every setting at its default.
fn default_config() -> collabd::service::config::Config {
    let dir = std::env::temp_dir().join(format!("protocol-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("collabd.conf");
    std::fs::write(
        &file,
        "instance = bcs-01\ndatabase = postgresql://collabd@db/collab\n",
    )
    .unwrap();
    let args = ["--config", file.to_str().unwrap()].map(std::ffi::OsString::from);
    let parsed = collabd::service::config::Command::parse(args, &|_| None).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    match parsed {
        collabd::service::config::Command::Run(c) => c,
        other => panic!("{other:?}"),
    }
}

/// Every row of LIMITS and TIMEOUTS is compared with the constant or
/// default the code uses; a row the test does not know fails, so a limit
/// added to the page must be added here too.
#[test]
fn every_limit_and_timeout_on_the_page_is_the_one_the_code_uses() {
    use collabd::dispatcher::config as dispatcher;
    use collabd::service::{session, split, translate};
    use collabd::wire::{frame, message};

    let limits = table_rows("LIMITS");
    let expected: Vec<(&str, Vec<u64>)> = vec![
        (
            "frame length field",
            vec![frame::HEADER_LEN as u64, frame::MAX_FRAME_LEN as u64],
        ),
        (
            "deflated payload per frame",
            vec![collabd::wire::MAX_SEALED_PAYLOAD as u64],
        ),
        (
            "message (inflated)",
            vec![collabd::wire::MAX_MESSAGE_LEN as u64],
        ),
        ("messages per Data frame", vec![1]),
        ("XML nesting", vec![message::MAX_DEPTH as u64]),
        (
            "XML elements per message",
            vec![message::MAX_ELEMENTS as u64],
        ),
        ("Refused text", vec![frame::MAX_REFUSED_TEXT as u64]),
        (
            "free text in a command",
            vec![translate::MAX_TEXT_BYTES as u64],
        ),
        (
            "identifier in a command",
            vec![translate::MAX_ID_BYTES as u64],
        ),
        ("URIs in a command", vec![translate::MAX_URIS as u64]),
        (
            "CWA request of a command",
            vec![translate::MAX_CWA_COMMAND_BYTES as u64],
        ),
        (
            "text from CWA in an event",
            vec![translate::MAX_TEXT_BYTES as u64],
        ),
        ("ack or resume acked", vec![]),
        (
            "events kept unacknowledged",
            vec![session::MAX_REPLAY_EVENTS as u64, 1],
        ),
        (
            "contact-list event",
            vec![split::MAX_LIST_EVENT_BYTES as u64],
        ),
        (
            "commands remembered for a resend",
            vec![session::MAX_SEEN_COMMANDS as u64],
        ),
    ];
    assert_eq!(session::MAX_REPLAY_BYTES, 1 << 20, "the page says 1 MiB");
    let names: Vec<&str> = limits.iter().map(|r| r[0].as_str()).collect();
    let known: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, known, "LIMITS rows and the ones checked here");
    for (name, want) in &expected {
        assert_eq!(numbers(&row_value(&limits, name)), *want, "LIMITS: {name}");
    }
    // The same figures where the prose states them.
    let man = man();
    for phrase in [
        format!(
            "at most {} events\nand 1 MiB ({} bytes)",
            session::MAX_REPLAY_EVENTS,
            session::MAX_REPLAY_BYTES
        ),
        format!("longer than {} bytes of XML", split::MAX_LIST_EVENT_BYTES),
        format!(
            "remembers the last {} commands",
            session::MAX_SEEN_COMMANDS
        ),
        format!(
            "free text (message text, subject, note, name, search\nquery) of at most {} bytes",
            translate::MAX_TEXT_BYTES
        ),
        format!(
            "identifier (URI, conversation or\ngroup id) of at most {} bytes, at most {} URIs in one command, and at\nmost {} bytes",
            translate::MAX_ID_BYTES,
            translate::MAX_URIS,
            translate::MAX_CWA_COMMAND_BYTES
        ),
        format!(
            "longer than {} bytes reach the device cut to {} bytes",
            translate::MAX_TEXT_BYTES,
            translate::MAX_TEXT_BYTES
        ),
        format!(
            "a length below {} or above {}.",
            frame::HEADER_LEN,
            frame::MAX_FRAME_LEN
        ),
        format!(
            "(a UTF-8 XML document, at most {} bytes)",
            collabd::wire::MAX_MESSAGE_LEN
        ),
        format!(
            "must be at most {} bytes ({} - {} header - {} tag)",
            collabd::wire::MAX_SEALED_PAYLOAD,
            frame::MAX_FRAME_LEN,
            frame::HEADER_LEN,
            frame::TAG_LEN
        ),
        format!(
            "that inflates past {} bytes",
            collabd::wire::MAX_MESSAGE_LEN
        ),
        format!(
            "UTF-8 text (at most {} bytes)",
            frame::MAX_REFUSED_TEXT
        ),
        format!(
            "{} elements or holding more than {} elements",
            message::MAX_DEPTH,
            message::MAX_ELEMENTS
        ),
        format!(
            "an acknowledgement comes at least every {}\nseconds",
            session::ROOM_WAIT.as_secs()
        ),
        format!(
            "(A frame over {} bytes is a different matter",
            frame::MAX_FRAME_LEN
        ),
    ] {
        assert!(man.contains(&phrase), "the page no longer says {phrase:?}");
    }

    let timeouts = table_rows("TIMEOUTS");
    let c = default_config();
    let secs = |d: std::time::Duration| d.as_millis() as u64 / 1000;
    let expected: Vec<(&str, u64)> = vec![
        (
            "whole first frame (Hello), at the dispatcher",
            dispatcher::DEFAULT_HEADER_TIMEOUT_MS / 1000,
        ),
        (
            "whole Confirm after the Challenge, at the dispatcher",
            dispatcher::DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000,
        ),
        (
            "Confirm, from connecting to collabd",
            secs(c.key_proof_timeout),
        ),
        (
            "login result, from connecting to collabd",
            secs(c.handshake_timeout),
        ),
        ("silence of a signed-in device", secs(c.status_timeout)),
        ("outcome of a command from CWA", secs(c.command_timeout)),
        (
            "an ack that makes room in a full event buffer",
            session::ROOM_WAIT.as_secs(),
        ),
        (
            "relay idle both ways, at the dispatcher",
            dispatcher::DEFAULT_IDLE_TIMEOUT_MS / 1000,
        ),
    ];
    let names: Vec<&str> = timeouts.iter().map(|r| r[0].as_str()).collect();
    let known: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, known, "TIMEOUTS rows and the ones checked here");
    for (name, want) in &expected {
        assert_eq!(
            row_value(&timeouts, name),
            format!("{want} seconds"),
            "TIMEOUTS: {name}"
        );
    }
    assert!(man.contains(&format!(
        "reports its status more often than every {} seconds",
        secs(c.status_timeout)
    )));
}

/// collab-device(1) states the reconnect figures the code uses.
#[test]
fn collab_device_states_its_reconnect_bounds() {
    use collabd::device::reconnect;
    let page = include_str!("../man/collab-device.1")
        .replace("\\-", "-")
        .replace("\\(mu", "x");
    let first = reconnect::FIRST_WAIT.as_millis() as f64 / 1000.0;
    let most = reconnect::MAX_WAIT.as_secs();
    assert!(
        page.contains(&format!("min({first} s x 2^\\fIn\\fP, {most} s)")),
        "the wait formula"
    );
    assert!(page.contains(&format!(
        "{} to {} s before the first\nattempt",
        first / 2.0,
        first
    )));
    assert!(page.contains(&format!(
        "(default {}; 0: a lost link",
        reconnect::DEFAULT_ATTEMPTS
    )));
    assert!(page.contains(&format!(
        "more than {} seconds after the\nlink was lost",
        reconnect::GIVE_UP_AFTER.as_secs()
    )));
}
