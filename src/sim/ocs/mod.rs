//! The simulated OCS behind the simulated CWA: its state (users, tickets,
//! sessions, conversations), all in memory behind one `Mutex` that is only
//! held for short, non-blocking updates, the answers every method shares,
//! and the queueing of events on the sessions' [`SessionQueue`]s.
//!
//! Each job is a file beside this one that adds `impl Ocs` methods and
//! imports only this file (and the simulator's other modules):
//!
//! - `commands`: the command channel, a `cwaRequests` document in, a
//!   `cwaResponses` document out (cwa-sim(1), COMMANDS), each method
//!   handed to the file below that owns it;
//! - `tickets`: issuing, checking and rotating tickets;
//! - `housekeeping`: the admin endpoint's drops and counters, the sweep;
//! - `sessions`: `initiateSession` and the first events (cwa-sim(1),
//!   EVENTS), the end of a session, the event channel's view of a
//!   session, `signInData`;
//! - `contacts`: contact lists and groups;
//! - `access`: `updateContainer` and `acknowledgeSubscriber`;
//! - `conversations`: IM conversations;
//! - `search`: directory search;
//! - `presence`: presence categories as each viewer's access level lets
//!   them see, publishing, subscriptions, watchers' `subscribers` events.
//!
//! Calls between them go one way, down that list: `commands` calls the
//! jobs its methods belong to, `housekeeping` ends sessions, `sessions`
//! uses contacts, conversations and presence, `contacts` and `access` use
//! presence; and all use this file, which calls none of them.
//!
//! Choices CWA's documented behaviour leaves open (all PROPOSED in
//! `man/cwa-sim.1`):
//! - every method but `initiateSession`, `terminateSession` and
//!   `initiateImSession` is answered `requestAccepted` and completed by an
//!   asynchronous `requestSucceeded`/`requestFailed` event with its `rid`;
//!   failures known at once (bad arguments, wrong conversation) are
//!   answered synchronously with `requestInvalid` (18001) or
//!   `requestFailed` (18102);
//! - a request naming a missing, ended or foreign `sid` gets
//!   `requestFailed` with error 18100 for each of its methods;
//! - conversation ids (`confId`) are global, so every participant uses the
//!   same one; an invitation is declined with `terminateImSession`;
//! - a user without a live session is offline: presence availability
//!   18000, invitations fail with SIP 480;
//! - `composingState` carries the typing participant in a `uri` attribute.

mod access;
mod commands;
mod contacts;
mod conversations;
mod housekeeping;
mod presence;
mod search;
mod sessions;
mod tickets;

pub use sessions::sign_in_data;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use xmltree::Element;

use super::containers::Containers;
use super::events::{iso_utc, SessionQueue};
use super::published::Published;
use super::users::{valid_sip_uri, Directory};
use crate::xml::{self, children, elem, with_child};

/// How `initiateSession` is answered: CWA's published descriptions disagree,
/// so clients must parse both (cwa-sim(1), `--session-reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionReply {
    /// `<initiateSessionAccepted rid sid pollWaitTime/>` (attributes).
    Attributes,
    /// `<requestAccepted rid><sid/><uri/><pollWaitTime/></requestAccepted>`.
    Elements,
}

/// Settings of the OCS model.
#[derive(Debug, Clone)]
pub struct OcsSettings {
    /// Inactivity after which a session ends.
    pub session_timeout: Duration,
    /// Most unacknowledged events per session.
    pub event_log: usize,
    /// The `pollWaitTime` advertised, in milliseconds.
    pub poll_wait_ms: u64,
    /// Form of the `initiateSession` answer.
    pub session_reply: SessionReply,
    /// Most sessions per ticket (bounds memory per logon).
    pub max_sessions_per_ticket: usize,
}

impl Default for OcsSettings {
    fn default() -> Self {
        OcsSettings {
            session_timeout: Duration::from_secs(1200),
            event_log: 1000,
            poll_wait_ms: 1000,
            session_reply: SessionReply::Attributes,
            max_sessions_per_ticket: 16,
        }
    }
}

/// The default (undeletable) group's id and name.
const DEFAULT_GROUP_ID: u32 = 1;
const DEFAULT_GROUP_NAME: &str = "~";
/// Most URIs in one `uris` list.
const MAX_URIS: usize = 100;

#[derive(Debug, Clone)]
struct Group {
    id: u32,
    name: String,
    external_uri: String,
}

#[derive(Debug, Clone)]
struct Contact {
    uri: String,
    name: String,
    subscribed: bool,
    tag: String,
    groups: Vec<u32>,
}

struct UserState {
    availability: u32,
    note: String,
    state_version: u32,
    note_version: u32,
    publish_time: String,
    groups: Vec<Group>,
    contacts: Vec<Contact>,
    next_group_id: u32,
    delta_num: u64,
    sessions: Vec<u64>,
    watchers: HashSet<u64>,
    /// What the user's clients published, and their `UA` activity.
    published: Published,
    /// Access levels: who sees how much of this user's presence.
    containers: Containers,
    /// Watchers (users) this user has acknowledged (`acknowledgeSubscriber`).
    acknowledged: HashSet<usize>,
}

struct Session {
    queue: Arc<SessionQueue>,
    user: usize,
    ticket: u64,
    watching: HashSet<usize>,
    conversations: HashSet<u64>,
}

struct Ticket {
    user: usize,
    current: String,
    issued: Instant,
    previous: Option<(String, Instant)>,
    last_used: Instant,
    sessions: usize,
}

#[derive(Debug, Clone)]
enum MemberState {
    Invited { sids: Vec<u64>, by: (u64, String) },
    Connected { sid: u64 },
}

#[derive(Debug, Clone)]
struct Member {
    user: usize,
    state: MemberState,
}

#[derive(Debug, Clone, Default)]
struct PendingInvite {
    remaining: usize,
    succeeded: bool,
}

struct Conversation {
    subject: String,
    members: Vec<Member>,
    connected_once: bool,
    escalated: bool,
    pending: HashMap<(u64, String), PendingInvite>,
}

struct State {
    users: Vec<UserState>,
    tickets: HashMap<u64, Ticket>,
    token_index: HashMap<String, u64>,
    sessions: HashMap<u64, Session>,
    conversations: HashMap<u64, Conversation>,
    next_ticket: u64,
    next_sid: u64,
    next_conf: u64,
}

/// A validated ticket: who presented it and the newest token to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketOk {
    /// Internal ticket id.
    pub ticket: u64,
    /// The user (directory index).
    pub user: usize,
    /// The newest token, for the `CWA-Ticket` response header.
    pub newest: String,
}

/// Why an event GET cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollRefusal {
    /// No such live session for this ticket's user (18100).
    SessionNotFound(String),
}

/// Counters for `GET /admin/status`.
#[derive(Debug, Clone, Default)]
pub struct OcsStatus {
    /// Live tickets.
    pub tickets: usize,
    /// Live sessions.
    pub sessions: usize,
    /// Live conversations.
    pub conversations: usize,
    /// Sessions ended since start, by any cause.
    pub sessions_ended: u64,
}

/// The simulated OCS.
pub struct Ocs {
    /// The users file.
    pub directory: Directory,
    settings: OcsSettings,
    epoch: Instant,
    state: Mutex<State>,
    ticket_rotate_ms: AtomicU64,
    ticket_grace_ms: AtomicU64,
    sessions_ended: AtomicU64,
    /// Fault: commands are accepted but their `requestSucceeded` /
    /// `requestFailed` events are never sent.
    withhold_outcomes: AtomicBool,
    /// Fault: `queryPresence` is accepted, then fails (18201) with no
    /// `userPresence` event.
    fail_query_presence: AtomicBool,
}

fn err_elem(code: u32, reason: &str) -> Element {
    elem("error", &[("code", &code.to_string()), ("reason", reason)])
}

fn sip_err_elem(sip_code: u16, sip_reason: &str) -> Element {
    let e = err_elem(18201, "Operation failed");
    with_child(
        e,
        elem(
            "sipResponse",
            &[("code", &sip_code.to_string()), ("reason", sip_reason)],
        ),
    )
}

fn invalid(rid: &str, code: u32, reason: &str) -> Element {
    with_child(
        elem("requestInvalid", &[("rid", rid)]),
        err_elem(code, reason),
    )
}

fn failed(rid: &str, error: Element) -> Element {
    with_child(elem("requestFailed", &[("rid", rid)]), error)
}

fn accepted(rid: &str) -> Element {
    elem("requestAccepted", &[("rid", rid)])
}

fn succeeded(rid: &str) -> Element {
    elem("requestSucceeded", &[("rid", rid)])
}

/// The `uris/uri` texts of `e` (or direct `uri` children), bounded.
fn uri_list(e: &Element) -> Result<Vec<String>, String> {
    let holder = e.get_child("uris").unwrap_or(e);
    let uris: Vec<String> = children(holder)
        .filter(|c| c.name == "uri")
        .map(|c| xml::text(c).trim().to_string())
        .collect();
    if uris.is_empty() {
        return Err("missing uris/uri".into());
    }
    if uris.len() > MAX_URIS {
        return Err(format!("more than {MAX_URIS} URIs"));
    }
    if let Some(bad) = uris.iter().find(|u| !valid_sip_uri(u)) {
        return Err(format!("`{bad}` is not a sip: URI"));
    }
    Ok(uris)
}

impl Ocs {
    /// A fresh OCS for `directory`.
    pub fn new(
        directory: Directory,
        settings: OcsSettings,
        ticket_rotate: Duration,
        ticket_grace: Duration,
    ) -> Ocs {
        let now = iso_utc(SystemTime::now());
        let users = directory
            .users
            .iter()
            .map(|u| UserState {
                availability: 3500,
                note: String::new(),
                state_version: 0,
                note_version: 0,
                publish_time: now.clone(),
                groups: vec![Group {
                    id: DEFAULT_GROUP_ID,
                    name: DEFAULT_GROUP_NAME.into(),
                    external_uri: String::new(),
                }],
                contacts: u
                    .contacts
                    .iter()
                    .map(|c| Contact {
                        uri: c.clone(),
                        name: directory
                            .by_uri(c)
                            .map(|i| directory.users[i].display_name.clone())
                            .unwrap_or_default(),
                        subscribed: true,
                        tag: String::new(),
                        groups: vec![DEFAULT_GROUP_ID],
                    })
                    .collect(),
                next_group_id: DEFAULT_GROUP_ID + 1,
                delta_num: 1,
                sessions: Vec::new(),
                watchers: HashSet::new(),
                published: Published::default(),
                containers: Containers::default(),
                acknowledged: HashSet::new(),
            })
            .collect();
        Ocs {
            directory,
            settings,
            epoch: Instant::now(),
            state: Mutex::new(State {
                users,
                tickets: HashMap::new(),
                token_index: HashMap::new(),
                sessions: HashMap::new(),
                conversations: HashMap::new(),
                next_ticket: 1,
                next_sid: 1,
                next_conf: 1,
            }),
            ticket_rotate_ms: AtomicU64::new(ticket_rotate.as_millis() as u64),
            ticket_grace_ms: AtomicU64::new(ticket_grace.as_millis() as u64),
            sessions_ended: AtomicU64::new(0),
            withhold_outcomes: AtomicBool::new(false),
            fail_query_presence: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Handlers run under catch_unwind; a panic mid-update is a bug we
        // log, and the state stays usable for the other sessions.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force.
    pub fn settings(&self) -> &OcsSettings {
        &self.settings
    }

    /// Changes the ticket rotation period and grace window at run time.
    pub fn set_ticket_timing(&self, rotate: Option<Duration>, grace: Option<Duration>) {
        if let Some(r) = rotate {
            self.ticket_rotate_ms
                .store(r.as_millis() as u64, Ordering::Relaxed);
        }
        if let Some(g) = grace {
            self.ticket_grace_ms
                .store(g.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Turns the withheld-outcomes fault on or off.
    pub fn set_withhold_outcomes(&self, on: bool) {
        self.withhold_outcomes.store(on, Ordering::Relaxed);
    }

    /// Turns the failing-presence-query fault on or off.
    pub fn set_fail_query_presence(&self, on: bool) {
        self.fail_query_presence.store(on, Ordering::Relaxed);
    }

    /// Whether presence queries fail.
    pub fn fails_query_presence(&self) -> bool {
        self.fail_query_presence.load(Ordering::Relaxed)
    }

    /// Whether command outcomes are withheld.
    pub fn withholds_outcomes(&self) -> bool {
        self.withhold_outcomes.load(Ordering::Relaxed)
    }

    /// (rotation period, grace window).
    pub fn ticket_timing(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.ticket_rotate_ms.load(Ordering::Relaxed)),
            Duration::from_millis(self.ticket_grace_ms.load(Ordering::Relaxed)),
        )
    }

    fn emit(&self, st: &State, sid: u64, event: Element) {
        if self.withhold_outcomes.load(Ordering::Relaxed)
            && matches!(event.name.as_str(), "requestSucceeded" | "requestFailed")
        {
            log::warn!("fault: {} for session {sid} withheld", event.name);
            return;
        }
        if let Some(s) = st.sessions.get(&sid) {
            s.queue.push(event);
        }
    }

    fn emit_user(&self, st: &State, user: usize, event: &Element) {
        for sid in &st.users[user].sessions {
            self.emit(st, *sid, event.clone());
        }
    }
}
