/*!
The Config DB: collabd's shared state in PostgreSQL. This module owns the
schema (the embedded `sql/` migrations), the typed reads and writes that
`collabctl`, `collabd` and `collab-dispatcher` make, the validation of what
goes in (PINs, logins, SIP URIs, CWA URLs), and the one error type,
[`DbError`], that callers map to exit codes or device status codes.

Every change is one transaction: a change either lands whole, together with
its audit row where it has one, or not at all. Passwords are never stored;
transport keys are stored but never printed, logged or audited.

The connection is plain `postgres::Client` with `NoTls` (the dependency set
has no TLS adapter for PostgreSQL): reach the server over its Unix socket or
a trusted network. Timestamps cross the boundary as epoch milliseconds
(`*_ms: i64`), because the `postgres` crate is built without its chrono or
time adapters.

Storage imports no module of the crate above it: only the PIN and key
spellings of `hex`.
*/

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::error::SqlState;

mod instances;
mod migrate;
pub mod pool;
mod registry;
mod users;
mod validate;

pub use instances::{AuthMode, Instance, InstanceChange, InstanceSettings, UnknownAuthMode};
pub use migrate::{AppliedMigration, Migration, MIGRATIONS};
pub use registry::{
    AuditEvent, AuditRecord, Coverage, EndRequest, InstanceHealth, SessionRecord, SessionState,
    SessionTarget, INSTANCE_LOST,
};
pub use users::{Device, DeviceSummary, User};
/// The environment variable that carries the Config DB URL to every program
/// that reads the Config DB when no `--database` is given.
pub const DATABASE_URL_ENV: &str = "COLLABD_DATABASE_URL";

pub use validate::{
    format_pin, generate_transport_key, logins_match, parse_cwa_url, parse_hex_key,
    parse_instance_name, parse_login, parse_pin, parse_sip_uri, CwaUrl,
};

/// How long a connection attempt may take before the database counts as
/// unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side limit on one statement; a statement that runs longer is
/// cancelled and reported as [`DbError::Unreachable`] (the database is not
/// answering in useful time). Applies to lock waits too.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Kernel-side bound on unacknowledged TCP data, so that a dead server on a
/// TCP connection is noticed instead of blocking a read for ever (the
/// synchronous client has no read timeout of its own).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a Config DB operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The server could not be reached, refused the connection, dropped it,
    /// or did not answer within [`STATEMENT_TIMEOUT`]. The text is the
    /// driver's reason (it never contains a password).
    Unreachable(Cause),
    /// Input that is malformed or breaks a rule (a PIN that is not 8 hex
    /// digits, a limit of zero, a URL that is not http or https, ...).
    BadData { what: String },
    /// A named thing does not exist (instance, user, device, session).
    NotFound { what: String },
    /// A named thing already exists (PIN, login, instance, SIP URI).
    Duplicate { what: String },
    /// Any other database failure, including a schema that has not been
    /// migrated.
    Query(Cause),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unreachable(why) => write!(f, "Config DB unreachable: {why}"),
            DbError::BadData { what } => write!(f, "bad data: {what}"),
            DbError::NotFound { what } => write!(f, "not found: {what}"),
            DbError::Duplicate { what } => write!(f, "already exists: {what}"),
            DbError::Query(why) => write!(f, "Config DB query failed: {why}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Unreachable(cause) | DbError::Query(cause) => cause.driver_error(),
            _ => None,
        }
    }
}

/// Why the database failed, as text, with the driver's error kept as the
/// [`DbError`]'s `source()` when there was one. Compared by its text.
#[derive(Debug, Clone)]
pub struct Cause {
    text: String,
    driver: Option<Arc<postgres::Error>>,
}

impl Cause {
    /// `text`, with the driver's error beneath it.
    pub fn from_driver(text: String, error: postgres::Error) -> Cause {
        Cause {
            text,
            driver: Some(Arc::new(error)),
        }
    }

    /// The driver's error, if this came from one.
    pub fn driver_error(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.driver
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.text == other.text
    }
}

impl Eq for Cause {}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<String> for Cause {
    fn from(text: String) -> Cause {
        Cause { text, driver: None }
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Cause {
        Cause::from(text.to_string())
    }
}

impl DbError {
    pub(crate) fn bad(what: impl Into<String>) -> DbError {
        DbError::BadData { what: what.into() }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> DbError {
        DbError::NotFound { what: what.into() }
    }

    pub(crate) fn duplicate(what: impl Into<String>) -> DbError {
        DbError::Duplicate { what: what.into() }
    }
}

/// Classifies a driver error. `context` names what was being done, for the
/// cases where the server's own message would be cryptic.
pub(crate) fn classify(err: postgres::Error, context: &str) -> DbError {
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        let message = db.message();
        if *code == SqlState::UNIQUE_VIOLATION {
            return DbError::duplicate(context.to_string());
        }
        if *code == SqlState::FOREIGN_KEY_VIOLATION {
            return DbError::not_found(format!("{context}: a referenced row does not exist"));
        }
        if *code == SqlState::CHECK_VIOLATION
            || *code == SqlState::NOT_NULL_VIOLATION
            || *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            || *code == SqlState::INVALID_TEXT_REPRESENTATION
        {
            return DbError::bad(format!("{context}: {message}"));
        }
        if *code == SqlState::QUERY_CANCELED {
            let text = format!("{context}: the database did not answer in time");
            return DbError::Unreachable(Cause::from_driver(text, err));
        }
        if *code == SqlState::UNDEFINED_TABLE {
            let text =
                format!("{context}: {message} (is the schema migrated? run `collabctl migrate`)");
            return DbError::Query(Cause::from_driver(text, err));
        }
        let class = &code.code()[..2];
        // 08: connection exception; 57P: operator intervention (shutdown);
        // 53: insufficient resources (too many connections, out of memory).
        if class == "08" || class == "53" || code.code().starts_with("57P") {
            let text = format!("{context}: {message}");
            return DbError::Unreachable(Cause::from_driver(text, err));
        }
        let text = format!("{context}: {message}");
        return DbError::Query(Cause::from_driver(text, err));
    }
    // No server error: the connection itself failed (I/O, closed, timeout).
    let text = format!("{context}: {}", with_cause(&err));
    DbError::Unreachable(Cause::from_driver(text, err))
}

/// The driver's error followed by its cause ("error connecting to server:
/// Connection refused"), which its `Display` leaves out.
fn with_cause(err: &postgres::Error) -> String {
    use std::error::Error as _;
    match err.source() {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

/// A connection to the Config DB. Not shared between threads: each thread
/// that needs the database opens its own (PostgreSQL connections are
/// cheap next to a CWA session).
pub struct ConfigDb {
    pub(crate) client: postgres::Client,
}

impl fmt::Debug for ConfigDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigDb").finish_non_exhaustive()
    }
}

impl ConfigDb {
    /// Connects to `url`, a libpq URL (`postgresql://user@host/db`, with a
    /// percent-encoded socket directory as host for a Unix socket) or
    /// key=value string (`host=/run/postgresql dbname=collabd`). Applies
    /// [`CONNECT_TIMEOUT`] unless the URL sets `connect_timeout`, and
    /// [`STATEMENT_TIMEOUT`] to every statement.
    pub fn connect(url: &str) -> Result<ConfigDb, DbError> {
        ConfigDb::connect_with_password(url, None)
    }

    /// As [`ConfigDb::connect`], with the password given separately (read
    /// from a file such as a systemd credential) instead of in `url`.
    pub fn connect_with_password(url: &str, password: Option<&str>) -> Result<ConfigDb, DbError> {
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| DbError::bad(format!("database URL: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("collabd");
        }
        let timeout_option = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options = match config.get_options() {
            Some(existing) if !existing.is_empty() => format!("{existing} {timeout_option}"),
            _ => timeout_option,
        };
        config.options(&options);
        if let Some(password) = password {
            config.password(password);
        }
        let client = config.connect(postgres::NoTls).map_err(|e| {
            let text = match e.as_db_error() {
                // The server answered but refused us (unknown database,
                // authentication, too many clients): for a caller this
                // is the database being unavailable.
                Some(db) => db.message().to_string(),
                None => with_cause(&e),
            };
            DbError::Unreachable(Cause::from_driver(text, e))
        })?;
        Ok(ConfigDb { client })
    }

    /// Cheap liveness check (for a health probe or heartbeat loop).
    pub fn ping(&mut self) -> Result<(), DbError> {
        self.client
            .simple_query("SELECT 1")
            .map_err(|e| classify(e, "ping"))?;
        Ok(())
    }

    /// The underlying client, for tests and for queries this module does not
    /// offer yet. Prefer adding a typed function here.
    pub fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// Milliseconds since the epoch of a `timestamptz` column, as SQL.
pub(crate) fn epoch_ms(column: &str) -> String {
    format!("(extract(epoch from {column}) * 1000)::bigint")
}
