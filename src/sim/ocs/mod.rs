//! The simulated OCS behind the simulated CWA: tickets, sessions, presence,
//! contact lists, subscriptions and IM conversations, all in memory behind
//! one `Mutex` that is only held for short, non-blocking updates. It turns
//! a `cwaRequests` document into a `cwaResponses` document (cwa-protocol.md
//! §3-§4) and queues the asynchronous results and events (§5.2) on the
//! sessions' [`SessionQueue`]s.
//!
//! Choices the protocol notes leave open (all PROPOSED, documented in
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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use xmltree::Element;

use super::containers::{self, Containers};
use super::events::{iso_utc, EndReason, SessionQueue};
use super::published::Published;
use super::users::{valid_sip_uri, Directory};
use crate::xml::{self, attr, child_text, children, elem, text_elem, with_child, CWA_NS};

/// How `initiateSession` is answered (the documents disagree, §2.1 step 5).
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
/// Users in one `userPresence` event of a session's first presence.
const PRESENCE_USERS_PER_EVENT: usize = 100;
/// Bounds on a user's contact list, so one client cannot grow memory
/// without limit.
const MAX_CONTACTS: usize = 1000;
const MAX_GROUPS: usize = 64;
/// Most methods processed from one `cwaRequests` document.
const MAX_METHODS: usize = 32;
/// Most URIs in one `uris` list.
const MAX_URIS: usize = 100;
/// Most search results.
const MAX_SEARCH_RESULTS: usize = 20;

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

fn conf_event(conf: u64, item: Element) -> Element {
    with_child(elem("conference", &[("confId", &conf.to_string())]), item)
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    // openssl::rand only fails when the system RNG is unusable; a
    // predictable ticket would be worse than stopping.
    openssl::rand::rand_bytes(&mut bytes).expect("system random number generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// `(format, content)` of a message: `message/format,content` under `e`,
/// or `format`/`content` directly under it.
fn message_of(e: &Element) -> Option<(String, String)> {
    let holder = e.get_child("message").unwrap_or(e);
    let content = child_text(holder, "content")?;
    let format = child_text(holder, "format").unwrap_or_else(|| "text/plain".into());
    Some((format, content))
}

fn message_elem(format: &str, content: &str) -> Element {
    with_child(
        with_child(elem("message", &[]), text_elem("format", format)),
        text_elem("content", content),
    )
}

/// The first descendant of `e` called `name` (depth-bounded by the
/// document depth check done before parsing).
fn find_descendant<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    for c in children(e) {
        if c.name == name {
            return Some(c);
        }
        if let Some(found) = find_descendant(c, name) {
            return Some(found);
        }
    }
    None
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

    // -----------------------------------------------------------------
    // Tickets

    /// Issues a new ticket for `user` after a successful logon.
    pub fn issue_ticket(&self, user: usize) -> String {
        let token = random_token();
        let mut st = self.lock();
        let id = st.next_ticket;
        st.next_ticket += 1;
        let now = Instant::now();
        st.tickets.insert(
            id,
            Ticket {
                user,
                current: token.clone(),
                issued: now,
                previous: None,
                last_used: now,
                sessions: 0,
            },
        );
        st.token_index.insert(token.clone(), id);
        token
    }

    /// Checks a presented `CWA-Ticket` token, rotating the ticket when its
    /// current token is older than the rotation period. The previous token
    /// stays valid for the grace window. `None`: missing, unknown or
    /// expired.
    pub fn check_ticket(&self, token: &str) -> Option<TicketOk> {
        let (rotate, grace) = self.ticket_timing();
        let now = Instant::now();
        let mut st = self.lock();
        let id = *st.token_index.get(token)?;
        let ticket = st.tickets.get_mut(&id)?;
        let mut retire = None;
        if ticket.current == token {
            if now.duration_since(ticket.issued) >= rotate {
                let fresh = random_token();
                let old = std::mem::replace(&mut ticket.current, fresh.clone());
                if let Some((older, _)) = ticket.previous.replace((old, now + grace)) {
                    retire = Some(older);
                }
                ticket.issued = now;
                let (user, newest) = (ticket.user, fresh.clone());
                ticket.last_used = now;
                st.token_index.insert(fresh, id);
                if let Some(older) = retire {
                    st.token_index.remove(&older);
                }
                return Some(TicketOk {
                    ticket: id,
                    user,
                    newest,
                });
            }
        } else {
            match &ticket.previous {
                Some((prev, until)) if prev == token && now < *until => {}
                _ => {
                    // A token past its grace window is gone for good.
                    st.token_index.remove(token);
                    return None;
                }
            }
        }
        ticket.last_used = now;
        Some(TicketOk {
            ticket: id,
            user: ticket.user,
            newest: ticket.current.clone(),
        })
    }

    /// The newest token of ticket `id` (tickets may rotate while an event
    /// GET is held).
    pub fn newest_token(&self, id: u64) -> Option<String> {
        self.lock().tickets.get(&id).map(|t| t.current.clone())
    }

    // -----------------------------------------------------------------
    // Event channel

    /// The queue of session `sid` for an event GET by `ticket`'s user;
    /// `user_active` (`UA=true`) counts as activity.
    pub fn poll_session(
        &self,
        ticket: &TicketOk,
        sid: u64,
        user_active: bool,
    ) -> Result<Arc<SessionQueue>, PollRefusal> {
        let mut st = self.lock();
        match st.sessions.get(&sid) {
            Some(s) if s.user == ticket.user && s.queue.ended().is_none() => {
                let queue = Arc::clone(&s.queue);
                if user_active {
                    queue.touch();
                    st.users[ticket.user].published.user_activity += 1;
                }
                Ok(queue)
            }
            Some(s) if s.user == ticket.user => Err(PollRefusal::SessionNotFound(
                s.queue
                    .ended()
                    .map(EndReason::as_str)
                    .unwrap_or("session ended")
                    .into(),
            )),
            _ => Err(PollRefusal::SessionNotFound("session not found".into())),
        }
    }

    /// Seconds left before session expiry (`cwaEvents@sessionTimeout`).
    pub fn session_timeout_left(&self, queue: &SessionQueue) -> u64 {
        self.settings
            .session_timeout
            .saturating_sub(queue.idle())
            .as_secs()
    }

    // -----------------------------------------------------------------
    // Administration and housekeeping

    /// Ends session `sid` (admin "drop"); true if it existed.
    pub fn drop_session(&self, sid: u64) -> bool {
        let mut st = self.lock();
        if st.sessions.contains_key(&sid) {
            self.end_session(&mut st, sid, EndReason::Dropped);
            true
        } else {
            false
        }
    }

    /// Ends every session of the user with this SIP URI or login; the
    /// number ended.
    pub fn drop_user(&self, who: &str) -> usize {
        let Some(user) = self
            .directory
            .by_uri(who)
            .or_else(|| self.directory.by_login(who))
        else {
            return 0;
        };
        let mut st = self.lock();
        let sids = st.users[user].sessions.clone();
        for sid in &sids {
            self.end_session(&mut st, *sid, EndReason::Dropped);
        }
        sids.len()
    }

    /// Forgets every session, ticket and conversation, as a restarted CWA
    /// would. Contact lists (stored by OCS, not CWA) survive.
    pub fn restart(&self) {
        let mut st = self.lock();
        for s in st.sessions.values() {
            s.queue.end(EndReason::Restarted);
        }
        self.sessions_ended
            .fetch_add(st.sessions.len() as u64, Ordering::Relaxed);
        st.sessions.clear();
        st.tickets.clear();
        st.token_index.clear();
        st.conversations.clear();
        for u in &mut st.users {
            u.sessions.clear();
            u.watchers.clear();
        }
    }

    /// Ends sessions idle past the timeout or whose queue ended itself
    /// (overflow), and forgets tickets unused for as long with no session.
    pub fn sweep(&self) {
        let timeout = self.settings.session_timeout;
        let mut st = self.lock();
        let doomed: Vec<(u64, EndReason)> = st
            .sessions
            .iter()
            .filter_map(|(sid, s)| match s.queue.ended() {
                Some(r) => Some((*sid, r)),
                None if s.queue.idle() >= timeout => Some((*sid, EndReason::Expired)),
                None => None,
            })
            .collect();
        for (sid, reason) in doomed {
            log::info!("session {sid}: {}", reason.as_str());
            self.end_session(&mut st, sid, reason);
        }
        let now = Instant::now();
        let stale: Vec<u64> = st
            .tickets
            .iter()
            .filter(|(_, t)| t.sessions == 0 && now.duration_since(t.last_used) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(t) = st.tickets.remove(&id) {
                st.token_index.remove(&t.current);
                if let Some((p, _)) = t.previous {
                    st.token_index.remove(&p);
                }
            }
        }
        // Retire previous tokens past their grace window.
        let expired: Vec<String> = st
            .tickets
            .values_mut()
            .filter_map(|t| match &t.previous {
                Some((_, until)) if now >= *until => t.previous.take().map(|(p, _)| p),
                _ => None,
            })
            .collect();
        for p in expired {
            st.token_index.remove(&p);
        }
    }

    /// Counters for the admin status page.
    pub fn status(&self) -> OcsStatus {
        let st = self.lock();
        OcsStatus {
            tickets: st.tickets.len(),
            sessions: st.sessions.len(),
            conversations: st.conversations.len(),
            sessions_ended: self.sessions_ended.load(Ordering::Relaxed),
        }
    }

    /// One line per user whose clients published a state or reported
    /// activity: what [`Published::line`] says, for `GET /admin/presence`.
    pub fn published_text(&self) -> String {
        let st = self.lock();
        let mut out = String::new();
        for (i, u) in st.users.iter().enumerate() {
            if u.published.publishes == 0 && u.published.user_activity == 0 {
                continue;
            }
            out.push_str(
                &u.published
                    .line(&self.directory.users[i].sip_uri, u.availability),
            );
            out.push('\n');
        }
        out
    }

    /// `(sid, SIP URI)` of every live session, for the admin page.
    pub fn session_list(&self) -> Vec<(u64, String)> {
        let st = self.lock();
        let mut v: Vec<(u64, String)> = st
            .sessions
            .iter()
            .map(|(sid, s)| (*sid, self.directory.users[s.user].sip_uri.clone()))
            .collect();
        v.sort();
        v
    }

    // -----------------------------------------------------------------
    // Command channel

    /// Executes a `cwaRequests` document sent with a valid ticket and
    /// returns the `cwaResponses` document.
    pub fn handle_requests(&self, ticket: &TicketOk, doc: &Element) -> Element {
        let mut out = elem("cwaResponses", &[("xmlns", CWA_NS)]);
        if doc.name != "cwaRequests" || doc.namespace.as_deref() != Some(CWA_NS) {
            out.children.push(xmltree::XMLNode::Element(invalid(
                "",
                18000,
                "expected <cwaRequests xmlns=\"http://schemas.microsoft.com/2006/09/rtc/cwa\">",
            )));
            return out;
        }
        let sid_attr = attr(doc, "sid").and_then(|s| s.trim().parse::<u64>().ok());
        let mut processed = 0usize;
        let mut unexpected = 0usize;
        let mut st = self.lock();
        for method in children(doc).take(MAX_METHODS) {
            let rid = attr(method, "rid").unwrap_or("").to_string();
            let reply = if method.name == "initiateSession" {
                self.initiate_session(&mut st, ticket, &rid, method)
            } else if rid.is_empty() {
                invalid("", 18001, &format!("{} without rid", method.name))
            } else {
                match self.session_of(&st, ticket, sid_attr) {
                    Err(why) => failed(&rid, err_elem(18100, why)),
                    Ok(sid) => {
                        let reply = self.dispatch(&mut st, sid, &rid, method);
                        // OCS refusals (18201 with a SIP code) arrive
                        // asynchronously, like the OCS answer they model.
                        let from_ocs = reply.name == "requestFailed"
                            && reply.get_child("error").and_then(|e| attr(e, "code"))
                                == Some("18201");
                        if from_ocs {
                            self.emit(&st, sid, reply);
                            accepted(&rid)
                        } else {
                            reply
                        }
                    }
                }
            };
            if reply.name == "requestInvalid" {
                unexpected += 1;
            } else {
                processed += 1;
            }
            out.children.push(xmltree::XMLNode::Element(reply));
        }
        if processed + unexpected == 0 {
            out.children.push(xmltree::XMLNode::Element(invalid(
                "",
                18001,
                "no method in cwaRequests",
            )));
            unexpected += 1;
        }
        out.attributes
            .insert("requestProcessed".into(), processed.to_string());
        out.attributes
            .insert("unexpectedElement".into(), unexpected.to_string());
        out
    }

    fn session_of(
        &self,
        st: &State,
        ticket: &TicketOk,
        sid: Option<u64>,
    ) -> Result<u64, &'static str> {
        let sid = sid.ok_or("missing or invalid sid")?;
        match st.sessions.get(&sid) {
            Some(s) if s.user == ticket.user && s.queue.ended().is_none() => {
                s.queue.touch();
                Ok(sid)
            }
            _ => Err("session not found"),
        }
    }

    fn dispatch(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        match m.name.as_str() {
            "terminateSession" => {
                self.end_session(st, sid, EndReason::Terminated);
                accepted(rid)
            }
            "publishSelfPresence" => self.publish_self_presence(st, sid, rid, m),
            "subscribePresence" => self.subscribe(st, sid, rid, m, true),
            "unSubscribePresence" => self.subscribe(st, sid, rid, m, false),
            "queryPresence" => self.query_presence(st, sid, rid, m),
            "addContact" | "updateContact" => self.add_update_contact(st, sid, rid, m),
            "deleteContact" => self.delete_contact(st, sid, rid, m),
            "addGroup" | "updateGroup" | "deleteGroup" => self.group_op(st, sid, rid, m),
            "search" => self.search(st, sid, rid, m),
            "conference" => self.conference(st, sid, rid, m),
            "updateContainer" => self.update_container(st, sid, rid, m),
            "acknowledgeSubscriber" => self.acknowledge_subscriber(st, sid, rid, m),
            other => invalid(rid, 18001, &format!("unknown method `{other}`")),
        }
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

    // -----------------------------------------------------------------
    // Sessions

    fn initiate_session(
        &self,
        st: &mut State,
        ticket: &TicketOk,
        rid: &str,
        m: &Element,
    ) -> Element {
        if rid.is_empty() {
            return invalid("", 18001, "initiateSession without rid");
        }
        let user = ticket.user;
        let expected_sign_in = sign_in_data(&self.directory.users[user].sip_uri);
        match child_text(m, "signInData") {
            Some(s) if s.trim() == expected_sign_in => {}
            _ => return invalid(rid, 18001, "signInData must echo the logon's signInData"),
        }
        let availability = match child_text(m, "userStateAvailability") {
            None => 3500,
            Some(t) => match t.trim().parse::<u32>() {
                Ok(a) if a <= 20_000 => a,
                _ => return invalid(rid, 18001, "userStateAvailability is not a number 0..20000"),
            },
        };
        let Some(t) = st.tickets.get_mut(&ticket.ticket) else {
            return failed(rid, err_elem(18100, "ticket no longer valid"));
        };
        if t.sessions >= self.settings.max_sessions_per_ticket {
            return failed(rid, err_elem(18102, "too many sessions for this ticket"));
        }
        t.sessions += 1;
        let sid = st.next_sid;
        st.next_sid += 1;
        let queue = Arc::new(SessionQueue::new(
            sid,
            user,
            self.settings.event_log,
            self.epoch,
        ));
        st.sessions.insert(
            sid,
            Session {
                queue,
                user,
                ticket: ticket.ticket,
                watching: HashSet::new(),
                conversations: HashSet::new(),
            },
        );
        let was_offline = st.users[user].sessions.is_empty();
        st.users[user].sessions.push(sid);
        {
            let u = &mut st.users[user];
            if was_offline || u.availability != availability {
                u.availability = availability;
                u.state_version += 1;
                u.publish_time = iso_utc(SystemTime::now());
            }
        }
        log::info!(
            "session {sid} started for {}",
            self.directory.users[user].sip_uri
        );

        // Initial events: configuration, the full contact list, own
        // presence, watchers, then the presence of subscribed contacts.
        self.emit(st, sid, configuration_event());
        let full = self.contact_group_full(st, user);
        self.emit(st, sid, full);
        let me = self.self_presence(st, user);
        self.emit(st, sid, me);
        let subs = self.subscribers_event(st, user);
        self.emit(st, sid, subs);
        let access = st.users[user].containers.full_event();
        self.emit(st, sid, access);
        let subscribed: Vec<usize> = st.users[user]
            .contacts
            .iter()
            .filter(|c| c.subscribed)
            .filter_map(|c| self.directory.by_uri(&c.uri))
            .collect();
        if !subscribed.is_empty() {
            for &w in &subscribed {
                st.users[w].watchers.insert(sid);
            }
            if let Some(s) = st.sessions.get_mut(&sid) {
                s.watching.extend(subscribed.iter().copied());
            }
            let uris: Vec<String> = subscribed
                .iter()
                .map(|&i| self.directory.users[i].sip_uri.clone())
                .collect();
            // A long contact list's presence in several events, so that
            // no one event is larger than an event GET should carry.
            for chunk in uris.chunks(PRESENCE_USERS_PER_EVENT) {
                let ev = self.user_presence_event(st, user, chunk);
                self.emit(st, sid, ev);
            }
        }
        // Others see this user come online (or change availability).
        self.presence_changed(st, user, Some(sid));

        let sid_s = sid.to_string();
        let poll = self.settings.poll_wait_ms.to_string();
        match self.settings.session_reply {
            SessionReply::Attributes => elem(
                "initiateSessionAccepted",
                &[("rid", rid), ("sid", &sid_s), ("pollWaitTime", &poll)],
            ),
            SessionReply::Elements => {
                let mut e = accepted(rid);
                e = with_child(e, text_elem("sid", &sid_s));
                e = with_child(e, text_elem("uri", &self.directory.users[user].sip_uri));
                with_child(e, text_elem("pollWaitTime", &poll))
            }
        }
    }

    /// Ends a session and everything hanging off it.
    fn end_session(&self, st: &mut State, sid: u64, reason: EndReason) {
        let Some(session) = st.sessions.get(&sid) else {
            return;
        };
        let user = session.user;
        let convs: Vec<u64> = session.conversations.iter().copied().collect();
        for conf in convs {
            self.leave_conversation(st, sid, conf, None, 480, "Temporarily Unavailable");
        }
        let Some(session) = st.sessions.remove(&sid) else {
            return;
        };
        session.queue.end(reason);
        self.sessions_ended.fetch_add(1, Ordering::Relaxed);
        for w in &session.watching {
            st.users[*w].watchers.remove(&sid);
        }
        if let Some(t) = st.tickets.get_mut(&session.ticket) {
            t.sessions = t.sessions.saturating_sub(1);
        }
        st.users[user].sessions.retain(|s| *s != sid);
        log::info!(
            "session {sid} of {} ended: {}",
            self.directory.users[user].sip_uri,
            reason.as_str()
        );
        if st.users[user].sessions.is_empty() {
            st.users[user].state_version += 1;
            st.users[user].publish_time = iso_utc(SystemTime::now());
            self.presence_changed(st, user, None);
        }
    }

    // -----------------------------------------------------------------
    // Presence

    fn aggregate_availability(&self, st: &State, user: usize) -> u32 {
        if st.users[user].sessions.is_empty() {
            18000
        } else {
            st.users[user].availability
        }
    }

    /// `user`'s presence categories as `viewer` may see them (a user sees
    /// all of their own).
    fn categories(&self, st: &State, user: usize, viewer: usize) -> Vec<Element> {
        let u = &st.users[user];
        let entry = &self.directory.users[user];
        let sees = self.visibility(st, user, viewer);
        let avail = if sees.availability {
            self.aggregate_availability(st, user)
        } else {
            18000
        }
        .to_string();
        let state = with_child(
            elem(
                "state",
                &[
                    ("xmlns", "http://schemas.microsoft.com/2006/09/sip/state"),
                    ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
                    ("xsi:type", "aggregateState"),
                ],
            ),
            text_elem("availability", &avail),
        );
        let state_cat = with_child(
            elem(
                "cwaCategory",
                &[
                    ("name", "state"),
                    ("instance", "0"),
                    ("version", &u.state_version.to_string()),
                    ("publishTime", &u.publish_time),
                ],
            ),
            state,
        );
        let note_cat = if u.note.is_empty() || !sees.note {
            elem("cwaCategory", &[("name", "note")])
        } else {
            let mut text = elem("body", &[("type", "personal")]);
            text.children.push(xmltree::XMLNode::Text(u.note.clone()));
            let body = with_child(
                elem(
                    "note",
                    &[("xmlns", "http://schemas.microsoft.com/2006/09/sip/note")],
                ),
                text,
            );
            with_child(
                elem(
                    "cwaCategory",
                    &[
                        ("name", "note"),
                        ("instance", "0"),
                        ("version", &u.note_version.to_string()),
                        ("publishTime", &u.publish_time),
                    ],
                ),
                body,
            )
        };
        let card = with_child(
            elem(
                "contactCard",
                &[(
                    "xmlns",
                    "http://schemas.microsoft.com/2006/09/sip/contactcard",
                )],
            ),
            with_child(
                with_child(
                    elem("identity", &[]),
                    with_child(
                        elem("name", &[]),
                        text_elem("displayName", &entry.display_name),
                    ),
                ),
                text_elem("email", entry.sip_uri.trim_start_matches("sip:")),
            ),
        );
        let card_cat = with_child(
            elem(
                "cwaCategory",
                &[
                    ("name", "contactCard"),
                    ("instance", "0"),
                    ("version", "0"),
                    ("publishTime", &u.publish_time),
                ],
            ),
            card,
        );
        vec![card_cat, note_cat, state_cat]
    }

    /// The `userPresence` event for `uris` as `viewer` may see them.
    fn user_presence_event(&self, st: &State, viewer: usize, uris: &[String]) -> Element {
        let mut ev = elem("userPresence", &[]);
        for uri in uris {
            let user_elem = match self.directory.by_uri(uri) {
                Some(i) => {
                    let mut u = elem(
                        "user",
                        &[
                            ("uri", &self.directory.users[i].sip_uri),
                            ("sourceNetwork", "sameEnterprise"),
                        ],
                    );
                    for c in self.categories(st, i, viewer) {
                        u = with_child(u, c);
                    }
                    u
                }
                // Unknown to this OCS: a user with no categories.
                None => elem("user", &[("uri", uri), ("sourceNetwork", "unknown")]),
            };
            ev = with_child(ev, user_elem);
        }
        ev
    }

    fn self_presence(&self, st: &State, user: usize) -> Element {
        let mut ev = elem("selfPresence", &[]);
        for c in self.categories(st, user, user) {
            ev = with_child(ev, c);
        }
        ev
    }

    /// Tells watchers (and, unless only `skip_self` is new, the user's own
    /// other sessions) about a change of `user`'s presence.
    fn presence_changed(&self, st: &State, user: usize, new_session: Option<u64>) {
        self.presence_to_watchers(st, user);
        let me = self.self_presence(st, user);
        for sid in &st.users[user].sessions {
            if Some(*sid) != new_session {
                self.emit(st, *sid, me.clone());
            }
        }
    }

    fn publish_self_presence(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let mut new_avail = None;
        let mut new_note = None;
        let cats: Vec<&Element> = children(m).filter(|c| c.name == "cwaCategory").collect();
        if cats.is_empty() {
            return invalid(rid, 18001, "publishSelfPresence without cwaCategory");
        }
        for cat in cats {
            match attr(cat, "name") {
                Some("state") => {
                    let Some(a) = find_descendant(cat, "availability") else {
                        return invalid(rid, 18001, "state category without availability");
                    };
                    match xml::text(a).trim().parse::<u32>() {
                        Ok(v) if v <= 20_000 => new_avail = Some(v),
                        _ => return invalid(rid, 18001, "availability is not a number 0..20000"),
                    }
                }
                Some("note") => {
                    let body = find_descendant(cat, "body")
                        .map(xml::text)
                        .unwrap_or_default();
                    if body.len() > 2048 {
                        return invalid(rid, 18001, "note longer than 2048 bytes");
                    }
                    new_note = Some(body);
                }
                Some(_) => {} // other categories are accepted and not modelled
                None => return invalid(rid, 18001, "cwaCategory without name"),
            }
        }
        let now = iso_utc(SystemTime::now());
        let u = &mut st.users[user];
        if let Some(a) = new_avail {
            u.availability = a;
            u.state_version += 1;
            u.published.published(a);
        }
        if let Some(n) = new_note {
            u.note = n;
            u.note_version += 1;
        }
        u.publish_time = now;
        self.presence_changed(st, user, None);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn watch(&self, st: &mut State, sid: u64, target: usize) {
        st.users[target].watchers.insert(sid);
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.watching.insert(target);
        }
    }

    fn unwatch(&self, st: &mut State, sid: u64, target: usize) {
        st.users[target].watchers.remove(&sid);
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.watching.remove(&target);
        }
    }

    fn subscribe(&self, st: &mut State, sid: u64, rid: &str, m: &Element, on: bool) -> Element {
        let uris = match uri_list(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        for uri in &uris {
            if let Some(target) = self.directory.by_uri(uri) {
                if on {
                    self.watch(st, sid, target);
                } else {
                    self.unwatch(st, sid, target);
                }
            }
        }
        if on {
            let viewer = st.sessions[&sid].user;
            let ev = self.user_presence_event(st, viewer, &uris);
            self.emit(st, sid, ev);
            // Targets learn of their new watcher.
            let watcher = st.sessions[&sid].user;
            for uri in &uris {
                if let Some(target) = self.directory.by_uri(uri) {
                    let acknowledged = st.users[target].acknowledged.contains(&watcher);
                    let ev = self.subscriber_delta(watcher, acknowledged);
                    self.emit_user(st, target, &ev);
                }
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn query_presence(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let uris = match uri_list(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        if self.fails_query_presence() {
            log::warn!("fault: queryPresence of session {sid} fails");
            let error = sip_err_elem(504, "Server Time-out");
            self.emit(st, sid, failed(rid, error));
            return accepted(rid);
        }
        let viewer = st.sessions[&sid].user;
        let ev = self.user_presence_event(st, viewer, &uris);
        self.emit(st, sid, ev);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn subscribers_event(&self, st: &State, user: usize) -> Element {
        let me = &self.directory.users[user].sip_uri;
        let mut ev = elem("subscribers", &[]);
        for (i, u) in st.users.iter().enumerate() {
            if i != user && u.contacts.iter().any(|c| c.uri.eq_ignore_ascii_case(me)) {
                let w = &self.directory.users[i];
                ev = with_child(
                    ev,
                    elem(
                        "subscriber",
                        &[
                            ("uri", &w.sip_uri),
                            ("displayName", &w.display_name),
                            ("sourceNetwork", "sameEnterprise"),
                            (
                                "acknowledged",
                                if st.users[user].acknowledged.contains(&i) {
                                    "true"
                                } else {
                                    "false"
                                },
                            ),
                        ],
                    ),
                );
            }
        }
        ev
    }

    fn subscriber_delta(&self, watcher: usize, acknowledged: bool) -> Element {
        let w = &self.directory.users[watcher];
        with_child(
            elem("subscribers", &[]),
            elem(
                "subscriber",
                &[
                    ("uri", &w.sip_uri),
                    ("displayName", &w.display_name),
                    ("sourceNetwork", "sameEnterprise"),
                    ("acknowledged", if acknowledged { "true" } else { "false" }),
                ],
            ),
        )
    }

    // -----------------------------------------------------------------
    // Access levels and watchers (see `containers`)

    /// What `viewer` may see of `user`'s presence.
    fn visibility(&self, st: &State, user: usize, viewer: usize) -> containers::Visibility {
        if viewer == user {
            return containers::Visibility {
                availability: true,
                note: true,
            };
        }
        let level = st.users[user]
            .containers
            .level_of(&self.directory.users[viewer].sip_uri, true);
        Containers::visibility(level)
    }

    /// Each session watching `user`, with what its user may see.
    fn watcher_views(&self, st: &State, user: usize) -> Vec<(u64, containers::Visibility)> {
        st.users[user]
            .watchers
            .iter()
            .filter_map(|sid| {
                let viewer = st.sessions.get(sid)?.user;
                Some((*sid, self.visibility(st, user, viewer)))
            })
            .collect()
    }

    /// Sends `user`'s presence to every session watching it, each as its
    /// user's access level lets it see.
    fn presence_to_watchers(&self, st: &State, user: usize) {
        let uri = self.directory.users[user].sip_uri.clone();
        for sid in &st.users[user].watchers {
            let Some(viewer) = st.sessions.get(sid).map(|s| s.user) else {
                continue;
            };
            let ev = self.user_presence_event(st, viewer, std::slice::from_ref(&uri));
            self.emit(st, *sid, ev);
        }
    }

    /// `updateContainer` › `container id` › `addMember`/`deleteMember`:
    /// the user's sessions get the changed container, and watchers whose
    /// view changed their new view of the user's presence.
    fn update_container(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let (id, changes) = match containers::parse_update(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        let before = self.watcher_views(st, user);
        if let Err((code, reason)) = st.users[user].containers.update(id, &changes) {
            return failed(rid, sip_err_elem(code, reason));
        }
        let ev = st.users[user].containers.delta_event(id);
        self.emit_user(st, user, &ev);
        let uri = self.directory.users[user].sip_uri.clone();
        for (watcher, now) in self.watcher_views(st, user) {
            if before.iter().any(|(s, was)| *s == watcher && *was != now) {
                let viewer = st.sessions[&watcher].user;
                let ev = self.user_presence_event(st, viewer, std::slice::from_ref(&uri));
                self.emit(st, watcher, ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    /// `acknowledgeSubscriber` › `uri…`: marks the watchers acknowledged;
    /// the user's sessions get a `subscribers` event saying so for each
    /// who watches the user. URIs of people who are no users here are
    /// acknowledged as a no-op.
    fn acknowledge_subscriber(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let uris: Vec<String> = children(m)
            .filter(|c| c.name == "uri")
            .map(|c| xml::text(c).trim().to_string())
            .take(MAX_URIS + 1)
            .collect();
        if uris.is_empty() || uris.len() > MAX_URIS {
            return invalid(rid, 18001, "acknowledgeSubscriber needs 1 to 100 <uri>");
        }
        if let Some(bad) = uris.iter().find(|u| !valid_sip_uri(u)) {
            return invalid(rid, 18001, &format!("`{bad}` is not a sip: URI"));
        }
        let watchers: Vec<usize> = uris
            .iter()
            .filter_map(|u| self.directory.by_uri(u))
            .filter(|w| *w != user)
            .collect();
        st.users[user].acknowledged.extend(watchers.iter().copied());
        // Only people who watch the user now show up as watchers; the
        // others are remembered as acknowledged for when they do.
        let me = &self.directory.users[user].sip_uri;
        for w in watchers {
            let has_me = st.users[w]
                .contacts
                .iter()
                .any(|c| c.uri.eq_ignore_ascii_case(me));
            let subscribed = st.users[user]
                .watchers
                .iter()
                .any(|s| st.sessions.get(s).is_some_and(|s| s.user == w));
            if has_me || subscribed {
                let ev = self.subscriber_delta(w, true);
                self.emit_user(st, user, &ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    // -----------------------------------------------------------------
    // Contacts and groups

    fn contact_elem(c: &Contact, action: Option<&str>) -> Element {
        let groups: Vec<String> = c.groups.iter().map(u32::to_string).collect();
        let mut e = elem(
            "contact",
            &[
                ("uri", &c.uri),
                ("name", &c.name),
                ("subscribed", if c.subscribed { "true" } else { "false" }),
                ("tag", &c.tag),
                ("groups", &groups.join(" ")),
            ],
        );
        if let Some(a) = action {
            e.attributes.insert("action".into(), a.into());
        }
        e
    }

    fn group_elem(g: &Group, action: Option<&str>) -> Element {
        let mut e = elem(
            "group",
            &[
                ("id", &g.id.to_string()),
                ("name", &g.name),
                ("externalUri", &g.external_uri),
            ],
        );
        if let Some(a) = action {
            e.attributes.insert("action".into(), a.into());
        }
        e
    }

    fn contact_group_full(&self, st: &State, user: usize) -> Element {
        let u = &st.users[user];
        let mut ev = elem(
            "contactGroup",
            &[("fullList", "true"), ("deltaNum", &u.delta_num.to_string())],
        );
        for g in &u.groups {
            ev = with_child(ev, Self::group_elem(g, None));
        }
        for c in &u.contacts {
            ev = with_child(ev, Self::contact_elem(c, None));
        }
        ev
    }

    fn contact_group_delta(&self, st: &mut State, user: usize, item: Element) {
        st.users[user].delta_num += 1;
        let ev = with_child(
            elem(
                "contactGroup",
                &[
                    ("fullList", "false"),
                    ("deltaNum", &st.users[user].delta_num.to_string()),
                ],
            ),
            item,
        );
        self.emit_user(st, user, &ev);
    }

    fn add_update_contact(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let adding = m.name == "addContact";
        let Some(c) = m.get_child("contact") else {
            return invalid(rid, 18001, "missing contact");
        };
        let Some(uri) = attr(c, "uri").map(str::trim).filter(|u| valid_sip_uri(u)) else {
            return invalid(rid, 18001, "contact without a valid sip: uri");
        };
        let mut groups = Vec::new();
        for g in attr(c, "groups").unwrap_or("").split_whitespace() {
            match g.parse::<u32>() {
                Ok(id) if st.users[user].groups.iter().any(|x| x.id == id) => groups.push(id),
                _ => return failed(rid, err_elem(18102, &format!("no group with id {g}"))),
            }
        }
        let existing = st.users[user]
            .contacts
            .iter()
            .position(|x| x.uri.eq_ignore_ascii_case(uri));
        let target = self.directory.by_uri(uri);
        let contact = match (adding, existing) {
            (true, Some(_)) => return failed(rid, sip_err_elem(409, "Conflict")),
            (false, None) => return failed(rid, sip_err_elem(404, "Not Found")),
            (true, None) => {
                if st.users[user].contacts.len() >= MAX_CONTACTS {
                    return failed(rid, err_elem(18102, "contact list full"));
                }
                let c = Contact {
                    uri: uri.to_string(),
                    name: attr(c, "name")
                        .map(str::to_string)
                        .or_else(|| target.map(|t| self.directory.users[t].display_name.clone()))
                        .unwrap_or_default(),
                    subscribed: attr(c, "subscribed") == Some("true"),
                    tag: attr(c, "tag").unwrap_or("").to_string(),
                    groups: if groups.is_empty() {
                        vec![DEFAULT_GROUP_ID]
                    } else {
                        groups
                    },
                };
                st.users[user].contacts.push(c.clone());
                c
            }
            (false, Some(i)) => {
                let x = &mut st.users[user].contacts[i];
                if let Some(n) = attr(c, "name") {
                    x.name = n.to_string();
                }
                if let Some(s) = attr(c, "subscribed") {
                    x.subscribed = s == "true";
                }
                if let Some(t) = attr(c, "tag") {
                    x.tag = t.to_string();
                }
                if !groups.is_empty() {
                    x.groups = groups;
                }
                x.clone()
            }
        };
        self.contact_group_delta(
            st,
            user,
            Self::contact_elem(&contact, Some(if adding { "added" } else { "updated" })),
        );
        if let Some(t) = target {
            let sids = st.users[user].sessions.clone();
            for s in sids {
                if contact.subscribed {
                    self.watch(st, s, t);
                } else {
                    self.unwatch(st, s, t);
                }
            }
            if contact.subscribed {
                let ev = self.user_presence_event(st, user, std::slice::from_ref(&contact.uri));
                self.emit_user(st, user, &ev);
            }
            if adding {
                let acknowledged = st.users[t].acknowledged.contains(&user);
                let ev = self.subscriber_delta(user, acknowledged);
                self.emit_user(st, t, &ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn delete_contact(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let uri = child_text(m, "uri")
            .or_else(|| {
                m.get_child("contact")
                    .and_then(|c| attr(c, "uri").map(str::to_string))
            })
            .unwrap_or_default();
        let uri = uri.trim();
        if !valid_sip_uri(uri) {
            return invalid(rid, 18001, "deleteContact without a valid uri");
        }
        let Some(i) = st.users[user]
            .contacts
            .iter()
            .position(|x| x.uri.eq_ignore_ascii_case(uri))
        else {
            return failed(rid, sip_err_elem(404, "Not Found"));
        };
        let c = st.users[user].contacts.remove(i);
        self.contact_group_delta(st, user, Self::contact_elem(&c, Some("deleted")));
        if let Some(t) = self.directory.by_uri(uri) {
            let sids = st.users[user].sessions.clone();
            for s in sids {
                self.unwatch(st, s, t);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn group_op(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let Some(g) = m.get_child("group") else {
            return invalid(rid, 18001, "missing group");
        };
        let name = attr(g, "name").map(str::trim);
        let id = attr(g, "id").and_then(|s| s.trim().parse::<u32>().ok());
        let u = &mut st.users[user];
        let item = match m.name.as_str() {
            "addGroup" => {
                let Some(name) = name.filter(|n| !n.is_empty() && n.len() <= 256) else {
                    return invalid(rid, 18001, "addGroup without a name");
                };
                if u.groups.iter().any(|x| x.name.eq_ignore_ascii_case(name)) {
                    return failed(rid, sip_err_elem(485, "Ambiguous"));
                }
                if u.groups.len() >= MAX_GROUPS {
                    return failed(rid, err_elem(18102, "too many groups"));
                }
                let grp = Group {
                    id: u.next_group_id,
                    name: name.to_string(),
                    external_uri: attr(g, "externalUri").unwrap_or("").to_string(),
                };
                u.next_group_id += 1;
                u.groups.push(grp.clone());
                Self::group_elem(&grp, Some("added"))
            }
            "updateGroup" => {
                let Some(id) = id else {
                    return invalid(rid, 18001, "updateGroup without an id");
                };
                if let Some(n) = name {
                    if u.groups
                        .iter()
                        .any(|x| x.id != id && x.name.eq_ignore_ascii_case(n))
                    {
                        return failed(rid, sip_err_elem(485, "Ambiguous"));
                    }
                }
                let Some(grp) = u.groups.iter_mut().find(|x| x.id == id) else {
                    return failed(rid, sip_err_elem(404, "Not Found"));
                };
                if grp.id == DEFAULT_GROUP_ID && name.is_some_and(|n| n != DEFAULT_GROUP_NAME) {
                    return failed(rid, err_elem(18102, "the default group cannot be renamed"));
                }
                if let Some(n) = name.filter(|n| !n.is_empty()) {
                    grp.name = n.to_string();
                }
                if let Some(x) = attr(g, "externalUri") {
                    grp.external_uri = x.to_string();
                }
                Self::group_elem(grp, Some("updated"))
            }
            _ => {
                let Some(id) = id else {
                    return invalid(rid, 18001, "deleteGroup without an id");
                };
                if id == DEFAULT_GROUP_ID {
                    return failed(rid, err_elem(18102, "the default group cannot be deleted"));
                }
                let Some(i) = u.groups.iter().position(|x| x.id == id) else {
                    return failed(rid, sip_err_elem(404, "Not Found"));
                };
                let grp = u.groups.remove(i);
                // Contacts left without a group move to the default group.
                for c in &mut u.contacts {
                    c.groups.retain(|x| *x != id);
                    if c.groups.is_empty() {
                        c.groups.push(DEFAULT_GROUP_ID);
                    }
                }
                Self::group_elem(&grp, Some("deleted"))
            }
        };
        self.contact_group_delta(st, user, item);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn search(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let fields = ["firstName", "lastName", "displayName", "emailAlias"];
        let terms: Vec<(&str, String)> = fields
            .iter()
            .filter_map(|f| child_text(m, f).map(|t| (*f, t.trim().to_lowercase())))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if terms.is_empty() {
            return invalid(
                rid,
                18001,
                "search needs firstName, lastName, displayName or emailAlias",
            );
        }
        let all = matches!(
            child_text(m, "function").as_deref().map(str::trim),
            Some("and")
        );
        let matches = |u: &super::users::UserEntry| {
            let mut words = u.display_name.split_whitespace();
            let first = words.next().unwrap_or("").to_lowercase();
            let last = u
                .display_name
                .split_whitespace()
                .last()
                .unwrap_or("")
                .to_lowercase();
            let hit = |(f, t): &(&str, String)| match *f {
                "firstName" => first.starts_with(t.as_str()),
                "lastName" => last.starts_with(t.as_str()),
                "displayName" => u.display_name.to_lowercase().contains(t.as_str()),
                _ => u.account.to_lowercase().starts_with(t.as_str()),
            };
            if all {
                terms.iter().all(hit)
            } else {
                terms.iter().any(hit)
            }
        };
        let found: Vec<&super::users::UserEntry> =
            self.directory.users.iter().filter(|u| matches(u)).collect();
        let more = found.len() > MAX_SEARCH_RESULTS;
        let mut ev = elem(
            "searchResult",
            &[
                ("rid", rid),
                ("moreAvailable", if more { "true" } else { "false" }),
            ],
        );
        for u in found.into_iter().take(MAX_SEARCH_RESULTS) {
            ev = with_child(
                ev,
                elem(
                    "user",
                    &[
                        ("uri", &u.sip_uri),
                        ("displayName", &u.display_name),
                        ("title", ""),
                        ("company", ""),
                        ("emailAlias", &u.account),
                        ("workPhone", ""),
                    ],
                ),
            );
        }
        self.emit(st, sid, ev);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    // -----------------------------------------------------------------
    // IM conversations

    fn conference(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let Some(conf) = attr(m, "confId").and_then(|c| c.trim().parse::<u64>().ok()) else {
            return invalid(rid, 18001, "conference without a numeric confId");
        };
        let Some(action) = children(m).next() else {
            return invalid(rid, 18001, "conference without an action");
        };
        match action.name.as_str() {
            "initiateImSession" => self.initiate_im(st, sid, rid, action),
            "acceptImSession" => self.accept_im(st, sid, rid, conf),
            "sendMessage" => self.send_message(st, sid, rid, conf, action),
            "notifyComposing" => self.notify_composing(st, sid, rid, conf, action),
            "terminateImSession" => {
                if !st.sessions[&sid].conversations.contains(&conf) {
                    return failed(rid, err_elem(18102, "not in this conversation"));
                }
                self.leave_conversation(st, sid, conf, Some(rid), 603, "Decline");
                accepted(rid)
            }
            "inviteParticipants" => self.invite_participants(st, sid, rid, conf, action),
            other => invalid(rid, 18001, &format!("unknown conference action `{other}`")),
        }
    }

    fn participant_elem(&self, user: usize) -> Element {
        let u = &self.directory.users[user];
        elem(
            "participant",
            &[
                ("uri", &u.sip_uri),
                ("name", &u.display_name),
                ("role", "attendee"),
                ("archiving", "false"),
            ],
        )
    }

    fn initiate_im(&self, st: &mut State, sid: u64, rid: &str, action: &Element) -> Element {
        let uris = match uri_list(action) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        let me = st.sessions[&sid].user;
        if uris.iter().any(|u| self.directory.by_uri(u) == Some(me)) {
            return invalid(rid, 18001, "cannot invite yourself");
        }
        let first = message_of(action);
        let subject = child_text(action, "subject").unwrap_or_default();
        let conf = st.next_conf;
        st.next_conf += 1;
        st.conversations.insert(
            conf,
            Conversation {
                subject,
                members: vec![Member {
                    user: me,
                    state: MemberState::Connected { sid },
                }],
                connected_once: false,
                escalated: false,
                pending: HashMap::new(),
            },
        );
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.conversations.insert(conf);
        }
        self.emit(
            st,
            sid,
            conf_event(conf, text_elem("imSessionState", "connecting")),
        );
        self.invite(st, sid, rid, conf, &uris, first, uris.len() == 1);
        elem(
            "initiateImSessionAccepted",
            &[("rid", rid), ("confId", &conf.to_string())],
        )
    }

    /// Sends invitations for `uris` to conversation `conf` on behalf of
    /// session `sid` (request `rid`), failing offline invitees at once.
    #[allow(clippy::too_many_arguments)]
    fn invite(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        uris: &[String],
        first: Option<(String, String)>,
        peer_to_peer: bool,
    ) {
        let inviter = st.sessions[&sid].user;
        let mut online = 0usize;
        for uri in uris {
            let target = self.directory.by_uri(uri);
            let already = target.is_some_and(|t| {
                st.conversations
                    .get(&conf)
                    .is_some_and(|c| c.members.iter().any(|m| m.user == t))
            });
            // A user who blocked the inviter is offline to them.
            let blocked = target.is_some_and(|t| {
                st.users[t]
                    .containers
                    .level_of(&self.directory.users[inviter].sip_uri, true)
                    == containers::BLOCKED
            });
            let sids: Vec<u64> = match target {
                Some(t) if !already && !blocked => st.users[t].sessions.clone(),
                _ => Vec::new(),
            };
            if sids.is_empty() {
                // Offline, blocking or unknown (or already present): SIP 480.
                self.emit(
                    st,
                    sid,
                    conf_event(conf, elem("inviteFailed", &[("uri", uri)])),
                );
                continue;
            }
            let t = target.unwrap_or_default();
            online += 1;
            let mut invitation = elem("imSessionReceived", &[]);
            let iu = &self.directory.users[inviter];
            invitation = with_child(
                invitation,
                elem(
                    "inviter",
                    &[
                        ("uri", &iu.sip_uri),
                        ("name", &iu.display_name),
                        ("sourceNetwork", "sameEnterprise"),
                    ],
                ),
            );
            invitation = with_child(invitation, text_elem("role", "attendee"));
            invitation = with_child(
                invitation,
                text_elem(
                    "escalationMode",
                    if peer_to_peer {
                        "invitingPeer"
                    } else {
                        "escalating"
                    },
                ),
            );
            let subject = st
                .conversations
                .get(&conf)
                .map(|c| c.subject.clone())
                .unwrap_or_default();
            invitation = with_child(invitation, text_elem("subject", &subject));
            if let Some((format, content)) = &first {
                invitation = with_child(invitation, message_elem(format, content));
            }
            for s in &sids {
                self.emit(st, *s, conf_event(conf, invitation.clone()));
                if let Some(sess) = st.sessions.get_mut(s) {
                    sess.conversations.insert(conf);
                }
            }
            if let Some(c) = st.conversations.get_mut(&conf) {
                c.members.push(Member {
                    user: t,
                    state: MemberState::Invited {
                        sids,
                        by: (sid, rid.to_string()),
                    },
                });
            }
        }
        if online == 0 {
            self.emit(
                st,
                sid,
                failed(rid, sip_err_elem(480, "Temporarily Unavailable")),
            );
            self.maybe_end_conversation(st, conf);
        } else if let Some(c) = st.conversations.get_mut(&conf) {
            c.pending.insert(
                (sid, rid.to_string()),
                PendingInvite {
                    remaining: online,
                    succeeded: false,
                },
            );
        }
    }

    fn accept_im(&self, st: &mut State, sid: u64, rid: &str, conf: u64) -> Element {
        let user = st.sessions[&sid].user;
        let Some(c) = st.conversations.get_mut(&conf) else {
            return failed(rid, err_elem(18102, "no such conversation"));
        };
        let Some(idx) = c.members.iter().position(|m| {
            m.user == user
                && matches!(&m.state, MemberState::Invited { sids, .. } if sids.contains(&sid))
        }) else {
            return failed(
                rid,
                err_elem(18102, "no pending invitation in this conversation"),
            );
        };
        let MemberState::Invited { sids, by } =
            std::mem::replace(&mut c.members[idx].state, MemberState::Connected { sid })
        else {
            unreachable!("matched Invited above");
        };
        let first_connect = !c.connected_once;
        c.connected_once = true;
        let others: Vec<(u64, usize)> = c
            .members
            .iter()
            .filter_map(|m| match m.state {
                MemberState::Connected { sid: s } if s != sid => Some((s, m.user)),
                _ => None,
            })
            .collect();
        let escalate = !c.escalated && others.len() >= 2;
        if escalate {
            c.escalated = true;
        }
        let inviter_done = match c.pending.get_mut(&by) {
            Some(p) if !p.succeeded => {
                p.succeeded = true;
                p.remaining = p.remaining.saturating_sub(1);
                true
            }
            Some(p) => {
                p.remaining = p.remaining.saturating_sub(1);
                false
            }
            None => false,
        };
        // Other endpoints of the same user stop ringing.
        for s in sids.iter().filter(|s| **s != sid) {
            self.emit(
                st,
                *s,
                conf_event(conf, text_elem("imSessionState", "terminated")),
            );
            if let Some(sess) = st.sessions.get_mut(s) {
                sess.conversations.remove(&conf);
            }
        }
        for (s, u) in &others {
            self.emit(st, sid, conf_event(conf, self.participant_elem(*u)));
            self.emit(st, *s, conf_event(conf, self.participant_elem(user)));
            if first_connect {
                self.emit(
                    st,
                    *s,
                    conf_event(conf, text_elem("imSessionState", "connected")),
                );
            }
        }
        self.emit(
            st,
            sid,
            conf_event(conf, text_elem("imSessionState", "connected")),
        );
        if escalate {
            let all: Vec<u64> = others.iter().map(|(s, _)| *s).chain([sid]).collect();
            for s in all {
                self.emit(
                    st,
                    s,
                    conf_event(conf, text_elem("escalationMode", "escalated")),
                );
            }
        }
        if inviter_done {
            self.emit(st, by.0, succeeded(&by.1));
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn connected_peers(&self, st: &State, conf: u64, sid: u64) -> Option<Vec<u64>> {
        let c = st.conversations.get(&conf)?;
        let mut me_connected = false;
        let mut peers = Vec::new();
        for m in &c.members {
            if let MemberState::Connected { sid: s } = m.state {
                if s == sid {
                    me_connected = true;
                } else {
                    peers.push(s);
                }
            }
        }
        me_connected.then_some(peers)
    }

    fn send_message(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let Some((format, content)) = message_of(action) else {
            return invalid(rid, 18001, "sendMessage without content");
        };
        let Some(peers) = self.connected_peers(st, conf, sid) else {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        };
        if peers.is_empty() {
            // Sends fail until the conversation is connected (§5.2).
            self.emit(
                st,
                sid,
                conf_event(conf, elem("messageSendFailed", &[("messageId", rid)])),
            );
            self.emit(
                st,
                sid,
                failed(rid, err_elem(18102, "no connected participant")),
            );
            return accepted(rid);
        }
        let sender = self.directory.users[st.sessions[&sid].user].sip_uri.clone();
        let ev = conf_event(
            conf,
            with_child(
                elem("messageReceived", &[("sender", &sender)]),
                message_elem(&format, &content),
            ),
        );
        for p in peers {
            self.emit(st, p, ev.clone());
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn notify_composing(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let state = xml::text(action).trim().to_string();
        if state != "composing" && state != "idle" {
            return invalid(rid, 18001, "notifyComposing must be composing or idle");
        }
        let Some(peers) = self.connected_peers(st, conf, sid) else {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        };
        let uri = self.directory.users[st.sessions[&sid].user].sip_uri.clone();
        let mut item = text_elem("composingState", &state);
        item.attributes.insert("uri".into(), uri);
        let ev = conf_event(conf, item);
        for p in peers {
            self.emit(st, p, ev.clone());
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn invite_participants(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let uris = match uri_list(action) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        if self.connected_peers(st, conf, sid).is_none() {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        }
        self.invite(st, sid, rid, conf, &uris, None, false);
        accepted(rid)
    }

    /// Session `sid` leaves conversation `conf`: by `terminateImSession`
    /// (`rid` set; a pending invitation is declined with `decline_code`) or
    /// because the session ended (`rid` None).
    fn leave_conversation(
        &self,
        st: &mut State,
        sid: u64,
        conf: u64,
        rid: Option<&str>,
        decline_code: u16,
        decline_reason: &str,
    ) {
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.conversations.remove(&conf);
        }
        let Some(c) = st.conversations.get_mut(&conf) else {
            return;
        };
        let Some(idx) = c.members.iter().position(|m| match &m.state {
            MemberState::Connected { sid: s } => *s == sid,
            MemberState::Invited { sids, .. } => sids.contains(&sid),
        }) else {
            return;
        };
        let user = c.members[idx].user;
        let uri = self.directory.users[user].sip_uri.clone();
        let mut notes: Vec<(u64, Element)> = Vec::new();
        match &mut c.members[idx].state {
            MemberState::Connected { .. } => {
                c.members.remove(idx);
                for m in &c.members {
                    if let MemberState::Connected { sid: s } = m.state {
                        notes.push((s, conf_event(conf, text_elem("participantRemoved", &uri))));
                    }
                }
                if rid.is_some() {
                    notes.push((
                        sid,
                        conf_event(conf, text_elem("imSessionState", "terminated")),
                    ));
                }
            }
            MemberState::Invited { sids, by } => {
                sids.retain(|s| *s != sid);
                if sids.is_empty() {
                    let by = by.clone();
                    c.members.remove(idx);
                    notes.push((
                        by.0,
                        conf_event(conf, elem("inviteFailed", &[("uri", &uri)])),
                    ));
                    if let Some(p) = c.pending.get_mut(&by) {
                        p.remaining = p.remaining.saturating_sub(1);
                        if p.remaining == 0 && !p.succeeded {
                            notes.push((
                                by.0,
                                failed(&by.1, sip_err_elem(decline_code, decline_reason)),
                            ));
                        }
                    }
                }
            }
        }
        for (s, e) in notes {
            self.emit(st, s, e);
        }
        if let Some(rid) = rid {
            self.emit(st, sid, succeeded(rid));
        }
        self.maybe_end_conversation(st, conf);
    }

    /// Ends a conversation left with fewer than two members (connected or
    /// invited), or whose only members are invitations nobody can answer.
    fn maybe_end_conversation(&self, st: &mut State, conf: u64) {
        let Some(c) = st.conversations.get(&conf) else {
            return;
        };
        let connected = c
            .members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Connected { .. }))
            .count();
        if c.members.len() >= 2 && connected >= 1 {
            return;
        }
        let Some(c) = st.conversations.remove(&conf) else {
            return;
        };
        for m in c.members {
            let sids = match m.state {
                MemberState::Connected { sid } => vec![sid],
                MemberState::Invited { sids, .. } => sids,
            };
            for s in sids {
                self.emit(
                    st,
                    s,
                    conf_event(conf, text_elem("imSessionState", "terminated")),
                );
                if let Some(sess) = st.sessions.get_mut(&s) {
                    sess.conversations.remove(&conf);
                }
            }
        }
    }
}

/// The `configuration` event sent at each sign-in.
fn configuration_event() -> Element {
    let mut ev = elem("configuration", &[]);
    ev = with_child(
        ev,
        elem(
            "search",
            &[
                ("defaultFunction", "or"),
                ("defaultFields", "displayName emailAlias"),
            ],
        ),
    );
    ev = with_child(
        ev,
        elem(
            "imComposingTimers",
            &[("refreshInterval", "5"), ("timeout", "60")],
        ),
    );
    ev = with_child(ev, text_elem("enableAppearOffline", "true"));
    ev
}

/// The opaque `signInData` handed out at logon and to be echoed in
/// `initiateSession`: base64 of a small XML fragment, as MSDN's example.
pub fn sign_in_data(sip_uri: &str) -> String {
    let fragment = xml::to_string(&with_child(
        elem("signInData", &[]),
        text_elem("uri", sip_uri),
    ));
    crate::ntlm::base64_encode(fragment.as_bytes())
}
