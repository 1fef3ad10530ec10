//! The device client: the library against the test service, and the
//! `collab-device` binary in `--script` mode through a handshake, a login,
//! events and acknowledgements, commands, refusals, protocol errors and its
//! exit codes. The password never appears in its output.

use crate::support;

use std::time::Duration;

use collabd::device::{DeviceClient, DeviceConfig, DeviceError};
use collabd::wire::{
    Coverage, DeviceCommand, DeviceEvent, DeviceMessage, Secret, ServiceMessage, Status, WireError,
};
use support::device_peer::{
    device_args, hex, welcome_events, DeviceProcess, Seen, TempDir, TestService, KEY, PASSWORD,
    PIN, WAIT,
};

const BIN: &str = env!("CARGO_BIN_EXE_collab-device");

fn files(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.file("key", format!("{}\n", hex(&KEY)).as_bytes()),
        dir.file("password", format!("{PASSWORD}\n").as_bytes()),
    )
}

#[test]
fn library_login_events_acks_commands_and_logout() {
    let svc = TestService::start();
    let cfg = DeviceConfig {
        addr: svc.addr.to_string(),
        pin: PIN,
        transport_key: KEY,
        tls: None,
        timeout: WAIT,
        status_interval: None,
    };
    let mut client = DeviceClient::connect(&cfg).unwrap();
    assert!(matches!(svc.next(), Seen::Handshake(PIN)));
    let ok = client.login("alice", &Secret::new(PASSWORD), None).unwrap();
    assert_eq!(ok.session_id.as_deref(), Some("sess-1"));
    assert_eq!(ok.sip_uri.as_deref(), Some("sip:alice@example.com"));
    for (i, want) in welcome_events().into_iter().enumerate() {
        match client.poll(WAIT).unwrap() {
            Some(ServiceMessage::Event { seq, event }) => {
                assert_eq!(seq, i as u64 + 1);
                assert_eq!(event, want);
                client.ack(seq).unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    client.send_status(Coverage::Dormant).unwrap();
    let id = client
        .send_command(DeviceCommand::Send {
            conversation: "c7".into(),
            text: "ping".into(),
        })
        .unwrap();
    assert!(matches!(
        client.poll(WAIT).unwrap(),
        Some(ServiceMessage::CommandResult { id: got, status: Status::Ok, .. }) if got == id
    ));
    assert!(matches!(
        client.poll(WAIT).unwrap(),
        Some(ServiceMessage::Event { seq: 4, event: DeviceEvent::Message { text, .. } }) if text == "ping"
    ));
    // Nothing more is queued: a short poll times out cleanly.
    assert!(client.poll(Duration::from_millis(50)).unwrap().is_none());
    let seen = client.logout().unwrap();
    assert!(matches!(
        seen.last(),
        Some(ServiceMessage::SessionEnded { reason, .. }) if reason == "logout"
    ));
    // What the service saw, in order.
    let mut msgs = Vec::new();
    loop {
        match svc.next() {
            Seen::Message(m) => msgs.push(m),
            Seen::End(why) => {
                assert_eq!(why, "logout");
                break;
            }
            Seen::Handshake(_) => panic!("second handshake"),
        }
    }
    assert!(
        matches!(&msgs[0], DeviceMessage::Login { user, password, resume: None }
        if user == "alice" && password.expose() == PASSWORD)
    );
    assert_eq!(msgs[1..4], [1, 2, 3].map(|seq| DeviceMessage::Ack { seq }));
    assert_eq!(
        msgs[4],
        DeviceMessage::Status {
            coverage: Coverage::Dormant
        }
    );
    assert!(matches!(msgs[5], DeviceMessage::Command { .. }));
    assert_eq!(msgs[6], DeviceMessage::Logout);
}

#[test]
fn library_reports_refusals_and_wrong_keys() {
    let svc = TestService::start();
    let mut cfg = DeviceConfig {
        addr: svc.addr.to_string(),
        pin: PIN,
        transport_key: KEY,
        tls: None,
        timeout: WAIT,
        status_interval: None,
    };
    let mut c = DeviceClient::connect(&cfg).unwrap();
    assert!(matches!(
        c.login("busy", &Secret::new(PASSWORD), None),
        Err(DeviceError::LoginRefused(Status::ServerBusy, _))
    ));
    cfg.pin = 0x0bad_0bad;
    assert!(matches!(
        DeviceClient::connect(&cfg).err(),
        Some(DeviceError::Wire(WireError::Refused(
            Status::UnknownDevice,
            _
        )))
    ));
    cfg.pin = PIN;
    cfg.transport_key = [1; 32];
    assert!(matches!(
        DeviceClient::connect(&cfg).err(),
        Some(DeviceError::Wire(WireError::Auth))
    ));
}

#[test]
fn script_mode_handshake_login_events_acks_and_logout() {
    let svc = TestService::start();
    let dir = TempDir::new("collab-device-script");
    let (key, pw) = files(&dir);
    let mut args = device_args(&svc.addr.to_string(), &key, "alice", &pw);
    args.extend(["--status-interval".into(), "1".into()]);
    let mut dev = DeviceProcess::spawn(BIN, &args);
    assert_eq!(dev.expect("connected"), "connected pin=2a00b1c3");
    assert_eq!(
        dev.expect("login"),
        "login ok session=sess-1 sip=sip:alice@example.com text=welcome"
    );
    assert_eq!(
        dev.expect("event contact-list "),
        "event contact-list seq=1 complete=true groups=1 contacts=1 removed-groups=0 removed-contacts=0"
    );
    assert_eq!(
        dev.expect("event contact-list-group"),
        "event contact-list-group seq=1 id=1 name=Team\\sMates"
    );
    assert_eq!(
        dev.expect("event contact-list-contact"),
        "event contact-list-contact seq=1 uri=sip:bob@example.com name=Bob\\sJones group=1"
    );
    assert_eq!(dev.expect("acked"), "acked seq=1");
    assert_eq!(
        dev.expect("event presence"),
        "event presence seq=2 uri=sip:bob@example.com availability=busy note=In\\sa\\smeeting name=Bob\\sJones"
    );
    assert_eq!(
        dev.expect("event message"),
        "event message seq=3 conv=c7 from=sip:bob@example.com text=hi\\sthere\\nsecond\\sline"
    );
    assert_eq!(dev.expect("acked"), "acked seq=3");

    dev.send("status coverage=active");
    assert_eq!(dev.expect("sent status"), "sent status coverage=active");
    dev.send("send conv=c7 text=hello\\sback\\\\slash");
    assert_eq!(dev.expect("sent"), "sent id=1 cmd=send");
    assert_eq!(dev.expect("result"), "result id=1 status=ok code=0 text=");
    assert_eq!(
        dev.expect("event message"),
        "event message seq=4 conv=c7 from=sip:echo@example.com text=hello\\sback\\\\slash"
    );
    assert_eq!(dev.expect("acked"), "acked seq=4");
    dev.send("start to=sip:bob@example.com text=yo");
    assert_eq!(
        dev.expect("result"),
        "result id=2 status=ok code=0 conv=c1 text="
    );
    dev.send("rename-group group=1 name=x");
    assert_eq!(
        dev.expect("result"),
        "result id=3 status=failed code=300 text=not\\sin\\sthe\\stest\\sservice"
    );
    dev.send("this is not a command");
    assert!(dev.expect("error").starts_with("error line=5 text=field"));

    // The periodic status report (interval 1 s) reaches the service.
    let mut seen = svc.wait_for("the explicit status", |s| {
        matches!(
            s,
            Seen::Message(DeviceMessage::Status {
                coverage: Coverage::Active
            })
        )
    });
    seen.extend(svc.wait_for("a periodic status", |s| {
        matches!(
            s,
            Seen::Message(DeviceMessage::Status {
                coverage: Coverage::Active
            })
        )
    }));
    dev.send("logout");
    assert_eq!(
        dev.expect("ended"),
        "ended code=310 name=SessionEnded reason=logout"
    );
    assert_eq!(dev.expect("closed"), "closed");
    let (code, out, err) = dev.finish();
    assert_eq!(code, 0, "{err}");
    let all = out.join("\n") + &err;
    assert!(!all.contains("horse"), "password echoed: {all}");
    // The service saw the text exactly, and acknowledgements for every event.
    seen.extend(svc.wait_for("the end", |s| matches!(s, Seen::End(_))));
    let mut acks = Vec::new();
    let mut sent_text = None;
    for s in seen {
        match s {
            Seen::Message(DeviceMessage::Ack { seq }) => acks.push(seq),
            Seen::Message(DeviceMessage::Command {
                command: DeviceCommand::Send { text, .. },
                ..
            }) => sent_text = Some(text),
            Seen::End(why) => assert_eq!(why, "logout"),
            _ => {}
        }
    }
    assert_eq!(acks, [1, 2, 3, 4]);
    assert_eq!(sent_text.as_deref(), Some("hello back\\slash"));
}

#[test]
fn manual_ack_mode_acknowledges_only_on_request() {
    let svc = TestService::start();
    let dir = TempDir::new("collab-device-manual");
    let (key, pw) = files(&dir);
    let mut args = device_args(&svc.addr.to_string(), &key, "alice", &pw);
    args.push("--manual-ack".into());
    let mut dev = DeviceProcess::spawn(BIN, &args);
    dev.expect("event message seq=3");
    dev.send("ack seq=3");
    assert_eq!(dev.expect("acked"), "acked seq=3");
    dev.send("logout");
    let (code, out, _) = dev.finish();
    assert_eq!(code, 0);
    assert_eq!(out.iter().filter(|l| l.starts_with("acked")).count(), 1);
    let acks: Vec<u64> = svc
        .seen
        .iter()
        .take_while(|s| !matches!(s, Seen::End(_)))
        .filter_map(|s| match s {
            Seen::Message(DeviceMessage::Ack { seq }) => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [3]);
}

#[test]
fn exit_codes_tell_the_outcome() {
    let svc = TestService::start();
    let dir = TempDir::new("collab-device-exit");
    let (key, pw) = files(&dir);
    let addr = svc.addr.to_string();
    let run = |args: Vec<String>, input: &[&str]| {
        let mut dev = DeviceProcess::spawn(BIN, &args);
        for l in input {
            dev.send(l);
        }
        dev.finish()
    };

    // Login refused: 2.
    let (code, out, _) = run(device_args(&addr, &key, "busy", &pw), &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains(&"login refused code=301 name=ServerBusy text=Server\\sBusy".to_string()),
        "{out:?}"
    );
    let bad_pw = dir.file("badpw", b"wrong\n");
    let (code, out, _) = run(device_args(&addr, &key, "alice", &bad_pw), &[]);
    assert_eq!(code, 2);
    assert!(
        out.iter().any(|l| l.starts_with("login refused code=303")),
        "{out:?}"
    );

    // Unknown PIN: the clear refusal, 2.
    let mut args = device_args(&addr, &key, "alice", &pw);
    args[3] = "0badf00d".into();
    let (code, out, _) = run(args, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        out,
        ["refused code=312 name=UnknownDevice text=Unknown\\sdevice"]
    );

    // Wrong key: protocol error at the handshake, 4.
    let wrong = dir.file("wrongkey", hex(&[7; 32]).as_bytes());
    let (code, out, err) = run(device_args(&addr, &wrong, "alice", &pw), &[]);
    assert_eq!(code, 4, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("key confirmation"), "{err}");

    // The service ends the session: 5. (Standard input stays open until
    // the outcome is printed: its end would mean "sign out".)
    let mut dev = DeviceProcess::spawn(BIN, &device_args(&addr, &key, "alice", &pw));
    dev.send("send conv=c7 text=please\\send");
    assert_eq!(
        dev.expect("ended"),
        "ended code=310 name=SessionEnded reason=evicted\\sby\\stest"
    );
    assert_eq!(dev.finish().0, 5);

    // The service sends a frame not made with the key: 4.
    let mut dev = DeviceProcess::spawn(BIN, &device_args(&addr, &key, "alice", &pw));
    dev.send("send conv=c7 text=please\\sgarble");
    let lost = dev.expect("lost");
    assert!(lost.starts_with("lost kind=protocol"), "{lost}");
    assert_eq!(dev.finish().0, 4);

    // Nobody listening: 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, _, _) = run(device_args(&closed_addr, &key, "alice", &pw), &[]);
    assert_eq!(code, 3);

    // Key and password file problems: 66. Usage: 64.
    let short = dir.file("shortkey", b"abcd");
    assert_eq!(run(device_args(&addr, &short, "alice", &pw), &[]).0, 66);
    let missing = dir.0.join("missing");
    assert_eq!(run(device_args(&addr, &key, "alice", &missing), &[]).0, 66);
    let empty = dir.file("emptypw", b"\n");
    assert_eq!(run(device_args(&addr, &key, "alice", &empty), &[]).0, 66);
    assert_eq!(run(vec!["--connect".into()], &[]).0, 64);
    let mut bad_pin = device_args(&addr, &key, "alice", &pw);
    bad_pin[3] = "xyz".into();
    assert_eq!(run(bad_pin, &[]).0, 64);

    // End of input signs out cleanly: 0.
    let (code, out, _) = run(device_args(&addr, &key, "alice", &pw), &[]);
    assert_eq!(code, 0);
    assert_eq!(out.last().map(String::as_str), Some("closed"));
}

#[test]
fn raw_key_files_are_accepted() {
    let svc = TestService::start();
    let dir = TempDir::new("collab-device-raw");
    let key = dir.file("key.bin", &KEY);
    let pw = dir.file("pw", PASSWORD.as_bytes());
    let mut dev =
        DeviceProcess::spawn(BIN, &device_args(&svc.addr.to_string(), &key, "alice", &pw));
    dev.expect("login ok");
    dev.send("logout");
    assert_eq!(dev.finish().0, 0);
}

#[test]
fn script_mode_over_tls_with_an_extra_ca() {
    let cert = support::certs::self_signed_localhost();
    let svc = TestService::start_tls(support::certs::acceptor(&cert));
    let dir = TempDir::new("collab-device-tls");
    let (key, pw) = files(&dir);
    let ca = dir.file("ca.pem", &cert.cert_pem);
    let addr = svc.addr.to_string();
    let mut args = device_args(&addr, &key, "alice", &pw);
    args.extend(["--tls".into(), "--ca".into(), ca.display().to_string()]);
    let mut dev = DeviceProcess::spawn(BIN, &args);
    dev.expect("login ok");
    dev.send("send conv=c7 text=over\\stls");
    assert_eq!(
        dev.expect("event message seq=4"),
        "event message seq=4 conv=c7 from=sip:echo@example.com text=over\\stls"
    );
    dev.send("logout");
    assert_eq!(dev.finish().0, 0);

    // Verification stays on: without the CA the certificate is refused (3),
    // and so is a name the certificate does not carry.
    let mut no_ca = device_args(&addr, &key, "alice", &pw);
    no_ca.push("--tls".into());
    let (code, _, err) = DeviceProcess::spawn(BIN, &no_ca).finish();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("TLS"), "{err}");
    let mut wrong_name = args.clone();
    wrong_name.extend(["--tls-name".into(), "elsewhere.example".into()]);
    assert_eq!(DeviceProcess::spawn(BIN, &wrong_name).finish().0, 3);
}

#[test]
fn interactive_mode_shows_events_and_sends_lines() {
    let svc = TestService::start();
    let dir = TempDir::new("collab-device-ui");
    let (key, pw) = files(&dir);
    let mut args = device_args(&svc.addr.to_string(), &key, "alice", &pw);
    args.retain(|a| a != "--script");
    let mut dev = DeviceProcess::spawn(BIN, &args);
    dev.expect("signed in as alice");
    assert_eq!(
        dev.expect("[c7]"),
        "[c7] Bob Jones <sip:bob@example.com>: hi there"
    );
    dev.send("/contacts");
    let row = dev.expect("  Bob Jones");
    assert!(row.ends_with("busy (In a meeting)"), "{row}");
    dev.send("/to c7");
    dev.send("plain line goes to c7");
    assert_eq!(
        dev.expect("[c7] sip:echo"),
        "[c7] sip:echo@example.com: plain line goes to c7"
    );
    dev.send("/quit");
    let (code, out, _) = dev.finish();
    assert_eq!(code, 0);
    assert!(!out.join("\n").contains("horse"));
}
