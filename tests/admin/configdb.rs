//! The Config DB library against a real PostgreSQL: migrations (apply,
//! re-apply, failure, concurrency), the schema's constraints, every typed
//! read and write, and how failures are classified.

use crate::support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use collabd::configdb::{
    AuditEvent, AuthMode, ConfigDb, Coverage, DbError, InstanceChange, InstanceSettings, Migration,
    SessionState, MIGRATIONS,
};
use collabd::ops::scratch_pg::ScratchPostgres;
use support::pg::{dump_tables, fresh_database, migrated_database};

fn settings(url: &str) -> InstanceSettings {
    InstanceSettings {
        cwa_url: url.to_string(),
        ..InstanceSettings::default()
    }
}

#[test]
fn migrations_apply_then_reapply_as_a_no_op() {
    let url = fresh_database();
    let mut db = ConfigDb::connect(&url).unwrap();
    assert!(!db.schema_is_current().unwrap());
    let applied = db.migrate().unwrap();
    assert_eq!(applied.len(), MIGRATIONS.len());
    assert_eq!(applied[0].version, 1);
    assert_eq!(applied[0].name, "initial");
    assert!(db.schema_is_current().unwrap());
    let before = dump_tables(&url);
    for table in ["instance", "app_user", "device", "session", "audit_event"] {
        assert!(
            before.contains(&format!("== {table}\n")),
            "{table} missing:\n{before}"
        );
    }

    let again = db.migrate().unwrap();
    assert!(again.is_empty(), "second migrate applied {again:?}");
    assert_eq!(dump_tables(&url), before);
    let recorded = db.applied_migrations().unwrap();
    assert_eq!(recorded.len(), MIGRATIONS.len());
    assert!(recorded[0].2 > 0);
}

#[test]
fn a_failing_migration_leaves_the_schema_as_it_was() {
    let (url, mut db) = migrated_database();
    db.add_user("CORP\\alice", "sip:alice@corp.example.com", true)
        .unwrap();
    let before = dump_tables(&url);
    // The next version after the real ones.
    let next = MIGRATIONS.len() as i32 + 1;
    let mut broken = MIGRATIONS.to_vec();
    broken.push(Migration {
        version: next,
        name: "broken",
        sql: "CREATE TABLE extra (x int); \
              ALTER TABLE app_user ADD COLUMN nickname text; \
              INSERT INTO extra VALUES (1 / 0);",
    });
    let err = db.migrate_with(&broken).unwrap_err();
    assert!(matches!(err, DbError::Query(_)), "{err:?}");
    assert!(
        err.to_string().contains(&format!("{next:04}_broken")),
        "{err}"
    );
    assert_eq!(dump_tables(&url), before);
    let has_nickname: bool = db
        .client()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_name = 'app_user' AND column_name = 'nickname')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!has_nickname);
    // The connection is still usable and the lock was released: a good
    // migration 2 now applies.
    let mut good = MIGRATIONS.to_vec();
    good.push(Migration {
        version: next,
        name: "good",
        sql: "CREATE TABLE extra (x int);",
    });
    let applied = db.migrate_with(&good).unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].version, next);
}

#[test]
fn concurrent_migrators_apply_each_migration_once() {
    let url = fresh_database();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut db = ConfigDb::connect(&url).unwrap();
                db.migrate().unwrap().len()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, MIGRATIONS.len());
    let mut db = ConfigDb::connect(&url).unwrap();
    assert!(db.schema_is_current().unwrap());
}

#[test]
fn the_schema_refuses_bad_rows_written_directly() {
    let (_url, mut db) = migrated_database();
    db.add_user("CORP\\alice", "sip:alice@corp.example.com", true)
        .unwrap();
    let c = db.client();
    let bad: &[&str] = &[
        "INSERT INTO device (pin, login, transport_key) VALUES (1, 'CORP\\alice', '\\x00'::bytea)",
        "INSERT INTO device (pin, login, transport_key) VALUES (-1, 'CORP\\alice', decode(repeat('00', 32), 'hex'))",
        "INSERT INTO device (pin, login, transport_key) VALUES (4294967296, 'CORP\\alice', decode(repeat('00', 32), 'hex'))",
        "INSERT INTO device (pin, login, transport_key) VALUES (2, 'CORP\\nobody', decode(repeat('00', 32), 'hex'))",
        "INSERT INTO instance (name, cwa_url, max_sessions) VALUES ('a', 'https://cwa', 0)",
        "INSERT INTO instance (name, cwa_url, idle_timeout_ms) VALUES ('a', 'https://cwa', 0)",
        "INSERT INTO instance (name, cwa_url, inactivity_timeout_ms) VALUES ('a', 'https://cwa', -5)",
        "INSERT INTO instance (name, cwa_url, http_max_connections) VALUES ('a', 'https://cwa', 0)",
        "INSERT INTO instance (name, cwa_url, auth_mode) VALUES ('a', 'https://cwa', 'kerberos')",
        "INSERT INTO instance (name, cwa_url) VALUES ('a', 'ftp://cwa')",
        "INSERT INTO instance (name, cwa_url) VALUES ('a b', 'https://cwa')",
        "INSERT INTO app_user (login, sip_uri) VALUES ('bob', 'sip:bob@corp')",
        "INSERT INTO app_user (login, sip_uri) VALUES ('CORP\\bob', 'bob@corp')",
        "INSERT INTO app_user (login, sip_uri) VALUES ('corp\\ALICE', 'sip:other@corp')",
        "INSERT INTO audit_event (event) VALUES ('Not A Word')",
        "INSERT INTO session (instance, login, pin) VALUES ('missing', 'x', 1)",
    ];
    for sql in bad {
        assert!(c.execute(*sql, &[]).is_err(), "accepted: {sql}");
    }
    // And the good form of the first rows is accepted, so the failures
    // above are the constraints, not syntax.
    c.execute(
        "INSERT INTO device (pin, login, transport_key) VALUES (4294967295, 'CORP\\alice', decode(repeat('00', 32), 'hex'))",
        &[],
    )
    .unwrap();
    c.execute(
        "INSERT INTO instance (name, cwa_url, max_sessions) VALUES ('a', 'https://cwa', 1)",
        &[],
    )
    .unwrap();
}

#[test]
fn instances_are_added_changed_and_listed() {
    let (_url, mut db) = migrated_database();
    let mut s = settings("https://cwa.corp.example.com");
    s.max_sessions = Some(100);
    s.idle_timeout_ms = Some(600_000);
    s.auth_mode = AuthMode::Forms;
    db.add_instance("bcs1", &s).unwrap();
    db.add_instance("bcs0", &settings("http://127.0.0.1:8080"))
        .unwrap();

    let one = db.instance("bcs1").unwrap();
    assert_eq!(one.cwa_url, "https://cwa.corp.example.com");
    assert_eq!(one.auth_mode, AuthMode::Forms);
    assert_eq!(one.max_sessions, Some(100));
    assert_eq!(one.idle_timeout_ms, Some(600_000));
    assert_eq!(one.inactivity_timeout_ms, None);
    assert_eq!(one.http_max_connections, 1000);
    assert!(!one.password_caching);
    assert_eq!(one.listen_addr, None);
    assert!(!one.healthy);

    let changed = db
        .set_instance(
            "bcs1",
            &InstanceChange {
                max_sessions: Some(None),
                inactivity_timeout_ms: Some(Some(3_600_000)),
                password_caching: Some(true),
                http_max_connections: Some(50),
                ..InstanceChange::default()
            },
        )
        .unwrap();
    assert_eq!(changed.max_sessions, None);
    assert_eq!(changed.idle_timeout_ms, Some(600_000));
    assert_eq!(changed.inactivity_timeout_ms, Some(3_600_000));
    assert_eq!(changed.http_max_connections, 50);
    assert!(changed.password_caching);
    assert_eq!(db.instance("bcs1").unwrap(), changed);

    let names: Vec<String> = db
        .list_instances()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["bcs0", "bcs1"]);

    assert!(matches!(
        db.add_instance("bcs1", &settings("https://other")),
        Err(DbError::Duplicate { .. })
    ));
    assert!(matches!(db.instance("nope"), Err(DbError::NotFound { .. })));
    assert!(matches!(
        db.set_instance("nope", &InstanceChange::default()),
        Err(DbError::NotFound { .. })
    ));
    let mut zero = settings("https://cwa");
    zero.max_sessions = Some(0);
    assert!(matches!(
        db.add_instance("z", &zero),
        Err(DbError::BadData { .. })
    ));
    assert!(matches!(
        db.add_instance("z", &settings("ftp://cwa")),
        Err(DbError::BadData { .. })
    ));
    assert!(matches!(
        db.set_instance(
            "bcs1",
            &InstanceChange {
                idle_timeout_ms: Some(Some(0)),
                ..InstanceChange::default()
            }
        ),
        Err(DbError::BadData { .. })
    ));
    assert_eq!(db.instance("bcs1").unwrap(), changed);
}

#[test]
fn users_and_devices() {
    let (_url, mut db) = migrated_database();
    db.add_user("CORP\\alice", "sip:alice@corp.example.com", true)
        .unwrap();
    db.add_user("bob@corp.example.com", "SIP:bob@corp.example.com", false)
        .unwrap();
    assert!(matches!(
        db.add_user("corp\\ALICE", "sip:alice2@corp.example.com", true),
        Err(DbError::Duplicate { .. })
    ));
    assert!(matches!(
        db.add_user("CORP\\carol", "sip:ALICE@corp.example.com", true),
        Err(DbError::Duplicate { .. })
    ));
    assert!(matches!(
        db.add_user("carol", "sip:carol@corp.example.com", true),
        Err(DbError::BadData { .. })
    ));

    let bob = db.user("BOB@corp.example.com").unwrap();
    assert_eq!(bob.sip_uri, "sip:bob@corp.example.com");
    assert!(!bob.im_enabled);
    db.set_im_enabled("bob@corp.example.com", true).unwrap();
    assert!(db.user("bob@corp.example.com").unwrap().im_enabled);
    db.set_im_enabled("corp\\alice", false).unwrap();
    assert!(!db.user("CORP\\alice").unwrap().im_enabled);
    assert!(matches!(
        db.set_im_enabled("CORP\\nobody", true),
        Err(DbError::NotFound { .. })
    ));

    let key = db.add_device(0x2100_000a, "corp\\alice").unwrap();
    let key2 = db.add_device(0x2100_000b, "bob@corp.example.com").unwrap();
    assert_ne!(key, key2);
    assert_ne!(key, [0u8; 32]);
    let device = db.device(0x2100_000a).unwrap();
    assert_eq!(device.transport_key, key);
    assert_eq!(device.login, "CORP\\alice");
    assert_eq!(device.sip_uri, "sip:alice@corp.example.com");
    assert!(!device.im_enabled);
    let debug = format!("{device:?}");
    assert!(debug.contains("2100000a") && debug.contains("redacted"));
    let key_hex = collabd::hex::encode(&key);
    assert!(!debug.contains(&key_hex[..16]));

    assert!(matches!(
        db.add_device(0x2100_000a, "bob@corp.example.com"),
        Err(DbError::Duplicate { .. })
    ));
    assert!(matches!(
        db.add_device(0x2100_000c, "CORP\\nobody"),
        Err(DbError::NotFound { .. })
    ));
    let fixed = [7u8; 32];
    db.add_device_with_key(0xffff_ffff, "CORP\\alice", &fixed)
        .unwrap();
    assert_eq!(db.device(0xffff_ffff).unwrap().transport_key, fixed);

    let pins: Vec<u32> = db.list_devices().unwrap().iter().map(|d| d.pin).collect();
    assert_eq!(pins, [0x2100_000a, 0x2100_000b, 0xffff_ffff]);
    let users = db.list_users().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[1].login, "CORP\\alice");
    assert_eq!(users[1].devices, 2);

    db.remove_device(0x2100_000a).unwrap();
    assert!(matches!(
        db.device(0x2100_000a),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        db.remove_device(0x2100_000a),
        Err(DbError::NotFound { .. })
    ));
}

#[test]
fn the_session_registry_follows_sessions() {
    let (_url, mut db) = migrated_database();
    db.add_instance("a", &settings("https://cwa")).unwrap();
    db.add_instance("b", &settings("https://cwa")).unwrap();
    let s1 = db.session_started("a", "CORP\\alice", 0x2100_000a).unwrap();
    let s2 = db.session_started("b", "CORP\\bob", 0x2100_000b).unwrap();
    let s3 = db.session_started("a", "CORP\\carol", 0x2100_000c).unwrap();
    assert!(matches!(
        db.session_started("missing", "CORP\\x", 1),
        Err(DbError::NotFound { .. })
    ));

    assert_eq!(
        db.instance_holding_session(0x2100_000b).unwrap().as_deref(),
        Some("b")
    );
    assert_eq!(db.instance_holding_session(0x1234_5678).unwrap(), None);

    db.session_updated(s1, Coverage::Out).unwrap();
    let rec = db.session(s1).unwrap();
    assert_eq!(rec.coverage, Coverage::Out);
    assert_eq!(rec.state, SessionState::Active);
    assert!(rec.last_status_at_ms >= rec.started_at_ms);

    let on_a: Vec<i64> = db
        .list_sessions(Some("a"))
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(on_a, [s1, s3]);
    assert_eq!(db.list_sessions(None).unwrap().len(), 3);
    assert!(matches!(
        db.list_sessions(Some("zzz")),
        Err(DbError::NotFound { .. })
    ));

    assert!(db.session_ended(s2, "logout").unwrap());
    assert!(!db.session_ended(s2, "logout again").unwrap());
    let ended = db.session(s2).unwrap();
    assert_eq!(ended.state, SessionState::Ended);
    assert_eq!(ended.end_reason.as_deref(), Some("logout"));
    assert!(ended.ended_at_ms.is_some());
    assert_eq!(db.instance_holding_session(0x2100_000b).unwrap(), None);
    assert!(matches!(
        db.session_updated(s2, Coverage::In),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        db.session_ended(999_999, "x"),
        Err(DbError::NotFound { .. })
    ));

    assert_eq!(db.end_all_sessions("a", "service restarted").unwrap(), 2);
    assert!(db.list_sessions(None).unwrap().is_empty());
    assert_eq!(
        db.session(s3).unwrap().end_reason.as_deref(),
        Some("service restarted")
    );
}

#[test]
fn heartbeats_drive_the_live_instance_list() {
    let (_url, mut db) = migrated_database();
    for name in ["a", "b", "c", "d"] {
        db.add_instance(name, &settings("https://cwa")).unwrap();
    }
    db.write_heartbeat("a", "127.0.0.1:3201", 10, Some(100), true)
        .unwrap();
    db.write_heartbeat("b", "127.0.0.1:3202", 1, Some(100), true)
        .unwrap();
    db.write_heartbeat("c", "127.0.0.1:3203", 0, None, false)
        .unwrap();
    db.write_heartbeat("d", "127.0.0.1:3204", 0, None, true)
        .unwrap();
    assert!(matches!(
        db.write_heartbeat("zz", "127.0.0.1:1", 0, None, true),
        Err(DbError::NotFound { .. })
    ));
    // d's heartbeat is old: stale.
    db.client()
        .execute(
            "UPDATE instance SET heartbeat_at = now() - interval '1 hour' WHERE name = 'd'",
            &[],
        )
        .unwrap();

    let live = db.live_instances(60_000).unwrap();
    let names: Vec<&str> = live.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["b", "a"],
        "least loaded first, no unhealthy or stale"
    );
    assert_eq!(live[0].listen_addr, "127.0.0.1:3202");
    assert_eq!(live[0].sessions_in_use, 1);
    assert_eq!(live[0].session_limit, Some(100));
    assert!(live[0].heartbeat_age_ms >= 0);
    let a = db.instance("a").unwrap();
    assert_eq!(a.listen_addr.as_deref(), Some("127.0.0.1:3201"));
    assert!(a.heartbeat_at_ms.is_some());
    assert!(a.healthy);
}

#[test]
fn admin_changes_are_audited_without_secrets() {
    let (_url, mut db) = migrated_database();
    db.add_instance("a", &settings("https://cwa")).unwrap();
    db.add_user("CORP\\alice", "sip:alice@corp", true).unwrap();
    let key = db.add_device(0x2100_000a, "CORP\\alice").unwrap();
    db.set_im_enabled("CORP\\alice", false).unwrap();
    db.remove_device(0x2100_000a).unwrap();
    let mut login = AuditEvent::new("login_refused");
    login.instance = Some("a".into());
    login.login = Some("CORP\\alice".into());
    login.pin = Some(0x2100_000a);
    login.reason = Some("302 not permitted".into());
    db.audit(&login).unwrap();
    assert!(matches!(
        db.audit(&AuditEvent::new("Bad Event")),
        Err(DbError::BadData { .. })
    ));

    let events: Vec<String> = db
        .list_audit(100)
        .unwrap()
        .into_iter()
        .map(|r| r.event.event)
        .collect();
    assert_eq!(
        events,
        [
            "login_refused",
            "device_removed",
            "user_revoked",
            "device_added",
            "user_added",
            "instance_added",
            "schema_migrated",
            "schema_migrated",
            "schema_migrated"
        ]
    );
    let latest = db.list_audit(1).unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].event, login);
    let key_hex = collabd::hex::encode(&key);
    let all: String = db
        .list_audit(100)
        .unwrap()
        .iter()
        .map(|r| format!("{:?}", r.event))
        .collect();
    assert!(!all.contains(&key_hex));
}

#[test]
fn unreachable_databases_are_reported_as_such() {
    let empty_dir = std::env::temp_dir().join(format!("collabd-nosock-{}", std::process::id()));
    std::fs::create_dir_all(&empty_dir).unwrap();
    let no_server = format!("host={} user=postgres dbname=x", empty_dir.display());
    for url in [no_server.as_str(), "postgresql://postgres@127.0.0.1:1/x"] {
        match ConfigDb::connect(url) {
            Err(DbError::Unreachable(_)) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir(&empty_dir);
    assert!(matches!(
        ConfigDb::connect("postgresql://[oops"),
        Err(DbError::BadData { .. })
    ));
}

#[test]
fn a_server_that_goes_away_is_unreachable_and_the_cluster_cleans_up() {
    let pg = ScratchPostgres::start(&std::env::temp_dir()).unwrap();
    let dir = pg.dir().to_path_buf();
    let url = pg.create_database("gone").unwrap();
    let mut db = ConfigDb::connect(&url).unwrap();
    db.migrate().unwrap();
    pg.stop_server().unwrap();
    let err = db.list_users().unwrap_err();
    assert!(matches!(err, DbError::Unreachable(_)), "{err:?}");
    // The driver's error is kept beneath the text.
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    assert!(matches!(
        ConfigDb::connect(&url),
        Err(DbError::Unreachable(_))
    ));
    pg.start_server().unwrap();
    let mut db = ConfigDb::connect(&url).unwrap();
    // The scratch server runs with synchronous_commit off, so an immediate
    // stop may lose the last commits: migrate again before use.
    db.migrate().unwrap();
    assert!(db.list_users().unwrap().is_empty());
    drop(db);
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Not a test by itself: the child half of the next test. It starts a
/// cluster, writes its directory to the file named by
/// `COLLABD_SCRATCH_CHILD`, and waits to be killed.
#[test]
#[ignore = "child half of a_killed_process_leaves_no_cluster_behind"]
fn scratch_child_helper() {
    let Some(report) = std::env::var_os("COLLABD_SCRATCH_CHILD") else {
        return;
    };
    let pg = ScratchPostgres::start(&std::env::temp_dir()).unwrap();
    let tmp = std::path::PathBuf::from(format!("{}.tmp", report.to_string_lossy()));
    std::fs::write(&tmp, pg.dir().as_os_str().as_encoded_bytes()).unwrap();
    std::fs::rename(&tmp, &report).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_process_leaves_no_cluster_behind() {
    let report = std::env::temp_dir().join(format!("collabd-scratch-child-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    // The helper's name as the harness knows it: its module path in this
    // test binary, then the function.
    let helper = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::scratch_child_helper"),
        None => "scratch_child_helper".to_string(),
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", &helper, "--test-threads=1"])
        .env("COLLABD_SCRATCH_CHILD", &report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !report.exists() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the child did not report a started cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = std::path::PathBuf::from(std::fs::read_to_string(&report).unwrap());
    std::fs::remove_file(&report).unwrap();
    assert!(dir.join("data").join("postmaster.pid").exists());
    child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still there after the process died",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sessions_of_a_lost_instance_are_ended_once_and_a_live_instance_reclaims_its_own() {
    let (url, mut db) = migrated_database();
    for name in ["live", "dead", "quiet"] {
        db.add_instance(name, &settings("https://cwa")).unwrap();
        db.write_heartbeat(name, "127.0.0.1:1", 0, Some(10), true)
            .unwrap();
    }
    let on_dead: Vec<i64> = (0..20)
        .map(|i| {
            db.session_started("dead", "CORP\\alice", 0x2100_0000 + i)
                .unwrap()
        })
        .collect();
    let on_quiet = db
        .session_started("quiet", "CORP\\bob", 0x2200_0000)
        .unwrap();
    let on_live = db
        .session_started("live", "CORP\\carol", 0x2300_0000)
        .unwrap();
    db.client()
        .execute(
            "UPDATE instance SET heartbeat_at = now() - interval '1 minute' \
             WHERE name IN ('dead', 'quiet')",
            &[],
        )
        .unwrap();

    // Two noticers at once (an instance and a dispatcher): every row is
    // ended, and audited, exactly once.
    let noticers: Vec<_> = ["live", "dispatcher"]
        .into_iter()
        .map(|by| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut db = ConfigDb::connect(&url).unwrap();
                db.end_sessions_of_lost_instances(30_000, by).unwrap()
            })
        })
        .collect();
    let mut ended = std::collections::BTreeMap::new();
    for n in noticers {
        for (instance, count) in n.join().unwrap() {
            *ended.entry(instance).or_insert(0) += count;
        }
    }
    assert_eq!(
        ended.into_iter().collect::<Vec<_>>(),
        [("dead".to_string(), 20), ("quiet".to_string(), 1)]
    );
    for id in on_dead.iter().chain([&on_quiet]) {
        let s = db.session(*id).unwrap();
        assert_eq!(s.state, SessionState::Ended);
        assert_eq!(
            s.end_reason.as_deref(),
            Some(collabd::configdb::INSTANCE_LOST)
        );
    }
    assert_eq!(db.session(on_live).unwrap().state, SessionState::Active);
    let audited = db
        .list_audit(1000)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.event == "session_ended")
        .count();
    assert_eq!(audited, 21);
    assert!(db
        .end_sessions_of_lost_instances(30_000, "live")
        .unwrap()
        .is_empty());

    // "quiet" was alive after all (its database link was down): it puts
    // back the rows of the sessions it still holds, and only those.
    assert_eq!(
        db.reclaim_sessions("quiet", &[on_quiet, on_live]).unwrap(),
        1
    );
    assert_eq!(db.session(on_quiet).unwrap().state, SessionState::Active);
    assert_eq!(db.session(on_quiet).unwrap().end_reason, None);
    assert_eq!(db.reclaim_sessions("quiet", &[on_quiet]).unwrap(), 0);
}

#[test]
fn end_requests_name_live_sessions_and_are_audited() {
    use collabd::configdb::SessionTarget;
    let (_url, mut db) = migrated_database();
    db.add_instance("a", &settings("https://cwa")).unwrap();
    db.add_user("CORP\\alice", "sip:alice@corp", true).unwrap();
    db.add_user("CORP\\bob", "sip:bob@corp", true).unwrap();
    db.add_device(0x2100_000a, "CORP\\alice").unwrap();
    db.add_device(0x2100_000b, "CORP\\bob").unwrap();
    let alice = db.session_started("a", "CORP\\alice", 0x2100_000a).unwrap();
    let bob = db.session_started("a", "CORP\\bob", 0x2100_000b).unwrap();
    assert!(db.end_requests("a").unwrap().is_empty());

    assert_eq!(
        db.request_session_end(SessionTarget::Id(alice), "lost phone", "ops")
            .unwrap(),
        [alice]
    );
    assert!(matches!(
        db.request_session_end(SessionTarget::Id(999_999), "x", "ops"),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        db.request_session_end(SessionTarget::Pin(0x3000_0000), "x", "ops"),
        Err(DbError::NotFound { .. })
    ));
    // `user revoke` requests the end of the user's sessions too.
    db.set_im_enabled("corp\\BOB", false).unwrap();
    let requests = db.end_requests("a").unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].id, alice);
    assert_eq!(requests[0].reason, "lost phone");
    assert_eq!(requests[0].by, "ops");
    assert_eq!(requests[1].id, bob);
    assert_eq!(requests[1].reason, "user revoked");
    assert!(
        requests[1].by.starts_with("database role "),
        "{:?}",
        requests[1]
    );
    let listed = db.list_sessions(Some("a")).unwrap();
    assert_eq!(listed[0].end_requested.as_deref(), Some("lost phone"));
    assert_eq!(listed[0].instance_heartbeat_age_ms, None);

    // Once ended, a session is no longer asked for.
    assert!(db
        .session_ended(alice, "ended by an administrator")
        .unwrap());
    assert_eq!(db.end_requests("a").unwrap().len(), 1);
    let audited: Vec<String> = db
        .list_audit(100)
        .unwrap()
        .into_iter()
        .filter(|r| r.event.event == "session_end_requested")
        .map(|r| r.event.reason.unwrap_or_default())
        .collect();
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited.iter().any(|r| r.contains("lost phone (by ops)")));
}
