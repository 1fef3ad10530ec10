//! The built `collabctl` binary against a real PostgreSQL: every command end
//! to end, and every kind of bad input refused with its exit code and one
//! line on stderr, leaving the database exactly as it was.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use collabd::configdb::{ConfigDb, Coverage};
use support::pg::{dump_tables, fresh_database};

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

fn collabctl(database: Option<&str>, args: &[&str]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_collabctl"));
    command.env_remove("COLLABD_DATABASE_URL");
    if let Some(url) = database {
        command.args(["--database", url]);
    }
    let output = command.args(args).output().expect("run collabctl");
    Outcome {
        code: output.status.code().expect("collabctl exited by a signal"),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs a command that must succeed; returns its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let out = collabctl(Some(url), args);
    assert_eq!(
        out.code, 0,
        "collabctl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
    out.stdout
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "collabctl-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key_hex(key: &[u8; 32]) -> String {
    collabd::hex::encode(key)
}

/// A migrated database with one instance, two users and one device.
fn populated() -> String {
    let url = fresh_database();
    ok(&url, &["migrate"]);
    ok(
        &url,
        &[
            "instance",
            "add",
            "bcs1",
            "--cwa-url",
            "https://cwa.corp.example.com",
        ],
    );
    ok(
        &url,
        &[
            "user",
            "add",
            "CORP\\alice",
            "--sip-uri",
            "sip:alice@corp.example.com",
        ],
    );
    ok(
        &url,
        &[
            "user",
            "add",
            "bob@corp.example.com",
            "--sip-uri",
            "sip:bob@corp.example.com",
        ],
    );
    ok(
        &url,
        &["device", "add", "2100000a", "--user", "CORP\\alice"],
    );
    url
}

#[test]
fn migrate_applies_once_then_reports_up_to_date() {
    let url = fresh_database();
    let first = ok(&url, &["migrate"]);
    assert_eq!(
        first,
        "applied 0001_initial\napplied 0002_session_end_requests\napplied 0003_away_after\n"
    );
    let dump = dump_tables(&url);
    assert_eq!(ok(&url, &["migrate"]), "schema is up to date\n");
    assert_eq!(dump_tables(&url), dump);
}

#[test]
fn instances_end_to_end() {
    let url = fresh_database();
    ok(&url, &["migrate"]);
    let added = ok(
        &url,
        &[
            "instance",
            "add",
            "bcs1",
            "--cwa-url",
            "https://cwa.corp.example.com:8443/",
            "--max-sessions",
            "200",
            "--idle-timeout-ms",
            "600000",
            "--inactivity-timeout-ms=3600000",
            "--http-max-connections",
            "400",
            "--auth",
            "forms",
            "--password-caching",
            "on",
        ],
    );
    assert!(added.starts_with("instance bcs1 added\n"), "{added}");
    let show = ok(&url, &["instance", "show", "bcs1"]);
    for line in [
        "name                   bcs1",
        "cwa url                https://cwa.corp.example.com:8443/",
        "auth                   forms",
        "max sessions           200",
        "idle timeout ms        600000",
        "inactivity timeout ms  3600000",
        "http max connections   400",
        "password caching       on",
        "away after ms          300000",
        "heartbeat              never",
        "healthy                no",
    ] {
        assert!(show.lines().any(|l| l == line), "no {line:?} in\n{show}");
    }

    let set = ok(
        &url,
        &[
            "instance",
            "set",
            "bcs1",
            "--max-sessions",
            "none",
            "--idle-timeout-ms",
            "none",
            "--auth",
            "iwa",
            "--password-caching",
            "off",
            "--away-after-ms",
            "0",
        ],
    );
    assert!(set.starts_with("instance bcs1 changed\n"), "{set}");
    let mut db = ConfigDb::connect(&url).unwrap();
    let stored = db.instance("bcs1").unwrap();
    assert_eq!(stored.max_sessions, None);
    assert_eq!(stored.idle_timeout_ms, None);
    assert_eq!(stored.inactivity_timeout_ms, Some(3_600_000));
    assert_eq!(stored.http_max_connections, 400);
    assert!(!stored.password_caching);
    assert_eq!(stored.away_after_ms, 0, "0 turns the away period off");

    ok(
        &url,
        &[
            "instance",
            "add",
            "bcs0",
            "--cwa-url",
            "http://127.0.0.1:8080",
        ],
    );
    db.write_heartbeat("bcs0", "127.0.0.1:3200", 3, Some(1000), true)
        .unwrap();
    let list = ok(&url, &["instance", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("NAME  CWA URL "), "{list}");
    assert!(
        lines[1].starts_with("bcs0  http://127.0.0.1:8080 "),
        "{list}"
    );
    assert!(lines[1].contains(" iwa-then-forms "), "{list}");
    assert!(lines[1].contains(" yes "), "{list}");
    assert!(
        lines[2].starts_with("bcs1  https://cwa.corp.example.com:8443/"),
        "{list}"
    );
    // Columns line up: every row has its CWA URL where the header has it.
    let col = lines[0].find("CWA URL").unwrap();
    assert!(lines[1..].iter().all(|l| l[col..].starts_with("http")));

    let events: Vec<String> = db
        .list_audit(10)
        .unwrap()
        .into_iter()
        .map(|r| r.event.event)
        .collect();
    assert_eq!(
        events,
        [
            "instance_added",
            "instance_changed",
            "instance_added",
            "schema_migrated",
            "schema_migrated",
            "schema_migrated"
        ]
    );
}

#[test]
fn users_devices_sessions_and_audit_end_to_end() {
    let url = fresh_database();
    ok(&url, &["migrate"]);
    ok(
        &url,
        &["instance", "add", "bcs1", "--cwa-url", "https://cwa"],
    );
    assert_eq!(
        ok(
            &url,
            &[
                "user",
                "add",
                "CORP\\alice",
                "--sip-uri",
                "sip:alice@corp.example.com"
            ]
        ),
        "user CORP\\alice added (collaboration client allowed)\n"
    );
    ok(
        &url,
        &[
            "user",
            "add",
            "bob@corp.example.com",
            "--sip-uri",
            "sip:bob@corp.example.com",
            "--im-enabled",
            "no",
        ],
    );
    let mut db = ConfigDb::connect(&url).unwrap();
    assert!(!db.user("bob@corp.example.com").unwrap().im_enabled);
    ok(&url, &["user", "grant", "bob@corp.example.com"]);
    assert!(db.user("bob@corp.example.com").unwrap().im_enabled);
    let revoked = ok(&url, &["user", "revoke", "corp\\ALICE"]);
    assert_eq!(
        revoked,
        "user CORP\\alice may no longer use the collaboration client\n"
    );
    assert!(!db.user("CORP\\alice").unwrap().im_enabled);

    // Key printed once, and it is the stored key.
    let added = ok(
        &url,
        &["device", "add", "2100000A", "--user", "corp\\alice"],
    );
    let mut lines = added.lines();
    assert_eq!(lines.next(), Some("device 2100000a added for corp\\alice"));
    let printed = lines
        .next()
        .and_then(|l| l.strip_prefix("transport key (shown once): "))
        .expect("key line");
    assert_eq!(printed.len(), 64);
    let stored = db.device(0x2100_000a).unwrap();
    assert_eq!(printed, key_hex(&stored.transport_key));
    assert_eq!(stored.login, "CORP\\alice");

    // --key-file: mode 0600, 64 hex digits and a newline, not on stdout.
    let dir = scratch_dir("keys");
    let key_file = dir.join("device.key");
    let added = ok(
        &url,
        &[
            "device",
            "add",
            "2100000b",
            "--user",
            "bob@corp.example.com",
            "--key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let file_text = std::fs::read_to_string(&key_file).unwrap();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored = db.device(0x2100_000b).unwrap();
    assert_eq!(file_text, format!("{}\n", key_hex(&stored.transport_key)));
    assert!(!added.contains(file_text.trim()), "{added}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "staging file left"
    );

    // --import-key: the device keeps a key it already has.
    let import = dir.join("import.key");
    std::fs::write(&import, format!("{}\n", "ab".repeat(32))).unwrap();
    ok(
        &url,
        &[
            "device",
            "add",
            "ffffffff",
            "--user",
            "CORP\\alice",
            "--import-key",
            import.to_str().unwrap(),
        ],
    );
    assert_eq!(db.device(0xffff_ffff).unwrap().transport_key, [0xab; 32]);

    let list = ok(&url, &["device", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[0].starts_with("PIN       USER"), "{list}");
    assert!(lines[1].starts_with("2100000a  CORP\\alice "), "{list}");
    assert!(
        lines[2].starts_with("2100000b  bob@corp.example.com"),
        "{list}"
    );
    assert!(lines[3].starts_with("ffffffff  CORP\\alice "), "{list}");
    for pin in [0x2100_000a, 0x2100_000b, 0xffff_ffff] {
        let key = key_hex(&db.device(pin).unwrap().transport_key);
        assert!(!list.contains(&key[..8]), "device list shows a key");
    }

    let users = ok(&url, &["user", "list"]);
    let lines: Vec<&str> = users.lines().collect();
    let fields: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        fields[0],
        ["LOGIN", "SIP", "URI", "IM", "ENABLED", "DEVICES"]
    );
    assert_eq!(
        fields[1],
        [
            "bob@corp.example.com",
            "sip:bob@corp.example.com",
            "yes",
            "1"
        ]
    );
    assert_eq!(
        fields[2],
        ["CORP\\alice", "sip:alice@corp.example.com", "no", "2"]
    );
    let sip_col = lines[0].find("SIP URI").unwrap();
    let im_col = lines[0].find("IM ENABLED").unwrap();
    for line in &lines[1..] {
        assert!(line[sip_col..].starts_with("sip:"), "{users}");
        assert!(
            !line[..sip_col].ends_with(|c: char| !c.is_whitespace()),
            "{users}"
        );
        assert!(line[im_col..].starts_with(['y', 'n']), "{users}");
    }

    assert_eq!(
        ok(&url, &["device", "remove", "ffffffff"]),
        "device ffffffff removed\n"
    );
    assert!(db.device(0xffff_ffff).is_err());

    // Sessions as the service writes them.
    ok(
        &url,
        &["instance", "add", "bcs2", "--cwa-url", "https://cwa2"],
    );
    let s1 = db
        .session_started("bcs1", "CORP\\alice", 0x2100_000a)
        .unwrap();
    db.session_started("bcs2", "bob@corp.example.com", 0x2100_000b)
        .unwrap();
    db.session_updated(s1, Coverage::Dormant).unwrap();
    let all = ok(&url, &["sessions"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(all
        .lines()
        .next()
        .unwrap()
        .starts_with("ID  INSTANCE  USER"));
    let one = ok(&url, &["sessions", "--instance", "bcs1"]);
    let rows: Vec<&str> = one.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{one}");
    assert!(
        rows[0].contains("bcs1") && rows[0].contains("2100000a") && rows[0].contains("dormant")
    );
    assert_eq!(
        ok(&url, &["sessions", "--instance", "bcs2"])
            .lines()
            .count(),
        2
    );
    // The holding instance's heartbeat age beside each session: bcs2 never
    // wrote one; bcs1 did.
    db.write_heartbeat("bcs1", "127.0.0.1:3200", 1, Some(10), true)
        .unwrap();
    let listed = ok(&url, &["sessions"]);
    assert!(
        listed.lines().next().unwrap().contains("HEARTBEAT"),
        "{listed}"
    );
    let bcs1 = listed.lines().find(|l| l.contains("bcs1 ")).unwrap();
    assert!(bcs1.contains("s ago"), "{listed}");
    let bcs2 = listed.lines().find(|l| l.contains("bcs2 ")).unwrap();
    assert!(bcs2.contains("never"), "{listed}");

    let audit = ok(&url, &["audit", "--limit", "3"]);
    let rows: Vec<&str> = audit.lines().collect();
    assert_eq!(rows.len(), 4, "{audit}");
    assert!(
        rows[0].starts_with("AT  ") || rows[0].starts_with("AT "),
        "{audit}"
    );
    assert!(rows[1].contains(" instance_added ") && rows[1].contains(" bcs2 "));
    assert!(rows[2].contains(" device_removed ") && rows[2].contains(" ffffffff "));
    assert!(rows[3].contains(" device_added "));
    // session end: by PIN or by ID, audited with the reason, shown as
    // pending until the instance ends it.
    let asked = ok(
        &url,
        &["session", "end", "2100000a", "--reason", "lost phone"],
    );
    assert_eq!(
        asked,
        format!("session {s1}: end requested; its instance ends it at its next heartbeat\n")
    );
    let listed = ok(&url, &["sessions", "--instance", "bcs1"]);
    assert!(listed.contains("ending: lost phone"), "{listed}");
    let s2 = db.list_sessions(Some("bcs2")).unwrap()[0].id;
    ok(&url, &["session", "end", &s2.to_string()]);
    assert_eq!(
        db.session(s2).unwrap().end_requested.as_deref(),
        Some("ended by an administrator")
    );
    let audit = ok(&url, &["audit", "--limit", "2"]);
    assert!(
        audit.contains("session_end_requested") && audit.contains("lost phone (by collabctl"),
        "{audit}"
    );

    let full = ok(&url, &["audit"]);
    assert!(!full.contains(&"ab".repeat(32)), "audit shows a key");
    for event in [
        "schema_migrated",
        "instance_added",
        "user_added",
        "user_granted",
        "user_revoked",
        "device_added",
        "device_removed",
    ] {
        assert!(full.contains(event), "{event} not audited:\n{full}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_database_comes_from_the_environment_and_help_needs_none() {
    let url = fresh_database();
    let out = Command::new(env!("CARGO_BIN_EXE_collabctl"))
        .env("COLLABD_DATABASE_URL", &url)
        .args(["migrate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "applied 0001_initial\napplied 0002_session_end_requests\napplied 0003_away_after\n"
    );
    let help = collabctl(None, &["--help"]);
    assert_eq!(help.code, 0);
    for command in ["instance add NAME", "device add PIN", "sessions", "audit"] {
        assert!(help.stdout.contains(command), "{}", help.stdout);
    }
    assert_eq!(collabctl(None, &["device", "list", "--help"]).code, 0);
}

/// One refused command: its exit code, one line on stderr that names the
/// problem, nothing on stdout, and the database unchanged.
fn refused(url: &str, database: Option<&str>, args: &[&str], code: i32, needle: &str) {
    let before = dump_tables(url);
    let out = collabctl(database, args);
    let after = dump_tables(url);
    assert_eq!(
        out.code, code,
        "collabctl {args:?}: exit {} ({})",
        out.code, out.stderr
    );
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {:?}", out.stderr);
    assert!(out.stderr.starts_with("collabctl: "), "{:?}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: {:?} does not mention {needle:?}",
        out.stderr
    );
    assert_eq!(before, after, "collabctl {args:?} changed the database");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let url = populated();
    let db = Some(url.as_str());
    let cases: &[(&[&str], i32, &str)] = &[
        // usage
        (&[], 64, "no command"),
        (&["frobnicate"], 64, "unknown command"),
        (&["instance"], 64, "subcommand"),
        (
            &["instance", "drop", "bcs1"],
            64,
            "unknown instance subcommand",
        ),
        (&["instance", "add", "bcs2"], 64, "--cwa-url"),
        (
            &["instance", "add", "--cwa-url", "https://x"],
            64,
            "missing NAME",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://x",
                "--colour",
                "red",
            ],
            64,
            "unknown option",
        ),
        (
            &["instance", "add", "bcs2", "--cwa-url"],
            64,
            "needs a value",
        ),
        (&["instance", "set", "bcs1"], 64, "at least one option"),
        (&["instance", "show"], 64, "missing NAME"),
        (&["user", "add", "CORP\\carol"], 64, "--sip-uri"),
        (&["device", "add", "2100000c"], 64, "--user"),
        (
            &["device", "remove", "2100000a", "2100000b"],
            64,
            "unexpected argument",
        ),
        (&["sessions", "bcs1"], 64, "unexpected argument"),
        (&["session"], 64, "needs a subcommand"),
        (&["session", "end"], 64, "missing PIN|SESSION-ID"),
        (
            &["session", "kill", "2100000a"],
            64,
            "unknown session subcommand",
        ),
        (&["session", "end", "zz"], 65, "neither a PIN"),
        (&["session", "end", "-5"], 65, "neither a PIN"),
        (
            &["session", "end", "2100000a", "--reason", " "],
            65,
            "must not be empty",
        ),
        (
            &["session", "end", "2100000c"],
            65,
            "not found: active session",
        ),
        (
            &["audit", "--limit", "5", "--limit", "6"],
            64,
            "given twice",
        ),
        // unknown names
        (&["instance", "show", "nope"], 65, "instance nope"),
        (
            &["instance", "set", "nope", "--max-sessions", "5"],
            65,
            "instance nope",
        ),
        (&["user", "grant", "CORP\\nobody"], 65, "user CORP\\nobody"),
        (&["user", "revoke", "CORP\\nobody"], 65, "user CORP\\nobody"),
        (
            &["device", "add", "2100000c", "--user", "CORP\\nobody"],
            65,
            "user CORP\\nobody",
        ),
        (&["device", "remove", "2100000c"], 65, "2100000c"),
        (&["sessions", "--instance", "nope"], 65, "instance nope"),
        // duplicates
        (
            &["instance", "add", "bcs1", "--cwa-url", "https://x"],
            65,
            "instance bcs1",
        ),
        (
            &["user", "add", "corp\\ALICE", "--sip-uri", "sip:a2@corp"],
            65,
            "already exists",
        ),
        (
            &[
                "user",
                "add",
                "CORP\\carol",
                "--sip-uri",
                "sip:alice@corp.example.com",
            ],
            65,
            "SIP URI",
        ),
        (
            &[
                "device",
                "add",
                "2100000A",
                "--user",
                "bob@corp.example.com",
            ],
            65,
            "2100000a",
        ),
        // malformed PIN, login, SIP URI, URL
        (
            &["device", "add", "2100000", "--user", "CORP\\alice"],
            65,
            "8 hex digits",
        ),
        (
            &["device", "add", "2100000g", "--user", "CORP\\alice"],
            65,
            "8 hex digits",
        ),
        (
            &["device", "add", "121000000a", "--user", "CORP\\alice"],
            65,
            "8 hex digits",
        ),
        (&["device", "remove", "-1"], 65, "8 hex digits"),
        (
            &["user", "add", "alice", "--sip-uri", "sip:carol@corp"],
            65,
            "login",
        ),
        (
            &["user", "add", "CORP\\carol", "--sip-uri", "carol@corp"],
            65,
            "SIP URI",
        ),
        (
            &["user", "add", "CORP\\carol", "--sip-uri", "sip:carol@"],
            65,
            "SIP URI",
        ),
        (
            &[
                "user",
                "add",
                "CORP\\carol",
                "--sip-uri",
                "sip:c@corp",
                "--im-enabled",
                "maybe",
            ],
            65,
            "yes or no",
        ),
        (
            &["instance", "add", "bcs2", "--cwa-url", "ftp://cwa"],
            65,
            "http or https",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "cwa.corp.example.com",
            ],
            65,
            "http or https",
        ),
        (
            &["instance", "add", "bcs2", "--cwa-url", "https://cwa:99999"],
            65,
            "port",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://user:pw@cwa",
            ],
            65,
            "credentials",
        ),
        (
            &["instance", "add", "bad name", "--cwa-url", "https://cwa"],
            65,
            "instance name",
        ),
        (
            &["instance", "set", "bcs1", "--cwa-url", "gopher://cwa"],
            65,
            "http or https",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--auth",
                "kerberos",
            ],
            65,
            "auth mode",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--password-caching",
                "yes",
            ],
            65,
            "on or off",
        ),
        // zero and negative limits
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--max-sessions",
                "0",
            ],
            65,
            "above 0",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--max-sessions",
                "-5",
            ],
            65,
            "above 0",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--max-sessions",
                "ten",
            ],
            65,
            "whole number",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--idle-timeout-ms",
                "0",
            ],
            65,
            "above 0",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--inactivity-timeout-ms",
                "-1",
            ],
            65,
            "above 0",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--http-max-connections",
                "0",
            ],
            65,
            "above 0",
        ),
        (
            &["instance", "set", "bcs1", "--http-max-connections", "none"],
            65,
            "whole number",
        ),
        (
            &["instance", "set", "bcs1", "--max-sessions", "0"],
            65,
            "above 0",
        ),
        (
            &["instance", "set", "bcs1", "--idle-timeout-ms", "-100"],
            65,
            "above 0",
        ),
        (
            &[
                "instance",
                "add",
                "bcs2",
                "--cwa-url",
                "https://cwa",
                "--max-sessions",
                "4294967296",
            ],
            65,
            "too large",
        ),
        (&["audit", "--limit", "0"], 65, "above 0"),
        (&["audit", "--limit", "-1"], 65, "above 0"),
        (&["audit", "--limit", "many"], 65, "whole number"),
    ];
    for (args, code, needle) in cases {
        refused(&url, db, args, *code, needle);
    }
}

#[test]
fn bad_key_files_are_refused_and_change_nothing() {
    let url = populated();
    let db = Some(url.as_str());
    let dir = scratch_dir("badkeys");
    let short = dir.join("short.key");
    std::fs::write(&short, "abcd\n").unwrap();
    let not_hex = dir.join("nothex.key");
    std::fs::write(&not_hex, "zz".repeat(32)).unwrap();
    let huge = dir.join("huge.key");
    std::fs::write(&huge, "a".repeat(1 << 20)).unwrap();
    let missing = dir.join("missing.key");
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let (short, not_hex, huge, missing) = (p(&short), p(&not_hex), p(&huge), p(&missing));
    let out_key = dir.join("out.key");
    let out_key_s = p(&out_key);
    let nowhere = p(&dir.join("no").join("such").join("dir.key"));
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--import-key", &short], 65, "64 hex digits"),
        (vec!["--import-key", &not_hex], 65, "64 hex digits"),
        (vec!["--import-key", &huge], 65, "too large"),
        (vec!["--import-key", &missing], 66, "missing.key"),
        (vec!["--key-file", &nowhere], 73, "dir.key"),
    ];
    for (extra, code, needle) in cases {
        let mut args = vec!["device", "add", "2100000c", "--user", "CORP\\alice"];
        args.extend(extra);
        refused(&url, db, &args, code, needle);
    }
    // A refused device with --key-file leaves no key file behind.
    refused(
        &url,
        db,
        &[
            "device",
            "add",
            "2100000a",
            "--user",
            "CORP\\alice",
            "--key-file",
            &out_key_s,
        ],
        65,
        "2100000a",
    );
    refused(
        &url,
        db,
        &[
            "device",
            "add",
            "2100000c",
            "--user",
            "CORP\\nobody",
            "--key-file",
            &out_key_s,
        ],
        65,
        "nobody",
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("out.key")),
        "key file left behind: {names:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_or_missing_database_is_refused() {
    let url = populated();
    let empty = scratch_dir("nosocket");
    let no_server = format!("host={} user=postgres dbname=x", empty.display());
    let commands: &[&[&str]] = &[
        &["migrate"],
        &["instance", "add", "bcs2", "--cwa-url", "https://cwa"],
        &["instance", "set", "bcs1", "--max-sessions", "5"],
        &["instance", "show", "bcs1"],
        &["instance", "list"],
        &["user", "add", "CORP\\carol", "--sip-uri", "sip:carol@corp"],
        &["user", "grant", "CORP\\alice"],
        &["user", "revoke", "CORP\\alice"],
        &["user", "list"],
        &["device", "add", "2100000c", "--user", "CORP\\alice"],
        &["device", "list"],
        &["device", "remove", "2100000a"],
        &["sessions"],
        &["audit"],
    ];
    for database in [no_server.as_str(), "postgresql://postgres@127.0.0.1:1/x"] {
        for args in commands {
            refused(&url, Some(database), args, 69, "unreachable");
        }
    }
    refused(
        &url,
        None,
        &["instance", "list"],
        64,
        "COLLABD_DATABASE_URL",
    );
    refused(
        &url,
        Some("postgresql://[broken"),
        &["instance", "list"],
        65,
        "database URL",
    );
    std::fs::remove_dir_all(&empty).unwrap();

    // A reachable database without the schema: a clear hint, exit 70.
    let bare = fresh_database();
    refused(
        &bare,
        Some(&bare),
        &["instance", "list"],
        70,
        "collabctl migrate",
    );
}
