/*!
`collabctl`: administration of the Config DB from the command line. This
module owns the commands and their execution; the options of each command
are read in `options`, the plain-text output written in `output`, and the
failures mapped to sysexits-style exit codes in `error`. Every read and
write goes through [`ConfigDb`]; `collabctl demo` is handed to
[`crate::admin::demo`].

Exit codes: 0 success; 64 usage (unknown command or option, missing
argument); 65 bad data (malformed PIN, login, SIP URI, URL or key, unknown
instance, user or device, duplicate, limit of zero or below); 66 a key file
to import cannot be read; 69 database unreachable; 70 any other database
failure; 73 the key file cannot be written; 74 standard output cannot be
written. `collabctl demo` has exit codes of its own.
*/

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::configdb::{
    format_pin, generate_transport_key, parse_hex_key, parse_instance_name, parse_login, parse_pin,
    parse_sip_uri, ConfigDb, InstanceChange, InstanceSettings, SessionTarget,
};

/// Environment variable holding the database URL when `--database` is not
/// given.
pub use crate::configdb::DATABASE_URL_ENV as DATABASE_ENV;

mod error;
mod options;
mod output;

pub use error::CliError;
use error::{bad, usage};
use options::{
    instance_change, parse_session_target, parse_switch, parse_u32, Options, INSTANCE_OPTIONS,
};
pub use output::format_time;
use output::{format_age, on_off, or_none, show_instance, table, yes_no};

/// How many audit events `collabctl audit` shows without `--limit`.
pub const DEFAULT_AUDIT_LIMIT: u32 = 50;

/// Largest `--limit` accepted, so one command cannot ask for everything.
pub const MAX_AUDIT_LIMIT: u32 = 100_000;

/// The text of `collabctl --help`.
pub const HELP: &str = "\
usage: collabctl [--database URL] COMMAND ...

Administers the collabd Config DB (PostgreSQL). The database is --database
URL or $COLLABD_DATABASE_URL (libpq URL or key=value string).

commands:
  migrate
  instance add NAME --cwa-url URL [--max-sessions N] [--idle-timeout-ms N]
               [--inactivity-timeout-ms N] [--http-max-connections N]
               [--auth iwa-then-forms|forms|iwa] [--password-caching on|off]
               [--away-after-ms N (0: never)]
  instance set NAME [the same options; --max-sessions none,
               --idle-timeout-ms none, --inactivity-timeout-ms none unset]
  instance show NAME
  instance list
  user add LOGIN --sip-uri sip:USER@DOMAIN [--im-enabled yes|no]
  user grant LOGIN
  user revoke LOGIN
  user list
  device add PIN --user LOGIN [--key-file FILE] [--import-key FILE]
  device list
  device remove PIN
  sessions [--instance NAME]
  session end PIN|SESSION-ID [--reason TEXT]
  audit [--limit N]
  demo [--dir DIR] [--listen-dispatcher ADDR] [--listen-collabd ADDR] [--keep]
       (a throwaway database, cwa-sim, collabd and collab-dispatcher on this
       machine; see collabctl demo --help)

exit status: 0 ok, 64 usage, 65 bad data, 66 key file unreadable,
69 database unreachable, 70 other database failure, 73 key file unwritable.
";

/// Runs collabctl with `args` (without the program name). `env_database`
/// is the value of `COLLABD_DATABASE_URL`. Output goes to `out`.
pub fn run(
    args: Vec<OsString>,
    env_database: Option<OsString>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut words = Vec::with_capacity(args.len());
    for arg in args {
        words.push(
            arg.into_string()
                .map_err(|_| usage("arguments must be UTF-8"))?,
        );
    }
    // --database may stand anywhere; take it out before the command parse.
    let mut database = None;
    let mut rest = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        if word == "--database" {
            let value = iter.next().ok_or_else(|| usage("--database needs a URL"))?;
            if database.replace(value).is_some() {
                return Err(usage("--database given twice"));
            }
        } else if let Some(value) = word.strip_prefix("--database=") {
            if database.replace(value.to_string()).is_some() {
                return Err(usage("--database given twice"));
            }
        } else {
            rest.push(word);
        }
    }
    if rest.is_empty() {
        return Err(usage("no command given"));
    }
    if rest[0] == "demo" && database.is_none() {
        return crate::admin::demo::run(&rest[1..], out).map_err(CliError::Demo);
    }
    if rest.iter().any(|w| w == "--help" || w == "-h") || rest[0] == "help" {
        out.write_all(HELP.as_bytes())?;
        return Ok(());
    }
    let command = Command::parse(&rest)?;
    let database = match database {
        Some(url) => url,
        None => match env_database {
            Some(url) if !url.is_empty() => url
                .into_string()
                .map_err(|_| usage(format!("{DATABASE_ENV} must be UTF-8")))?,
            _ => {
                return Err(usage(format!(
                    "no database: give --database URL or set {DATABASE_ENV}"
                )))
            }
        },
    };
    let mut db = ConfigDb::connect(&database)?;
    command.execute(&mut db, out)
}

/// A parsed command line.
#[derive(Debug)]
enum Command {
    Migrate,
    InstanceAdd(String, InstanceSettings),
    InstanceSet(String, InstanceChange),
    InstanceShow(String),
    InstanceList,
    UserAdd {
        login: String,
        sip_uri: String,
        im_enabled: bool,
    },
    UserGrant(String, bool),
    UserList,
    DeviceAdd {
        pin: u32,
        login: String,
        key_file: Option<PathBuf>,
        import_key: Option<PathBuf>,
    },
    DeviceList,
    DeviceRemove(u32),
    Sessions(Option<String>),
    SessionEnd(SessionTarget, String),
    Audit(u32),
}

/// The reason `session end` records when none is given.
const DEFAULT_END_REASON: &str = "ended by an administrator";

/// Who runs this collabctl, for the audit of `session end`: the operating
/// system user (from the environment, which an administrator's shell sets).
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

impl Command {
    fn parse(words: &[String]) -> Result<Command, CliError> {
        let sub = |i: usize, what: &str| -> Result<&str, CliError> {
            words
                .get(i)
                .map(String::as_str)
                .ok_or_else(|| usage(format!("{} needs a subcommand: {what}", words[0])))
        };
        match words[0].as_str() {
            // Handled before the database is chosen (see `run`).
            "demo" => Err(usage(
                "demo starts a database of its own: leave out --database",
            )),
            "migrate" => {
                Options::parse(&words[1..], &[])?.positionals(&[])?;
                Ok(Command::Migrate)
            }
            "instance" => match sub(1, "add, set, show, list")? {
                "add" => {
                    let options = Options::parse(&words[2..], INSTANCE_OPTIONS)?;
                    let name = options.positionals(&["NAME"])?.remove(0);
                    parse_instance_name(&name)?;
                    let change = instance_change(&options)?;
                    let defaults = InstanceSettings::default();
                    let settings = InstanceSettings {
                        cwa_url: change
                            .cwa_url
                            .ok_or_else(|| usage("instance add needs --cwa-url URL"))?,
                        auth_mode: change.auth_mode.unwrap_or(defaults.auth_mode),
                        max_sessions: change.max_sessions.flatten(),
                        idle_timeout_ms: change.idle_timeout_ms.flatten(),
                        inactivity_timeout_ms: change.inactivity_timeout_ms.flatten(),
                        http_max_connections: change
                            .http_max_connections
                            .unwrap_or(defaults.http_max_connections),
                        password_caching: change
                            .password_caching
                            .unwrap_or(defaults.password_caching),
                        away_after_ms: change.away_after_ms.unwrap_or(defaults.away_after_ms),
                    };
                    Ok(Command::InstanceAdd(name, settings))
                }
                "set" => {
                    let options = Options::parse(&words[2..], INSTANCE_OPTIONS)?;
                    let name = options.positionals(&["NAME"])?.remove(0);
                    let change = instance_change(&options)?;
                    if change.is_empty() {
                        return Err(usage("instance set needs at least one option to change"));
                    }
                    Ok(Command::InstanceSet(name, change))
                }
                "show" => {
                    let options = Options::parse(&words[2..], &[])?;
                    Ok(Command::InstanceShow(
                        options.positionals(&["NAME"])?.remove(0),
                    ))
                }
                "list" => {
                    Options::parse(&words[2..], &[])?.positionals(&[])?;
                    Ok(Command::InstanceList)
                }
                other => Err(usage(format!("unknown instance subcommand {other:?}"))),
            },
            "user" => match sub(1, "add, grant, revoke, list")? {
                "add" => {
                    let options = Options::parse(&words[2..], &["sip-uri", "im-enabled"])?;
                    let login = options.positionals(&["LOGIN"])?.remove(0);
                    let sip_uri = options
                        .get("sip-uri")
                        .ok_or_else(|| usage("user add needs --sip-uri sip:USER@DOMAIN"))?
                        .to_string();
                    parse_login(&login)?;
                    parse_sip_uri(&sip_uri)?;
                    let im_enabled = match options.get("im-enabled") {
                        Some(v) => parse_switch("im-enabled", v, "yes", "no")?,
                        None => true,
                    };
                    Ok(Command::UserAdd {
                        login,
                        sip_uri,
                        im_enabled,
                    })
                }
                verb @ ("grant" | "revoke") => {
                    let options = Options::parse(&words[2..], &[])?;
                    let login = options.positionals(&["LOGIN"])?.remove(0);
                    Ok(Command::UserGrant(login, verb == "grant"))
                }
                "list" => {
                    Options::parse(&words[2..], &[])?.positionals(&[])?;
                    Ok(Command::UserList)
                }
                other => Err(usage(format!("unknown user subcommand {other:?}"))),
            },
            "device" => match sub(1, "add, list, remove")? {
                "add" => {
                    let options = Options::parse(&words[2..], &["user", "key-file", "import-key"])?;
                    let pin = parse_pin(&options.positionals(&["PIN"])?[0])?;
                    let login = options
                        .get("user")
                        .ok_or_else(|| usage("device add needs --user LOGIN"))?
                        .to_string();
                    Ok(Command::DeviceAdd {
                        pin,
                        login,
                        key_file: options.get("key-file").map(PathBuf::from),
                        import_key: options.get("import-key").map(PathBuf::from),
                    })
                }
                "list" => {
                    Options::parse(&words[2..], &[])?.positionals(&[])?;
                    Ok(Command::DeviceList)
                }
                "remove" => {
                    let options = Options::parse(&words[2..], &[])?;
                    Ok(Command::DeviceRemove(parse_pin(
                        &options.positionals(&["PIN"])?[0],
                    )?))
                }
                other => Err(usage(format!("unknown device subcommand {other:?}"))),
            },
            "sessions" => {
                let options = Options::parse(&words[1..], &["instance"])?;
                options.positionals(&[])?;
                Ok(Command::Sessions(
                    options.get("instance").map(str::to_string),
                ))
            }
            "session" => match sub(1, "end")? {
                "end" => {
                    let options = Options::parse(&words[2..], &["reason"])?;
                    let target =
                        parse_session_target(&options.positionals(&["PIN|SESSION-ID"])?[0])?;
                    let reason = match options.get("reason") {
                        Some(r) if r.trim().is_empty() => {
                            return Err(bad("--reason must not be empty"))
                        }
                        Some(r) => r.to_string(),
                        None => DEFAULT_END_REASON.to_string(),
                    };
                    Ok(Command::SessionEnd(target, reason))
                }
                other => Err(usage(format!("unknown session subcommand {other:?}"))),
            },
            "audit" => {
                let options = Options::parse(&words[1..], &["limit"])?;
                options.positionals(&[])?;
                let limit = match options.get("limit") {
                    Some(v) => match parse_u32("limit", v, false)? {
                        Some(n) if n <= MAX_AUDIT_LIMIT => n,
                        _ => return Err(bad(format!("--limit must be 1 to {MAX_AUDIT_LIMIT}"))),
                    },
                    None => DEFAULT_AUDIT_LIMIT,
                };
                Ok(Command::Audit(limit))
            }
            other => Err(usage(format!("unknown command {other:?}"))),
        }
    }

    fn execute(self, db: &mut ConfigDb, out: &mut dyn Write) -> Result<(), CliError> {
        match self {
            Command::Migrate => {
                let applied = db.migrate()?;
                if applied.is_empty() {
                    writeln!(out, "schema is up to date")?;
                }
                for m in applied {
                    writeln!(out, "applied {:04}_{}", m.version, m.name)?;
                }
            }
            Command::InstanceAdd(name, settings) => {
                db.add_instance(&name, &settings)?;
                writeln!(out, "instance {name} added")?;
                show_instance(&db.instance(&name)?, out)?;
            }
            Command::InstanceSet(name, change) => {
                let instance = db.set_instance(&name, &change)?;
                writeln!(out, "instance {name} changed")?;
                show_instance(&instance, out)?;
            }
            Command::InstanceShow(name) => show_instance(&db.instance(&name)?, out)?,
            Command::InstanceList => {
                let rows = db
                    .list_instances()?
                    .into_iter()
                    .map(|i| {
                        vec![
                            i.name,
                            i.cwa_url,
                            i.auth_mode.to_string(),
                            or_none(i.max_sessions.map(u64::from)),
                            or_none(i.idle_timeout_ms),
                            or_none(i.inactivity_timeout_ms),
                            i.http_max_connections.to_string(),
                            on_off(i.password_caching).to_string(),
                            yes_no(i.healthy).to_string(),
                            i.heartbeat_at_ms.map_or("never".to_string(), format_time),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "NAME",
                        "CWA URL",
                        "AUTH",
                        "MAX SESSIONS",
                        "IDLE MS",
                        "INACTIVITY MS",
                        "HTTP MAX",
                        "PW CACHE",
                        "HEALTHY",
                        "HEARTBEAT",
                    ],
                    rows,
                )?;
            }
            Command::UserAdd {
                login,
                sip_uri,
                im_enabled,
            } => {
                db.add_user(&login, &sip_uri, im_enabled)?;
                writeln!(
                    out,
                    "user {login} added (collaboration client {})",
                    if im_enabled { "allowed" } else { "not allowed" }
                )?;
            }
            Command::UserGrant(login, grant) => {
                db.set_im_enabled(&login, grant)?;
                let user = db.user(&login)?;
                writeln!(
                    out,
                    "user {} may {}use the collaboration client",
                    user.login,
                    if grant { "" } else { "no longer " }
                )?;
            }
            Command::UserList => {
                let rows = db
                    .list_users()?
                    .into_iter()
                    .map(|u| {
                        vec![
                            u.login,
                            u.sip_uri,
                            yes_no(u.im_enabled).to_string(),
                            u.devices.to_string(),
                        ]
                    })
                    .collect();
                table(out, &["LOGIN", "SIP URI", "IM ENABLED", "DEVICES"], rows)?;
            }
            Command::DeviceAdd {
                pin,
                login,
                key_file,
                import_key,
            } => add_device(
                db,
                out,
                pin,
                &login,
                key_file.as_deref(),
                import_key.as_deref(),
            )?,
            Command::DeviceList => {
                let rows = db
                    .list_devices()?
                    .into_iter()
                    .map(|d| vec![format_pin(d.pin), d.login, format_time(d.created_at_ms)])
                    .collect();
                table(out, &["PIN", "USER", "ADDED"], rows)?;
            }
            Command::DeviceRemove(pin) => {
                db.remove_device(pin)?;
                writeln!(out, "device {} removed", format_pin(pin))?;
            }
            Command::Sessions(instance) => {
                let rows = db
                    .list_sessions(instance.as_deref())?
                    .into_iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.instance,
                            s.login,
                            format_pin(s.pin),
                            s.coverage.to_string(),
                            format_time(s.started_at_ms),
                            format_time(s.last_status_at_ms),
                            s.instance_heartbeat_age_ms
                                .map_or("never".to_string(), format_age),
                            s.end_requested
                                .map_or("-".to_string(), |r| format!("ending: {r}")),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "ID",
                        "INSTANCE",
                        "USER",
                        "PIN",
                        "COVERAGE",
                        "STARTED",
                        "LAST STATUS",
                        "HEARTBEAT",
                        "NOTE",
                    ],
                    rows,
                )?;
            }
            Command::SessionEnd(target, reason) => {
                let by = format!("collabctl, user {}", os_user());
                for id in db.request_session_end(target, &reason, &by)? {
                    writeln!(
                        out,
                        "session {id}: end requested; its instance ends it at its next heartbeat"
                    )?;
                }
            }
            Command::Audit(limit) => {
                let rows = db
                    .list_audit(limit)?
                    .into_iter()
                    .map(|r| {
                        vec![
                            format_time(r.at_ms),
                            r.event.event,
                            r.event.instance.unwrap_or_else(|| "-".into()),
                            r.event.login.unwrap_or_else(|| "-".into()),
                            r.event.pin.map_or("-".into(), format_pin),
                            r.event.reason.unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["AT", "EVENT", "INSTANCE", "USER", "PIN", "REASON"],
                    rows,
                )?;
            }
        }
        Ok(())
    }
}

/// `device add`: the key is made (or imported) here so that a key file can
/// be written before the database commits; the file appears under its
/// name only once the device is registered.
fn add_device(
    db: &mut ConfigDb,
    out: &mut dyn Write,
    pin: u32,
    login: &str,
    key_file: Option<&Path>,
    import_key: Option<&Path>,
) -> Result<(), CliError> {
    let key = match import_key {
        Some(path) => {
            let meta = fs::metadata(path).map_err(|error| CliError::KeyInput {
                path: path.to_path_buf(),
                error,
            })?;
            // A key file is 64 hex digits and a newline; refuse anything
            // large before reading it.
            if meta.len() > 1024 {
                return Err(bad(format!(
                    "key file {} is too large to be a key",
                    path.display()
                )));
            }
            let text = fs::read_to_string(path).map_err(|error| CliError::KeyInput {
                path: path.to_path_buf(),
                error,
            })?;
            parse_hex_key(&text)?
        }
        None => generate_transport_key()?,
    };
    let hex = crate::hex::encode(&key);
    let staged = match key_file {
        Some(path) => Some(stage_key_file(path, &hex)?),
        None => None,
    };
    if let Err(e) = db.add_device_with_key(pin, login, &key) {
        if let Some(staged) = &staged {
            let _ = fs::remove_file(staged);
        }
        return Err(e.into());
    }
    if let (Some(path), Some(staged)) = (key_file, &staged) {
        fs::rename(staged, path).map_err(|error| CliError::KeyOutput {
            path: path.to_path_buf(),
            error,
        })?;
    }
    writeln!(out, "device {} added for {login}", format_pin(pin))?;
    match key_file {
        Some(path) => writeln!(out, "transport key written to {}", path.display())?,
        None if import_key.is_some() => writeln!(out, "transport key imported")?,
        None => writeln!(out, "transport key (shown once): {hex}")?,
    }
    Ok(())
}

/// Writes the key to a new mode-0600 file beside `path` and returns its
/// name; the caller renames it into place after the commit.
fn stage_key_file(path: &Path, hex: &str) -> Result<PathBuf, CliError> {
    let fail = |error| CliError::KeyOutput {
        path: path.to_path_buf(),
        error,
    };
    let name = path.file_name().ok_or_else(|| {
        fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let mut staged_name = OsString::from(".");
    staged_name.push(name);
    staged_name.push(format!(".{}.tmp", std::process::id()));
    let staged = path.with_file_name(staged_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(fail)?;
    let written = file
        .write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(error) = written {
        let _ = fs::remove_file(&staged);
        return Err(fail(error));
    }
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::output::*;
    use super::*;
    use crate::configdb::AuthMode;

    fn parse(line: &str) -> Result<Command, CliError> {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        Command::parse(&words)
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn command_lines() {
        let Command::InstanceAdd(name, s) = parse(
            "instance add a --cwa-url https://cwa --max-sessions 5 --idle-timeout-ms=100 --auth forms --password-caching on",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(name, "a");
        assert_eq!(s.max_sessions, Some(5));
        assert_eq!(s.idle_timeout_ms, Some(100));
        assert_eq!(s.auth_mode, AuthMode::Forms);
        assert!(s.password_caching);
        let Command::InstanceSet(_, c) = parse("instance set a --max-sessions none").unwrap()
        else {
            panic!()
        };
        assert_eq!(c.max_sessions, Some(None));
        for (line, code) in [
            ("instance add a", 64),
            ("instance add --cwa-url https://x", 64),
            ("instance set a", 64),
            ("instance add a --cwa-url https://x --bogus 1", 64),
            ("instance add a --cwa-url https://x --max-sessions", 64),
            (
                "instance add a --cwa-url https://x --max-sessions 1 --max-sessions 2",
                64,
            ),
            ("instance add a --cwa-url x", 65),
            ("instance add a/b --cwa-url https://x", 65),
            ("user add alice --sip-uri sip:a@b", 65),
            ("user add CORP\\a --sip-uri a@b", 65),
            ("instance add a --cwa-url https://x --max-sessions 0", 65),
            ("instance add a --cwa-url https://x --max-sessions -1", 65),
            ("instance add a --cwa-url https://x --max-sessions ten", 65),
            (
                "instance add a --cwa-url https://x --http-max-connections none",
                65,
            ),
            ("instance add a --cwa-url https://x --auth kerberos", 65),
            (
                "instance add a --cwa-url https://x --password-caching yes",
                65,
            ),
            ("instance frob", 64),
            ("instance", 64),
            ("user add CORP\\a", 64),
            ("user add CORP\\a --sip-uri sip:a@b --im-enabled maybe", 65),
            ("device add 2100000a", 64),
            ("device add 2100000 --user CORP\\a", 65),
            ("device remove xyz", 65),
            ("device remove 2100000a extra", 64),
            ("audit --limit 0", 65),
            ("audit --limit -3", 65),
            ("audit --limit 100001", 65),
            ("frobnicate", 64),
            ("migrate now", 64),
        ] {
            match parse(line) {
                Err(e) => assert_eq!(e.exit_code(), code, "{line}: {e}"),
                Ok(c) => panic!("{line}: accepted as {c:?}"),
            }
        }
    }
}
