//! The XML messages: every message round-trips with hostile text, malformed
//! or hostile documents are refused with a protocol error (thousands of
//! mutated documents, never a panic), and passwords never reach `Debug`.

use crate::support;

use collabd::wire::{DeviceMessage, Secret, ServiceMessage, WireError};
use support::wire_peer::{sample_device_messages, sample_service_messages, XorShift};

const TRICKY: &[&str] = &[
    "hello",
    "",
    "   ",
    " lead and trail ",
    "<b>&amp; \"quotes\" 'apos' ]]> </text>",
    "line one\nline two\n\ttabbed",
    "héllo wörld ☃ 𝄞 ١٢٣",
    "&lt;already escaped&gt;",
    "a=b c=d \\s \\n",
];

fn random_text(rng: &mut XorShift) -> String {
    const ALPHABET: &[char] = &[
        'a', 'Z', '0', ' ', ' ', '\t', '\n', '<', '>', '&', '"', '\'', ';', '=', ']', '\\', '/',
        'é', '☃', '𝄞', '\u{85}', '\u{2028}', '\u{fffd}',
    ];
    let n = rng.below(40);
    (0..n)
        .map(|_| ALPHABET[rng.below(ALPHABET.len())])
        .collect()
}

#[test]
fn every_message_round_trips() {
    let mut texts: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    let mut rng = XorShift::new(99);
    texts.extend((0..200).map(|_| random_text(&mut rng)));
    let mut seen = 0;
    for t in &texts {
        for m in sample_device_messages(t) {
            let bytes = m.encode();
            assert_eq!(
                DeviceMessage::decode(&bytes).unwrap(),
                m,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            seen += 1;
        }
        for m in sample_service_messages(t) {
            let bytes = m.encode();
            assert_eq!(
                ServiceMessage::decode(&bytes).unwrap(),
                m,
                "{}",
                String::from_utf8_lossy(&bytes)
            );
            seen += 1;
        }
    }
    assert!(seen > 10_000);
}

#[test]
fn xml_line_ends_and_forbidden_characters_are_normalised() {
    let m = |t: &str| ServiceMessage::SessionEnded {
        status: collabd::wire::Status::SessionEnded,
        reason: t.to_string(),
    };
    let back = ServiceMessage::decode(&m("a\r\nb\rc\u{1}d\u{ffff}").encode()).unwrap();
    assert_eq!(back, m("a\nb\nc\u{fffd}d\u{fffd}"));
}

#[test]
fn exact_xml_of_a_few_messages() {
    let login = DeviceMessage::Login {
        user: "CONTOSO\\alice".into(),
        password: Secret::new("s3cret"),
        resume: None,
    };
    assert_eq!(
        String::from_utf8(login.encode()).unwrap(),
        "<login user=\"CONTOSO\\alice\"><password>s3cret</password></login>"
    );
    // (Elements with one attribute only: xmltree keeps attributes in a
    // HashMap, so their order varies between processes.)
    let ended = ServiceMessage::SessionEnded {
        status: collabd::wire::Status::SessionEnded,
        reason: "bye <you> & \"me\"".into(),
    };
    assert_eq!(
        String::from_utf8(ended.encode()).unwrap(),
        "<session-ended code=\"310\"><reason>bye &lt;you&gt; &amp; \"me\"</reason></session-ended>"
    );
}

#[test]
fn passwords_never_reach_debug_output() {
    let login = DeviceMessage::Login {
        user: "alice".into(),
        password: Secret::new("hunter2-very-secret"),
        resume: None,
    };
    let dbg = format!("{login:?} {:#?}", login);
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("alice"));
}

#[test]
fn malformed_and_hostile_documents_are_protocol_errors() {
    let deep = "<a>".repeat(100_000) + &"</a>".repeat(100_000);
    let bad: Vec<String> = vec![
        "".into(),
        "   ".into(),
        "not xml".into(),
        "<login".into(),
        "<login user=\"a\"><password>x</password>".into(),
        "<login><password>x</password></login>".into(),
        "<login user=\"a\"/>".into(),
        "<login user=\"a\"><password><b/></password></login>".into(),
        "<status coverage=\"sideways\"/>".into(),
        "<status/>".into(),
        "<ack seq=\"-1\"/>".into(),
        "<ack seq=\"18446744073709551616\"/>".into(),
        "<ack seq=\" 1\"/>".into(),
        "<command id=\"1\"/>".into(),
        "<command id=\"1\"><send conversation=\"c\"><text>x</text></send><leave conversation=\"c\"/></command>".into(),
        "<command id=\"1\"><fly/></command>".into(),
        "<command id=\"x\"><logout/></command>".into(),
        "<command id=\"1\"><start-conversation/></command>".into(),
        "<command id=\"1\"><typing conversation=\"c\" composing=\"yes\"/></command>".into(),
        "<command id=\"1\"><set-presence availability=\"sleepy\"/></command>".into(),
        "<command id=\"1\"><set-presence availability=\"99999999999\"/></command>".into(),
        "<x:logout xmlns:x=\"urn:x\"/>".into(),
        "<!DOCTYPE logout [<!ENTITY a \"aaaa\">]><logout/>".into(),
        "<?xml version=\"1.0\"?><!DOCTYPE x SYSTEM \"file:///etc/passwd\"><logout/>".into(),
        "<logout>&undefined;</logout>".into(),
        "<logout/><logout/>trailing".into(),
        "<shutdown/>".into(),
        deep,
        "\u{feff}\u{0}<logout/>".into(),
    ];
    for doc in &bad {
        match DeviceMessage::decode(doc.as_bytes()) {
            Err(WireError::Protocol(_)) => {}
            other => panic!("{:?} -> {other:?}", &doc[..doc.len().min(80)]),
        }
    }
    let bad_service = [
        "<login-result/>",
        "<login-result code=\"299\"/>",
        "<login-result code=\"70000\"/>",
        "<event seq=\"1\"/>",
        "<event seq=\"1\"><teleport/></event>",
        "<event seq=\"1\"><conversation-state conversation=\"c\" state=\"melted\"/></event>",
        "<event seq=\"1\"><contact-list complete=\"true\"><group id=\"1\"/></contact-list></event>",
        "<event seq=\"1\"><participants conversation=\"c\"><joined/></participants></event>",
        "<command-result id=\"1\"/>",
        "<session-ended/>",
    ];
    for doc in bad_service {
        assert!(
            matches!(
                ServiceMessage::decode(doc.as_bytes()),
                Err(WireError::Protocol(_))
            ),
            "{doc}"
        );
    }
    // Over the size bound.
    let huge = format!("<logout>{}</logout>", "x".repeat(2 << 20));
    assert!(matches!(
        DeviceMessage::decode(huge.as_bytes()),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn thousands_of_mutated_documents_never_panic() {
    let mut docs: Vec<Vec<u8>> = sample_device_messages("text <&> here")
        .iter()
        .map(|m| m.encode())
        .collect();
    docs.extend(
        sample_service_messages("text <&> here")
            .iter()
            .map(|m| m.encode()),
    );
    let mut rng = XorShift::new(0xfeed);
    let mut refused = 0;
    let splices: &[&[u8]] = &[
        b"<",
        b">",
        b"</",
        b"/>",
        b"\"",
        b"&",
        b"<!--",
        b"<![CDATA[",
        b"]]>",
        b"<a>",
        b"=",
        b"\0",
    ];
    for _ in 0..6000 {
        let mut d = docs[rng.below(docs.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d[i] = rng.next() as u8;
                }
                1 if !d.is_empty() => {
                    let i = rng.below(d.len());
                    d.remove(i);
                }
                2 => {
                    let i = rng.below(d.len() + 1);
                    let s = splices[rng.below(splices.len())];
                    d.splice(i..i, s.iter().copied());
                }
                _ => d.truncate(rng.below(d.len() + 1)),
            }
        }
        let a = DeviceMessage::decode(&d);
        let b = ServiceMessage::decode(&d);
        for e in [a.err(), b.err()].into_iter().flatten() {
            assert!(matches!(e, WireError::Protocol(_)), "{e}");
            refused += 1;
        }
    }
    assert!(refused > 6000);
}

#[test]
fn one_message_per_frame_and_bounded_element_counts() {
    let two = [
        &br#"<status coverage="active"/><logout/>"#[..],
        br#"<login user="a"><password>p</password></login><command id="1"><search><query>x</query></search></command>"#,
        br#"<ack seq="1"/>trailing text"#,
        br#"<ack seq="1"/><ack seq="2"/>"#,
    ];
    for doc in two {
        let e = DeviceMessage::decode(doc).unwrap_err();
        assert!(matches!(e, WireError::Protocol(_)), "{e}");
        assert_eq!(e.status().code(), 308);
    }
    // White space and comments after the element are not a second message.
    assert!(DeviceMessage::decode(b"<logout/>\n  <!-- end -->\n").is_ok());
    // A small document of many elements (a deflate bomb's shape) is refused
    // before a tree is built.
    let many = format!(
        "<event seq=\"1\"><contact-list complete=\"true\">{}</contact-list></event>",
        "<x/>".repeat(collabd::wire::message::MAX_ELEMENTS)
    );
    let e = ServiceMessage::decode(many.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
}

#[test]
fn contact_list_parts_come_in_pairs_within_their_count() {
    let list =
        |attrs: &str| format!(r#"<event seq="1"><contact-list complete="true"{attrs}/></event>"#);
    for ok in ["", r#" part="1" parts="1""#, r#" part="2" parts="3""#] {
        assert!(ServiceMessage::decode(list(ok).as_bytes()).is_ok(), "{ok}");
    }
    for bad in [
        r#" part="1""#,
        r#" parts="2""#,
        r#" part="0" parts="2""#,
        r#" part="3" parts="2""#,
        r#" part="x" parts="2""#,
    ] {
        assert!(
            matches!(
                ServiceMessage::decode(list(bad).as_bytes()),
                Err(WireError::Protocol(_))
            ),
            "{bad}"
        );
    }
}

/// collab-protocol(7): an XML declaration may open a message, but only for
/// UTF-8; numbers compare by value (leading zeros allowed), identifiers as
/// strings; unknown child elements are ignored except where the page says
/// a message holds exactly one element or only text.
#[test]
fn declarations_numbers_and_unknown_children_as_the_page_says() {
    let ok = |d: &str| DeviceMessage::decode(d.as_bytes()).unwrap_or_else(|e| panic!("{d}: {e}"));
    let refused = |d: &str| {
        assert!(
            matches!(
                DeviceMessage::decode(d.as_bytes()),
                Err(WireError::Protocol(_))
            ),
            "{d}"
        )
    };
    ok(r#"<?xml version="1.0"?><logout/>"#);
    ok(r#"<?xml version="1.0" encoding="UTF-8"?><logout/>"#);
    ok(r#"<?xml version='1.0' encoding='utf-8' standalone='yes'?><logout/>"#);
    refused(r#"<?xml version="1.0" encoding="ISO-8859-1"?><logout/>"#);
    refused(r#"<?xml version="1.0" encoding="UTF-16"?><logout/>"#);
    assert_eq!(ok(r#"<ack seq="007"/>"#), DeviceMessage::Ack { seq: 7 });
    refused(r#"<ack seq="+7"/>"#);
    match ok(r#"<command id="01"><remove-group group="02"/></command>"#) {
        DeviceMessage::Command { id, command } => {
            assert_eq!(id, 1);
            assert_eq!(
                command,
                collabd::wire::DeviceCommand::RemoveGroup { group: "02".into() }
            );
        }
        other => panic!("{other:?}"),
    }
    ok(r#"<login user="a"><password>p</password><future/></login>"#);
    ok(r#"<status coverage="active"><future/></status>"#);
    ok(r#"<command id="1"><remove-group group="2"><future/></remove-group></command>"#);
    refused(r#"<command id="1"><remove-group group="2"/><future/></command>"#);
    refused(r#"<login user="a"><password>p<b/></password></login>"#);
    let event = |d: &str| ServiceMessage::decode(d.as_bytes());
    assert!(event(r#"<event seq="1"><typing conversation="c" from="u" composing="true"><future/></typing></event>"#).is_ok());
    assert!(event(
        r#"<event seq="1"><typing conversation="c" from="u" composing="true"/><future/></event>"#
    )
    .is_err());
}
