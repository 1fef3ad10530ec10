/*!
`collabctl`: administration of the Config DB from the command line. This
module owns the argument parsing (by hand), the plain-text output, and the
mapping of failures to sysexits-style exit codes; every read and write goes
through [`ConfigDb`].

Exit codes: 0 success; 64 usage (unknown command or option, missing
argument); 65 bad data (malformed PIN, login, SIP URI, URL or key, unknown
instance, user or device, duplicate, limit of zero or below); 66 a key file
to import cannot be read; 69 database unreachable; 70 any other database
failure; 73 the key file cannot be written.
*/

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::configdb::{
    format_pin, generate_transport_key, parse_cwa_url, parse_hex_key, parse_instance_name,
    parse_login, parse_pin, parse_sip_uri, AuthMode, ConfigDb, DbError, Instance, InstanceChange,
    InstanceSettings, SessionTarget,
};

/// Environment variable holding the database URL when `--database` is not
/// given.
pub use crate::configdb::DATABASE_URL_ENV as DATABASE_ENV;

/// How many audit events `collabctl audit` shows without `--limit`.
pub const DEFAULT_AUDIT_LIMIT: u32 = 50;

/// Largest `--limit` accepted, so one command cannot ask for everything.
pub const MAX_AUDIT_LIMIT: u32 = 100_000;

/// Why a collabctl command failed. Its `Display` is the one line printed on
/// stderr.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong (exit 64).
    Usage(String),
    /// A Config DB failure (exit 65, 69 or 70 by kind).
    Db(DbError),
    /// A key file to import cannot be read (exit 66).
    KeyInput { path: PathBuf, error: io::Error },
    /// The key file cannot be written (exit 73).
    KeyOutput { path: PathBuf, error: io::Error },
    /// Standard output cannot be written (exit 74).
    Output(io::Error),
    /// `collabctl demo` failed (its own exit codes).
    Demo(crate::admin::demo::DemoError),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(why) => write!(f, "{why} (see collabctl --help)"),
            CliError::Db(e) => write!(f, "{e}"),
            CliError::KeyInput { path, error } => {
                write!(f, "cannot read key file {}: {error}", path.display())
            }
            CliError::KeyOutput { path, error } => {
                write!(f, "cannot write key file {}: {error}", path.display())
            }
            CliError::Output(e) => write!(f, "cannot write output: {e}"),
            CliError::Demo(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<DbError> for CliError {
    fn from(e: DbError) -> CliError {
        CliError::Db(e)
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> CliError {
        CliError::Output(e)
    }
}

impl CliError {
    /// The process exit code for this failure (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 64,
            CliError::Db(DbError::BadData { .. })
            | CliError::Db(DbError::NotFound { .. })
            | CliError::Db(DbError::Duplicate { .. }) => 65,
            CliError::Db(DbError::Unreachable(_)) => 69,
            CliError::Db(DbError::Query(_)) => 70,
            CliError::KeyInput { .. } => 66,
            CliError::KeyOutput { .. } => 73,
            CliError::Output(_) => 74,
            CliError::Demo(e) => e.exit_code(),
        }
    }
}

fn usage(why: impl Into<String>) -> CliError {
    CliError::Usage(why.into())
}

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

/// Options of one command: `--name value` or `--name=value`, each at most
/// once, from a fixed set.
struct Options {
    values: BTreeMap<&'static str, String>,
    positional: Vec<String>,
}

impl Options {
    fn parse(words: &[String], allowed: &[&'static str]) -> Result<Options, CliError> {
        let mut values = BTreeMap::new();
        let mut positional = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let word = &words[i];
            if let Some(flag) = word.strip_prefix("--") {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (flag, None),
                };
                let known = allowed
                    .iter()
                    .find(|a| **a == name)
                    .ok_or_else(|| usage(format!("unknown option --{name}")))?;
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        words
                            .get(i)
                            .cloned()
                            .ok_or_else(|| usage(format!("--{name} needs a value")))?
                    }
                };
                if values.insert(*known, value).is_some() {
                    return Err(usage(format!("--{name} given twice")));
                }
            } else {
                positional.push(word.clone());
            }
            i += 1;
        }
        Ok(Options { values, positional })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Exactly `n` positional arguments, named `names` in messages.
    fn positionals(&self, names: &[&str]) -> Result<Vec<String>, CliError> {
        if self.positional.len() < names.len() {
            return Err(usage(format!("missing {}", names[self.positional.len()])));
        }
        if self.positional.len() > names.len() {
            return Err(usage(format!(
                "unexpected argument {:?}",
                self.positional[names.len()]
            )));
        }
        Ok(self.positional.clone())
    }
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

/// `session end`'s target: exactly eight hex digits are a device PIN (as
/// everywhere in collabctl); any other run of decimal digits is a session
/// ID (an eight-digit ID is written with a leading zero).
fn parse_session_target(text: &str) -> Result<SessionTarget, CliError> {
    if text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(SessionTarget::Pin(parse_pin(text)?));
    }
    match text.parse::<i64>() {
        Ok(id) if id > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(SessionTarget::Id(id)),
        _ => Err(bad(format!(
            "{text:?} is neither a PIN (8 hex digits) nor a session ID (digits)"
        ))),
    }
}

/// Who runs this collabctl, for the audit of `session end`: the operating
/// system user (from the environment, which an administrator's shell sets).
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

const INSTANCE_OPTIONS: &[&str] = &[
    "cwa-url",
    "max-sessions",
    "idle-timeout-ms",
    "inactivity-timeout-ms",
    "http-max-connections",
    "auth",
    "password-caching",
];

fn bad(what: impl Into<String>) -> CliError {
    CliError::Db(DbError::BadData { what: what.into() })
}

/// A count or duration above zero; `none` gives `None` when `nullable`.
fn parse_positive(option: &str, text: &str, nullable: bool) -> Result<Option<u64>, CliError> {
    if nullable && text == "none" {
        return Ok(None);
    }
    let n: u64 = match text.parse::<i128>() {
        Ok(n) if n > 0 && n <= i64::MAX as i128 => n as u64,
        Ok(_) => return Err(bad(format!("--{option} {text} must be above 0"))),
        Err(_) => {
            return Err(bad(format!(
                "--{option} {text:?} is not a whole number{}",
                if nullable { " or none" } else { "" }
            )))
        }
    };
    Ok(Some(n))
}

fn parse_u32(option: &str, text: &str, nullable: bool) -> Result<Option<u32>, CliError> {
    match parse_positive(option, text, nullable)? {
        None => Ok(None),
        Some(n) if n <= i32::MAX as u64 => Ok(Some(n as u32)),
        Some(_) => Err(bad(format!("--{option} {text} is too large"))),
    }
}

fn parse_switch(option: &str, text: &str, yes: &str, no: &str) -> Result<bool, CliError> {
    if text == yes {
        Ok(true)
    } else if text == no {
        Ok(false)
    } else {
        Err(bad(format!(
            "--{option} must be {yes} or {no}, not {text:?}"
        )))
    }
}

fn instance_change(options: &Options) -> Result<InstanceChange, CliError> {
    let mut change = InstanceChange {
        cwa_url: options.get("cwa-url").map(str::to_string),
        ..InstanceChange::default()
    };
    if let Some(url) = &change.cwa_url {
        parse_cwa_url(url)?;
    }
    if let Some(v) = options.get("max-sessions") {
        change.max_sessions = Some(parse_u32("max-sessions", v, true)?);
    }
    if let Some(v) = options.get("idle-timeout-ms") {
        change.idle_timeout_ms = Some(parse_positive("idle-timeout-ms", v, true)?);
    }
    if let Some(v) = options.get("inactivity-timeout-ms") {
        change.inactivity_timeout_ms = Some(parse_positive("inactivity-timeout-ms", v, true)?);
    }
    if let Some(v) = options.get("http-max-connections") {
        change.http_max_connections = parse_u32("http-max-connections", v, false)?;
    }
    if let Some(v) = options.get("auth") {
        change.auth_mode = Some(
            v.parse::<AuthMode>()
                .map_err(|e| DbError::bad(e.to_string()))?,
        );
    }
    if let Some(v) = options.get("password-caching") {
        change.password_caching = Some(parse_switch("password-caching", v, "on", "off")?);
    }
    Ok(change)
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
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
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

fn show_instance(i: &Instance, out: &mut dyn Write) -> Result<(), CliError> {
    let rows = vec![
        ("name", i.name.clone()),
        ("cwa url", i.cwa_url.clone()),
        ("auth", i.auth_mode.to_string()),
        ("max sessions", or_none(i.max_sessions.map(u64::from))),
        ("idle timeout ms", or_none(i.idle_timeout_ms)),
        ("inactivity timeout ms", or_none(i.inactivity_timeout_ms)),
        ("http max connections", i.http_max_connections.to_string()),
        ("password caching", on_off(i.password_caching).to_string()),
        (
            "listen addr",
            i.listen_addr.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "heartbeat",
            i.heartbeat_at_ms.map_or("never".to_string(), format_time),
        ),
        ("sessions in use", i.sessions_in_use.to_string()),
        (
            "session limit",
            i.session_limit.map_or("-".to_string(), |n| n.to_string()),
        ),
        ("healthy", yes_no(i.healthy).to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        writeln!(out, "{key:<width$}  {value}")?;
    }
    Ok(())
}

fn or_none(value: Option<u64>) -> String {
    value.map_or("none".to_string(), |n| n.to_string())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Prints `rows` under `headers` in aligned columns (two spaces apart; the
/// last column is not padded).
fn table(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> Result<(), CliError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                text.push_str(&" ".repeat(pad));
            }
        }
        text
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SSZ` (UTC) of an epoch-milliseconds time.
pub fn format_time(epoch_ms: i64) -> String {
    let t = crate::ops::utc::Utc::from_epoch_ms(epoch_ms);
    format!("{} {}Z", t.date(), t.time())
}

/// A heartbeat's age for `sessions`: how long ago, in seconds.
fn format_age(ms: i64) -> String {
    let ms = ms.max(0);
    format!("{}.{}s ago", ms / 1000, (ms % 1000) / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

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
