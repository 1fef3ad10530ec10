//! One device connection, from the handshake to a running session
//! (collabd(8), "The session flow"):
//!
//! 1. the handshake ([`wire::accept`]) with the PIN's transport key from
//!    the Config DB: an unknown PIN is refused 312, an unreachable Config
//!    DB 307, a stopping service 311 (clear `Refused` frames, so that the
//!    dispatcher can try another instance);
//! 2. the login message, within the listener's sign-in deadline;
//! 3. the Config DB checks, before admission so that a login refused anyway
//!    never signs another session out: the login must be the user the PIN
//!    is registered to (304), who must be allowed the collaboration client
//!    (302);
//! 4. a `resume` naming a live session of this device re-attaches to it
//!    when the password matches the session's (303 otherwise), replaying
//!    unacknowledged events; a resume of a session that is gone starts a
//!    new one;
//! 5. admission in the session table (301 Server Busy, 300 Failed);
//! 6. CWA sign-in with the instance's URL, auth mode and CA (303, 305,
//!    306, 308 from the CWA client's classification); the slot is freed on
//!    any failure;
//! 7. the accepted login result with the session id and SIP URI, the
//!    registry row and the `login_admitted` audit; then the event thread
//!    starts and this thread becomes the link thread.
//!
//! Every refusal after the handshake is a login result with its status,
//! and is audited as `login_refused` with the status and reason (never the
//! password).

use std::sync::Arc;
use std::time::Instant;

use crate::configdb::pool::PoolError;
use crate::configdb::{logins_match, DbError, Device};
use crate::cwa::CwaSession;
use crate::wire::{self, DeviceMessage, Resume, Secret, ServiceMessage, Status};

use super::context::{ServiceContext, DB_WRITE_WAIT};
use super::credential::Credential;
use super::listener::{Incoming, PendingPermit};
use super::session::{
    self, parse_session_id, run_events, serve_link, LinkReader, LinkWriter, NewSession, Session,
};
use super::table::SessionKey;

/// A login that was refused after the handshake.
struct Refusal {
    status: Status,
    text: String,
}

impl Refusal {
    fn new(status: Status, text: impl Into<String>) -> Refusal {
        Refusal {
            status,
            text: text.into(),
        }
    }
}

/// The listener's handler: serve one device connection to its end.
pub fn handle(ctx: &Arc<ServiceContext>, incoming: Incoming) {
    let Incoming {
        stream,
        peer,
        permit,
    } = incoming;
    let mut device: Option<Device> = None;
    let lookup = |pin: u32| {
        if ctx.is_stopping() {
            return Err(Status::ServiceStopping);
        }
        match ctx.with_db(ctx.timeouts.login_db_wait, |db| db.device(pin)) {
            Ok(d) => {
                let key = d.transport_key;
                device = Some(d);
                Ok(key)
            }
            Err(PoolError::Db(DbError::NotFound { .. })) => {
                log::info!("{peer}: unknown device {}", wire::format_pin(pin));
                Err(Status::UnknownDevice)
            }
            Err(e) => {
                log::warn!(
                    "{peer}: device {} refused, Config DB unavailable: {e}",
                    wire::format_pin(pin)
                );
                Err(Status::ConfigUnavailable)
            }
        }
    };
    let channel = match wire::accept(stream, lookup) {
        Ok(channel) => channel,
        Err(e) => {
            log::debug!("{peer}: handshake failed: {e}");
            return;
        }
    };
    let Some(device) = device else { return };
    let pin = channel.pin();
    let (mut reader, mut writer) = match channel.split(|s| s.into_halves()) {
        Ok(halves) => halves,
        Err(e) => {
            log::info!("{peer}: cannot split the connection: {e}");
            return;
        }
    };
    let (user, password, resume) = match reader.recv_device() {
        Ok(DeviceMessage::Login {
            user,
            password,
            resume,
        }) => (user, password, resume),
        Ok(other) => {
            let why = format!("expected login, got {}", message_name(&other));
            log::info!("{peer}: {}: {why}", wire::format_pin(pin));
            let _ = writer.refuse(Status::ProtocolError, &why);
            return;
        }
        Err(e) => {
            log::info!("{peer}: {}: no login: {e}", wire::format_pin(pin));
            if e.is_protocol_violation() {
                let _ = writer.refuse(Status::ProtocolError, &e.to_string());
            }
            return;
        }
    };
    let login = Login {
        ctx,
        pin,
        device: &device,
        user: &user,
        password: &password,
    };
    if let Err(refusal) = login.run(resume, reader, writer, permit) {
        // `run` has already told the device.
        log::info!(
            "{peer}: login of {user} on {} refused: {} {}",
            wire::format_pin(pin),
            refusal.status.code(),
            refusal.text
        );
    }
}

fn message_name(m: &DeviceMessage) -> &'static str {
    match m {
        DeviceMessage::Login { .. } => "login",
        DeviceMessage::Status { .. } => "status",
        DeviceMessage::Command { .. } => "command",
        DeviceMessage::Ack { .. } => "ack",
        DeviceMessage::Logout => "logout",
    }
}

struct Login<'a> {
    ctx: &'a Arc<ServiceContext>,
    pin: u32,
    device: &'a Device,
    user: &'a str,
    password: &'a Secret,
}

impl Login<'_> {
    /// Tell the device, audit, and hand the refusal back.
    fn refuse(&self, writer: &mut LinkWriter, refusal: Refusal) -> Refusal {
        // Recorded before the device is told, so the audit never lags.
        self.ctx.audit(
            "login_refused",
            Some(self.user),
            Some(self.pin),
            &format!(
                "{} {}: {}",
                refusal.status.code(),
                refusal.status.name(),
                refusal.text
            ),
        );
        let _ = writer.send_service(&ServiceMessage::LoginResult {
            status: refusal.status,
            text: refusal.text.clone(),
            session_id: None,
            sip_uri: None,
        });
        refusal
    }

    fn run(
        &self,
        resume: Option<Resume>,
        reader: LinkReader,
        mut writer: LinkWriter,
        permit: PendingPermit,
    ) -> Result<(), Refusal> {
        if self.ctx.is_stopping() {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(Status::ServiceStopping, "the service is stopping"),
            ));
        }
        if !logins_match(&self.device.login, self.user) {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(
                    Status::WrongUser,
                    format!(
                        "device {} is registered to another user",
                        wire::format_pin(self.pin)
                    ),
                ),
            ));
        }
        if !self.device.im_enabled {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(
                    Status::NotPermitted,
                    "the user may not use the collaboration client",
                ),
            ));
        }
        // The login as the Config DB spells it (logins match without case).
        let login = self.device.login.as_str();
        if let Some(resume) = resume {
            let live = parse_session_id(&resume.session_id)
                .and_then(|id| self.ctx.session(id))
                .filter(|s| s.pin() == self.pin && !s.is_ended());
            if let Some(session) = live {
                if !session.verify_password(self.password) {
                    return Err(self.refuse(
                        &mut writer,
                        Refusal::new(Status::BadCredentials, "wrong password for the session"),
                    ));
                }
                return self.reattach(&session, resume.last_acked_seq, reader, writer, permit);
            }
            log::info!(
                "{}: resume of {} asked, session gone; starting a new one",
                wire::format_pin(self.pin),
                resume.session_id
            );
        }
        let key = SessionKey {
            pin: self.pin,
            login: login.to_string(),
        };
        let admission = match self.ctx.table.admit(key, Instant::now()) {
            Ok(a) => a,
            Err(refused) => {
                let status = Status::from_code(refused.status_code()).unwrap_or(Status::Failed);
                return Err(self.refuse(&mut writer, Refusal::new(status, refused.to_string())));
            }
        };
        for ended in &admission.ended {
            log::info!(
                "session {} of {} signed out to admit {}: {}",
                ended.handle.id(),
                ended.handle.key().login,
                wire::format_pin(self.pin),
                ended.reason
            );
        }
        let settings = self.ctx.cwa();
        let cwa = match CwaSession::sign_in(&settings.client, login, self.password.expose()) {
            Ok(cwa) => cwa,
            Err(e) => {
                // Dropping the admission frees the slot.
                drop(admission);
                let status = Status::from_code(e.device_status()).unwrap_or(Status::Failed);
                return Err(self.refuse(&mut writer, Refusal::new(status, e.to_string())));
            }
        };
        let credential = match Credential::new(self.password, settings.password_caching) {
            Ok(c) => c,
            Err(e) => {
                let (mut commands, _) = cwa.split();
                let _ = commands.sign_out();
                drop(admission);
                return Err(self.refuse(&mut writer, Refusal::new(Status::Failed, e.to_string())));
            }
        };
        let sip_uri = cwa.info().own_uri.clone();
        let sip_uri = if sip_uri.is_empty() {
            self.device.sip_uri.clone()
        } else {
            sip_uri
        };
        let registry_id = match self.ctx.with_db(DB_WRITE_WAIT, |db| {
            db.session_started(&self.ctx.instance, login, self.pin)
        }) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("session of {login}: registry row not written: {e}");
                None
            }
        };
        let (commands, events) = cwa.split();
        let session = Session::new(
            Arc::clone(self.ctx),
            NewSession {
                handle: admission.handle.clone(),
                pin: self.pin,
                login: login.to_string(),
                sip_uri: sip_uri.clone(),
                registry_id,
                credential,
                commands,
            },
        );
        self.ctx.remember_session(Arc::clone(&session));
        session.arm_waker();
        let closer = permit.closer();
        permit.release();
        let result = ServiceMessage::LoginResult {
            status: Status::Ok,
            text: "OK".to_string(),
            session_id: Some(session::session_id_text(session.id())),
            sip_uri: Some(sip_uri),
        };
        let link = session.attach(writer, closer, 0, &result);
        self.ctx.audit(
            "login_admitted",
            Some(login),
            Some(self.pin),
            &session::session_id_text(session.id()),
        );
        log::info!("{session:?} admitted");
        let guard = admission.guard;
        let s = Arc::clone(&session);
        let spawned = std::thread::Builder::new()
            .name("cwa-events".into())
            .stack_size(self.ctx.timeouts.thread_stack_size)
            .spawn(move || run_events(s, events, guard));
        if let Err(e) = spawned {
            // The closure and its guard were dropped: the session ended.
            log::warn!("{session:?}: cannot start the event thread: {e}");
            return Ok(());
        }
        match link {
            Some(link_id) => serve_link(&session, link_id, reader),
            None => log::info!("{session:?}: device gone before the login result"),
        }
        Ok(())
    }

    fn reattach(
        &self,
        session: &Arc<Session>,
        acked: u64,
        reader: LinkReader,
        writer: LinkWriter,
        permit: PendingPermit,
    ) -> Result<(), Refusal> {
        let closer = permit.closer();
        permit.release();
        let result = ServiceMessage::LoginResult {
            status: Status::Ok,
            text: "OK (resumed)".to_string(),
            session_id: Some(session::session_id_text(session.id())),
            sip_uri: Some(session.sip_uri().to_string()),
        };
        let Some(link_id) = session.attach(writer, closer, acked, &result) else {
            log::info!("{session:?}: ended while re-attaching");
            return Ok(());
        };
        self.ctx
            .table
            .note_status(session.id(), super::table::Coverage::In, Instant::now());
        session.note_attached();
        self.ctx.audit(
            "login_resumed",
            Some(session.login()),
            Some(self.pin),
            &session::session_id_text(session.id()),
        );
        log::info!("{session:?} re-attached (device acked {acked})");
        serve_link(session, link_id, reader);
        Ok(())
    }
}
