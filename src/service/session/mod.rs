//! One running session: a signed-in user on one device, with its CWA
//! session and its (current) device link.
//!
//! Threads:
//!
//! - the **event thread** ([`run_events`]) owns the session's table slot
//!   ([`SlotGuard`](super::table::SlotGuard)) and the CWA event long-poll: each batch is translated,
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
//!
//! The files: the shared state (`state.rs`), delivery to the device and
//! the replay buffer (`delivery.rs`), commands and the memory of commands
//! sent again (`commands.rs`), the event thread (`events.rs`), the link
//! thread (`link.rs`), the finisher (`finish.rs`) and the presence upkeep
//! hooks (`presence.rs`).

mod commands;
mod delivery;
mod events;
mod finish;
mod link;
mod presence;
mod state;

pub use events::{run_events, EventStart};
pub use link::serve_link;
pub use state::{LinkReader, LinkWriter};

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cwa::CommandChannel;
use crate::wire;

use super::access::AccessBook;
use super::context::ServiceContext;
use super::credential::Credential;
use super::table::{Coverage, SessionHandle, SessionId};
use super::upkeep::{HeldPresence, Upkeep};
use state::{lock, State};

/// Most unacknowledged events kept per session.
pub const MAX_REPLAY_EVENTS: usize = 1000;
/// Most bytes of unacknowledged encoded events kept per session.
pub const MAX_REPLAY_BYTES: usize = 1 << 20;
/// How long delivery waits, with the replay buffer full and a device
/// attached, for the device's next acknowledgement before the buffer
/// overflows.
pub const ROOM_WAIT: Duration = Duration::from_secs(2);
/// Commands remembered, with their results, for devices that send them
/// again after a resume.
pub const MAX_SEEN_COMMANDS: usize = 64;

/// The device-facing session id for a table id.
pub fn session_id_text(id: SessionId) -> String {
    format!("s-{id}")
}

/// The table id in a device-facing session id (`s-17`).
pub fn parse_session_id(text: &str) -> Option<SessionId> {
    text.strip_prefix("s-")?.parse().ok()
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
}
