//! One device connection, from the handshake to a running session
//! (collabd(8), "The session flow" and "Sign-in under attack"):
//!
//! 0. a connection from an address that already has
//!    `max_unauthenticated_per_address` connections signing in (a relay's
//!    excepted) is refused 301 in clear;
//! 1. the handshake ([`wire::accept`]) with the PIN's transport key, from
//!    a short-lived cache or the Config DB within the Hellos' share of it
//!    ([`ServiceContext::device_for_hello`]): an unknown PIN is refused
//!    312, too many Hellos waiting for the Config DB 301, an unreachable
//!    Config DB 307, a stopping service 311 (clear `Refused` frames, so
//!    that the dispatcher can try another instance). The device must
//!    prove the key (its `Confirm`) within the key-proof deadline, much
//!    shorter than the sign-in deadline; a wrong key or no proof in time
//!    is logged and audited (rate-limited) with the peer's address;
//! 2. the login message, within the listener's sign-in deadline, read and
//!    handled inside a [`WipeScope`] so that every buffer that held the
//!    password is zeroed when freed;
//! 3. the Config DB checks, before admission so that a login refused anyway
//!    never signs another session out: the login must be the user the PIN
//!    is registered to (304), who must be allowed the collaboration client
//!    (302);
//! 4. a `resume` naming a live session of this device re-attaches to it
//!    when the password matches the session's (303 otherwise), replaying
//!    unacknowledged events; a resume of a session that is gone starts a
//!    new one;
//! 5. a place reserved in the session table (301 Server Busy, 300
//!    Failed), which ends nobody;
//! 6. CWA sign-in with the instance's URL, auth mode and CA (303, 305,
//!    306, 308 from the CWA client's classification); the place is given
//!    back on any failure;
//! 7. admission committed: only now is the device's own old session
//!    replaced, or an idle one signed out at the limit; if the room is gone
//!    and nobody can be signed out, the new CWA session is signed out and
//!    the login refused 301;
//! 8. the accepted login result with the session id and SIP URI, the
//!    registry row and the `login_admitted` audit; then the event thread
//!    starts and this thread becomes the link thread, the password gone
//!    unless the instance caches passwords.
//!
//! Every refusal after the handshake is a login result with its status,
//! and is audited as `login_refused` with the status and reason (never the
//! password), at most as often as [`super::throttle`] allows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::configdb::pool::PoolError;
use crate::configdb::{logins_match, DbError, Device};
use crate::cwa::CwaSession;
use crate::wire::secret::WipeScope;
use crate::wire::{self, DeviceMessage, Frame, Resume, Secret, ServiceMessage, Status, WireError};

use super::context::{LiveSession, ServiceContext, DB_WRITE_WAIT};
use super::credential::Credential;
use super::listener::{Incoming, PendingPermit};
use super::session::{
    self, parse_session_id, run_events, serve_link, EventStart, LinkReader, LinkWriter, NewSession,
    Session,
};
use super::spool::RegistryWrite;
use super::table::{SessionId, SessionKey};
use super::throttle::AddressHold;

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

/// The listener's place for a connection not signed in yet, and its
/// place among those of its source address; both end at sign-in.
struct Pending<'a> {
    permit: PendingPermit,
    _hold: AddressHold<'a>,
}

impl Pending<'_> {
    fn release(self) {
        self.permit.release();
    }
}

impl std::ops::Deref for Pending<'_> {
    type Target = PendingPermit;

    fn deref(&self) -> &PendingPermit {
        &self.permit
    }
}

/// A device link admitted to its session, to be served by the caller.
struct Served {
    session: Arc<Session>,
    link_id: u64,
    reader: LinkReader,
}

/// The listener's handler: serve one device connection to its end.
///
/// The link is served for hours from here, after the sign-in's frames
/// (handshake, Config DB, CWA) have returned: a waiting link thread keeps
/// resident only the stack above its wait.
pub fn handle(ctx: &Arc<ServiceContext>, incoming: Incoming) {
    // Boxed where it is made, so that the link's reader (cipher and frame
    // state, over 1 KiB) is in no frame that stays under the link's wait
    // for hours.
    if let Some(mut served) = sign_in(ctx, incoming) {
        let Served {
            session,
            link_id,
            reader,
        } = &mut *served;
        serve_link(session, *link_id, reader);
    }
}

/// Handshake, login and admission of one device connection; `None` when
/// the connection ended (refused, failed, or the device left).
#[inline(never)]
fn sign_in(ctx: &Arc<ServiceContext>, incoming: Incoming) -> Option<Box<Served>> {
    let Incoming {
        mut stream,
        peer,
        permit,
    } = incoming;
    let Some(hold) = ctx.hold_pending_place(peer) else {
        // One address holding many handshakes open is a flood, not a
        // device; a relay (dispatcher) is exempt.
        log::debug!("{peer}: refused, too many connections from this address signing in");
        let refused = Frame::refused(
            0,
            Status::ServerBusy,
            "too many connections from this address signing in",
        );
        let _ = wire::write_frame(&mut stream, &refused);
        return None;
    };
    let permit = Pending {
        permit,
        _hold: hold,
    };
    // A connection earns its place by proving the PIN's key quickly; only
    // then does it get the rest of the sign-in deadline for its login.
    let key_proof = ctx.timeouts.key_proof_timeout;
    permit.cut_at(permit.accepted() + key_proof);
    let mut hello_pin: Option<u32> = None;
    let mut device: Option<(Device, bool)> = None;
    let lookup = |pin: u32| {
        hello_pin = Some(pin);
        if ctx.is_stopping() {
            return Err(Status::ServiceStopping);
        }
        let (d, cached) = ctx.device_for_hello(pin, peer)?;
        let key = d.transport_key;
        device = Some((d, cached));
        Ok(key)
    };
    let channel = match wire::accept(stream, lookup) {
        Ok(channel) => channel,
        Err(e) => {
            handshake_failed(ctx, peer, hello_pin, device.is_some(), &permit, &e);
            return None;
        }
    };
    permit.cut_at(permit.sign_in_deadline());
    let (device, cached) = device?;
    let pin = channel.pin();
    let (mut reader, mut writer) = match channel.split(|s| s.into_halves()) {
        Ok(halves) => halves,
        Err(e) => {
            log::info!("{peer}: cannot split the connection: {e}");
            return None;
        }
    };
    // From the login message to the end of the sign-in, every block this
    // thread frees is zeroed: the decrypted and inflated frame, the parser's
    // text, the CWA request, the NTLM hashing.
    let scope = WipeScope::enter();
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
            return None;
        }
        Err(e) => {
            log::info!("{peer}: {}: no login: {e}", wire::format_pin(pin));
            if e.is_protocol_violation() {
                let _ = writer.refuse(Status::ProtocolError, &e.to_string());
            }
            return None;
        }
    };
    let login = Login {
        ctx,
        peer,
        pin,
        user: &user,
    };
    let secret = Signing { password, scope };
    match login.run(device, cached, resume, secret, reader, writer, permit) {
        Ok(served) => served,
        Err(refusal) => {
            // `run` has already told the device.
            log::debug!(
                "{peer}: login of {user} on {} refused: {} {}",
                wire::format_pin(pin),
                refusal.status.code(),
                refusal.text
            );
            None
        }
    }
}

/// Log and audit a handshake that did not end in a channel. `challenged`:
/// the Hello was answered with a Challenge (the PIN is known).
fn handshake_failed(
    ctx: &ServiceContext,
    peer: SocketAddr,
    pin: Option<u32>,
    challenged: bool,
    permit: &Pending,
    e: &WireError,
) {
    let Some(pin_seen) = pin else {
        // No Hello: a scan, a probe or a silent socket; nothing to audit.
        log::debug!("{peer}: no Hello: {e}");
        return;
    };
    let reason = match e {
        // The cached row stays: forgetting it here would let wrong keys
        // buy a Config DB lookup each. A new key is seen within the cache's
        // time to live.
        WireError::Auth => "wrong key: the Confirm does not prove the PIN's key".to_string(),
        WireError::Refused(Status::UnknownDevice, _) => "unknown device".to_string(),
        // Load or an unreachable Config DB: logged where it was decided.
        WireError::Refused(..) => return,
        _ if challenged && permit.accepted().elapsed() >= ctx.timeouts.key_proof_timeout => {
            format!(
                "no key proof within {} ms",
                ctx.timeouts.key_proof_timeout.as_millis()
            )
        }
        _ if challenged => format!("no Confirm: {e}"),
        _ => format!("bad Hello: {e}"),
    };
    ctx.audit_handshake_failure(Some(pin_seen), peer, &reason);
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
    peer: SocketAddr,
    pin: u32,
    user: &'a str,
}

/// The password while the sign-in needs it, and the wipe scope it is
/// handled in; both end together ([`Signing::done`]).
struct Signing {
    password: Secret,
    scope: WipeScope,
}

impl Signing {
    /// The password is no longer needed: wiped, and the scope closed.
    fn done(self) {
        let Signing { password, scope } = self;
        drop(password);
        drop(scope);
    }
}

impl Login<'_> {
    /// Tell the device, audit, and hand the refusal back.
    fn refuse(&self, writer: &mut LinkWriter, refusal: Refusal) -> Refusal {
        // Recorded before the device is told, so the audit never lags.
        self.ctx.audit_login_refused(
            self.user,
            self.pin,
            self.peer,
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

    /// The device row to decide the login with: the one the handshake
    /// read, or, if that came from the Hellos' cache, a fresh one (which
    /// must still hold the key the device proved).
    fn current_device(&self, device: Device, cached: bool) -> Result<Device, Refusal> {
        if !cached {
            return Ok(device);
        }
        match self
            .ctx
            .with_db(self.ctx.timeouts.login_db_wait, |db| db.device(self.pin))
        {
            Ok(fresh) if openssl::memcmp::eq(&fresh.transport_key, &device.transport_key) => {
                Ok(fresh)
            }
            Ok(_) | Err(PoolError::Db(DbError::NotFound { .. })) => {
                self.ctx.forget_device(self.pin);
                Err(Refusal::new(
                    Status::UnknownDevice,
                    "the device was removed or given a new key",
                ))
            }
            Err(e) => Err(Refusal::new(
                Status::ConfigUnavailable,
                format!("Config DB unavailable: {e}"),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        device: Device,
        cached: bool,
        resume: Option<Resume>,
        signing: Signing,
        reader: LinkReader,
        mut writer: LinkWriter,
        permit: Pending,
    ) -> Result<Option<Box<Served>>, Refusal> {
        if self.ctx.is_stopping() {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(Status::ServiceStopping, "the service is stopping"),
            ));
        }
        let device = match self.current_device(device, cached) {
            Ok(d) => d,
            Err(refusal) => return Err(self.refuse(&mut writer, refusal)),
        };
        if !logins_match(&device.login, self.user) {
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
        if !device.im_enabled {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(
                    Status::NotPermitted,
                    "the user may not use the collaboration client",
                ),
            ));
        }
        // The login as the Config DB spells it (logins match without case).
        let login = device.login.as_str();
        if let Some(resume) = resume {
            let live = parse_session_id(&resume.session_id)
                .and_then(|id| self.ctx.session::<Session>(id))
                .filter(|s| s.pin() == self.pin && !s.is_ended());
            if let Some(session) = live {
                let matches = session.verify_password(&signing.password);
                signing.done();
                if !matches {
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
        // A place, not yet a session: nobody is ended before CWA has
        // accepted the password.
        let reservation = match self.ctx.table.reserve(key, Instant::now()) {
            Ok(r) => r,
            Err(refused) => {
                let status = refused.status_code();
                return Err(self.refuse(&mut writer, Refusal::new(status, refused.to_string())));
            }
        };
        let settings = self.ctx.cwa();
        // The device must hear the outcome before the listener cuts it at
        // the sign-in deadline: CWA gets that deadline less the time to
        // write a refusal, and a CWA too slow for it is a 306.
        let deadline = permit.sign_in_deadline();
        let mut client = settings.client.clone();
        client.sign_in_deadline = Some(deadline - answer_margin(permit.accepted(), deadline));
        let cwa = match CwaSession::sign_in(&client, login, signing.password.expose()) {
            Ok(cwa) => cwa,
            Err(e) => {
                // Dropping the reservation gives the place back.
                drop(reservation);
                let status = e.device_status();
                return Err(self.refuse(&mut writer, Refusal::new(status, e.to_string())));
            }
        };
        if Instant::now() >= deadline {
            // The listener has cut (or is cutting) the connection: there is
            // nobody to admit. Sign the new CWA session out, end nobody.
            let (mut commands, _) = cwa.split();
            let _ = commands.sign_out();
            drop(reservation);
            log::info!(
                "{}: CWA answered after the sign-in deadline; login abandoned",
                wire::format_pin(self.pin)
            );
            self.ctx.audit(
                "login_abandoned",
                Some(login),
                Some(self.pin),
                "CWA answered after the sign-in deadline; signed out",
            );
            return Ok(None);
        }
        let credential = Credential::new(&signing.password, settings.password_caching);
        signing.done();
        let credential = match credential {
            Ok(c) => c,
            Err(e) => {
                let (mut commands, _) = cwa.split();
                let _ = commands.sign_out();
                drop(reservation);
                return Err(self.refuse(&mut writer, Refusal::new(Status::Failed, e.to_string())));
            }
        };
        // The registry row first: a session the Config DB cannot show is
        // not started (the database just answered the login's checks, so
        // this fails only if it went away since; the device retries).
        let registry_id = match self.ctx.with_db(DB_WRITE_WAIT, |db| {
            db.session_started(&self.ctx.instance, login, self.pin)
        }) {
            Ok(id) => id,
            Err(e) => {
                let (mut commands, _) = cwa.split();
                let _ = commands.sign_out();
                drop(reservation);
                return Err(self.refuse(
                    &mut writer,
                    Refusal::new(
                        Status::ConfigUnavailable,
                        format!("the session cannot be recorded: {e}"),
                    ),
                ));
            }
        };
        let admission = match reservation.commit(Instant::now()) {
            Ok(a) => a,
            Err(refused) => {
                // The room went to others while CWA was asked: sign out
                // what was just signed in, end nobody.
                let (mut commands, _) = cwa.split();
                let _ = commands.sign_out();
                self.ctx.record(RegistryWrite::Ended {
                    id: registry_id,
                    reason: format!("refused: {refused}"),
                });
                let status = refused.status_code();
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
        let sip_uri = cwa.info().own_uri.clone();
        let sip_uri = if sip_uri.is_empty() {
            device.sip_uri.clone()
        } else {
            sip_uri
        };
        let (commands, events) = cwa.split();
        let session = Session::new(
            Arc::clone(self.ctx),
            NewSession {
                handle: admission.handle.clone(),
                pin: self.pin,
                login: login.to_string(),
                sip_uri: sip_uri.clone(),
                registry_id: Some(registry_id),
                credential,
                commands,
            },
        );
        self.ctx
            .remember_session(Arc::clone(&session) as Arc<dyn LiveSession>);
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
        let start = Box::new(EventStart {
            session: Arc::clone(&session),
            events,
            slot: admission.guard,
        });
        let spawned = std::thread::Builder::new()
            .name("cwa-events".into())
            .stack_size(self.ctx.timeouts.thread_stack_size)
            .spawn(move || run_events(start));
        if let Err(e) = spawned {
            // The closure and its guard were dropped: the session ended.
            log::warn!("{session:?}: cannot start the event thread: {e}");
            return Ok(None);
        }
        match link {
            Some(link_id) => Ok(Some(Box::new(Served {
                session,
                link_id,
                reader,
            }))),
            None => {
                log::info!("{session:?}: device gone before the login result");
                Ok(None)
            }
        }
    }

    fn reattach(
        &self,
        session: &Arc<Session>,
        acked: u64,
        reader: LinkReader,
        mut writer: LinkWriter,
        permit: Pending,
    ) -> Result<Option<Box<Served>>, Refusal> {
        // Events are only ever numbered upwards, so a resume within this
        // bound stays within it while attaching.
        let last = session.last_event_seq();
        if acked > last {
            return Err(self.refuse(
                &mut writer,
                Refusal::new(
                    Status::ProtocolError,
                    format!("resume acked event {acked}, beyond the last event sent ({last})"),
                ),
            ));
        }
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
            return Ok(None);
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
        Ok(Some(Box::new(Served {
            session: Arc::clone(session),
            link_id,
            reader,
        })))
    }
}

/// How long before the sign-in deadline CWA's answer must be in, so that
/// the device can still be told (the refusal's audit row is written
/// first): a fifth of the whole sign-in deadline, at most one second. A
/// tenth, at most half a second, was too little on a loaded machine: with
/// a 3 s deadline, `cargo test` once saw the link cut before the refusal
/// of a CWA that timed out was written.
fn answer_margin(accepted: Instant, deadline: Instant) -> Duration {
    (deadline.saturating_duration_since(accepted) / 5).min(Duration::from_secs(1))
}

impl LiveSession for Session {
    fn id(&self) -> SessionId {
        Session::id(self)
    }

    fn registry_id(&self) -> Option<i64> {
        Session::registry_id(self)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
