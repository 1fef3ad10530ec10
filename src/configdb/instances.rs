/*!
collabd instances: their settings (CWA URL, authentication mode, session
limits and timeouts, password caching), as written by `collabctl` and read
by `collabd` at start-up and on reload.
*/

use std::fmt;
use std::str::FromStr;

use postgres::types::ToSql;
use postgres::Row;

use super::registry::audit_in;
use super::validate::{parse_cwa_url, parse_instance_name};
use super::{classify, epoch_ms, AuditEvent, ConfigDb, DbError};

/// Default for `http_max_connections` when `instance add` does not give
/// one: what the HTTP persistent connections to CWA can carry when no
/// `max_sessions` is set. One connection per session; chosen to stay well
/// inside systemd's default TasksMax.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: u32 = 1000;

/// Default for `away_after_ms`: five minutes without a user action shows
/// the user Away, as CWA does for its own clients.
pub const DEFAULT_AWAY_AFTER_MS: u64 = 5 * 60 * 1000;

/// How an instance's collabd signs users in to CWA, stored in
/// `instance.auth_mode` by its spelling ([`AuthMode::as_str`]); the service
/// hands it to the CWA client as the client's own `cwa::AuthMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// NTLMv2 first, then forms if that fails (what BES does; the default).
    #[default]
    IwaThenForms,
    /// Forms only.
    Forms,
    /// Integrated Windows authentication (NTLMv2) only.
    Iwa,
}

impl AuthMode {
    /// The configuration spelling: `iwa-then-forms`, `forms` or `iwa`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::IwaThenForms => "iwa-then-forms",
            AuthMode::Forms => "forms",
            AuthMode::Iwa => "iwa",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An auth mode spelled other than `iwa-then-forms`, `forms` or `iwa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAuthMode(pub String);

impl fmt::Display for UnknownAuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown CWA auth mode {:?} (expected iwa-then-forms, forms or iwa)",
            self.0
        )
    }
}

impl std::error::Error for UnknownAuthMode {}

impl FromStr for AuthMode {
    type Err = UnknownAuthMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "iwa-then-forms" => Ok(AuthMode::IwaThenForms),
            "forms" => Ok(AuthMode::Forms),
            "iwa" => Ok(AuthMode::Iwa),
            _ => Err(UnknownAuthMode(s.to_string())),
        }
    }
}

/// An instance row: settings and the last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// As given to `instance add`; parse with [`super::parse_cwa_url`].
    pub cwa_url: String,
    pub auth_mode: AuthMode,
    /// `None`: no configured maximum (admission stops at
    /// `http_max_connections` with status Failed).
    pub max_sessions: Option<u32>,
    /// `None`: at the maximum, never sign out idle sessions.
    pub idle_timeout_ms: Option<u64>,
    /// `None`: no inactivity limit.
    pub inactivity_timeout_ms: Option<u64>,
    pub http_max_connections: u32,
    pub password_caching: bool,
    /// Where the instance listens for the dispatcher (host:port).
    pub listen_addr: Option<String>,
    /// Time of the last heartbeat, epoch ms.
    pub heartbeat_at_ms: Option<i64>,
    pub sessions_in_use: u32,
    pub session_limit: Option<u32>,
    pub healthy: bool,
    /// A device unused this long shows its user Away; 0: never.
    pub away_after_ms: u64,
}

/// The settings `instance add` takes. `Default` gives the documented
/// defaults with an empty CWA URL (which `add_instance` refuses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSettings {
    pub cwa_url: String,
    pub auth_mode: AuthMode,
    pub max_sessions: Option<u32>,
    pub idle_timeout_ms: Option<u64>,
    pub inactivity_timeout_ms: Option<u64>,
    pub http_max_connections: u32,
    pub password_caching: bool,
    /// A device unused this long shows its user Away; 0: never.
    pub away_after_ms: u64,
}

impl Default for InstanceSettings {
    fn default() -> InstanceSettings {
        InstanceSettings {
            cwa_url: String::new(),
            auth_mode: AuthMode::IwaThenForms,
            max_sessions: None,
            idle_timeout_ms: None,
            inactivity_timeout_ms: None,
            http_max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            password_caching: false,
            away_after_ms: DEFAULT_AWAY_AFTER_MS,
        }
    }
}

/// A change to an instance's settings: `None` leaves a field alone; for the
/// nullable settings `Some(None)` unsets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceChange {
    pub cwa_url: Option<String>,
    pub auth_mode: Option<AuthMode>,
    pub max_sessions: Option<Option<u32>>,
    pub idle_timeout_ms: Option<Option<u64>>,
    pub inactivity_timeout_ms: Option<Option<u64>>,
    pub http_max_connections: Option<u32>,
    pub password_caching: Option<bool>,
    pub away_after_ms: Option<u64>,
}

impl InstanceChange {
    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == InstanceChange::default()
    }
}

fn check_limits(
    max_sessions: Option<u32>,
    idle: Option<u64>,
    inactivity: Option<u64>,
    http_max: u32,
) -> Result<(), DbError> {
    // The database columns are signed; keep values inside them.
    if let Some(n) = max_sessions {
        if n == 0 || n > i32::MAX as u32 {
            return Err(DbError::bad(format!(
                "max sessions {n} must be 1 to {}",
                i32::MAX
            )));
        }
    }
    for (what, value) in [("idle timeout", idle), ("inactivity timeout", inactivity)] {
        if let Some(ms) = value {
            if ms == 0 || ms > i64::MAX as u64 {
                return Err(DbError::bad(format!("{what} {ms} ms must be above 0")));
            }
        }
    }
    if http_max == 0 || http_max > i32::MAX as u32 {
        return Err(DbError::bad(format!(
            "HTTP max connections {http_max} must be 1 to {}",
            i32::MAX
        )));
    }
    Ok(())
}

/// The away period as its (signed) column.
fn away_column(ms: u64) -> Result<i64, DbError> {
    i64::try_from(ms).map_err(|_| DbError::bad(format!("away period {ms} ms is too large")))
}

fn describe(settings: &InstanceSettings) -> String {
    let opt = |v: Option<u64>| v.map_or("none".to_string(), |n| n.to_string());
    format!(
        "cwa-url={} auth={} max-sessions={} idle-timeout-ms={} inactivity-timeout-ms={} http-max-connections={} password-caching={} away-after-ms={}",
        settings.cwa_url,
        settings.auth_mode,
        opt(settings.max_sessions.map(u64::from)),
        opt(settings.idle_timeout_ms),
        opt(settings.inactivity_timeout_ms),
        settings.http_max_connections,
        if settings.password_caching { "on" } else { "off" },
        settings.away_after_ms,
    )
}

fn instance_columns() -> String {
    format!(
        "name, cwa_url, auth_mode, max_sessions, idle_timeout_ms, inactivity_timeout_ms, \
         http_max_connections, password_caching, listen_addr, {}, sessions_in_use, \
         session_limit, healthy, away_after_ms",
        epoch_ms("heartbeat_at")
    )
}

fn instance_from_row(row: &Row) -> Result<Instance, DbError> {
    let auth: String = row.get(2);
    let nonneg = |v: Option<i64>, what: &str| -> Result<Option<u64>, DbError> {
        v.map(|n| u64::try_from(n).map_err(|_| DbError::bad(format!("stored {what} {n}"))))
            .transpose()
    };
    let to_u32 = |v: i32, what: &str| -> Result<u32, DbError> {
        u32::try_from(v).map_err(|_| DbError::bad(format!("stored {what} {v}")))
    };
    Ok(Instance {
        name: row.get(0),
        cwa_url: row.get(1),
        auth_mode: auth.parse().map_err(|e| DbError::bad(format!("{e}")))?,
        max_sessions: row
            .get::<_, Option<i32>>(3)
            .map(|n| to_u32(n, "max_sessions"))
            .transpose()?,
        idle_timeout_ms: nonneg(row.get(4), "idle_timeout_ms")?,
        inactivity_timeout_ms: nonneg(row.get(5), "inactivity_timeout_ms")?,
        http_max_connections: to_u32(row.get(6), "http_max_connections")?,
        password_caching: row.get(7),
        listen_addr: row.get(8),
        heartbeat_at_ms: row.get(9),
        sessions_in_use: to_u32(row.get(10), "sessions_in_use")?,
        session_limit: row
            .get::<_, Option<i32>>(11)
            .map(|n| to_u32(n, "session_limit"))
            .transpose()?,
        healthy: row.get(12),
        away_after_ms: nonneg(row.get(13), "away_after_ms")?.unwrap_or(DEFAULT_AWAY_AFTER_MS),
    })
}

/// The columns that hold an instance's settings, in the order of
/// [`SettingsColumns::params`] (after the name, `$1`): one list for the
/// INSERT and the UPDATE.
const SETTINGS_COLUMNS: [&str; 8] = [
    "cwa_url",
    "auth_mode",
    "max_sessions",
    "idle_timeout_ms",
    "inactivity_timeout_ms",
    "http_max_connections",
    "password_caching",
    "away_after_ms",
];

/// An instance's settings as the column values of its row.
struct SettingsColumns<'a> {
    cwa_url: &'a str,
    auth_mode: &'static str,
    max_sessions: Option<i32>,
    idle_timeout_ms: Option<i64>,
    inactivity_timeout_ms: Option<i64>,
    http_max_connections: i32,
    password_caching: bool,
    away_after_ms: i64,
}

impl<'a> SettingsColumns<'a> {
    fn of(settings: &'a InstanceSettings) -> Result<SettingsColumns<'a>, DbError> {
        Ok(SettingsColumns {
            cwa_url: &settings.cwa_url,
            auth_mode: settings.auth_mode.as_str(),
            max_sessions: settings.max_sessions.map(|n| n as i32),
            idle_timeout_ms: settings.idle_timeout_ms.map(|n| n as i64),
            inactivity_timeout_ms: settings.inactivity_timeout_ms.map(|n| n as i64),
            http_max_connections: settings.http_max_connections as i32,
            password_caching: settings.password_caching,
            away_after_ms: away_column(settings.away_after_ms)?,
        })
    }

    /// `$1` the instance's name, then the values of [`SETTINGS_COLUMNS`].
    fn params<'p>(&'p self, name: &'p &str) -> [&'p (dyn ToSql + Sync); 9] {
        [
            name,
            &self.cwa_url,
            &self.auth_mode,
            &self.max_sessions,
            &self.idle_timeout_ms,
            &self.inactivity_timeout_ms,
            &self.http_max_connections,
            &self.password_caching,
            &self.away_after_ms,
        ]
    }
}

impl ConfigDb {
    /// Adds an instance. Refuses a malformed name or URL, a zero limit, and
    /// a name that exists ([`DbError::Duplicate`]). Audited as
    /// `instance_added`.
    pub fn add_instance(&mut self, name: &str, settings: &InstanceSettings) -> Result<(), DbError> {
        parse_instance_name(name)?;
        parse_cwa_url(&settings.cwa_url)?;
        check_limits(
            settings.max_sessions,
            settings.idle_timeout_ms,
            settings.inactivity_timeout_ms,
            settings.http_max_connections,
        )?;
        let context = format!("instance {name}");
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, &context))?;
        let values = SettingsColumns::of(settings)?;
        let sql = format!(
            "INSERT INTO instance (name, {}) VALUES ($1, {})",
            SETTINGS_COLUMNS.join(", "),
            (2..=SETTINGS_COLUMNS.len() + 1)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tx.execute(sql.as_str(), &values.params(&name))
            .map_err(|e| classify(e, &context))?;
        let mut event = AuditEvent::new("instance_added");
        event.instance = Some(name.to_string());
        event.reason = Some(describe(settings));
        audit_in(&mut tx, &event)?;
        tx.commit().map_err(|e| classify(e, &context))
    }

    /// Changes an instance's settings; returns the instance as it now is.
    /// Unknown name: [`DbError::NotFound`]. Audited as `instance_changed`
    /// with the settings after the change.
    pub fn set_instance(
        &mut self,
        name: &str,
        change: &InstanceChange,
    ) -> Result<Instance, DbError> {
        if let Some(url) = &change.cwa_url {
            parse_cwa_url(url)?;
        }
        let context = format!("instance {name}");
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, &context))?;
        let sql = format!(
            "SELECT {} FROM instance WHERE name = $1 FOR UPDATE",
            instance_columns()
        );
        let row = tx
            .query_opt(sql.as_str(), &[&name])
            .map_err(|e| classify(e, &context))?
            .ok_or_else(|| DbError::not_found(format!("instance {name}")))?;
        let current = instance_from_row(&row)?;
        let new = InstanceSettings {
            cwa_url: change.cwa_url.clone().unwrap_or(current.cwa_url),
            auth_mode: change.auth_mode.unwrap_or(current.auth_mode),
            max_sessions: change.max_sessions.unwrap_or(current.max_sessions),
            idle_timeout_ms: change.idle_timeout_ms.unwrap_or(current.idle_timeout_ms),
            inactivity_timeout_ms: change
                .inactivity_timeout_ms
                .unwrap_or(current.inactivity_timeout_ms),
            http_max_connections: change
                .http_max_connections
                .unwrap_or(current.http_max_connections),
            password_caching: change.password_caching.unwrap_or(current.password_caching),
            away_after_ms: change.away_after_ms.unwrap_or(current.away_after_ms),
        };
        check_limits(
            new.max_sessions,
            new.idle_timeout_ms,
            new.inactivity_timeout_ms,
            new.http_max_connections,
        )?;
        let values = SettingsColumns::of(&new)?;
        let update = format!(
            "UPDATE instance SET {}, updated_at = now() WHERE name = $1",
            SETTINGS_COLUMNS
                .iter()
                .zip(2..)
                .map(|(column, n)| format!("{column} = ${n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tx.execute(update.as_str(), &values.params(&name))
            .map_err(|e| classify(e, &context))?;
        let mut event = AuditEvent::new("instance_changed");
        event.instance = Some(name.to_string());
        event.reason = Some(describe(&new));
        audit_in(&mut tx, &event)?;
        let row = tx
            .query_one(sql.as_str(), &[&name])
            .map_err(|e| classify(e, &context))?;
        let updated = instance_from_row(&row)?;
        tx.commit().map_err(|e| classify(e, &context))?;
        Ok(updated)
    }

    /// One instance by name.
    pub fn instance(&mut self, name: &str) -> Result<Instance, DbError> {
        let sql = format!(
            "SELECT {} FROM instance WHERE name = $1",
            instance_columns()
        );
        let row = self
            .client
            .query_opt(sql.as_str(), &[&name])
            .map_err(|e| classify(e, "reading instance"))?
            .ok_or_else(|| DbError::not_found(format!("instance {name}")))?;
        instance_from_row(&row)
    }

    /// Every instance, by name.
    pub fn list_instances(&mut self) -> Result<Vec<Instance>, DbError> {
        let sql = format!("SELECT {} FROM instance ORDER BY name", instance_columns());
        let rows = self
            .client
            .query(sql.as_str(), &[])
            .map_err(|e| classify(e, "listing instances"))?;
        rows.iter().map(instance_from_row).collect()
    }
}
