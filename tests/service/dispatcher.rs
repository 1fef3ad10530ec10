//! collab-dispatcher against stand-in collabd instances (real protocol
//! peers on 127.0.0.1, see `support::dispatch`), with the instance rows,
//! heartbeats, devices and sessions in a real PostgreSQL: the paths that a
//! real collabd does not produce on demand or that are cheaper this way
//! (stale and unhealthy rows, instances that refuse, drop or stop, bad first
//! frames, 309, 312, 307, the connection cap, upstream TLS, exit codes,
//! the drain on SIGTERM).
//!
//! Spreading devices, returning to the session's instance, moving off a
//! killed instance and the no-plaintext proof run against real collabd
//! processes in `dispatcher_collabd.rs` beside it.

use crate::support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use collabd::wire::{self, Frame, FrameType, Header, Status, WireError};
use support::dispatch::{
    connect_device, contains, login, provision, read_until_closed, say, wait_until, Behaviour,
    Dispatcher, TestInstance,
};
use support::pg::migrated_database;
use support::tls::TestCa;

/// The status of the clear `Refused` frame that ends `bytes`' first frame.
fn refusal_in(bytes: &[u8]) -> (u32, Status) {
    let frame = wire::read_frame(&mut &bytes[..], wire::MAX_FRAME_LEN)
        .unwrap_or_else(|e| panic!("expected a Refused frame, got {bytes:?}: {e}"));
    assert_eq!(frame.header.frame_type, FrameType::Refused);
    (frame.header.pin, frame.refusal().unwrap().0)
}

fn expect_refused(result: Result<support::dispatch::DeviceLink, WireError>, want: Status) {
    match result {
        Err(WireError::Refused(status, _)) => assert_eq!(status, want),
        Err(e) => panic!("expected Refused {want:?}, got {e}"),
        Ok(_) => panic!("expected Refused {want:?}, got a channel"),
    }
}

#[test]
fn stale_and_unhealthy_instances_are_skipped() {
    let (url, _db) = migrated_database();
    // Both listen and would be preferred (empty), but one heartbeat is an
    // hour old and the other instance reports itself unhealthy.
    let stale = TestInstance::start(&url, "stale", Behaviour::Serve, 0, 100);
    stale.age_heartbeat();
    let sick = TestInstance::start(&url, "sick", Behaviour::Serve, 0, 100);
    sick.heartbeat(0, 100, false);
    let busy = TestInstance::start(&url, "busy", Behaviour::Serve, 90, 100);
    let dispatcher = Dispatcher::start(&url, &[]);
    for (pin, key, user) in provision(&url, 0x3000, 3) {
        let mut link = connect_device(dispatcher.addr, pin, &key).unwrap();
        assert_eq!(login(&mut link, &url, &user, "secret").unwrap(), busy.name);
    }
    assert!(stale.seen.lock().unwrap().is_empty());
    assert!(sick.seen.lock().unwrap().is_empty());
}

#[test]
fn refusing_dropping_and_stopping_instances_make_it_try_the_next() {
    let (url, _db) = migrated_database();
    // Three broken instances, all looking emptier than the working one.
    let mut refusing = TestInstance::start(&url, "refusing", Behaviour::Serve, 0, 100);
    refusing.kill(); // the port is closed, the row still says "alive"
    refusing.heartbeat(0, 100, true);
    let _dropping = TestInstance::start(&url, "dropping", Behaviour::DropAtOnce, 1, 100);
    let _stopping = TestInstance::start(&url, "stopping", Behaviour::Stopping, 2, 100);
    let working = TestInstance::start(&url, "working", Behaviour::Serve, 50, 100);
    let dispatcher = Dispatcher::start(&url, &[]);
    for (pin, key, user) in provision(&url, 0x4000, 3) {
        let mut link = connect_device(dispatcher.addr, pin, &key).unwrap();
        assert_eq!(
            login(&mut link, &url, &user, "secret").unwrap(),
            working.name
        );
    }
    let log = dispatcher.log();
    assert!(log.contains("instance refusing"), "{log}");
    assert!(log.contains("instance dropping"), "{log}");
    assert!(log.contains("instance stopping"), "{log}");
}

#[test]
fn no_live_instance_gives_309_and_an_unknown_pin_312() {
    let (url, _db) = migrated_database();
    let dead = TestInstance::start(&url, "dead", Behaviour::Serve, 0, 100);
    dead.age_heartbeat();
    let dispatcher = Dispatcher::start(&url, &[]);
    let devices = provision(&url, 0x6000, 1);
    let (pin, key, _) = &devices[0];
    expect_refused(
        connect_device(dispatcher.addr, *pin, key),
        Status::NoInstance,
    );
    expect_refused(
        connect_device(dispatcher.addr, 0x0bad_0bad, &[9; 32]),
        Status::UnknownDevice,
    );
    assert!(dead.seen.lock().unwrap().is_empty());
}

#[test]
fn garbage_is_refused_and_silence_dropped_at_the_header_timeout() {
    let (url, _db) = migrated_database();
    let instance = TestInstance::start(&url, "alpha", Behaviour::Serve, 0, 100);
    let dispatcher = Dispatcher::start(&url, &["--header-timeout-ms", "300"]);

    // An HTTP request is not a frame: its "length" is far over the limit.
    let mut http = TcpStream::connect(dispatcher.addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Refused before a whole header was read: PIN 0.
    assert_eq!(
        refusal_in(&read_until_closed(&mut http)),
        (0, Status::ProtocolError)
    );

    // A well-sized frame with a bad version: its header was read, and the
    // refusal echoes its PIN.
    let mut bad = Frame::new(Header::new(FrameType::Hello, 0x7000, 0), vec![0; 32]).to_bytes();
    bad[4] = 9;
    let mut conn = TcpStream::connect(dispatcher.addr).unwrap();
    conn.write_all(&bad).unwrap();
    assert_eq!(
        refusal_in(&read_until_closed(&mut conn)),
        (0x7000, Status::ProtocolError)
    );

    // A valid frame that is not a Hello.
    let data = Frame::new(Header::new(FrameType::Data, 0x7000, 1), vec![0; 40]).to_bytes();
    let mut conn = TcpStream::connect(dispatcher.addr).unwrap();
    conn.write_all(&data).unwrap();
    assert_eq!(
        refusal_in(&read_until_closed(&mut conn)),
        (0x7000, Status::ProtocolError)
    );

    // Nothing at all, and half a header: closed without a word.
    let mut silent = TcpStream::connect(dispatcher.addr).unwrap();
    assert!(read_until_closed(&mut silent).is_empty());
    let mut partial = TcpStream::connect(dispatcher.addr).unwrap();
    partial.write_all(&[0, 0, 0, 48, 1, 1]).unwrap();
    assert!(read_until_closed(&mut partial).is_empty());

    // None of it reached the instance, and the dispatcher still serves.
    let (pin, key, user) = &provision(&url, 0x7000, 1)[0];
    let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
    assert_eq!(login(&mut link, &url, user, "secret").unwrap(), "alpha");
    assert_eq!(instance.seen.lock().unwrap().len(), 1);
}

#[test]
fn upstream_tls_verifies_the_instance_certificate() {
    let (url, _db) = migrated_database();
    let ca = TestCa::new();
    let acceptor = native_tls::TlsAcceptor::new(
        native_tls::Identity::from_pkcs8(
            &std::fs::read(&ca.cert_path).unwrap(),
            &std::fs::read(&ca.key_path).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let ca_file = ca.ca_path.clone();
    let secure = TestInstance::start_with(&url, "secure", Behaviour::Serve, 0, 100, Some(acceptor));
    let (pin, key, user) = &provision(&url, 0x9000, 1)[0];

    let trusting = Dispatcher::start(
        &url,
        &["--upstream-tls", "--upstream-ca", ca_file.to_str().unwrap()],
    );
    let mut link = connect_device(trusting.addr, *pin, key).unwrap();
    assert_eq!(
        login(&mut link, &url, user, "tls-secret-password").unwrap(),
        "secure"
    );
    say(&mut link, "over TLS to collabd").unwrap();
    assert!(!contains(&trusting.recorded(), b"tls-secret-password"));

    // Without the CA the certificate does not verify: no instance accepted.
    let untrusting = Dispatcher::start(&url, &["--upstream-tls"]);
    expect_refused(
        connect_device(untrusting.addr, *pin, key),
        Status::NoInstance,
    );
    assert!(untrusting.log().contains("TLS"), "{}", untrusting.log());
    assert_eq!(secure.payloads_from(*pin).len(), 2);
}

#[test]
fn over_the_connection_cap_a_device_is_told_server_busy() {
    let (url, _db) = migrated_database();
    let _a = TestInstance::start(&url, "alpha", Behaviour::Serve, 0, 100);
    let dispatcher = Dispatcher::start(&url, &["--max-connections", "2"]);
    let devices = provision(&url, 0xa000, 2);
    let mut held = Vec::new();
    for (pin, key, user) in &devices {
        let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
        login(&mut link, &url, user, "secret").unwrap();
        held.push(link);
    }
    let mut third = TcpStream::connect(dispatcher.addr).unwrap();
    assert_eq!(
        refusal_in(&read_until_closed(&mut third)),
        (0, Status::ServerBusy)
    );
    // A permit comes back when a relay ends.
    drop(held.pop());
    let (pin, key, user) = &devices[1];
    wait_until("a free connection slot", || {
        match connect_device(dispatcher.addr, *pin, key) {
            Ok(mut link) => login(&mut link, &url, user, "secret").is_ok(),
            Err(WireError::Refused(Status::ServerBusy, _)) => false,
            Err(e) => panic!("over the cap a device must be told 301, not {e}"),
        }
    });
}

#[test]
fn sigterm_exits_zero_and_bad_settings_have_their_exit_codes() {
    let (url, _db) = migrated_database();
    let dispatcher = Dispatcher::start(&url, &[]);
    let status = dispatcher.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
        .args(["--max-connections", "lots"])
        .env("COLLABD_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
        .args(["--listen", "127.0.0.1:0", "--database", "not a url"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream-tls",
            "--upstream-ca",
            "/nonexistent/ca.pem",
        ])
        .env("COLLABD_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
        .args(["--listen", &busy.local_addr().unwrap().to_string()])
        .env("COLLABD_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(71));
}

#[test]
fn sigterm_drains_open_relays_then_exits() {
    let (url, _db) = migrated_database();
    let _a = TestInstance::start(&url, "alpha", Behaviour::Serve, 0, 100);
    let devices = provision(&url, 0xc000, 2);

    // A grace far longer than the test: the dispatcher can only exit early
    // because its last relay ended.
    let mut dispatcher = Dispatcher::start(&url, &["--drain-grace-ms", "3600000"]);
    let (pin, key, user) = &devices[0];
    let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
    login(&mut link, &url, user, "secret").unwrap();
    dispatcher.signal(libc::SIGTERM);
    wait_until("the dispatcher to stop accepting", || {
        TcpStream::connect(dispatcher.addr).is_err()
    });
    // (The probes that found the listener still open may count too.)
    wait_until("the drain to start", || {
        dispatcher
            .log()
            .contains("connections for up to 3600000 ms")
    });
    // The open relay goes on while the dispatcher drains.
    say(&mut link, "still relayed while draining").unwrap();
    assert!(dispatcher.exited().is_none(), "{}", dispatcher.log());
    drop(link);
    wait_until("the dispatcher to exit once its relay ended", || {
        dispatcher.exited().is_some()
    });
    assert_eq!(dispatcher.exited().unwrap().code(), Some(0));
    let log = dispatcher.log();
    assert!(log.contains("every connection ended"), "{log}");

    // A relay that outlives the grace is cut, and the exit is still clean.
    let mut dispatcher = Dispatcher::start(&url, &["--drain-grace-ms", "300"]);
    let (pin, key, user) = &devices[1];
    let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
    login(&mut link, &url, user, "secret").unwrap();
    dispatcher.signal(libc::SIGTERM);
    wait_until("the dispatcher to exit after the grace", || {
        dispatcher.exited().is_some()
    });
    assert_eq!(dispatcher.exited().unwrap().code(), Some(0));
    assert!(say(&mut link, "after the cut").is_err());
    let log = dispatcher.log();
    assert!(log.contains("1 connections cut"), "{log}");

    // A second SIGTERM during the drain does not wait for the grace.
    let mut dispatcher = Dispatcher::start(&url, &["--drain-grace-ms", "3600000"]);
    let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
    login(&mut link, &url, user, "secret").unwrap();
    dispatcher.signal(libc::SIGTERM);
    wait_until("the drain to start", || {
        dispatcher
            .log()
            .contains("connections for up to 3600000 ms")
    });
    dispatcher.signal(libc::SIGTERM);
    wait_until("the dispatcher to exit at the second SIGTERM", || {
        dispatcher.exited().is_some()
    });
    assert_eq!(dispatcher.exited().unwrap().code(), Some(0));
    assert!(say(&mut link, "after the cut").is_err());
}

#[test]
fn log_lines_carry_journald_priorities_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = support::tmp::TempDir::new("dispatcher-journal");
    let path = dir.join("stderr");
    let stderr = std::fs::File::create(&path).unwrap();
    let meta = stderr.metadata().unwrap();
    // The Config DB is unreachable: a warning, beside the info lines.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_collab-dispatcher"))
        .args(["--listen", "127.0.0.1:0", "--refresh-ms", "100"])
        .env(
            "COLLABD_DATABASE_URL",
            "postgresql://nobody@127.0.0.1:1/none",
        )
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_until("a warning and the listening line", || {
        let log = std::fs::read_to_string(&path).unwrap();
        log.contains("<4>collabd::dispatcher: instance table:") && log.contains("<6>")
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.lines()
            .all(|l| l.starts_with("<4>") || l.starts_with("<6>") || l.starts_with("<3>")),
        "{log}"
    );
    assert!(
        log.contains("<6>collabd::ops::signals: received SIGTERM"),
        "{log}"
    );
}

#[test]
fn a_config_db_outage_gives_307_and_the_dispatcher_recovers() {
    let (url, _db) = migrated_database();
    let _a = TestInstance::start(&url, "alpha", Behaviour::Serve, 0, 100);
    let dispatcher = Dispatcher::start(&url, &[]);
    let (pin, key, user) = &provision(&url, 0xb000, 1)[0];
    let mut link = connect_device(dispatcher.addr, *pin, key).unwrap();
    login(&mut link, &url, user, "secret").unwrap();

    // The database goes away for the dispatcher: new connections refused,
    // existing ones cut.
    let mut outage = support::pg::Outage::start(&url);
    expect_refused(
        connect_device(dispatcher.addr, *pin, key),
        Status::ConfigUnavailable,
    );
    // The relay that was already open does not depend on the database.
    support::dispatch::say(&mut link, "still here").unwrap();

    outage.end();
    wait_until(
        "the dispatcher to reach the database again",
        || match connect_device(dispatcher.addr, *pin, key) {
            Ok(mut link) => login(&mut link, &url, user, "secret").is_ok(),
            Err(WireError::Refused(Status::ConfigUnavailable, _)) => false,
            Err(e) => panic!("{e}"),
        },
    );
}

#[test]
fn the_sessions_of_an_instance_gone_silent_are_ended_by_the_dispatcher() {
    let (url, mut db) = migrated_database();
    let gone = TestInstance::start(&url, "gone", Behaviour::Serve, 1, 100);
    let _live = TestInstance::start(&url, "live", Behaviour::Serve, 0, 100);
    let row = db
        .session_started("gone", "CORP\\alice", 0x3100_0001)
        .unwrap();
    let kept = db
        .session_started("live", "CORP\\bob", 0x3100_0002)
        .unwrap();
    gone.age_heartbeat();
    let _dispatcher = Dispatcher::start(
        &url,
        &["--instance-lost-after-ms", "1000", "--refresh-ms", "100"],
    );
    wait_until("the lost instance's session to be ended", || {
        db.session(row).unwrap().state == collabd::configdb::SessionState::Ended
    });
    let ended = db.session(row).unwrap();
    assert_eq!(ended.end_reason.as_deref(), Some("instance lost"));
    assert_eq!(
        db.session(kept).unwrap().state,
        collabd::configdb::SessionState::Active
    );
    let audited: Vec<_> = db
        .list_audit(100)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.event == "session_ended")
        .collect();
    assert_eq!(audited.len(), 1, "{audited:?}");
    let reason = audited[0].event.reason.clone().unwrap_or_default();
    assert!(reason.contains("collab-dispatcher"), "{reason}");
}
