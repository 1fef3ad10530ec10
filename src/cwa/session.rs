//! A signed-in CWA session and its two channels.
//!
//! [`CwaSession::sign_in`] logs on and runs `initiateSession`;
//! [`CwaSession::split`] yields a [`CommandChannel`] (POSTs, one at a time,
//! each with its own rid) and an [`EventChannel`] (the GET long-poll with
//! AckId). Both share the current ticket, the sid and the rid → command
//! bookkeeping behind a mutex that is only held to copy or update that
//! state, never across a request, so a held GET never delays a command.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::command::{envelope, Command, CommandKind};
use super::error::{SessionError, SignInError};
use super::event::{parse_events, Event, EventBatch, ParsedEvents};
use super::http::{Http, HttpFailure, HttpReply};
use super::response::{parse_reply, CommandReply, Outcome};
use super::signin::{sign_in, INITIATE_SESSION_RID};
use super::{xmlguard, ClientConfig, SignedInVia};
use crate::xml;

const COMMAND_PATH: &str = "/cwa/MainCommandHandler.ashx";
const EVENT_PATH: &str = "/cwa/AsyncDataChannel.ashx";
/// Requests whose asynchronous result is still awaited; beyond this the
/// oldest are forgotten (their results then arrive without a kind).
const MAX_PENDING: usize = 1024;
/// Eids of events handed out with a command reply, awaiting their replay
/// on the event channel; bounded the same way.
const MAX_EMBEDDED_EIDS: usize = 4096;
/// The poll wait assumed until CWA states one.
const DEFAULT_POLL_WAIT: Duration = Duration::from_millis(1000);
/// The longest `pollWaitTime` honoured, so a hostile value cannot park the
/// event thread.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// Sleeps are cut into slices this long so sign-out is noticed promptly.
const SLEEP_SLICE: Duration = Duration::from_millis(100);

/// What collabd keeps about a signed-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The user's own SIP URI, as CWA reported it (may be empty if CWA did
    /// not say).
    pub own_uri: String,
    /// The session id CWA assigned.
    pub sid: String,
    /// Which sign-in method succeeded.
    pub via: SignedInVia,
}

/// State shared by the two channels.
struct State {
    /// The newest ticket; `None` once signed out.
    ticket: Option<String>,
    /// When the response that carried `ticket` arrived.
    ticket_arrived: Instant,
    sid: String,
    /// rid → what the request was, until its result is seen.
    pending: BTreeMap<u64, CommandKind>,
    /// Eids already handed out inside command replies.
    embedded_eids: BTreeSet<u64>,
}

struct Shared {
    http: Http,
    state: Mutex<State>,
    closed: AtomicBool,
    /// Set just before `terminateSession` is sent: CWA may end the held
    /// GET (18100) before the command thread has read the reply.
    signing_out: AtomicBool,
    user_active: AtomicBool,
    ticket_rotations: AtomicU64,
}

impl Shared {
    /// A signed-in session's shared state, with the ticket and sid sign-in
    /// got (its replies came before any channel's).
    fn new(http: Http, ticket: String, sid: String) -> Shared {
        Shared {
            http,
            state: Mutex::new(State {
                ticket: Some(ticket),
                ticket_arrived: Instant::now(),
                sid,
                pending: BTreeMap::new(),
                embedded_eids: BTreeSet::new(),
            }),
            closed: AtomicBool::new(false),
            signing_out: AtomicBool::new(false),
            user_active: AtomicBool::new(false),
            ticket_rotations: AtomicU64::new(0),
        }
    }

    /// The state; a panic elsewhere while it was held leaves plain data,
    /// so a poisoned lock is still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ticket and sid to send, or `Closed`.
    fn credentials(&self) -> Result<(String, String), SessionError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        let state = self.state();
        match &state.ticket {
            Some(t) => Ok((t.clone(), state.sid.clone())),
            None => Err(SessionError::Closed),
        }
    }

    /// Takes the newest ticket from any response (cwa-sim(1), TICKETS AND
    /// SESSIONS). Newest by
    /// the order the responses arrived, not the order their threads get
    /// here: the held GET and a command POST can finish together, and the
    /// one read last may carry the ticket CWA has already replaced.
    fn take_ticket(&self, reply: &HttpReply) {
        if let Some(new) = &reply.ticket {
            let mut state = self.state();
            if reply.arrived < state.ticket_arrived {
                log::debug!(
                    "CWA ticket of an earlier response ignored for sid {}",
                    state.sid
                );
                return;
            }
            state.ticket_arrived = reply.arrived;
            let State { ticket, sid, .. } = &mut *state;
            if let Some(current) = ticket {
                if current != new {
                    *current = new.clone();
                    self.ticket_rotations.fetch_add(1, Ordering::Relaxed);
                    log::debug!("CWA ticket rotated for sid {sid}");
                }
            }
        }
    }

    /// Fills in the kind of `requestSucceeded` / `requestFailed` events
    /// from the pending map, removing the entries.
    fn correlate(&self, events: &mut [Event]) {
        let mut state = self.state();
        for event in events {
            if let Event::RequestSucceeded { rid, kind } | Event::RequestFailed { rid, kind, .. } =
                event
            {
                if let Some(rid) = rid {
                    *kind = state.pending.remove(rid);
                }
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.state().ticket = None;
    }
}

/// A signed-in CWA session, before it is split into its two channels.
pub struct CwaSession {
    shared: Arc<Shared>,
    info: SessionInfo,
    poll_wait: Duration,
    config: ClientConfig,
}

impl CwaSession {
    /// Signs `login` (`DOMAIN\user` or a UPN) in with `password` as
    /// `config.auth_mode` says, then runs `initiateSession`. The password
    /// is used for this call only and never kept, logged or displayed.
    pub fn sign_in(
        config: &ClientConfig,
        login: &str,
        password: &str,
    ) -> Result<CwaSession, SignInError> {
        let mut signed = sign_in(config, login, password)?;
        // The deadline was the sign-in's; the session's requests have
        // their phase timeouts (the event GET is held by CWA).
        signed.http.deadline = None;
        log::info!(
            "CWA session {} for {login} ({:?}) signed in",
            signed.sid,
            signed.via
        );
        let info = SessionInfo {
            own_uri: signed.own_uri,
            sid: signed.sid.clone(),
            via: signed.via,
        };
        let shared = Arc::new(Shared::new(signed.http, signed.ticket, signed.sid));
        Ok(CwaSession {
            shared,
            info,
            poll_wait: signed
                .poll_wait_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_POLL_WAIT)
                .min(MAX_POLL_WAIT),
            config: config.clone(),
        })
    }

    /// The session's identity.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Splits the session into its command and event channels, which may
    /// be used from two threads at once.
    pub fn split(self) -> (CommandChannel, EventChannel) {
        let commands = CommandChannel {
            shared: Arc::clone(&self.shared),
            info: self.info.clone(),
            // rid 1 was initiateSession.
            next_rid: INITIATE_SESSION_RID + 1,
            presence: (self.config.initial_availability, None),
            last_publish: Instant::now(),
            republish_interval: self.config.republish_interval,
        };
        let events = EventChannel {
            shared: self.shared,
            acked: 0,
            poll_wait: self.poll_wait,
            next_poll_at: Instant::now(),
            busy_streak: 0,
            busy_backoff_cap: self.config.busy_backoff_cap,
            max_busy_retries: self.config.max_busy_retries,
            max_drop_retries: self.config.max_drop_retries,
        };
        (commands, events)
    }
}

/// The command channel: POSTs to `/cwa/MainCommandHandler.ashx`.
///
/// `&mut self` makes the one-POST-at-a-time rule a type-level fact; share
/// it between threads behind your own mutex if you must.
pub struct CommandChannel {
    shared: Arc<Shared>,
    info: SessionInfo,
    next_rid: u64,
    /// The presence last published (availability, note), for republishing.
    presence: (u32, Option<String>),
    last_publish: Instant,
    republish_interval: Duration,
}

impl CommandChannel {
    /// The session's identity.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Sends one command and returns CWA's synchronous answer.
    ///
    /// [`Outcome::Accepted`] means the result follows on the event channel
    /// as [`Event::RequestSucceeded`] / [`Event::RequestFailed`] carrying
    /// [`CommandReply::rid`] and this command's [`CommandKind`]. A
    /// `requestFailed` is an `Ok` outcome, except 18100 (→
    /// [`SessionError::SessionGone`]) and 18101 (→ [`SessionError::Busy`]).
    /// Commands are never retried here: a command may have taken effect
    /// even when its reply was lost.
    pub fn send(&mut self, command: &Command) -> Result<CommandReply, SessionError> {
        let rid = self.next_rid;
        self.next_rid += 1;
        let kind = command.kind();
        let (ticket, sid) = self.shared.credentials()?;
        {
            // Registered before sending: the asynchronous result may reach
            // the event thread before this thread reads the POST's reply.
            let mut state = self.shared.state();
            state.pending.insert(rid, kind);
            while state.pending.len() > MAX_PENDING {
                state.pending.pop_first();
            }
        }
        let result = self.exchange(rid, &ticket, &sid, command);
        // Accepted requests complete on the event channel; so may an
        // accepted initiateImSession, when the invitee answers.
        let keep_pending = matches!(
            result,
            Ok(CommandReply {
                outcome: Outcome::Accepted | Outcome::ImSessionAccepted { .. },
                ..
            })
        );
        if !keep_pending {
            self.shared.state().pending.remove(&rid);
        }
        let reply = result?;
        if let Command::PublishPresence { availability, note } = command {
            // A publish without a note leaves the note as it was, so the
            // republish keeps carrying it.
            self.presence.0 = *availability;
            if note.is_some() {
                self.presence.1 = note.clone();
            }
            self.last_publish = Instant::now();
        }
        Ok(reply)
    }

    fn exchange(
        &self,
        rid: u64,
        ticket: &str,
        sid: &str,
        command: &Command,
    ) -> Result<CommandReply, SessionError> {
        let body = xml::to_string(&envelope(Some(sid), command.to_elements(rid)));
        let reply = self
            .shared
            .http
            .post(COMMAND_PATH, Some(ticket), &[], body.as_bytes())
            .map_err(session_error)?;
        self.shared.take_ticket(&reply);
        check_status(&reply)?;
        let root = xmlguard::parse(&reply.body, usize::MAX)
            .map_err(|why| SessionError::Protocol(format!("command reply: {why}")))?;
        let parsed = parse_reply(&root, rid)
            .map_err(|why| SessionError::Protocol(format!("command reply: {why}")))?;
        if let Outcome::Failed(e) | Outcome::Invalid(e) = &parsed.outcome {
            if e.is_session_gone() {
                return Err(SessionError::SessionGone(e.to_string()));
            }
            if e.is_throttled() {
                return Err(SessionError::Busy);
            }
        }
        let mut events = Vec::new();
        {
            let mut state = self.shared.state();
            for block in parsed.embedded {
                for (eid, event) in block.events {
                    if let Some(eid) = eid {
                        state.embedded_eids.insert(eid);
                    }
                    events.push(event);
                }
            }
            while state.embedded_eids.len() > MAX_EMBEDDED_EIDS {
                state.embedded_eids.pop_first();
            }
        }
        self.shared.correlate(&mut events);
        Ok(CommandReply {
            rid,
            outcome: parsed.outcome,
            events,
        })
    }

    /// The presence last published (availability, note), or the sign-in
    /// availability before the first publication.
    pub fn presence(&self) -> (u32, Option<String>) {
        self.presence.clone()
    }

    /// Marks real user activity: the next event GET says `UA=true`.
    pub fn note_user_activity(&self) {
        self.shared.user_active.store(true, Ordering::Relaxed);
    }

    /// Whether the presence must be republished now: CWA wants it every
    /// five minutes (cwa-sim(1), COMMANDS; that a published state lapses
    /// without it is an assumption, unverified on a real server),
    /// configurable as `republish_interval`.
    pub fn republish_due(&self) -> bool {
        self.last_publish.elapsed() >= self.republish_interval
    }

    /// Republishes the presence last published (or the initial
    /// availability), restarting the republish timer.
    pub fn republish(&mut self) -> Result<CommandReply, SessionError> {
        let (availability, note) = self.presence.clone();
        self.send(&Command::PublishPresence { availability, note })
    }

    /// How many times the ticket changed since sign-in.
    pub fn ticket_rotations(&self) -> u64 {
        self.shared.ticket_rotations.load(Ordering::Relaxed)
    }

    /// Signs out: `terminateSession`, then the session is closed locally
    /// whatever CWA answered (the ticket is dropped; both channels return
    /// [`SessionError::Closed`] from then on). The event channel stops
    /// after its outstanding GET returns.
    pub fn sign_out(&mut self) -> Result<(), SessionError> {
        self.shared.signing_out.store(true, Ordering::SeqCst);
        let result = self.send(&Command::TerminateSession);
        self.shared.close();
        log::info!("CWA session {} signed out", self.info.sid);
        match result {
            Ok(CommandReply {
                outcome: Outcome::Failed(e) | Outcome::Invalid(e),
                ..
            }) => Err(SessionError::Protocol(format!("terminateSession: {e}"))),
            Ok(_) => Ok(()),
            // The session is already gone: that is what we wanted.
            Err(SessionError::SessionGone(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes the session locally without telling CWA (e.g. after
    /// `SessionGone`).
    pub fn close(&self) {
        self.shared.close();
    }
}

/// An event GET as sent and its reply.
struct Fetched {
    sid: String,
    /// The UA it sent (restored for the next GET if this one failed).
    user_active: bool,
    result: Result<HttpReply, HttpFailure>,
}

/// The event channel: GET `/cwa/AsyncDataChannel.ashx?Sid=&AckId=&UA=`.
///
/// Protocol: call [`poll`](Self::poll), hand the batch's events to the
/// consumer, then call [`ack`](Self::ack) with the batch. Only `ack`
/// advances the AckId sent with the next GET, so events of a batch that
/// was not acknowledged (e.g. the device link failed first) are fetched
/// again; events CWA sends again although they were acknowledged, or
/// that already came embedded in a command reply, are dropped by eid.
pub struct EventChannel {
    shared: Arc<Shared>,
    acked: u64,
    poll_wait: Duration,
    next_poll_at: Instant,
    busy_streak: u32,
    busy_backoff_cap: Duration,
    max_busy_retries: u32,
    max_drop_retries: u32,
}

impl EventChannel {
    /// Waits until the next GET is due (`pollWaitTime` after the previous
    /// response; cwa-sim(1), EVENTS), sends it with the acknowledged AckId, and returns
    /// its events (possibly none).
    ///
    /// Inside, a GET whose connection dropped is resent with the same
    /// AckId (up to `max_drop_retries` times), and a busy CWA (503 or
    /// 18101) is retried after an exponential, jittered back-off starting
    /// from `pollWaitTime` and capped at `busy_backoff_cap`, up to
    /// `max_busy_retries` times before [`SessionError::Busy`].
    /// Errors other than `SessionGone` and `Closed` leave the channel
    /// usable: the next `poll` resends the same AckId.
    pub fn poll(&mut self) -> Result<EventBatch, SessionError> {
        // The session's event thread waits in `fetch` for hours on end:
        // this frame and `fetch`'s stay small, the handling of a reply is
        // a function of its own (see `Http::get_long_poll`).
        let mut drops = 0u32;
        loop {
            // Boxed: the reply is not part of this frame either.
            let fetched = self.fetch()?;
            if let Some(batch) = self.take_reply(fetched, &mut drops)? {
                return Ok(batch);
            }
        }
    }

    /// One event GET, after the poll wait: the sid and UA it sent, and
    /// its reply.
    #[inline(never)]
    fn fetch(&mut self) -> Result<Box<Fetched>, SessionError> {
        let (path, ticket, sid, user_active) = self.next_get()?;
        let result = self.shared.http.get_long_poll(&path, Some(&ticket));
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        Ok(Box::new(Fetched {
            sid,
            user_active,
            result,
        }))
    }

    /// After the poll wait: the next GET's path and query, ticket, sid
    /// and UA (out of `fetch`'s frame, which stays under the held GET).
    #[inline(never)]
    fn next_get(&mut self) -> Result<(String, String, String, bool), SessionError> {
        self.sleep_until(self.next_poll_at)?;
        let (ticket, sid) = self.shared.credentials()?;
        let user_active = self.shared.user_active.swap(false, Ordering::Relaxed);
        let path = format!(
            "{EVENT_PATH}?Sid={}&AckId={}&UA={user_active}",
            url_encode(&sid),
            self.acked
        );
        Ok((path, ticket, sid, user_active))
    }

    /// What an event GET's reply means: a batch, `None` to poll again
    /// (a dropped GET resent, a busy CWA waited out), or the error.
    #[inline(never)]
    // Boxed on purpose: the reply stays out of `poll`'s frame.
    #[allow(clippy::boxed_local)]
    fn take_reply(
        &mut self,
        fetched: Box<Fetched>,
        drops: &mut u32,
    ) -> Result<Option<EventBatch>, SessionError> {
        let Fetched {
            sid,
            user_active,
            result,
        } = *fetched;
        let sid = sid.as_str();
        let reply = match result {
            Ok(reply) => reply,
            Err(HttpFailure::Dropped(why)) if *drops < self.max_drop_retries => {
                *drops += 1;
                if user_active {
                    self.shared.user_active.store(true, Ordering::Relaxed);
                }
                log::info!(
                    "CWA event GET for sid {sid} dropped ({why}); resending AckId {}",
                    self.acked
                );
                self.next_poll_at = Instant::now() + self.poll_wait.min(SLEEP_SLICE * *drops);
                return Ok(None);
            }
            Err(f) => {
                if user_active {
                    self.shared.user_active.store(true, Ordering::Relaxed);
                }
                // Do not let a caller that polls again spin on a
                // failing server.
                self.next_poll_at = Instant::now() + self.poll_wait;
                return Err(session_error(f));
            }
        };
        self.shared.take_ticket(&reply);
        if reply.status == 503 {
            self.back_off(sid, "HTTP 503")?;
            return Ok(None);
        }
        if let Err(e) = check_status(&reply) {
            self.next_poll_at = Instant::now() + self.poll_wait;
            return Err(self.ended_by_us(e));
        }
        let parsed = match self.parse_events_reply(&reply) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.next_poll_at = Instant::now() + self.poll_wait;
                return Err(e);
            }
        };
        if let Some(e) = &parsed.error {
            if e.is_session_gone() {
                return Err(self.ended_by_us(SessionError::SessionGone(e.to_string())));
            }
            if e.is_throttled() {
                self.back_off(sid, "error 18101")?;
                return Ok(None);
            }
            self.next_poll_at = Instant::now() + self.poll_wait;
            return Err(SessionError::Protocol(format!("event channel: {e}")));
        }
        self.busy_streak = 0;
        if let Some(ms) = parsed.poll_wait_ms {
            self.poll_wait = Duration::from_millis(ms).min(MAX_POLL_WAIT);
        }
        self.next_poll_at = Instant::now() + self.poll_wait;
        Ok(Some(self.batch(parsed)))
    }

    /// Acknowledges `batch`: the next GET sends its `ackId`, so CWA will
    /// not send its events again. Call it only after the events were
    /// handed over.
    pub fn ack(&mut self, batch: &EventBatch) {
        if batch.ack_id > self.acked {
            self.acked = batch.ack_id;
            let acked = self.acked;
            self.shared.state().embedded_eids.retain(|eid| *eid > acked);
        }
    }

    /// The AckId the next GET will send.
    pub fn ack_id(&self) -> u64 {
        self.acked
    }

    /// The `pollWaitTime` currently honoured.
    pub fn poll_wait(&self) -> Duration {
        self.poll_wait
    }

    /// How many times the ticket changed since sign-in.
    pub fn ticket_rotations(&self) -> u64 {
        self.shared.ticket_rotations.load(Ordering::Relaxed)
    }

    /// Closes the session locally (the outstanding GET, if any, still runs
    /// to its end or timeout).
    pub fn close(&self) {
        self.shared.close();
    }

    fn parse_events_reply(&self, reply: &HttpReply) -> Result<ParsedEvents, SessionError> {
        parse_events_body(&reply.body)
    }

    /// Builds the batch: drops replays, fills in request kinds.
    fn batch(&self, parsed: ParsedEvents) -> EventBatch {
        let max_eid = parsed.events.iter().filter_map(|(eid, _)| *eid).max();
        // Per the examples ackId is the highest eid; without one, use it.
        let ack_id = parsed.ack_id.or(max_eid).unwrap_or(self.acked);
        let mut events = Vec::with_capacity(parsed.events.len());
        {
            let state = self.shared.state();
            for (eid, event) in parsed.events {
                if let Some(eid) = eid {
                    if eid <= self.acked || state.embedded_eids.contains(&eid) {
                        log::debug!("CWA event eid {eid} already handed out; dropped");
                        continue;
                    }
                }
                events.push(event);
            }
        }
        self.shared.correlate(&mut events);
        EventBatch {
            ack_id,
            events,
            session_timeout: parsed.session_timeout,
        }
    }

    /// `SessionGone` caused by our own sign-out is reported as `Closed`.
    fn ended_by_us(&self, e: SessionError) -> SessionError {
        match e {
            SessionError::SessionGone(_) if self.shared.signing_out.load(Ordering::SeqCst) => {
                SessionError::Closed
            }
            e => e,
        }
    }

    /// One more busy answer: sleep the next back-off, or give up.
    fn back_off(&mut self, sid: &str, why: &str) -> Result<(), SessionError> {
        self.busy_streak += 1;
        if self.busy_streak > self.max_busy_retries {
            self.busy_streak = 0;
            self.next_poll_at = Instant::now() + self.busy_backoff_cap;
            return Err(SessionError::Busy);
        }
        let delay = backoff_delay(
            self.poll_wait,
            self.busy_streak,
            self.busy_backoff_cap,
            random_unit(),
        );
        log::info!(
            "CWA busy ({why}) for sid {sid}; retrying the event GET in {} ms",
            delay.as_millis()
        );
        self.next_poll_at = Instant::now() + delay;
        Ok(())
    }

    /// Sleeps until `when`, in slices, returning `Closed` if the session
    /// is signed out meanwhile.
    fn sleep_until(&self, when: Instant) -> Result<(), SessionError> {
        loop {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(SessionError::Closed);
            }
            let now = Instant::now();
            if now >= when {
                return Ok(());
            }
            std::thread::sleep((when - now).min(SLEEP_SLICE));
        }
    }
}

/// The `n`th back-off (n ≥ 1): `base · 2^(n-1)` capped at `cap`, then
/// jittered into `[d/2, d]` by `unit` ∈ [0, 1). `base` is at least 100 ms
/// so a zero `pollWaitTime` still backs off.
fn backoff_delay(base: Duration, n: u32, cap: Duration, unit: f64) -> Duration {
    let base = base.max(Duration::from_millis(100));
    let factor = 1u32 << (n.saturating_sub(1)).min(16);
    let d = base.saturating_mul(factor).min(cap);
    d / 2 + d.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
}

/// A uniform number in [0, 1) from OpenSSL; 0.5 if it has none to give.
fn random_unit() -> f64 {
    let mut b = [0u8; 4];
    match openssl::rand::rand_bytes(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// Maps a session-level HTTP status to an error (2xx passes).
fn check_status(reply: &HttpReply) -> Result<(), SessionError> {
    match reply.status {
        200..=299 => Ok(()),
        401 | 403 | 404 => Err(SessionError::SessionGone(format!(
            "HTTP {} from CWA",
            reply.status
        ))),
        503 => Err(SessionError::Busy),
        s @ 300..=399 => Err(SessionError::Protocol(format!(
            "redirect (HTTP {s}) to {}",
            reply.location.as_deref().unwrap_or("?")
        ))),
        s @ 500..=599 => Err(SessionError::Unavailable(format!("HTTP {s} from CWA"))),
        s => Err(SessionError::Protocol(format!(
            "unexpected HTTP {s} from CWA"
        ))),
    }
}

fn session_error(f: HttpFailure) -> SessionError {
    match f {
        HttpFailure::Timeout(_) => SessionError::Timeout(f.to_string()),
        HttpFailure::Tls(_) | HttpFailure::Connect(_) | HttpFailure::Dropped(_) => {
            SessionError::Unavailable(f.to_string())
        }
        HttpFailure::TooLarge(_) | HttpFailure::Protocol(_) => {
            SessionError::Protocol(f.to_string())
        }
    }
}

/// Percent-encodes a query value (CWA's sids are digits; be safe anyway).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses the body of an event-channel reply: `cwaEvents`, or events and
/// errors wrapped in `cwaResponses`.
pub(crate) fn parse_events_body(body: &[u8]) -> Result<ParsedEvents, SessionError> {
    let root = xmlguard::parse(body, usize::MAX)
        .map_err(|why| SessionError::Protocol(format!("event channel: {why}")))?;
    match root.name.as_str() {
        "cwaEvents" => Ok(parse_events(&root)),
        // An error, or events, wrapped in cwaResponses (our reading; cwa-sim(1), COMMANDS).
        "cwaResponses" => {
            let mut merged = ParsedEvents::default();
            for child in xml::children(&root) {
                match child.name.as_str() {
                    "error" => merged.error = Some(super::error::CwaError::from_element(child)),
                    "requestFailed" => {
                        let e = super::error::CwaError::child_of(child);
                        if e.is_session_gone() || e.is_throttled() {
                            merged.error = Some(e);
                        }
                    }
                    "cwaEvents" => {
                        let p = parse_events(child);
                        merged.ack_id = merged.ack_id.max(p.ack_id);
                        merged.poll_wait_ms = p.poll_wait_ms.or(merged.poll_wait_ms);
                        merged.error = merged.error.take().or(p.error);
                        merged.events.extend(p.events);
                    }
                    _ => {}
                }
            }
            Ok(merged)
        }
        other => Err(SessionError::Protocol(format!(
            "event channel: expected <cwaEvents>, got <{other}>"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(1000);
        let cap = Duration::from_secs(30);
        assert_eq!(backoff_delay(base, 1, cap, 0.0), Duration::from_millis(500));
        assert_eq!(
            backoff_delay(base, 1, cap, 1.0),
            Duration::from_millis(1000)
        );
        assert_eq!(
            backoff_delay(base, 3, cap, 1.0),
            Duration::from_millis(4000)
        );
        assert_eq!(backoff_delay(base, 30, cap, 1.0), cap);
        assert!(backoff_delay(Duration::ZERO, 1, cap, 0.0) >= Duration::from_millis(50));
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn statuses_map_to_session_errors() {
        let r = |status| HttpReply {
            status,
            ticket: None,
            www_authenticate: vec![],
            location: None,
            body: vec![],
            arrived: Instant::now(),
        };
        assert!(check_status(&r(200)).is_ok());
        assert!(matches!(
            check_status(&r(401)),
            Err(SessionError::SessionGone(_))
        ));
        assert!(matches!(
            check_status(&r(403)),
            Err(SessionError::SessionGone(_))
        ));
        assert_eq!(check_status(&r(503)), Err(SessionError::Busy));
        assert!(matches!(
            check_status(&r(302)),
            Err(SessionError::Protocol(_))
        ));
        assert!(matches!(
            check_status(&r(500)),
            Err(SessionError::Unavailable(_))
        ));
    }

    #[test]
    fn a_ticket_from_an_earlier_response_never_replaces_a_newer_one() {
        let http = Http::new(&ClientConfig::new("http://127.0.0.1:9")).unwrap();
        let shared = Shared::new(http, "t1".into(), "1".into());
        let reply = |ticket: &str, arrived| HttpReply {
            status: 200,
            ticket: Some(ticket.into()),
            www_authenticate: vec![],
            location: None,
            body: vec![],
            arrived,
        };
        // The held GET's reply (t2) arrived first, the command's (t3)
        // later; the GET's thread gets to the lock last.
        let get_arrived = Instant::now();
        let post_arrived = get_arrived + Duration::from_millis(1);
        shared.take_ticket(&reply("t3", post_arrived));
        shared.take_ticket(&reply("t2", get_arrived));
        assert_eq!(shared.credentials().unwrap().0, "t3");
        assert_eq!(shared.ticket_rotations.load(Ordering::Relaxed), 1);
        // A later reply with a new ticket still rotates it.
        shared.take_ticket(&reply("t4", post_arrived + Duration::from_millis(1)));
        assert_eq!(shared.credentials().unwrap().0, "t4");
    }

    #[test]
    fn sids_are_encoded() {
        assert_eq!(url_encode("12"), "12");
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
    }
}
