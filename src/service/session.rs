//! One running session: a signed-in user on one device, with its CWA
//! session and its (current) device link.
//!
//! Threads:
//!
//! - the **event thread** ([`run_events`]) owns the session's table slot
//!   ([`SlotGuard`]) and the CWA event long-poll: each batch is translated,
//!   every device event gets the next sequence number, goes into the replay
//!   buffer and, if a device link is attached, to the device; only then is
//!   the batch acknowledged to CWA. It also keeps presence up each time
//!   its event request returns (the republish CWA wants, Away for an
//!   unused device: [`super::upkeep`]) and handles a lost CWA session;
//! - the **link thread** ([`serve_link`], the listener's connection thread
//!   after a login) reads device messages: status reports (coverage and
//!   last-status time in the table; the registry only when coverage
//!   changes), commands (CWA POSTs; a command result back), acks (trim the
//!   replay buffer) and logout. A read timeout (`status_timeout`) or a lost
//!   connection detaches the link and leaves the session out of coverage:
//!   it may be re-attached, evicted at the limit, or reaped;
//! - the **finisher**, queued by the table's waker on the bounded pool of
//!   finisher threads ([`super::finishers`]) whenever the session
//!   ends (logout, eviction, inactivity, replacement, CWA lost, shutdown,
//!   or the event thread dying): it signs out of CWA (which also releases
//!   the event thread's held GET), tells the device why, closes the link,
//!   and writes the registry and the audit.
//!
//! Events the device has not acknowledged stay in a replay buffer of at
//! most [`MAX_REPLAY_EVENTS`] events and [`MAX_REPLAY_BYTES`] bytes of
//! encoded messages; a device that re-attaches (`resume`) gets them again
//! with their original sequence numbers. When the buffer is full and the
//! device attached keeps acknowledging, delivery waits for room; when it
//! is full otherwise, the session ends with 310 "event buffer overflow"
//! instead of dropping events silently.
//!
//! Asynchronous command results: a CWA command answered `requestAccepted`
//! completes later with `requestSucceeded` / `requestFailed` on the event
//! channel; the device's command result is sent then, matched by rid. A
//! result that arrives before the command thread has registered the rid
//! (the two race) waits in a small bounded list.
//!
//! Commands sent again after a resume: a device that lost its link does
//! not know which of its commands ran. It sends those without a result
//! again, with the same ids, on the new link; the session remembers its
//! last [`MAX_SEEN_COMMANDS`] commands (a digest, where each came from, and
//! the result once there is one), so the same command with the same id
//! from a newer link is not run twice: its result goes to the newer link,
//! now or when it comes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::configdb;
use crate::cwa::{CommandChannel, CwaSession, EventChannel, Outcome, SessionError};
use crate::ops::memory;
use crate::wire::{
    self, DeviceCommand, DeviceEvent, DeviceMessage, SecureReader, SecureWriter, ServiceMessage,
    Status, WireError,
};

use super::access::AccessBook;
use super::context::ServiceContext;
use super::credential::Credential;
use super::listener::{Closer, ReadHalf, WriteHalf};
use super::spool::RegistryWrite;
use super::table::{Coverage, EndReason, SessionHandle, SessionId, SlotGuard};
use super::translate::{self, Translated};
use super::upkeep::{HeldPresence, PresenceQuery, Upkeep, AWAY, MAX_PRESENCE_QUERIES};

/// Most unacknowledged events kept per session.
pub const MAX_REPLAY_EVENTS: usize = 1000;
/// Most bytes of unacknowledged encoded events kept per session.
pub const MAX_REPLAY_BYTES: usize = 1 << 20;
/// Commands awaiting an asynchronous CWA result, per session.
const MAX_PENDING: usize = 64;
/// Results that arrived before their command was registered.
const MAX_EARLY: usize = 32;
/// How long delivery waits, with the replay buffer full and a device
/// attached, for the device's next acknowledgement before the buffer
/// overflows.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);
/// Commands remembered, with their results, for devices that send them
/// again after a resume.
pub const MAX_SEEN_COMMANDS: usize = 64;
/// Presence subscriptions remembered to restore after a new CWA sign-in.
const MAX_SUBSCRIPTIONS: usize = 200;
/// Event polls failing in a row (network, busy, timeouts) before the
/// session is given up as lost.
const MAX_POLL_FAILURES: u32 = 6;
/// CWA sign-in attempts after CWA lost the session, with password caching
/// (PROPOSED in the protocol notes, §10: at most three, with back-off).
const RESIGN_ATTEMPTS: u32 = 3;

/// The device-facing session id for a table id.
pub fn session_id_text(id: SessionId) -> String {
    format!("s-{id}")
}

/// The table id in a device-facing session id (`s-17`).
pub fn parse_session_id(text: &str) -> Option<SessionId> {
    text.strip_prefix("s-")?.parse().ok()
}

/// The device link's reading half.
pub type LinkReader = SecureReader<ReadHalf>;
/// The device link's writing half.
pub type LinkWriter = SecureWriter<WriteHalf>;

/// A device connection attached to the session.
#[derive(Clone)]
struct Link {
    id: u64,
    writer: Arc<Mutex<LinkWriter>>,
    closer: Closer,
}

impl Link {
    fn send(&self, payload: &[u8]) -> Result<(), WireError> {
        lock(&self.writer).send(payload)
    }

    fn send_message(&self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// The device is gone or replaced: cut the connection (this wakes
    /// its link thread).
    fn close(&self) {
        self.closer.close_now();
    }

    /// After the last message: end the connection so that the device
    /// reads that message (see [`Closer`]).
    fn close_gracefully(&self) {
        self.closer.close_gracefully();
    }
}

/// Something the event channel delivered before the command thread knew
/// the rid.
enum Early {
    Result(Result<(), String>),
    Search(Vec<wire::SearchEntry>),
}

/// A command waiting for its asynchronous CWA result.
struct Pending {
    link: u64,
    command_id: u64,
    kind: PendingKind,
    /// When CWA accepted it (for the command timeout).
    accepted: Instant,
}

/// What the asynchronous result of a command still has to do.
#[derive(Clone, PartialEq, Eq)]
enum PendingKind {
    /// Becomes the command's result.
    Result,
    /// A search: the command result was already sent; the search-result
    /// event needs the command id.
    Search,
    /// An invitation: answered at once (CWA completes it only when the
    /// invitee answers, which may take minutes); a failure (declined,
    /// unreachable) becomes a delivery-failed event.
    Invite {
        /// The conversation.
        conversation: String,
    },
}

/// A command the session received, for recognising it when a resumed
/// device sends it again.
struct SeenCommand {
    id: u64,
    /// SHA-256 of the command's encoding: the same id with another
    /// command is a new command (a client that numbers afresh).
    digest: [u8; 32],
    /// The link it came on.
    origin: u64,
    /// The link its result goes to (a newer one after a resend).
    to: u64,
    result: Option<ServiceMessage>,
}

fn command_digest(id: u64, command: &DeviceCommand) -> [u8; 32] {
    let encoded = DeviceMessage::Command {
        id,
        command: command.clone(),
    }
    .encode();
    openssl::sha::sha256(&encoded)
}

struct State {
    seen: VecDeque<SeenCommand>,
    link: Option<Link>,
    next_link: u64,
    next_seq: u64,
    replay: VecDeque<(u64, Vec<u8>)>,
    replay_bytes: usize,
    pending: BTreeMap<u64, Pending>,
    early: VecDeque<(u64, Early)>,
    subscriptions: Vec<String>,
    /// Coverage last written to the registry.
    registry_coverage: Coverage,
    /// The finisher has run: no link may attach any more.
    finished: bool,
    /// The finisher has told the device why the session ended (or had no
    /// link to tell): a link thread still reading may now return.
    last_word_sent: bool,
    /// Searches waiting for the presence of the people found.
    queries: Vec<PresenceQuery>,
    /// Contacts' presence held while the device is dormant.
    held: HeldPresence,
    next_query: u64,
    /// The access-level containers as CWA last sent them.
    access: AccessBook,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live session.
pub struct Session {
    ctx: Arc<ServiceContext>,
    handle: SessionHandle,
    pin: u32,
    login: String,
    sip_uri: String,
    registry_id: Option<i64>,
    credential: Credential,
    commands: Mutex<CommandChannel>,
    /// Held while an event is numbered and written, and while a resume
    /// replays: keeps events in sequence order on the link.
    delivery: Mutex<()>,
    state: Mutex<State>,
    /// Auto-away; taken only while `commands` is held, so that deciding
    /// and publishing are one step.
    upkeep: Mutex<Upkeep>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.handle.id())
            .field("pin", &wire::format_pin(self.pin))
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// What a new session starts from.
pub struct NewSession {
    /// The table's handle of the admitted session.
    pub handle: SessionHandle,
    /// The device PIN.
    pub pin: u32,
    /// The login it signed in as.
    pub login: String,
    /// The user's SIP URI.
    pub sip_uri: String,
    /// Its registry row, if the Config DB took it.
    pub registry_id: Option<i64>,
    /// The password proof.
    pub credential: Credential,
    /// The CWA command channel.
    pub commands: CommandChannel,
}

impl Session {
    /// A session with no link attached yet.
    pub fn new(ctx: Arc<ServiceContext>, new: NewSession) -> Arc<Session> {
        let initial = ctx.cwa().client.initial_availability;
        Arc::new(Session {
            upkeep: Mutex::new(Upkeep::new(initial, Instant::now())),
            ctx,
            handle: new.handle,
            pin: new.pin,
            login: new.login,
            sip_uri: new.sip_uri,
            registry_id: new.registry_id,
            credential: new.credential,
            commands: Mutex::new(new.commands),
            delivery: Mutex::new(()),
            state: Mutex::new(State {
                seen: VecDeque::new(),
                link: None,
                next_link: 1,
                next_seq: 1,
                replay: VecDeque::new(),
                replay_bytes: 0,
                pending: BTreeMap::new(),
                early: VecDeque::new(),
                subscriptions: Vec::new(),
                registry_coverage: Coverage::In,
                finished: false,
                last_word_sent: false,
                queries: Vec::new(),
                held: HeldPresence::default(),
                next_query: 1,
                access: AccessBook::default(),
            }),
        })
    }

    /// The table id.
    pub fn id(&self) -> SessionId {
        self.handle.id()
    }

    /// The session's row in the Config DB registry, once it was written.
    pub fn registry_id(&self) -> Option<i64> {
        self.registry_id
    }

    /// The device PIN.
    pub fn pin(&self) -> u32 {
        self.pin
    }

    /// The login the session signed in as.
    pub fn login(&self) -> &str {
        &self.login
    }

    /// The user's SIP URI.
    pub fn sip_uri(&self) -> &str {
        &self.sip_uri
    }

    /// A device link was attached again: the registry shows it in
    /// coverage.
    pub fn note_attached(&self) {
        self.record_coverage(Coverage::In);
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.handle.is_ended()
    }

    /// Whether `password` is the session's password.
    pub fn verify_password(&self, password: &wire::Secret) -> bool {
        self.credential.verify(password)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The sequence number of the last event numbered (0 before the
    /// first). A device cannot acknowledge past it.
    pub fn last_event_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    /// Make the table's waker queue the finisher (on the bounded pool of
    /// [`super::finishers`]) when the session ends.
    pub fn arm_waker(self: &Arc<Self>) {
        let session = Arc::clone(self);
        self.handle.set_waker(move || {
            let finishers = session.ctx.finishers.clone();
            finishers.run(move || session.finish_guarded());
        });
    }

    /// Attach a device link: send it `login_result`, then every event
    /// after `acked` still in the replay buffer, with nothing delivered in
    /// between. Returns the link id, or `None` if the session has finished.
    pub fn attach(
        &self,
        writer: LinkWriter,
        closer: Closer,
        acked: u64,
        login_result: &ServiceMessage,
    ) -> Option<u64> {
        let _order = lock(&self.delivery);
        let (link, old, replay) = {
            let mut st = self.state();
            if st.finished || self.is_ended() {
                return None;
            }
            let link = Link {
                id: st.next_link,
                writer: Arc::new(Mutex::new(writer)),
                closer,
            };
            st.next_link += 1;
            let old = st.link.replace(link.clone());
            trim(&mut st, acked);
            let replay: Vec<Vec<u8>> = st.replay.iter().map(|(_, p)| p.clone()).collect();
            (link, old, replay)
        };
        if let Some(old) = old {
            old.close();
        }
        let mut sent = link.send_message(login_result);
        for payload in &replay {
            if sent.is_err() {
                break;
            }
            sent = link.send(payload);
        }
        if let Err(e) = sent {
            // The session stays, out of coverage, as for any lost link.
            self.detach(link.id, &format!("lost while attaching: {e}"));
            return None;
        }
        if !replay.is_empty() {
            log::info!("{self:?}: replayed {} events on re-attach", replay.len());
        }
        Some(link.id)
    }

    /// Forget link `id` if it is still current; `cut`: shut its socket
    /// down too (from another thread than the link's, to wake it; the link
    /// thread itself leaves the closing to the listener, which lets the
    /// device read what was sent last).
    fn drop_link(&self, id: u64, cut: bool) {
        let gone = {
            let mut st = self.state();
            match &st.link {
                Some(l) if l.id == id => st.link.take(),
                _ => None,
            }
        };
        if let Some(link) = gone.filter(|_| cut) {
            link.close();
        }
    }

    /// Link `id` went away without a logout: the session stays, out of
    /// coverage, unless a newer link is attached. Called on the link's own
    /// thread.
    fn detach(&self, id: u64, why: &str) {
        self.drop_link(id, false);
        if self.is_ended() {
            return;
        }
        let newer = self.state().link.is_some();
        if newer {
            return;
        }
        log::info!("{self:?}: device link {id} gone ({why}); session kept, out of coverage");
        self.ctx.table.mark_out_of_coverage(self.id());
        self.record_coverage(Coverage::Out);
    }

    /// Write the coverage to the registry if it changed since last time.
    fn record_coverage(&self, coverage: Coverage) {
        let held = {
            let mut st = self.state();
            if st.registry_coverage == coverage {
                return;
            }
            st.registry_coverage = coverage;
            if coverage == Coverage::Dormant {
                Vec::new()
            } else {
                st.held.take()
            }
        };
        if !held.is_empty() {
            // Out of dormancy: the latest presence of each contact that
            // changed meanwhile (into the replay buffer if the link is
            // gone, ahead of any newer presence).
            let events = held.into_iter().map(DeviceEvent::Presence).collect();
            if let Err(reason) = self.deliver(events) {
                self.ctx.table.end(self.id(), reason);
            }
        }
        let Some(row) = self.registry_id else { return };
        let db_coverage = match coverage {
            Coverage::In => configdb::Coverage::In,
            Coverage::Dormant => configdb::Coverage::Dormant,
            Coverage::Out => configdb::Coverage::Out,
        };
        self.ctx.record(RegistryWrite::Coverage {
            id: row,
            coverage: db_coverage,
        });
    }

    /// Number, buffer and deliver events, in order. Err: the replay buffer
    /// is full (the caller ends the session).
    fn deliver(&self, events: Vec<DeviceEvent>) -> Result<(), EndReason> {
        if events.is_empty() {
            return Ok(());
        }
        let events = super::split::fit_frames(events);
        let _order = lock(&self.delivery);
        for event in events {
            if let DeviceEvent::Presence(p) = &event {
                let mut st = self.state();
                if st.registry_coverage == Coverage::Dormant {
                    // A dormant device gets no presence updates (they cost
                    // it radio time); the latest per contact is kept for
                    // when it wakes.
                    if !st.held.hold(p.clone()) {
                        log::info!("{self:?}: presence of {} dropped while dormant", p.uri);
                    }
                    continue;
                }
            }
            // Only this function numbers events, under `delivery`: the
            // number cannot change while the event is encoded.
            let seq = self.state().next_seq;
            let payload = ServiceMessage::Event { seq, event }.encode();
            let link = {
                let mut st = self.room_for(payload.len())?;
                st.next_seq += 1;
                st.replay_bytes += payload.len();
                st.replay.push_back((seq, payload.clone()));
                st.link.clone()
            };
            if let Some(link) = link {
                if let Err(e) = link.send(&payload) {
                    log::info!("{self:?}: cannot write to the device: {e}");
                    self.drop_link(link.id, true);
                }
            }
        }
        Ok(())
    }

    /// Send a command result for a command that came on link `link_id`:
    /// remembered for a resend, and sent to the link the device now
    /// expects it on, if that is still current.
    fn answer(&self, link_id: u64, message: ServiceMessage) {
        let link = {
            let mut st = self.state();
            let mut target = link_id;
            if let ServiceMessage::CommandResult { id, .. } = &message {
                if let Some(seen) = st
                    .seen
                    .iter_mut()
                    .rev()
                    .find(|s| s.id == *id && s.origin == link_id)
                {
                    seen.result = Some(message.clone());
                    target = seen.to;
                }
            }
            st.link.clone().filter(|l| l.id == target)
        };
        if let Some(link) = link {
            if let Err(e) = link.send_message(&message) {
                log::info!("{self:?}: cannot write to the device: {e}");
                self.drop_link(link.id, true);
            }
        }
    }

    /// A CWA event batch: results to their commands, events to the device.
    #[inline(never)]
    fn handle_events(&self, events: Vec<crate::cwa::Event>) -> Result<(), EndReason> {
        let mut out = Vec::new();
        // Containers events are merged into what CWA sent before; one
        // setting of a level changes several containers, so the device
        // gets one access-levels event, where the batch's last one was.
        let last_containers = events
            .iter()
            .rposition(|e| matches!(e, crate::cwa::Event::Containers { .. }));
        let mut levels_changed = false;
        for (i, e) in events.into_iter().enumerate() {
            let e = match e {
                crate::cwa::Event::Containers { containers } => {
                    let mut st = self.state();
                    levels_changed |= st.access.merge(containers);
                    if Some(i) == last_containers && levels_changed {
                        out.push(st.access.event());
                    }
                    continue;
                }
                other => other,
            };
            if let crate::cwa::Event::UserPresence { users } = &e {
                if self.answer_presence_query(users) {
                    continue;
                }
            }
            match translate::event(e) {
                Translated::Events(mut evs) => out.append(&mut evs),
                Translated::Result { rid, outcome } => {
                    // Keep the order of events and results as CWA sent them.
                    self.deliver(std::mem::take(&mut out))?;
                    if self.finish_presence_query(rid, &outcome)? {
                        continue;
                    }
                    self.complete(rid, Early::Result(outcome));
                }
                Translated::SearchResult { rid, entries } => {
                    self.deliver(std::mem::take(&mut out))?;
                    match rid {
                        Some(rid) => self.complete(rid, Early::Search(entries)),
                        None => log::info!("{self:?}: search result without rid dropped"),
                    }
                }
            }
        }
        self.deliver(out)
    }

    /// The asynchronous completion of request `rid`: to its command, or
    /// kept until the command thread registers it.
    fn complete(&self, rid: u64, what: Early) {
        let pending = {
            let mut st = self.state();
            let known = match (&what, st.pending.get(&rid)) {
                (_, None) => false,
                // A search's requestSucceeded after its result: done.
                (Early::Result(_), Some(p)) if p.kind == PendingKind::Search => {
                    st.pending.remove(&rid);
                    return;
                }
                _ => true,
            };
            if !known {
                st.early.push_back((rid, what));
                while st.early.len() > MAX_EARLY {
                    st.early.pop_front();
                }
                return;
            }
            st.pending.remove(&rid)
        };
        if let Some(p) = pending {
            self.send_completion(p, what);
        }
    }

    fn send_completion(&self, p: Pending, what: Early) {
        match (what, &p.kind) {
            (Early::Result(Ok(())), PendingKind::Invite { .. }) => {}
            (Early::Result(Err(reason)), PendingKind::Invite { conversation }) => {
                let event = DeviceEvent::DeliveryFailed {
                    conversation: conversation.clone(),
                    uri: None,
                    reason,
                };
                if let Err(reason) = self.deliver(vec![event]) {
                    self.ctx.table.end(self.id(), reason);
                }
            }
            (Early::Result(outcome), _) => {
                let (status, text) = match outcome {
                    Ok(()) => (Status::Ok, String::new()),
                    Err(why) => (Status::Failed, why),
                };
                self.answer(
                    p.link,
                    ServiceMessage::CommandResult {
                        id: p.command_id,
                        status,
                        text,
                        conversation: None,
                    },
                );
            }
            (Early::Search(entries), _) => self.query_presence(p.command_id, entries),
        }
    }

    /// Run one device command against CWA and answer it (now, or when its
    /// asynchronous result arrives).
    fn command(&self, link_id: u64, command_id: u64, command: DeviceCommand) {
        if let Err(why) = translate::check_limits(&command) {
            let refused = ServiceMessage::CommandResult {
                id: command_id,
                status: Status::Failed,
                text: why,
                conversation: None,
            };
            self.answer(link_id, refused);
            return;
        }
        let cwa_command = translate::command(&command);
        if let DeviceCommand::SubscribePresence { uris } = &command {
            let mut st = self.state();
            for uri in uris {
                if st.subscriptions.len() < MAX_SUBSCRIPTIONS && !st.subscriptions.contains(uri) {
                    st.subscriptions.push(uri.clone());
                }
            }
        }
        let result = {
            let mut commands = lock(&self.commands);
            commands.note_user_activity();
            self.note_user_action(&mut commands, &command);
            commands.send(&cwa_command)
        };
        let fail = |status: Status, text: String| ServiceMessage::CommandResult {
            id: command_id,
            status,
            text,
            conversation: None,
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                let status = Status::from_code(e.device_status()).unwrap_or(Status::Failed);
                self.answer(link_id, fail(status, e.to_string()));
                return;
            }
        };
        if !reply.events.is_empty() {
            if let Err(reason) = self.handle_events(reply.events) {
                self.ctx.table.end(self.id(), reason);
                return;
            }
        }
        let ok = |conversation: Option<String>| ServiceMessage::CommandResult {
            id: command_id,
            status: Status::Ok,
            text: String::new(),
            conversation,
        };
        match reply.outcome {
            Outcome::Succeeded => self.answer(link_id, ok(None)),
            Outcome::ImSessionAccepted { conf_id } => self.answer(link_id, ok(Some(conf_id))),
            Outcome::Failed(e) => self.answer(link_id, fail(Status::Failed, e.to_string())),
            Outcome::Invalid(e) => self.answer(
                link_id,
                fail(Status::Failed, format!("CWA refused the request: {e}")),
            ),
            Outcome::Accepted => {
                let kind = match &command {
                    DeviceCommand::Search { .. } => PendingKind::Search,
                    DeviceCommand::Invite { conversation, .. } => PendingKind::Invite {
                        conversation: conversation.clone(),
                    },
                    _ => PendingKind::Result,
                };
                if kind != PendingKind::Result {
                    // A search: a command result, then the search-result
                    // event; an invitation: sent.
                    self.answer(link_id, ok(None));
                }
                let search = kind == PendingKind::Search;
                let pending = Pending {
                    link: link_id,
                    command_id,
                    kind,
                    accepted: Instant::now(),
                };
                let early = {
                    let mut st = self.state();
                    let found = st.early.iter().position(|(rid, _)| *rid == reply.rid);
                    match found {
                        Some(i) => st.early.remove(i).map(|(_, e)| e),
                        None => {
                            st.pending.insert(reply.rid, pending);
                            while st.pending.len() > MAX_PENDING {
                                st.pending.pop_first();
                            }
                            return;
                        }
                    }
                };
                if let Some(early) = early {
                    // For a search only its result matters (a later
                    // requestSucceeded finds nothing pending).
                    if !search || matches!(early, Early::Search(_)) {
                        self.send_completion(pending, early);
                    }
                }
            }
        }
    }

    /// Answers the commands whose CWA outcome is overdue
    /// (`command_timeout`): a plain command gets 306; a search, whose
    /// command result was already sent, gets no search-result. An outcome
    /// that arrives later finds nothing pending and is dropped.
    fn expire_commands(&self) {
        let limit = self.ctx.timeouts.command_timeout;
        let overdue: Vec<Pending> = {
            let mut st = self.state();
            let rids: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| {
                    !matches!(p.kind, PendingKind::Invite { .. }) && p.accepted.elapsed() >= limit
                })
                .map(|(rid, _)| *rid)
                .collect();
            rids.iter()
                .filter_map(|rid| st.pending.remove(rid))
                .collect()
        };
        self.expire_presence_queries(limit);
        for p in overdue {
            log::info!(
                "{self:?}: no CWA outcome for command {} within {} ms",
                p.command_id,
                limit.as_millis()
            );
            if p.kind == PendingKind::Result {
                self.answer(
                    p.link,
                    ServiceMessage::CommandResult {
                        id: p.command_id,
                        status: Status::CwaUnavailable,
                        text: format!("no outcome from CWA within {} ms", limit.as_millis()),
                        conversation: None,
                    },
                );
            }
        }
    }

    /// [`Session::finish`], and if it panics (logged), at least the link
    /// closed and the session forgotten, so that nothing waits for it.
    fn finish_guarded(&self) {
        let what = format!("{self:?}: session finisher");
        if crate::ops::panics::guard(&what, || self.finish()).is_none() {
            let link = {
                let mut st = self.state();
                st.finished = true;
                st.link.take()
            };
            if let Some(link) = link {
                link.close();
            }
            self.ctx.forget_session(self.id());
        }
    }

    /// The finisher: runs once, when the session has ended.
    fn finish(&self) {
        let reason = self.handle.end_reason().unwrap_or(EndReason::Closed);
        log::info!("{self:?} ended: {reason}");
        {
            let mut commands = lock(&self.commands);
            match reason {
                EndReason::CwaSessionLost(_) => commands.close(),
                _ => {
                    if let Err(e) = commands.sign_out() {
                        log::info!("{self:?}: CWA sign-out: {e}");
                    }
                }
            }
        }
        let link = {
            let mut st = self.state();
            st.finished = true;
            st.link.take()
        };
        if let Some(link) = link {
            let _order = lock(&self.delivery);
            let message = match reason {
                EndReason::ServiceStopping => ServiceMessage::ServiceStopping,
                EndReason::Logout => ServiceMessage::SessionEnded {
                    status: Status::SessionEnded,
                    reason: "logout".to_string(),
                },
                ref other => ServiceMessage::SessionEnded {
                    status: Status::from_code(other.status_code()).unwrap_or(Status::SessionEnded),
                    reason: other.to_string(),
                },
            };
            let _ = link.send_message(&message);
            link.close_gracefully();
        }
        self.state().last_word_sent = true;
        let text = reason.to_string();
        if let Some(row) = self.registry_id {
            self.ctx.record(RegistryWrite::Ended {
                id: row,
                reason: text.clone(),
            });
        }
        let event = match reason {
            EndReason::Logout => "logout",
            EndReason::Evicted(_) => "evicted",
            EndReason::Inactive { .. } => "inactive",
            EndReason::Replaced => "replaced",
            EndReason::CwaSessionLost(_) => "cwa_session_lost",
            EndReason::BufferOverflow { .. } => "buffer_overflow",
            EndReason::ServiceStopping => "service_stopping",
            EndReason::Administrative(_) => "session_ended_by_admin",
            EndReason::Closed => "session_ended",
        };
        self.ctx
            .audit(event, Some(&self.login), Some(self.pin), &text);
        self.ctx.forget_session(self.id());
    }

    /// Sign in to CWA again with the cached password (up to three times,
    /// with back-off) and restore presence subscriptions. Returns the new
    /// event channel, or why the session is lost.
    #[inline(never)]
    fn sign_in_again(&self, lost: &SessionError) -> Result<EventChannel, String> {
        let Some(password) = self.credential.cached_password() else {
            return Err(lost.to_string());
        };
        let mut last = lost.to_string();
        for attempt in 0..RESIGN_ATTEMPTS {
            if attempt > 0 && !self.sleep(Duration::from_secs(1 << attempt)) {
                return Err("session ended".into());
            }
            let settings = self.ctx.cwa();
            match CwaSession::sign_in(&settings.client, &self.login, password.expose()) {
                Ok(cwa) => {
                    let (mut commands, events) = cwa.split();
                    let subscriptions = self.state().subscriptions.clone();
                    if !subscriptions.is_empty() {
                        let command = crate::cwa::Command::SubscribePresence {
                            uris: subscriptions,
                        };
                        if let Err(e) = commands.send(&command) {
                            log::warn!("{self:?}: restoring subscriptions: {e}");
                        }
                    }
                    {
                        let mut current = lock(&self.commands);
                        self.carry_presence(&current, &mut commands);
                        *current = commands;
                    }
                    self.forget_old_rids();
                    log::info!("{self:?}: signed in to CWA again after: {lost}");
                    return Ok(events);
                }
                Err(e) => {
                    log::warn!("{self:?}: CWA sign-in again, attempt {}: {e}", attempt + 1);
                    last = e.to_string();
                }
            }
        }
        Err(format!("{lost}; signing in again failed: {last}"))
    }

    /// Sleep up to `d`, waking early when the session ends. Returns false
    /// if it ended.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while !self.is_ended() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }
}

impl Session {
    /// The state, once the replay buffer has room for an event of `len`
    /// bytes. A full buffer with a device attached that is acknowledging
    /// (a long contact list's presence arrives faster than a device
    /// acknowledges) is waited for, as long as acknowledgements keep coming
    /// at least every [`ROOM_WAIT`]; otherwise the buffer overflows and the
    /// session ends.
    fn room_for(&self, len: usize) -> Result<MutexGuard<'_, State>, EndReason> {
        let mut oldest = None;
        let mut since = Instant::now();
        loop {
            let st = self.state();
            let full =
                st.replay.len() >= MAX_REPLAY_EVENTS || st.replay_bytes + len > MAX_REPLAY_BYTES;
            if !full {
                return Ok(st);
            }
            let front = st.replay.front().map(|(seq, _)| *seq);
            if front != oldest {
                oldest = front;
                since = Instant::now();
            }
            if st.link.is_none() || since.elapsed() >= ROOM_WAIT || self.is_ended() {
                return Err(EndReason::BufferOverflow {
                    events: st.replay.len(),
                });
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether command `id` on link `link_id` is one an earlier link
    /// already brought (a device that resumed sends again what got no
    /// result): then it is not run again, and its result, if there is one
    /// yet, goes to this link now, else when it comes. A new command is
    /// remembered.
    fn sent_again(&self, link_id: u64, id: u64, command: &DeviceCommand) -> bool {
        let digest = command_digest(id, command);
        let result = {
            let mut st = self.state();
            let earlier = st
                .seen
                .iter_mut()
                .rev()
                .find(|s| s.id == id && s.digest == digest && s.origin != link_id);
            match earlier {
                Some(seen) => {
                    seen.to = link_id;
                    seen.result.clone()
                }
                None => {
                    st.seen.push_back(SeenCommand {
                        id,
                        digest,
                        origin: link_id,
                        to: link_id,
                        result: None,
                    });
                    while st.seen.len() > MAX_SEEN_COMMANDS {
                        st.seen.pop_front();
                    }
                    return false;
                }
            }
        };
        log::info!("{self:?}: command {id} sent again on link {link_id}; not run twice");
        if let Some(result) = result {
            let link = self.state().link.clone().filter(|l| l.id == link_id);
            if let Some(link) = link {
                if let Err(e) = link.send_message(&result) {
                    log::info!("{self:?}: cannot write to the device: {e}");
                    self.drop_link(link.id, true);
                }
            }
        }
        true
    }
}

/// Presence upkeep (see [`super::upkeep`]): auto-away, and searches that
/// carry presence.
impl Session {
    /// A user action (a device command), with the command channel held:
    /// it restarts the away period and undoes an Away that collabd
    /// published, before the command itself goes to CWA.
    fn note_user_action(&self, commands: &mut CommandChannel, command: &DeviceCommand) {
        let publishes = match command {
            DeviceCommand::SetPresence { availability, .. } => Some(availability.code()),
            _ => None,
        };
        let restore = lock(&self.upkeep).user_action(Instant::now(), publishes);
        if let Some(availability) = restore {
            log::info!("{self:?}: the user is back; publishing availability {availability} again");
            self.publish_upkeep(commands, availability, "restoring presence after Away");
        }
    }

    /// From the event loop, with the command channel held: Away for a
    /// device unused for the instance's away period. Checked each time
    /// the CWA event request returns, so it can come up to CWA's hold
    /// time after the period.
    fn publish_away_if_due(&self, commands: &mut CommandChannel) {
        let due = lock(&self.upkeep).away_due(Instant::now(), self.ctx.away_after());
        if due {
            log::info!("{self:?}: device unused for the away period; publishing Away");
            self.publish_upkeep(commands, AWAY, "publishing Away");
        }
    }

    /// Publishes `availability` (the note stays as it is). Its outcome
    /// event matches no device command and is dropped.
    fn publish_upkeep(&self, commands: &mut CommandChannel, availability: u32, what: &str) {
        let command = crate::cwa::Command::PublishPresence {
            availability,
            note: None,
        };
        match commands.send(&command) {
            Ok(reply) => match reply.outcome {
                Outcome::Failed(e) | Outcome::Invalid(e) => {
                    log::info!("{self:?}: {what}: CWA refused: {e}")
                }
                _ => {}
            },
            Err(e) => log::info!("{self:?}: {what}: {e}"),
        }
    }

    /// A search's hits: CWA's search result carries no presence, so ask
    /// for it (`queryPresence`); the search-result event goes to the
    /// device when the answer is in, or with presence unknown when the
    /// query fails or runs past the command timeout.
    fn query_presence(&self, command: u64, entries: Vec<wire::SearchEntry>) {
        let (id, uris, evicted) = {
            let mut st = self.state();
            let id = st.next_query;
            st.next_query += 1;
            let query = PresenceQuery {
                id,
                rid: None,
                command,
                entries,
                sent: Instant::now(),
                answered: false,
            };
            let uris = query.uris();
            if uris.is_empty() {
                drop(st);
                self.deliver_search(query);
                return;
            }
            let evicted = (st.queries.len() >= MAX_PRESENCE_QUERIES).then(|| st.queries.remove(0));
            st.queries.push(query);
            (id, uris, evicted)
        };
        if let Some(old) = evicted {
            log::info!(
                "{self:?}: too many presence queries; search {} answered without",
                old.command
            );
            self.deliver_search(old);
        }
        let result = lock(&self.commands).send(&crate::cwa::Command::QueryPresence { uris });
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                log::info!("{self:?}: presence query for search {command}: {e}");
                self.finish_query(|q| q.id == id);
                return;
            }
        };
        if !reply.events.is_empty() {
            if let Err(reason) = self.handle_events(reply.events) {
                self.ctx.table.end(self.id(), reason);
                return;
            }
        }
        match reply.outcome {
            Outcome::Accepted => {
                // Its outcome may have come before the rid was known.
                let early = {
                    let mut st = self.state();
                    if let Some(q) = st.queries.iter_mut().find(|q| q.id == id) {
                        q.rid = Some(reply.rid);
                    }
                    let found = st.early.iter().position(|(rid, _)| *rid == reply.rid);
                    found.and_then(|i| st.early.remove(i))
                };
                if let Some((rid, Early::Result(outcome))) = early {
                    if let Err(reason) = self.finish_presence_query(rid, &outcome) {
                        self.ctx.table.end(self.id(), reason);
                    }
                }
            }
            Outcome::Succeeded => self.finish_query(|q| q.id == id),
            Outcome::Failed(e) | Outcome::Invalid(e) => {
                log::info!("{self:?}: presence query for search {command}: CWA refused: {e}");
                self.finish_query(|q| q.id == id);
            }
            Outcome::ImSessionAccepted { .. } => self.finish_query(|q| q.id == id),
        }
    }

    /// Takes a `userPresence` event that answers a waiting presence query
    /// into it. Returns false if it answers none (an ordinary presence
    /// update).
    fn answer_presence_query(&self, users: &[crate::cwa::UserPresence]) -> bool {
        let mut st = self.state();
        if st.queries.is_empty() {
            return false;
        }
        let uris: Vec<String> = users.iter().map(|u| u.uri.clone()).collect();
        let Some(q) = st
            .queries
            .iter_mut()
            .find(|q| !q.answered && q.is_answered_by(&uris))
        else {
            return false;
        };
        let presence: Vec<(String, wire::Availability)> = users
            .iter()
            .filter_map(|u| {
                Some((
                    u.uri.clone(),
                    wire::Availability::from_cwa(u.availability()?),
                ))
            })
            .collect();
        q.fill(&presence);
        q.answered = true;
        true
    }

    /// The outcome of request `rid`, if it is a presence query: its search
    /// result goes to the device. Returns whether it was one.
    fn finish_presence_query(
        &self,
        rid: u64,
        outcome: &Result<(), String>,
    ) -> Result<bool, EndReason> {
        let query = {
            let mut st = self.state();
            let found = st.queries.iter().position(|q| q.rid == Some(rid));
            found.map(|i| st.queries.remove(i))
        };
        let Some(query) = query else { return Ok(false) };
        if let Err(why) = outcome {
            log::info!(
                "{self:?}: presence query for search {} failed: {why}",
                query.command
            );
        }
        self.deliver(vec![search_result(query)])?;
        Ok(true)
    }

    /// Answers the first waiting query that `which` picks, with the
    /// presence it has (possibly none).
    fn finish_query(&self, which: impl Fn(&PresenceQuery) -> bool) {
        let query = {
            let mut st = self.state();
            let found = st.queries.iter().position(which);
            found.map(|i| st.queries.remove(i))
        };
        if let Some(query) = query {
            self.deliver_search(query);
        }
    }

    /// Answers the presence queries older than `limit` with what they have.
    fn expire_presence_queries(&self, limit: Duration) {
        let overdue: Vec<PresenceQuery> = {
            let mut st = self.state();
            let (old, keep) = std::mem::take(&mut st.queries)
                .into_iter()
                .partition(|q| q.sent.elapsed() >= limit);
            st.queries = keep;
            old
        };
        for q in overdue {
            log::info!(
                "{self:?}: no presence from CWA for search {} within {} ms",
                q.command,
                limit.as_millis()
            );
            self.deliver_search(q);
        }
    }

    /// After a new CWA sign-in: the state the old session published (the
    /// user's own, or Away) is published on the new one, which starts from
    /// the sign-in state.
    fn carry_presence(&self, old: &CommandChannel, new: &mut CommandChannel) {
        let (availability, note) = old.presence();
        if availability == new.presence().0 && note.is_none() {
            return;
        }
        let command = crate::cwa::Command::PublishPresence { availability, note };
        if let Err(e) = new.send(&command) {
            log::info!("{self:?}: publishing the presence again after a new sign-in: {e}");
        }
    }

    /// After a new CWA sign-in rids start again: results kept for rids of
    /// the old session must not answer the new session's requests, and
    /// waiting presence queries get no answer any more.
    fn forget_old_rids(&self) {
        let queries = {
            let mut st = self.state();
            st.early.clear();
            std::mem::take(&mut st.queries)
        };
        for q in queries {
            self.deliver_search(q);
        }
    }

    fn deliver_search(&self, query: PresenceQuery) {
        if let Err(reason) = self.deliver(vec![search_result(query)]) {
            self.ctx.table.end(self.id(), reason);
        }
    }
}

fn search_result(query: PresenceQuery) -> DeviceEvent {
    DeviceEvent::SearchResult {
        command: query.command,
        entries: query.entries,
    }
}

/// Drop acknowledged events from the replay buffer.
fn trim(st: &mut State, acked: u64) {
    while let Some((seq, payload)) = st.replay.front() {
        if *seq > acked {
            break;
        }
        st.replay_bytes -= payload.len();
        st.replay.pop_front();
    }
}

/// The event thread: holds the slot and the CWA long-poll until the
/// session ends.
pub fn run_events(session: Arc<Session>, events: EventChannel, guard: SlotGuard) {
    let _slot = guard;
    let what = format!("{session:?}: event thread");
    if crate::ops::panics::guard(&what, || poll_events(&session, events)).is_none() {
        // The finisher tells the device and signs out of CWA; the slot is
        // freed when `_slot` drops, just after.
        session.ctx.table.end(session.id(), EndReason::Closed);
    }
}

/// The event thread's loop, until the session ends.
fn poll_events(session: &Arc<Session>, mut events: EventChannel) {
    let mut failures = 0u32;
    while !session.is_ended() {
        session.expire_commands();
        // About to wait in the long-poll, at the loop's shallowest point:
        // the stack pages of the sign-in and of the last batch go back
        // (see `ops::memory`; this thread lives as long as the session).
        memory::release_stack_below_here();
        if let Ok(mut commands) = session.commands.try_lock() {
            // (Busy: a command is running, which is user activity anyway.)
            session.publish_away_if_due(&mut commands);
            if commands.republish_due() {
                if let Err(e) = commands.republish() {
                    log::info!("{session:?}: presence republish: {e}");
                }
            }
        }
        match events.poll() {
            Ok(mut batch) => {
                failures = 0;
                if let Err(reason) = session.handle_events(std::mem::take(&mut batch.events)) {
                    session.ctx.table.end(session.id(), reason);
                    break;
                }
                // Acknowledged to CWA only now that the device has them
                // (or the replay buffer does).
                events.ack(&batch);
            }
            Err(e) if e.is_final() => {
                if session.is_ended() {
                    break;
                }
                match session.sign_in_again(&e) {
                    Ok(new_events) => events = new_events,
                    Err(why) => {
                        session
                            .ctx
                            .table
                            .end(session.id(), EndReason::CwaSessionLost(why));
                        break;
                    }
                }
            }
            Err(e) => {
                if session.is_ended() {
                    break;
                }
                failures += 1;
                log::info!("{session:?}: event poll failed ({failures} in a row): {e}");
                if failures >= MAX_POLL_FAILURES {
                    session.ctx.table.end(
                        session.id(),
                        EndReason::CwaSessionLost(format!("CWA unreachable: {e}")),
                    );
                    break;
                }
                let backoff = Duration::from_millis(500 << failures.min(6));
                session.sleep(backoff.min(Duration::from_secs(30)));
            }
        }
    }
}

fn table_coverage(c: wire::Coverage) -> Coverage {
    match c {
        wire::Coverage::Dormant => Coverage::Dormant,
        wire::Coverage::InCoverage | wire::Coverage::Active => Coverage::In,
    }
}

/// The link thread: reads the device's messages until logout, a lost or
/// silent link, or the end of the session.
pub fn serve_link(session: &Arc<Session>, link_id: u64, mut reader: LinkReader) {
    let status_timeout = session.ctx.timeouts.status_timeout;
    if let Err(e) = reader
        .get_ref()
        .tcp()
        .set_read_timeout(Some(status_timeout))
    {
        session.detach(link_id, &format!("cannot set the read timeout: {e}"));
        return;
    }
    loop {
        // About to wait for the device, at the loop's shallowest point: the
        // deep sign-in (TLS, CWA, Config DB) ran on this thread, and a
        // session lives for hours; its stack pages go back rather than
        // stay resident (see `ops::memory`). Cheaper than handing the link
        // to a fresh small thread: no thread start per sign-in, and the
        // pages of every later deep command are released as well.
        memory::release_stack_below_here();
        let message = reader.recv_device();
        if session.is_ended() {
            // The finisher tells the device why, then ends the connection
            // gracefully (the device reads that, then end of stream). Until
            // it has, keep reading: returning now would close the
            // connection under the last word.
            if message.is_ok() && !session.state().last_word_sent {
                continue;
            }
            return;
        }
        let now = Instant::now();
        match message {
            Ok(DeviceMessage::Status { coverage }) => {
                let coverage = table_coverage(coverage);
                session.ctx.table.note_status(session.id(), coverage, now);
                session.record_coverage(coverage);
            }
            Ok(DeviceMessage::Command { id, command }) => {
                session.ctx.table.note_activity(session.id(), now);
                if !session.sent_again(link_id, id, &command) {
                    session.command(link_id, id, command);
                }
            }
            Ok(DeviceMessage::Ack { seq }) => {
                session.ctx.table.note_activity(session.id(), now);
                let last = {
                    let mut st = session.state();
                    let last = st.next_seq - 1;
                    if seq <= last {
                        trim(&mut st, seq);
                    }
                    last
                };
                if seq > last {
                    // Trimming would drop events the device never had.
                    let why = format!("ack of event {seq}, beyond the last event sent ({last})");
                    refuse_link(session, link_id, &why);
                    return;
                }
            }
            Ok(DeviceMessage::Logout) => {
                session.ctx.table.note_activity(session.id(), now);
                session.ctx.table.end(session.id(), EndReason::Logout);
                // Read on until the finisher's answer has gone out (see
                // above).
                continue;
            }
            Ok(DeviceMessage::Login { .. }) => {
                refuse_link(session, link_id, "login after the session started");
                return;
            }
            Err(WireError::Timeout) => {
                session.detach(
                    link_id,
                    &format!("nothing for {} ms", status_timeout.as_millis()),
                );
                return;
            }
            Err(e) if e.is_protocol_violation() => {
                refuse_link(session, link_id, &e.to_string());
                return;
            }
            Err(e) => {
                session.detach(link_id, &e.to_string());
                return;
            }
        }
    }
}

/// A protocol violation on a signed-in link: Refused 308, then the link is
/// dropped (the session stays, out of coverage).
fn refuse_link(session: &Arc<Session>, link_id: u64, why: &str) {
    log::info!("{session:?}: protocol error on link {link_id}: {why}");
    let link = session.state().link.clone().filter(|l| l.id == link_id);
    if let Some(link) = link {
        let _ = lock(&link.writer).refuse(Status::ProtocolError, why);
    }
    session.detach(link_id, "protocol error");
}
