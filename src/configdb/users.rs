/*!
Users and their devices: who may use the collaboration client (`im_enabled`),
which device PIN belongs to which user, and each device's transport key.
Keys leave this module only through [`ConfigDb::device`] (for the service's
handshake) and the return value of `add_device` (printed once by
collabctl); listings never carry them.
*/

use std::fmt;

use postgres::{GenericClient, Row, Transaction};

use super::registry::{audit_in, request_end_of_device_in, request_end_of_user_in};
use super::validate::{format_pin, generate_transport_key, parse_login, parse_sip_uri, pin_from};
use super::{classify, epoch_ms, AuditEvent, ConfigDb, DbError};

/// A user who may be given devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// As first given (`DOMAIN\user` or a UPN); lookups ignore case.
    pub login: String,
    pub sip_uri: String,
    /// May use the collaboration client (status 302 NotPermitted when not).
    pub im_enabled: bool,
    /// How many devices the user owns.
    pub devices: u32,
}

/// A device as listed: no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub pin: u32,
    pub login: String,
    pub created_at_ms: i64,
}

/// A device with everything the service needs to admit it, including its
/// transport key. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    pub pin: u32,
    /// The owning user's login as stored.
    pub login: String,
    pub sip_uri: String,
    pub im_enabled: bool,
    pub transport_key: [u8; 32],
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("pin", &format_pin(self.pin))
            .field("login", &self.login)
            .field("sip_uri", &self.sip_uri)
            .field("im_enabled", &self.im_enabled)
            .field("transport_key", &"<redacted>")
            .finish()
    }
}

fn user_from_row(row: &Row) -> User {
    User {
        login: row.get(0),
        sip_uri: row.get(1),
        im_enabled: row.get(2),
        devices: u32::try_from(row.get::<_, i64>(3)).unwrap_or(u32::MAX),
    }
}

const USER_SELECT: &str = "SELECT u.login, u.sip_uri, u.im_enabled, \
     (SELECT count(*) FROM device d WHERE d.login = u.login) FROM app_user u";

/// The stored login for `login` (case-insensitive), or NotFound.
fn stored_login(tx: &mut Transaction<'_>, login: &str) -> Result<String, DbError> {
    let row = tx
        .query_opt(
            "SELECT login FROM app_user WHERE lower(login) = lower($1) FOR UPDATE",
            &[&login],
        )
        .map_err(|e| classify(e, "reading user"))?
        .ok_or_else(|| DbError::not_found(format!("user {login}")))?;
    Ok(row.get(0))
}

impl ConfigDb {
    /// Adds a user. Refuses a malformed login or SIP URI, and a login or SIP
    /// URI that another user has ([`DbError::Duplicate`]). Audited as
    /// `user_added`.
    pub fn add_user(
        &mut self,
        login: &str,
        sip_uri: &str,
        im_enabled: bool,
    ) -> Result<(), DbError> {
        parse_login(login)?;
        let sip_uri = parse_sip_uri(sip_uri)?;
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, "adding user"))?;
        let clash = tx
            .query_opt(
                "SELECT login FROM app_user WHERE lower(login) = lower($1) \
                 UNION ALL SELECT login FROM app_user WHERE lower(sip_uri) = lower($2) LIMIT 1",
                &[&login, &sip_uri],
            )
            .map_err(|e| classify(e, "adding user"))?;
        if let Some(row) = clash {
            let other: String = row.get(0);
            return Err(if other.to_lowercase() == login.to_lowercase() {
                DbError::duplicate(format!("user {login}"))
            } else {
                DbError::duplicate(format!("SIP URI {sip_uri} (user {other})"))
            });
        }
        tx.execute(
            "INSERT INTO app_user (login, sip_uri, im_enabled) VALUES ($1, $2, $3)",
            &[&login, &sip_uri, &im_enabled],
        )
        .map_err(|e| classify(e, &format!("user {login}")))?;
        let mut event = AuditEvent::new("user_added");
        event.login = Some(login.to_string());
        event.reason = Some(format!(
            "sip-uri={sip_uri} im-enabled={}",
            if im_enabled { "yes" } else { "no" }
        ));
        audit_in(&mut tx, &event)?;
        tx.commit().map_err(|e| classify(e, "adding user"))
    }

    /// Grants (`true`) or revokes (`false`) use of the collaboration client.
    /// Audited as `user_granted` or `user_revoked`. Revoking does not end
    /// running sessions; the service checks the flag at each login.
    pub fn set_im_enabled(&mut self, login: &str, enabled: bool) -> Result<(), DbError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, "changing user"))?;
        let stored = stored_login(&mut tx, login)?;
        tx.execute(
            "UPDATE app_user SET im_enabled = $2 WHERE login = $1",
            &[&stored, &enabled],
        )
        .map_err(|e| classify(e, "changing user"))?;
        let mut event = AuditEvent::new(if enabled {
            "user_granted"
        } else {
            "user_revoked"
        });
        event.login = Some(stored.clone());
        audit_in(&mut tx, &event)?;
        if !enabled {
            let by = database_role(&mut tx)?;
            request_end_of_user_in(&mut tx, &stored, "user revoked", &by)?;
        }
        tx.commit().map_err(|e| classify(e, "changing user"))
    }

    /// One user (login compared without regard to case).
    pub fn user(&mut self, login: &str) -> Result<User, DbError> {
        let sql = format!("{USER_SELECT} WHERE lower(u.login) = lower($1)");
        let row = self
            .client
            .query_opt(sql.as_str(), &[&login])
            .map_err(|e| classify(e, "reading user"))?
            .ok_or_else(|| DbError::not_found(format!("user {login}")))?;
        Ok(user_from_row(&row))
    }

    /// Every user, by login.
    pub fn list_users(&mut self) -> Result<Vec<User>, DbError> {
        let sql = format!("{USER_SELECT} ORDER BY lower(u.login)");
        let rows = self
            .client
            .query(sql.as_str(), &[])
            .map_err(|e| classify(e, "listing users"))?;
        Ok(rows.iter().map(user_from_row).collect())
    }

    /// Provisions device `pin` for user `login` with a fresh 256-bit key and
    /// returns the key (shown to the operator once; stored only here).
    /// Unknown user: NotFound; PIN in use: Duplicate. Audited as
    /// `device_added` (without the key).
    pub fn add_device(&mut self, pin: u32, login: &str) -> Result<[u8; 32], DbError> {
        let key = generate_transport_key()?;
        self.add_device_with_key(pin, login, &key)?;
        Ok(key)
    }

    /// As [`ConfigDb::add_device`] with a key the caller supplies (for
    /// re-provisioning a device that already holds its key).
    pub fn add_device_with_key(
        &mut self,
        pin: u32,
        login: &str,
        key: &[u8; 32],
    ) -> Result<(), DbError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, "adding device"))?;
        let stored = stored_login(&mut tx, login)?;
        let taken = tx
            .query_opt(
                "SELECT login FROM device WHERE pin = $1",
                &[&i64::from(pin)],
            )
            .map_err(|e| classify(e, "adding device"))?;
        if let Some(row) = taken {
            let owner: String = row.get(0);
            return Err(DbError::duplicate(format!(
                "device PIN {} (registered to {owner})",
                format_pin(pin)
            )));
        }
        tx.execute(
            "INSERT INTO device (pin, login, transport_key) VALUES ($1, $2, $3)",
            &[&i64::from(pin), &stored, &&key[..]],
        )
        .map_err(|e| classify(e, &format!("device PIN {}", format_pin(pin))))?;
        let mut event = AuditEvent::new("device_added");
        event.login = Some(stored);
        event.pin = Some(pin);
        audit_in(&mut tx, &event)?;
        tx.commit().map_err(|e| classify(e, "adding device"))
    }

    /// Removes device `pin` (its key is gone with it). Unknown PIN:
    /// NotFound. Audited as `device_removed`. A session the device holds
    /// runs on until it ends; the device cannot log in again.
    pub fn remove_device(&mut self, pin: u32) -> Result<(), DbError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(|e| classify(e, "removing device"))?;
        let row = tx
            .query_opt(
                "DELETE FROM device WHERE pin = $1 RETURNING login",
                &[&i64::from(pin)],
            )
            .map_err(|e| classify(e, "removing device"))?
            .ok_or_else(|| DbError::not_found(format!("device PIN {}", format_pin(pin))))?;
        let mut event = AuditEvent::new("device_removed");
        event.login = Some(row.get(0));
        event.pin = Some(pin);
        audit_in(&mut tx, &event)?;
        // A device that may no longer sign in may not stay signed in either.
        let by = database_role(&mut tx)?;
        request_end_of_device_in(&mut tx, pin, "device removed", &by)?;
        tx.commit().map_err(|e| classify(e, "removing device"))
    }

    /// Every device, by PIN, without keys.
    pub fn list_devices(&mut self) -> Result<Vec<DeviceSummary>, DbError> {
        let sql = format!(
            "SELECT pin, login, {} FROM device ORDER BY pin",
            epoch_ms("created_at")
        );
        let rows = self
            .client
            .query(sql.as_str(), &[])
            .map_err(|e| classify(e, "listing devices"))?;
        rows.iter()
            .map(|row| {
                Ok(DeviceSummary {
                    pin: pin_from(row.get(0))?,
                    login: row.get(1),
                    created_at_ms: row.get(2),
                })
            })
            .collect()
    }

    /// Device `pin` with its owner and transport key, for the service's
    /// handshake and admission checks. Unknown PIN: NotFound (status 312).
    pub fn device(&mut self, pin: u32) -> Result<Device, DbError> {
        let row = self
            .client
            .query_opt(
                "SELECT d.pin, u.login, u.sip_uri, u.im_enabled, d.transport_key \
                 FROM device d JOIN app_user u ON u.login = d.login WHERE d.pin = $1",
                &[&i64::from(pin)],
            )
            .map_err(|e| classify(e, "reading device"))?
            .ok_or_else(|| DbError::not_found(format!("device PIN {}", format_pin(pin))))?;
        let key: Vec<u8> = row.get(4);
        let transport_key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
            DbError::bad(format!(
                "stored key of device {} is not 32 bytes",
                format_pin(pin)
            ))
        })?;
        Ok(Device {
            pin: pin_from(row.get(0))?,
            login: row.get(1),
            sip_uri: row.get(2),
            im_enabled: row.get(3),
            transport_key,
        })
    }
}

/// Who is making this change, for the audit of end requests: the database
/// role collabctl connected as.
fn database_role<C: GenericClient>(tx: &mut C) -> Result<String, DbError> {
    let row = tx
        .query_one("SELECT session_user::text", &[])
        .map_err(|e| classify(e, "reading the database role"))?;
    Ok(format!("database role {}", row.get::<_, String>(0)))
}
