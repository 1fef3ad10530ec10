/*!
The live registry: sessions (written by the instance that owns them on each
state change), instance heartbeats (read by the dispatcher to pick a live
instance), and the audit trail of logins, evictions, logouts and admin
changes.
*/

use std::fmt;
use std::str::FromStr;

use postgres::{GenericClient, Row};

use super::validate::{parse_instance_name, pin_from};
use super::{classify, epoch_ms, ConfigDb, DbError};

/// Longest reason or detail text kept in `session.end_reason` and
/// `audit_event.reason` (longer text is cut, on a character boundary).
pub const MAX_REASON_CHARS: usize = 500;

/// Where the device says it is (from its status messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coverage {
    /// In coverage and active.
    #[default]
    In,
    /// Out of coverage: a candidate for sign-out at the session limit.
    Out,
    /// In coverage but dormant (no presence updates wanted).
    Dormant,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::In => "in",
            Coverage::Out => "out",
            Coverage::Dormant => "dormant",
        }
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Coverage {
    type Err = DbError;
    fn from_str(text: &str) -> Result<Coverage, DbError> {
        match text {
            "in" => Ok(Coverage::In),
            "out" => Ok(Coverage::Out),
            "dormant" => Ok(Coverage::Dormant),
            _ => Err(DbError::bad(format!(
                "coverage {text:?} is not in, out or dormant"
            ))),
        }
    }
}

/// Whether a session row is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Ended,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }
}

/// One row of the session registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: i64,
    pub instance: String,
    pub login: String,
    pub pin: u32,
    pub state: SessionState,
    pub coverage: Coverage,
    pub last_status_at_ms: i64,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
    /// An administrator asked to end the session (`collabctl session end`,
    /// `device remove`, `user revoke`): the reason given, until the
    /// instance holding it ends it.
    pub end_requested: Option<String>,
    /// Milliseconds since the holding instance's last heartbeat, by the
    /// database's clock (`None`: it never wrote one).
    pub instance_heartbeat_age_ms: Option<i64>,
}

/// Which live session(s) an administrator means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTarget {
    /// The active session of this device.
    Pin(u32),
    /// The session with this registry id.
    Id(i64),
}

/// A session whose end an administrator requested, as its instance reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndRequest {
    /// The registry id.
    pub id: i64,
    pub reason: String,
    /// Who asked (for the audit).
    pub by: String,
}

/// The reason written on sessions of an instance whose heartbeat went
/// stale (`end_reason`, and the audit's `session_ended` reason).
pub const INSTANCE_LOST: &str = "instance lost";

/// A live instance as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    pub name: String,
    /// host:port the dispatcher relays to.
    pub listen_addr: String,
    pub sessions_in_use: u32,
    pub session_limit: Option<u32>,
    pub healthy: bool,
    /// Milliseconds since the heartbeat, by the database's clock.
    pub heartbeat_age_ms: i64,
}

/// An audit event to record. `event` is a lower-case word such as
/// `login_admitted`, `login_refused`, `evicted`, `logout`, `session_ended`
/// or one of collabctl's (`instance_added`, `user_granted`, ...). Never put
/// a password or key in any field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    pub event: String,
    pub instance: Option<String>,
    pub login: Option<String>,
    pub pin: Option<u32>,
    pub reason: Option<String>,
}

impl AuditEvent {
    /// An event with no details yet; set the public fields.
    pub fn new(event: &str) -> AuditEvent {
        AuditEvent {
            event: event.to_string(),
            ..AuditEvent::default()
        }
    }
}

/// A recorded audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub event: AuditEvent,
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_REASON_CHARS).collect()
}

/// Writes `event` through `client` (a transaction, so an admin change and
/// its audit row commit together).
pub(crate) fn audit_in<C: GenericClient>(
    client: &mut C,
    event: &AuditEvent,
) -> Result<(), DbError> {
    audit_at_in(client, event, None)
}

/// [`audit_in`] with the time it happened (epoch milliseconds), for a
/// write made late; `None` is now.
fn audit_at_in<C: GenericClient>(
    client: &mut C,
    event: &AuditEvent,
    at_ms: Option<i64>,
) -> Result<(), DbError> {
    let ok = !event.event.is_empty()
        && event.event.len() <= 64
        && event.event.as_bytes()[0].is_ascii_lowercase()
        && event
            .event
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(DbError::bad(format!(
            "audit event name {:?} must be a lower-case word",
            bounded(&event.event)
        )));
    }
    client
        .execute(
            "INSERT INTO audit_event (instance, login, pin, event, reason, at) \
             VALUES ($1, $2, $3, $4, $5, COALESCE(to_timestamp($6::float8 / 1000), now()))",
            &[
                &event.instance,
                &event.login,
                &event.pin.map(i64::from),
                &event.event,
                &event.reason.as_deref().map(bounded),
                &at_ms.map(|ms| ms as f64),
            ],
        )
        .map_err(|e| classify(e, "writing audit event"))?;
    Ok(())
}

/// The columns [`session_from_row`] reads, from `session s JOIN instance i`.
fn session_columns() -> String {
    format!(
        "s.id, s.instance, s.login, s.pin, s.state, s.coverage, {}, {}, {}, s.end_reason, \
         s.end_requested_reason, (extract(epoch from (now() - i.heartbeat_at)) * 1000)::bigint",
        epoch_ms("s.last_status_at"),
        epoch_ms("s.started_at"),
        epoch_ms("s.ended_at")
    )
}

const SESSION_FROM: &str = "session s JOIN instance i ON i.name = s.instance";

/// Marks the active sessions matched by `filter` (an SQL condition on `s`,
/// with `$1` its parameter) for ending, inside `tx`, and audits each as
/// `session_end_requested`. Returns the ids marked.
fn request_end_in<C: GenericClient>(
    tx: &mut C,
    filter: &str,
    param: &(dyn postgres::types::ToSql + Sync),
    reason: &str,
    by: &str,
) -> Result<Vec<i64>, DbError> {
    let sql = format!(
        "UPDATE session s SET end_requested_at = now(), end_requested_reason = $2, \
         end_requested_by = $3 WHERE s.state = 'active' AND {filter} \
         RETURNING s.id, s.instance, s.login, s.pin"
    );
    let rows = tx
        .query(sql.as_str(), &[param, &bounded(reason), &bounded(by)])
        .map_err(|e| classify(e, "requesting session end"))?;
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.get(0);
        let mut event = AuditEvent::new("session_end_requested");
        event.instance = Some(row.get(1));
        event.login = Some(row.get(2));
        event.pin = Some(pin_from(row.get(3))?);
        event.reason = Some(format!("session {id}: {reason} (by {by})"));
        audit_in(tx, &event)?;
        ids.push(id);
    }
    Ok(ids)
}

/// Requests the end of `login`'s active sessions (user revoked), in `tx`.
pub(crate) fn request_end_of_user_in<C: GenericClient>(
    tx: &mut C,
    login: &str,
    reason: &str,
    by: &str,
) -> Result<Vec<i64>, DbError> {
    request_end_in(tx, "lower(s.login) = lower($1)", &login, reason, by)
}

/// Requests the end of device `pin`'s active sessions, in `tx`.
pub(crate) fn request_end_of_device_in<C: GenericClient>(
    tx: &mut C,
    pin: u32,
    reason: &str,
    by: &str,
) -> Result<Vec<i64>, DbError> {
    request_end_in(tx, "s.pin = $1", &i64::from(pin), reason, by)
}

fn session_from_row(row: &Row) -> Result<SessionRecord, DbError> {
    let state: String = row.get(4);
    let coverage: String = row.get(5);
    Ok(SessionRecord {
        id: row.get(0),
        instance: row.get(1),
        login: row.get(2),
        pin: pin_from(row.get(3))?,
        state: match state.as_str() {
            "active" => SessionState::Active,
            "ended" => SessionState::Ended,
            other => return Err(DbError::bad(format!("stored session state {other:?}"))),
        },
        coverage: coverage.parse()?,
        last_status_at_ms: row.get(6),
        started_at_ms: row.get(7),
        ended_at_ms: row.get(8),
        end_reason: row.get(9),
        end_requested: row.get(10),
        instance_heartbeat_age_ms: row.get(11),
    })
}

impl ConfigDb {
    /// Records a new active session of `login` on device `pin` at
    /// `instance` and returns its id. Unknown instance: NotFound.
    pub fn session_started(
        &mut self,
        instance: &str,
        login: &str,
        pin: u32,
    ) -> Result<i64, DbError> {
        let row = self
            .client
            .query_one(
                "INSERT INTO session (instance, login, pin) VALUES ($1, $2, $3) RETURNING id",
                &[&instance, &login, &i64::from(pin)],
            )
            .map_err(|e| match classify(e, "recording session") {
                DbError::NotFound { .. } => DbError::not_found(format!("instance {instance}")),
                other => other,
            })?;
        Ok(row.get(0))
    }

    /// Records a status message from the device of active session `id`: its
    /// coverage, and now as the last status time. NotFound when no such
    /// active session exists.
    pub fn session_updated(&mut self, id: i64, coverage: Coverage) -> Result<(), DbError> {
        let n = self
            .client
            .execute(
                "UPDATE session SET coverage = $2, last_status_at = now() \
                 WHERE id = $1 AND state = 'active'",
                &[&id, &coverage.as_str()],
            )
            .map_err(|e| classify(e, "updating session"))?;
        if n == 0 {
            return Err(DbError::not_found(format!("active session {id}")));
        }
        Ok(())
    }

    /// Ends session `id` with `reason`. Returns `true` if this call ended
    /// it, `false` if it had already ended; NotFound if there is no such id.
    pub fn session_ended(&mut self, id: i64, reason: &str) -> Result<bool, DbError> {
        let row = self
            .client
            .query_opt(
                "WITH s AS (SELECT id, state FROM session WHERE id = $1 FOR UPDATE), \
                 u AS (UPDATE session SET state = 'ended', ended_at = now(), end_reason = $2 \
                       WHERE id IN (SELECT id FROM s WHERE state = 'active') RETURNING id) \
                 SELECT (SELECT count(*) FROM u) FROM s",
                &[&id, &bounded(reason)],
            )
            .map_err(|e| classify(e, "ending session"))?
            .ok_or_else(|| DbError::not_found(format!("session {id}")))?;
        Ok(row.get::<_, i64>(0) > 0)
    }

    /// Ends every active session of `instance` (an instance does this at
    /// start-up: sessions of a previous run are gone) and returns how many.
    pub fn end_all_sessions(&mut self, instance: &str, reason: &str) -> Result<u64, DbError> {
        self.client
            .execute(
                "UPDATE session SET state = 'ended', ended_at = now(), end_reason = $2 \
                 WHERE instance = $1 AND state = 'active'",
                &[&instance, &bounded(reason)],
            )
            .map_err(|e| classify(e, "ending sessions"))
    }

    /// Active sessions, of one instance or of all, oldest first. An unknown
    /// instance name is NotFound (not an empty list), so typos show.
    pub fn list_sessions(&mut self, instance: Option<&str>) -> Result<Vec<SessionRecord>, DbError> {
        if let Some(name) = instance {
            parse_instance_name(name)?;
            self.instance(name)?;
        }
        let sql = format!(
            "SELECT {} FROM {SESSION_FROM} \
             WHERE s.state = 'active' AND ($1::text IS NULL OR s.instance = $1) \
             ORDER BY s.started_at, s.id",
            session_columns()
        );
        let rows = self
            .client
            .query(sql.as_str(), &[&instance])
            .map_err(|e| classify(e, "listing sessions"))?;
        rows.iter().map(session_from_row).collect()
    }

    /// One session by id, active or ended.
    pub fn session(&mut self, id: i64) -> Result<SessionRecord, DbError> {
        let sql = format!(
            "SELECT {} FROM {SESSION_FROM} WHERE s.id = $1",
            session_columns()
        );
        let row = self
            .client
            .query_opt(sql.as_str(), &[&id])
            .map_err(|e| classify(e, "reading session"))?
            .ok_or_else(|| DbError::not_found(format!("session {id}")))?;
        session_from_row(&row)
    }

    /// The instance holding an active session for device `pin` (the most
    /// recently started one if, after a crash, several rows say so), for the
    /// dispatcher to route a reconnecting device back to it.
    pub fn instance_holding_session(&mut self, pin: u32) -> Result<Option<String>, DbError> {
        let row = self
            .client
            .query_opt(
                "SELECT instance FROM session WHERE pin = $1 AND state = 'active' \
                 ORDER BY started_at DESC, id DESC LIMIT 1",
                &[&i64::from(pin)],
            )
            .map_err(|e| classify(e, "finding session"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Asks the instance holding the targeted active session to end it
    /// (within one heartbeat) with `reason`; `by` names who asked. One
    /// transaction with its audit rows. Returns the ids marked; NotFound
    /// when no active session matches.
    pub fn request_session_end(
        &mut self,
        target: SessionTarget,
        reason: &str,
        by: &str,
    ) -> Result<Vec<i64>, DbError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, "requesting session end"))?;
        let ids = match target {
            SessionTarget::Pin(pin) => request_end_of_device_in(&mut tx, pin, reason, by)?,
            SessionTarget::Id(id) => request_end_in(&mut tx, "s.id = $1", &id, reason, by)?,
        };
        if ids.is_empty() {
            return Err(DbError::not_found(match target {
                SessionTarget::Pin(pin) => format!(
                    "active session for device PIN {}",
                    super::validate::format_pin(pin)
                ),
                SessionTarget::Id(id) => format!("active session {id}"),
            }));
        }
        tx.commit()
            .map_err(|e| classify(e, "requesting session end"))?;
        Ok(ids)
    }

    /// The end requests for `instance`'s active sessions, oldest first.
    pub fn end_requests(&mut self, instance: &str) -> Result<Vec<EndRequest>, DbError> {
        let rows = self
            .client
            .query(
                "SELECT id, end_requested_reason, coalesce(end_requested_by, '') FROM session \
                 WHERE instance = $1 AND state = 'active' AND end_requested_at IS NOT NULL \
                 ORDER BY end_requested_at, id",
                &[&instance],
            )
            .map_err(|e| classify(e, "reading end requests"))?;
        Ok(rows
            .iter()
            .map(|row| EndRequest {
                id: row.get(0),
                reason: row.get(1),
                by: row.get(2),
            })
            .collect())
    }

    /// Ends, with reason [`INSTANCE_LOST`], every active session of every
    /// instance other than `noticed_by` whose heartbeat is older than
    /// `lost_after_ms` (by the database's clock), auditing each as
    /// `session_ended`. Any number of instances and dispatchers may call
    /// this at once: a row is ended, and audited, by exactly one of them
    /// (the UPDATE re-checks `state` under the row lock). Returns how many
    /// sessions were ended, per instance.
    pub fn end_sessions_of_lost_instances(
        &mut self,
        lost_after_ms: u64,
        noticed_by: &str,
    ) -> Result<Vec<(String, u64)>, DbError> {
        let lost_after = i64::try_from(lost_after_ms).unwrap_or(i64::MAX / 2);
        let rows = self
            .client
            .query(
                "WITH lost AS ( \
                   SELECT name FROM instance WHERE name <> $2 AND heartbeat_at IS NOT NULL \
                     AND heartbeat_at <= now() - $1::bigint * interval '1 millisecond'), \
                 ended AS ( \
                   UPDATE session SET state = 'ended', ended_at = now(), end_reason = $3 \
                   WHERE state = 'active' AND instance IN (SELECT name FROM lost) \
                   RETURNING id, instance, login, pin), \
                 audited AS ( \
                   INSERT INTO audit_event (instance, login, pin, event, reason) \
                   SELECT instance, login, pin, 'session_ended', \
                          $3 || ' (session ' || id || ', noticed by ' || $2 || ')' FROM ended) \
                 SELECT instance, count(*) FROM ended GROUP BY instance ORDER BY instance",
                &[&lost_after, &bounded(noticed_by), &INSTANCE_LOST],
            )
            .map_err(|e| classify(e, "ending sessions of lost instances"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let n: i64 = row.get(1);
                (row.get(0), u64::try_from(n).unwrap_or(0))
            })
            .collect())
    }

    /// Marks `ids`, sessions this instance holds alive, active again where
    /// another party ended them as [`INSTANCE_LOST`] while this instance
    /// could not write its heartbeat (a database outage): the registry
    /// follows the truth again. Returns how many rows it restored.
    pub fn reclaim_sessions(&mut self, instance: &str, ids: &[i64]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.client
            .execute(
                "UPDATE session SET state = 'active', ended_at = NULL, end_reason = NULL \
                 WHERE instance = $1 AND id = ANY($2) AND state = 'ended' AND end_reason = $3",
                &[&instance, &ids, &INSTANCE_LOST],
            )
            .map_err(|e| classify(e, "reclaiming sessions"))
    }

    /// The instance's heartbeat: where it listens, how many sessions it
    /// holds out of what limit, and whether it can take logins (it can
    /// reach CWA and the database). Unknown instance: NotFound.
    pub fn write_heartbeat(
        &mut self,
        instance: &str,
        listen_addr: &str,
        sessions_in_use: u32,
        session_limit: Option<u32>,
        healthy: bool,
    ) -> Result<(), DbError> {
        let clamp = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let n = self
            .client
            .execute(
                "UPDATE instance SET listen_addr = $2, heartbeat_at = now(), sessions_in_use = $3, \
                 session_limit = $4, healthy = $5 WHERE name = $1",
                &[
                    &instance,
                    &listen_addr,
                    &clamp(sessions_in_use),
                    &session_limit.map(clamp),
                    &healthy,
                ],
            )
            .map_err(|e| classify(e, "writing heartbeat"))?;
        if n == 0 {
            return Err(DbError::not_found(format!("instance {instance}")));
        }
        Ok(())
    }

    /// Instances whose heartbeat is younger than `stale_after_ms`, that
    /// report healthy and have a listen address: least loaded first (by
    /// free places when a limit is known, then by sessions in use).
    pub fn live_instances(&mut self, stale_after_ms: u64) -> Result<Vec<InstanceHealth>, DbError> {
        let stale = i64::try_from(stale_after_ms).unwrap_or(i64::MAX / 2);
        let rows = self
            .client
            .query(
                "SELECT name, listen_addr, sessions_in_use, session_limit, healthy, \
                 (extract(epoch from (now() - heartbeat_at)) * 1000)::bigint AS age \
                 FROM instance \
                 WHERE healthy AND listen_addr IS NOT NULL AND heartbeat_at IS NOT NULL \
                   AND heartbeat_at > now() - $1::bigint * interval '1 millisecond' \
                 ORDER BY (COALESCE(session_limit, 2147483647)::bigint - sessions_in_use) DESC, \
                          sessions_in_use, name",
                &[&stale],
            )
            .map_err(|e| classify(e, "reading live instances"))?;
        rows.iter()
            .map(|row| {
                let to_u32 = |v: i32| u32::try_from(v).unwrap_or(0);
                Ok(InstanceHealth {
                    name: row.get(0),
                    listen_addr: row.get(1),
                    sessions_in_use: to_u32(row.get(2)),
                    session_limit: row.get::<_, Option<i32>>(3).map(to_u32),
                    healthy: row.get(4),
                    heartbeat_age_ms: row.get(5),
                })
            })
            .collect()
    }

    /// Records one audit event (its own transaction).
    pub fn audit(&mut self, event: &AuditEvent) -> Result<(), DbError> {
        audit_in(&mut self.client, event)
    }

    /// Records an audit event that happened at `at_ms` (epoch ms): a
    /// write kept while the database was unreachable.
    pub fn audit_at(&mut self, event: &AuditEvent, at_ms: i64) -> Result<(), DbError> {
        audit_at_in(&mut self.client, event, Some(at_ms))
    }

    /// [`ConfigDb::session_updated`] for a status message received at
    /// `at_ms`. Returns `false` (not an error) when the session is no
    /// longer active: a late write never revives a row.
    pub fn session_updated_at(
        &mut self,
        id: i64,
        coverage: Coverage,
        at_ms: i64,
    ) -> Result<bool, DbError> {
        let n = self
            .client
            .execute(
                "UPDATE session SET coverage = $2, \
                 last_status_at = GREATEST(last_status_at, to_timestamp($3::float8 / 1000)) \
                 WHERE id = $1 AND state = 'active'",
                &[&id, &coverage.as_str(), &(at_ms as f64)],
            )
            .map_err(|e| classify(e, "updating session"))?;
        Ok(n > 0)
    }

    /// [`ConfigDb::session_ended`] for a session that ended at `at_ms`.
    /// Returns `false` when the row had already ended (or never existed).
    pub fn session_ended_at(&mut self, id: i64, reason: &str, at_ms: i64) -> Result<bool, DbError> {
        let n = self
            .client
            .execute(
                "UPDATE session SET state = 'ended', end_reason = $2, \
                 ended_at = GREATEST(started_at, to_timestamp($3::float8 / 1000)) \
                 WHERE id = $1 AND state = 'active'",
                &[&id, &bounded(reason), &(at_ms as f64)],
            )
            .map_err(|e| classify(e, "ending session"))?;
        Ok(n > 0)
    }

    /// The latest `limit` audit events, newest first.
    pub fn list_audit(&mut self, limit: u32) -> Result<Vec<AuditRecord>, DbError> {
        let sql = format!(
            "SELECT id, {}, event, instance, login, pin, reason FROM audit_event \
             ORDER BY id DESC LIMIT $1",
            epoch_ms("at")
        );
        let rows = self
            .client
            .query(sql.as_str(), &[&i64::from(limit)])
            .map_err(|e| classify(e, "reading audit"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.get(0),
                    at_ms: row.get(1),
                    event: AuditEvent {
                        event: row.get(2),
                        instance: row.get(3),
                        login: row.get(4),
                        pin: row.get::<_, Option<i64>>(5).map(pin_from).transpose()?,
                        reason: row.get(6),
                    },
                })
            })
            .collect()
    }
}
