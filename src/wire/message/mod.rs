//! The XML messages carried inside `Data` frames, as Rust enums:
//! [`DeviceMessage`] (device to service) and [`ServiceMessage`] (service to
//! device), with their commands ([`DeviceCommand`]) and events
//! ([`DeviceEvent`]). Each message is one XML element without a declaration
//! or namespace, built and parsed with `xmltree` through [`crate::xml`], which
//! does all escaping.
//!
//! Text rules (documented in collab-protocol(7)): identifiers, numbers and
//! enumerations travel in attributes; free text (notes, names, message text,
//! subjects, reasons, passwords) in child elements. Characters that XML 1.0
//! cannot carry are replaced by U+FFFD when encoding, and XML's line-end
//! normalisation turns CR LF and lone CR into LF. Otherwise every message
//! round-trips exactly. Parsing refuses documents over
//! [`MAX_MESSAGE_LEN`], with a DTD, nested deeper than
//! [`MAX_DEPTH`] or holding more than [`MAX_ELEMENTS`] elements, with
//! anything but whitespace and comments after the message element (one
//! message per frame), with an unknown message, command or event element,
//! or with a missing or malformed attribute; unknown extra attributes and
//! child elements are ignored.

use std::io::{Read, Write};

use xmltree::{Element, ParserConfig, XMLNode};

use super::access::{AccessEntry, AccessLevel, Watcher};
use super::channel::{SecureChannel, SecureReader, SecureWriter, MAX_MESSAGE_LEN};
use super::secret::Secret;
use super::status::Status;
use super::WireError;
use crate::xml;

/// The deepest element nesting a message may have (ours go 4 deep).
pub const MAX_DEPTH: usize = 16;
/// The most elements one message may hold. A frame's 65504 deflated bytes
/// carry a few thousand contacts at most; the bound keeps a small deflate
/// bomb of `<a/>`s from building a tree of millions of elements.
pub const MAX_ELEMENTS: usize = 20_000;

/// What the device reports about its radio and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// In coverage, client idle (`in-coverage`).
    InCoverage,
    /// Client dormant: presence updates may be dropped (`dormant`).
    Dormant,
    /// Client in use (`active`).
    Active,
}

impl Coverage {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Coverage::InCoverage => "in-coverage",
            Coverage::Dormant => "dormant",
            Coverage::Active => "active",
        }
    }

    /// The value for a wire name.
    pub fn from_name(s: &str) -> Option<Coverage> {
        match s {
            "in-coverage" => Some(Coverage::InCoverage),
            "dormant" => Some(Coverage::Dormant),
            "active" => Some(Coverage::Active),
            _ => None,
        }
    }
}

/// A presence availability: one of the named states, or a raw CWA
/// availability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// `online` (CWA 3500).
    Online,
    /// `busy` (6500).
    Busy,
    /// `dnd`: do not disturb (9500).
    DoNotDisturb,
    /// `brb`: be right back (12500).
    BeRightBack,
    /// `away` (15500).
    Away,
    /// `offline` (18500).
    Offline,
    /// Any other CWA availability number, written in decimal.
    Code(u32),
}

impl Availability {
    /// The CWA availability number.
    pub fn code(self) -> u32 {
        match self {
            Availability::Online => 3500,
            Availability::Busy => 6500,
            Availability::DoNotDisturb => 9500,
            Availability::BeRightBack => 12500,
            Availability::Away => 15500,
            Availability::Offline => 18500,
            Availability::Code(n) => n,
        }
    }

    /// The wire form: a name, or the number for [`Availability::Code`].
    pub fn to_wire(self) -> String {
        match self {
            Availability::Online => "online".into(),
            Availability::Busy => "busy".into(),
            Availability::DoNotDisturb => "dnd".into(),
            Availability::BeRightBack => "brb".into(),
            Availability::Away => "away".into(),
            Availability::Offline => "offline".into(),
            Availability::Code(n) => n.to_string(),
        }
    }

    /// Parses the wire form (a name, or a decimal number kept as
    /// [`Availability::Code`]).
    pub fn from_wire(s: &str) -> Option<Availability> {
        Some(match s {
            "online" => Availability::Online,
            "busy" => Availability::Busy,
            "dnd" => Availability::DoNotDisturb,
            "brb" => Availability::BeRightBack,
            "away" => Availability::Away,
            "offline" => Availability::Offline,
            _ if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) => {
                Availability::Code(s.parse().ok()?)
            }
            _ => return None,
        })
    }

    /// Maps a CWA availability number to a named state by CWA's bands
    /// (3000-4499 online, 6000-7499 busy, 9000-11999 dnd, 12000-14999 brb,
    /// 15000-17999 away, 18000 and up offline); idle bands and anything
    /// else stay [`Availability::Code`].
    pub fn from_cwa(n: u32) -> Availability {
        match n {
            3000..=4499 => Availability::Online,
            6000..=7499 => Availability::Busy,
            9000..=11999 => Availability::DoNotDisturb,
            12000..=14999 => Availability::BeRightBack,
            15000..=17999 => Availability::Away,
            18000.. => Availability::Offline,
            other => Availability::Code(other),
        }
    }
}

/// Where a conversation stands (CWA's `imSessionState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationState {
    /// `connecting`: invitation sent, not yet answered.
    Connecting,
    /// `incoming`: someone invited us.
    Incoming,
    /// `connected`: messages can be sent.
    Connected,
    /// `terminated`: the conversation is over.
    Terminated,
}

impl ConversationState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ConversationState::Connecting => "connecting",
            ConversationState::Incoming => "incoming",
            ConversationState::Connected => "connected",
            ConversationState::Terminated => "terminated",
        }
    }

    /// The value for a wire name.
    pub fn from_name(s: &str) -> Option<ConversationState> {
        match s {
            "connecting" => Some(ConversationState::Connecting),
            "incoming" => Some(ConversationState::Incoming),
            "connected" => Some(ConversationState::Connected),
            "terminated" => Some(ConversationState::Terminated),
            _ => None,
        }
    }
}

/// A session to resume after a lost link: the service replays the events
/// after `acked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The session id from the earlier `login-result`.
    pub session_id: String,
    /// The highest event sequence the device has acknowledged.
    pub last_acked_seq: u64,
}

/// A message from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceMessage {
    /// Sign in (or resume a session).
    Login {
        /// The login: `DOMAIN\user` or a UPN.
        user: String,
        /// The password (never logged).
        password: Secret,
        /// A session to resume, if any.
        resume: Option<Resume>,
    },
    /// Coverage/activity report, sent at the device's status interval.
    Status {
        /// What the device reports.
        coverage: Coverage,
    },
    /// A command; answered by a `CommandResult` with the same id.
    Command {
        /// Chosen by the device, unique within the connection.
        id: u64,
        /// What to do.
        command: DeviceCommand,
    },
    /// Acknowledges every event with a sequence up to and including `seq`.
    Ack {
        /// The highest sequence received and handled.
        seq: u64,
    },
    /// Sign out and end the session.
    Logout,
}

/// A command from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCommand {
    /// Publish own availability and, if given, note (empty clears it).
    SetPresence {
        /// The new availability.
        availability: Availability,
        /// The new note; `None` leaves it unchanged.
        note: Option<String>,
    },
    /// Add a contact.
    AddContact {
        /// The contact's SIP URI.
        uri: String,
        /// Display name.
        name: Option<String>,
        /// Group id to put it in.
        group: Option<String>,
    },
    /// Remove a contact.
    RemoveContact {
        /// The contact's SIP URI.
        uri: String,
    },
    /// Create a group.
    AddGroup {
        /// The group's name.
        name: String,
    },
    /// Rename a group.
    RenameGroup {
        /// The group id.
        group: String,
        /// The new name.
        name: String,
    },
    /// Delete a group.
    RemoveGroup {
        /// The group id.
        group: String,
    },
    /// Search the directory; answered by a `SearchResult` event.
    Search {
        /// What to look for.
        query: String,
    },
    /// Start a conversation; the result carries the new conversation id.
    StartConversation {
        /// The SIP URIs to invite (at least one).
        to: Vec<String>,
        /// Subject line.
        subject: Option<String>,
        /// First message.
        text: Option<String>,
    },
    /// Send a message in a conversation.
    Send {
        /// Conversation id.
        conversation: String,
        /// The message.
        text: String,
    },
    /// Report typing.
    Typing {
        /// Conversation id.
        conversation: String,
        /// True while composing.
        composing: bool,
    },
    /// Accept an invitation.
    Accept {
        /// Conversation id.
        conversation: String,
    },
    /// Leave (or decline) a conversation.
    Leave {
        /// Conversation id.
        conversation: String,
    },
    /// Invite more participants.
    Invite {
        /// Conversation id.
        conversation: String,
        /// SIP URIs to invite (at least one).
        uris: Vec<String>,
    },
    /// Subscribe to the presence of people who are not contacts.
    SubscribePresence {
        /// SIP URIs (at least one).
        uris: Vec<String>,
    },
    /// Give a person their own access level (from any level they had).
    SetAccess {
        /// The person's SIP URI.
        uri: String,
        /// The new level.
        level: AccessLevel,
    },
    /// Acknowledge a watcher and, with `add_contact`, add them to the
    /// contact list in the same step.
    AcknowledgeWatcher {
        /// The watcher's SIP URI.
        uri: String,
        /// Also add the watcher as a contact.
        add_contact: bool,
        /// Display name for the new contact (only with `add_contact`).
        name: Option<String>,
        /// Group id for the new contact (only with `add_contact`).
        group: Option<String>,
    },
}

impl DeviceCommand {
    /// The element name of the command (also used in collab-device output).
    pub fn name(&self) -> &'static str {
        match self {
            DeviceCommand::SetPresence { .. } => "set-presence",
            DeviceCommand::AddContact { .. } => "add-contact",
            DeviceCommand::RemoveContact { .. } => "remove-contact",
            DeviceCommand::AddGroup { .. } => "add-group",
            DeviceCommand::RenameGroup { .. } => "rename-group",
            DeviceCommand::RemoveGroup { .. } => "remove-group",
            DeviceCommand::Search { .. } => "search",
            DeviceCommand::StartConversation { .. } => "start-conversation",
            DeviceCommand::Send { .. } => "send",
            DeviceCommand::Typing { .. } => "typing",
            DeviceCommand::Accept { .. } => "accept",
            DeviceCommand::Leave { .. } => "leave",
            DeviceCommand::Invite { .. } => "invite",
            DeviceCommand::SubscribePresence { .. } => "subscribe-presence",
            DeviceCommand::SetAccess { .. } => "set-access",
            DeviceCommand::AcknowledgeWatcher { .. } => "acknowledge-watcher",
        }
    }
}

/// A message from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceMessage {
    /// The answer to `Login`.
    LoginResult {
        /// [`Status::Ok`] when signed in.
        status: Status,
        /// Human-readable detail.
        text: String,
        /// The session id (on success), for `Resume`.
        session_id: Option<String>,
        /// The user's own SIP URI (on success).
        sip_uri: Option<String>,
    },
    /// The answer to a `Command`.
    CommandResult {
        /// The command's id.
        id: u64,
        /// [`Status::Ok`] on success.
        status: Status,
        /// Human-readable detail.
        text: String,
        /// The conversation a `StartConversation` created.
        conversation: Option<String>,
    },
    /// An event for the device to acknowledge.
    Event {
        /// Sequence number, 1, 2, 3, ... within the session.
        seq: u64,
        /// What happened.
        event: DeviceEvent,
    },
    /// The session is over; the service closes the link after this.
    SessionEnded {
        /// Why, as a code (usually [`Status::SessionEnded`]).
        status: Status,
        /// Why, in words (logout, eviction, inactivity, CWA session lost).
        reason: String,
    },
    /// The service is shutting down; the link closes after this.
    ServiceStopping,
}

impl ServiceMessage {
    /// True for a `LoginResult` or `CommandResult` with [`Status::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            ServiceMessage::LoginResult {
                status: Status::Ok,
                ..
            } | ServiceMessage::CommandResult {
                status: Status::Ok,
                ..
            }
        )
    }
}

/// A group in a contact list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group id.
    pub id: String,
    /// The group name.
    pub name: String,
}

/// A contact in a contact list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// SIP URI.
    pub uri: String,
    /// Display name.
    pub name: Option<String>,
    /// Ids of the groups it is in.
    pub groups: Vec<String>,
}

/// A contact list: a full snapshot, or a delta to apply to the last one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactList {
    /// True for a full snapshot (replace everything), false for a delta.
    pub complete: bool,
    /// Groups added or changed (all groups in a snapshot).
    pub groups: Vec<Group>,
    /// Contacts added or changed (all contacts in a snapshot).
    pub contacts: Vec<Contact>,
    /// Ids of groups deleted (deltas only).
    pub removed_groups: Vec<String>,
    /// URIs of contacts deleted (deltas only).
    pub removed_contacts: Vec<String>,
    /// Which part of a list too long for one frame this is (`None`: the
    /// whole list, or delta, in one event).
    pub part: Option<ListPart>,
}

/// Part `number` of `of` of a contact list sent in several events
/// (`part="2" parts="3"`); parts come in order, one event each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPart {
    /// From 1.
    pub number: u32,
    /// The number of parts, at least `number`.
    pub of: u32,
}

/// Someone's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// SIP URI.
    pub uri: String,
    /// Availability.
    pub availability: Availability,
    /// Note, if published.
    pub note: Option<String>,
    /// Display name, if known.
    pub display_name: Option<String>,
}

/// One directory search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchEntry {
    /// SIP URI.
    pub uri: String,
    /// Display name.
    pub name: Option<String>,
    /// Job title.
    pub title: Option<String>,
    /// Office.
    pub office: Option<String>,
    /// Telephone.
    pub phone: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Presence when the search was answered; `None`: unknown (the
    /// service's presence query failed or did not answer in time).
    pub availability: Option<Availability>,
}

/// An event from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The contact list, full or delta.
    ContactList(ContactList),
    /// A contact's (or subscribed user's) presence.
    Presence(Presence),
    /// The user's own presence as the server sees it.
    SelfPresence {
        /// Availability.
        availability: Availability,
        /// Note.
        note: Option<String>,
    },
    /// Someone invites the user to a conversation.
    Invitation {
        /// Conversation id.
        conversation: String,
        /// Who invites.
        from: String,
        /// Subject.
        subject: Option<String>,
        /// First message.
        text: Option<String>,
    },
    /// A message in a conversation.
    Message {
        /// Conversation id.
        conversation: String,
        /// Sender.
        from: String,
        /// Text.
        text: String,
    },
    /// Someone is typing (or stopped).
    Typing {
        /// Conversation id.
        conversation: String,
        /// Who.
        from: String,
        /// True while composing.
        composing: bool,
    },
    /// A conversation changed state.
    ConversationState {
        /// Conversation id.
        conversation: String,
        /// The new state.
        state: ConversationState,
    },
    /// Participants joined or left.
    Participants {
        /// Conversation id.
        conversation: String,
        /// Who joined.
        joined: Vec<String>,
        /// Who left.
        left: Vec<String>,
    },
    /// A message or invitation could not be delivered.
    DeliveryFailed {
        /// Conversation id.
        conversation: String,
        /// The recipient it failed for, if known.
        uri: Option<String>,
        /// Why.
        reason: String,
    },
    /// Results of a `Search` command.
    SearchResult {
        /// The id of the `Search` command.
        command: u64,
        /// The hits.
        entries: Vec<SearchEntry>,
    },
    /// Every person's own access level (always the whole list); people
    /// not listed have `default`.
    AccessLevels {
        /// The level of people not listed, when known.
        default: Option<AccessLevel>,
        /// The people with a level of their own.
        entries: Vec<AccessEntry>,
    },
    /// People who added the user to their contacts (at session start all
    /// of them, later each new one).
    Watchers(Vec<Watcher>),
}

impl DeviceEvent {
    /// The element name of the event (also used in collab-device output).
    pub fn name(&self) -> &'static str {
        match self {
            DeviceEvent::ContactList(_) => "contact-list",
            DeviceEvent::Presence(_) => "presence",
            DeviceEvent::SelfPresence { .. } => "self-presence",
            DeviceEvent::Invitation { .. } => "invitation",
            DeviceEvent::Message { .. } => "message",
            DeviceEvent::Typing { .. } => "typing",
            DeviceEvent::ConversationState { .. } => "conversation-state",
            DeviceEvent::Participants { .. } => "participants",
            DeviceEvent::DeliveryFailed { .. } => "delivery-failed",
            DeviceEvent::SearchResult { .. } => "search-result",
            DeviceEvent::AccessLevels { .. } => "access-levels",
            DeviceEvent::Watchers(_) => "watchers",
        }
    }
}

// ---------------------------------------------------------------------------
// Building

/// Replaces characters XML 1.0 cannot carry with U+FFFD.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            '\u{0}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
            _ => c,
        })
        .collect()
}

struct Build(Element);

impl Build {
    fn new(name: &str) -> Build {
        Build(Element::new(name))
    }

    fn attr(mut self, name: &str, value: &str) -> Build {
        self.0.attributes.insert(name.to_string(), clean(value));
        self
    }

    fn opt_attr(self, name: &str, value: Option<&str>) -> Build {
        match value {
            Some(v) => self.attr(name, v),
            None => self,
        }
    }

    fn text(self, name: &str, value: &str) -> Build {
        self.child(xml::text_elem(name, &clean(value)))
    }

    fn opt_text(self, name: &str, value: Option<&str>) -> Build {
        match value {
            Some(v) => self.text(name, v),
            None => self,
        }
    }

    fn child(self, child: Element) -> Build {
        Build(xml::with_child(self.0, child))
    }

    fn uris(mut self, name: &str, uris: &[String]) -> Build {
        for u in uris {
            self = self.child(Build::new(name).attr("uri", u).0);
        }
        self
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl DeviceMessage {
    /// The message as an XML element.
    pub fn to_element(&self) -> Element {
        match self {
            DeviceMessage::Login {
                user,
                password,
                resume,
            } => {
                let mut b = Build::new("login")
                    .attr("user", user)
                    .text("password", password.expose());
                if let Some(r) = resume {
                    b = b.child(
                        Build::new("resume")
                            .attr("session", &r.session_id)
                            .attr("acked", &r.last_acked_seq.to_string())
                            .0,
                    );
                }
                b.0
            }
            DeviceMessage::Status { coverage } => {
                Build::new("status").attr("coverage", coverage.name()).0
            }
            DeviceMessage::Command { id, command } => {
                Build::new("command")
                    .attr("id", &id.to_string())
                    .child(command_element(command))
                    .0
            }
            DeviceMessage::Ack { seq } => Build::new("ack").attr("seq", &seq.to_string()).0,
            DeviceMessage::Logout => Build::new("logout").0,
        }
    }

    /// The message as UTF-8 XML bytes (the payload of one `Data` frame).
    pub fn encode(&self) -> Vec<u8> {
        xml::to_string(&self.to_element()).into_bytes()
    }

    /// Parses a payload.
    pub fn decode(bytes: &[u8]) -> Result<DeviceMessage, WireError> {
        parse_device(&parse_document(bytes)?)
    }
}

fn command_element(c: &DeviceCommand) -> Element {
    let b = Build::new(c.name());
    match c {
        DeviceCommand::SetPresence { availability, note } => b
            .attr("availability", &availability.to_wire())
            .opt_text("note", note.as_deref()),
        DeviceCommand::AddContact { uri, name, group } => b
            .attr("uri", uri)
            .opt_attr("group", group.as_deref())
            .opt_text("name", name.as_deref()),
        DeviceCommand::RemoveContact { uri } => b.attr("uri", uri),
        DeviceCommand::AddGroup { name } => b.text("name", name),
        DeviceCommand::RenameGroup { group, name } => b.attr("group", group).text("name", name),
        DeviceCommand::RemoveGroup { group } => b.attr("group", group),
        DeviceCommand::Search { query } => b.text("query", query),
        DeviceCommand::StartConversation { to, subject, text } => b
            .uris("to", to)
            .opt_text("subject", subject.as_deref())
            .opt_text("text", text.as_deref()),
        DeviceCommand::Send { conversation, text } => {
            b.attr("conversation", conversation).text("text", text)
        }
        DeviceCommand::Typing {
            conversation,
            composing,
        } => b
            .attr("conversation", conversation)
            .attr("composing", bool_str(*composing)),
        DeviceCommand::Accept { conversation } | DeviceCommand::Leave { conversation } => {
            b.attr("conversation", conversation)
        }
        DeviceCommand::Invite { conversation, uris } => {
            b.attr("conversation", conversation).uris("to", uris)
        }
        DeviceCommand::SubscribePresence { uris } => b.uris("user", uris),
        DeviceCommand::SetAccess { uri, level } => b.attr("uri", uri).attr("level", level.name()),
        DeviceCommand::AcknowledgeWatcher {
            uri,
            add_contact,
            name,
            group,
        } => b
            .attr("uri", uri)
            .attr("add-contact", bool_str(*add_contact))
            .opt_attr("group", group.as_deref())
            .opt_text("name", name.as_deref()),
    }
    .0
}

impl ServiceMessage {
    /// The message as an XML element.
    pub fn to_element(&self) -> Element {
        match self {
            ServiceMessage::LoginResult {
                status,
                text,
                session_id,
                sip_uri,
            } => {
                Build::new("login-result")
                    .attr("code", &status.code().to_string())
                    .opt_attr("session", session_id.as_deref())
                    .opt_attr("sip-uri", sip_uri.as_deref())
                    .text("text", text)
                    .0
            }
            ServiceMessage::CommandResult {
                id,
                status,
                text,
                conversation,
            } => {
                Build::new("command-result")
                    .attr("id", &id.to_string())
                    .attr("code", &status.code().to_string())
                    .opt_attr("conversation", conversation.as_deref())
                    .text("text", text)
                    .0
            }
            ServiceMessage::Event { seq, event } => {
                Build::new("event")
                    .attr("seq", &seq.to_string())
                    .child(event_element(event))
                    .0
            }
            ServiceMessage::SessionEnded { status, reason } => {
                Build::new("session-ended")
                    .attr("code", &status.code().to_string())
                    .text("reason", reason)
                    .0
            }
            // The status collabd(8) says devices are told at shutdown.
            ServiceMessage::ServiceStopping => {
                Build::new("service-stopping")
                    .attr("code", &Status::ServiceStopping.code().to_string())
                    .0
            }
        }
    }

    /// The message as UTF-8 XML bytes (the payload of one `Data` frame).
    pub fn encode(&self) -> Vec<u8> {
        xml::to_string(&self.to_element()).into_bytes()
    }

    /// Parses a payload.
    pub fn decode(bytes: &[u8]) -> Result<ServiceMessage, WireError> {
        parse_service(&parse_document(bytes)?)
    }
}

fn event_element(e: &DeviceEvent) -> Element {
    let b = Build::new(e.name());
    match e {
        DeviceEvent::ContactList(list) => {
            let mut b = b.attr("complete", bool_str(list.complete));
            if let Some(p) = list.part {
                b = b
                    .attr("part", &p.number.to_string())
                    .attr("parts", &p.of.to_string());
            }
            for g in &list.groups {
                b = b.child(
                    Build::new("group")
                        .attr("id", &g.id)
                        .text("name", &g.name)
                        .0,
                );
            }
            for c in &list.contacts {
                let mut cb = Build::new("contact")
                    .attr("uri", &c.uri)
                    .opt_text("name", c.name.as_deref());
                for g in &c.groups {
                    cb = cb.child(Build::new("in-group").attr("id", g).0);
                }
                b = b.child(cb.0);
            }
            for g in &list.removed_groups {
                b = b.child(Build::new("removed-group").attr("id", g).0);
            }
            b.uris("removed-contact", &list.removed_contacts)
        }
        DeviceEvent::Presence(p) => b
            .attr("uri", &p.uri)
            .attr("availability", &p.availability.to_wire())
            .opt_text("note", p.note.as_deref())
            .opt_text("name", p.display_name.as_deref()),
        DeviceEvent::SelfPresence { availability, note } => b
            .attr("availability", &availability.to_wire())
            .opt_text("note", note.as_deref()),
        DeviceEvent::Invitation {
            conversation,
            from,
            subject,
            text,
        } => b
            .attr("conversation", conversation)
            .attr("from", from)
            .opt_text("subject", subject.as_deref())
            .opt_text("text", text.as_deref()),
        DeviceEvent::Message {
            conversation,
            from,
            text,
        } => b
            .attr("conversation", conversation)
            .attr("from", from)
            .text("text", text),
        DeviceEvent::Typing {
            conversation,
            from,
            composing,
        } => b
            .attr("conversation", conversation)
            .attr("from", from)
            .attr("composing", bool_str(*composing)),
        DeviceEvent::ConversationState {
            conversation,
            state,
        } => b
            .attr("conversation", conversation)
            .attr("state", state.name()),
        DeviceEvent::Participants {
            conversation,
            joined,
            left,
        } => b
            .attr("conversation", conversation)
            .uris("joined", joined)
            .uris("left", left),
        DeviceEvent::DeliveryFailed {
            conversation,
            uri,
            reason,
        } => b
            .attr("conversation", conversation)
            .opt_attr("uri", uri.as_deref())
            .text("reason", reason),
        DeviceEvent::SearchResult { command, entries } => {
            let mut b = b.attr("command", &command.to_string());
            for e in entries {
                b = b.child(
                    Build::new("entry")
                        .attr("uri", &e.uri)
                        .opt_attr(
                            "availability",
                            e.availability.map(|a| a.to_wire()).as_deref(),
                        )
                        .opt_text("name", e.name.as_deref())
                        .opt_text("title", e.title.as_deref())
                        .opt_text("office", e.office.as_deref())
                        .opt_text("phone", e.phone.as_deref())
                        .opt_text("email", e.email.as_deref())
                        .0,
                );
            }
            b
        }
        DeviceEvent::AccessLevels { default, entries } => {
            let mut b = b.opt_attr("default", default.map(AccessLevel::name));
            for a in entries {
                b = b.child(
                    Build::new("access")
                        .attr("uri", &a.uri)
                        .attr("level", a.level.name())
                        .0,
                );
            }
            b
        }
        DeviceEvent::Watchers(watchers) => {
            let mut b = b;
            for w in watchers {
                b = b.child(
                    Build::new("watcher")
                        .attr("uri", &w.uri)
                        .attr("acknowledged", bool_str(w.acknowledged))
                        .opt_text("name", w.name.as_deref())
                        .0,
                );
            }
            b
        }
    }
    .0
}

// ---------------------------------------------------------------------------
// Parsing

fn bad(why: impl Into<String>) -> WireError {
    WireError::Protocol(why.into())
}

/// Parses one message document with the protocol's bounds.
fn parse_document(bytes: &[u8]) -> Result<Element, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit: MAX_MESSAGE_LEN,
        });
    }
    check_shape(bytes)?;
    check_declaration(bytes)?;
    // Whitespace-only text is content here (a message may be "  "), so
    // whitespace is kept as characters.
    // One message per frame: a second root element is malformed XML
    // here, not a message to answer after the first.
    let config = ParserConfig::new()
        .whitespace_to_characters(true)
        .cdata_to_characters(true)
        .ignore_comments(true)
        .allow_multiple_root_elements(false);
    let nodes = Element::parse_all_with_config(bytes, config)
        .map_err(|e| bad(format!("malformed XML: {e}")))?;
    let mut root = None;
    for node in nodes {
        match node {
            XMLNode::Element(e) if root.is_none() => root = Some(e),
            XMLNode::Element(_) => return Err(bad("more than one element in one frame")),
            XMLNode::Text(t) if t.trim().is_empty() => {}
            XMLNode::Comment(_) | XMLNode::ProcessingInstruction(..) => {}
            _ => return Err(bad("content outside the message element")),
        }
    }
    let root = root.ok_or_else(|| bad("no message element"))?;
    if root.namespace.is_some() || root.prefix.is_some() {
        return Err(bad("message elements take no namespace"));
    }
    Ok(root)
}

/// An XML declaration may open a message (many XML writers emit one), but
/// messages are UTF-8: a declaration naming another encoding is refused
/// rather than letting the parser decode the bytes as that encoding.
fn check_declaration(b: &[u8]) -> Result<(), WireError> {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let rest = &b[start..];
    if !rest.starts_with(b"<?xml") || rest.get(5).is_some_and(|c| !c.is_ascii_whitespace()) {
        return Ok(());
    }
    let end = rest
        .windows(2)
        .position(|w| w == b"?>")
        .ok_or_else(|| bad("unfinished XML declaration"))?;
    let decl = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
    match decl.split_once("encoding") {
        None => Ok(()),
        Some((_, after)) => {
            let value = after
                .trim_start()
                .strip_prefix('=')
                .map(|v| v.trim_start().trim_start_matches(['"', '\'']))
                .unwrap_or("");
            if value.starts_with("utf-8") && !value[5..].starts_with(|c: char| c.is_alphanumeric())
            {
                Ok(())
            } else {
                Err(bad(
                    "messages are UTF-8; the XML declaration names another encoding",
                ))
            }
        }
    }
}

/// Refuses DTDs and nesting deeper than [`MAX_DEPTH`] before the recursive
/// parser sees the document.
fn check_shape(b: &[u8]) -> Result<(), WireError> {
    let shape = crate::xml::Shape {
        max_depth: MAX_DEPTH,
        max_elements: MAX_ELEMENTS,
        allow_declarations: false,
    };
    crate::xml::check_shape(b, &shape).map_err(|e| bad(e.to_string()))
}

fn attr<'a>(e: &'a Element, name: &str) -> Result<&'a str, WireError> {
    xml::attr(e, name).ok_or_else(|| bad(format!("<{}> without {name}=", e.name)))
}

fn opt_attr(e: &Element, name: &str) -> Option<String> {
    xml::attr(e, name).map(str::to_string)
}

fn num_attr(e: &Element, name: &str) -> Result<u64, WireError> {
    let v = attr(e, name)?;
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("<{}> {name}=\"{v}\" is not a number", e.name)));
    }
    v.parse()
        .map_err(|_| bad(format!("<{}> {name}=\"{v}\" is out of range", e.name)))
}

fn status_attr(e: &Element) -> Result<Status, WireError> {
    let code = num_attr(e, "code")?;
    u16::try_from(code)
        .ok()
        .and_then(Status::from_code)
        .ok_or_else(|| bad(format!("<{}> unknown status code {code}", e.name)))
}

fn bool_attr(e: &Element, name: &str) -> Result<bool, WireError> {
    match attr(e, name)? {
        "true" => Ok(true),
        "false" => Ok(false),
        v => Err(bad(format!(
            "<{}> {name}=\"{v}\" is not true or false",
            e.name
        ))),
    }
}

/// An `availability` attribute that may be absent (presence unknown).
fn opt_availability_attr(e: &Element) -> Result<Option<Availability>, WireError> {
    match e.attributes.get("availability") {
        None => Ok(None),
        Some(_) => availability_attr(e).map(Some),
    }
}

fn availability_attr(e: &Element) -> Result<Availability, WireError> {
    let v = attr(e, "availability")?;
    Availability::from_wire(v).ok_or_else(|| bad(format!("unknown availability \"{v}\"")))
}

/// The access level in attribute `name`.
fn level_of(e: &Element, name: &str) -> Result<AccessLevel, WireError> {
    let v = attr(e, name)?;
    AccessLevel::from_name(v).ok_or_else(|| {
        bad(format!(
            "<{}> {name}=\"{v}\" is not blocked, public, company, team or personal",
            e.name
        ))
    })
}

fn level_attr(e: &Element) -> Result<AccessLevel, WireError> {
    level_of(e, "level")
}

/// The text of child `name`, if present (empty element: empty string).
fn opt_text(e: &Element, name: &str) -> Result<Option<String>, WireError> {
    match e.get_child(name) {
        None => Ok(None),
        Some(c) => {
            if xml::children(c).next().is_some() {
                return Err(bad(format!("<{name}> must hold only text")));
            }
            Ok(Some(xml::text(c)))
        }
    }
}

fn text(e: &Element, name: &str) -> Result<String, WireError> {
    opt_text(e, name)?.ok_or_else(|| bad(format!("<{}> without <{name}>", e.name)))
}

fn uris(e: &Element, name: &str) -> Result<Vec<String>, WireError> {
    xml::children(e)
        .filter(|c| c.name == name)
        .map(|c| attr(c, "uri").map(str::to_string))
        .collect()
}

fn nonempty(v: Vec<String>, what: &str) -> Result<Vec<String>, WireError> {
    if v.is_empty() {
        Err(bad(format!("{what} needs at least one URI")))
    } else {
        Ok(v)
    }
}

/// The single child element of a wrapper (`command`, `event`).
fn only_child(e: &Element) -> Result<&Element, WireError> {
    let mut kids = xml::children(e);
    match (kids.next(), kids.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(bad(format!("<{}> must hold exactly one element", e.name))),
    }
}

fn parse_device(e: &Element) -> Result<DeviceMessage, WireError> {
    Ok(match e.name.as_str() {
        "login" => DeviceMessage::Login {
            user: attr(e, "user")?.to_string(),
            password: Secret::new(text(e, "password")?),
            resume: match e.get_child("resume") {
                None => None,
                Some(r) => Some(Resume {
                    session_id: attr(r, "session")?.to_string(),
                    last_acked_seq: num_attr(r, "acked")?,
                }),
            },
        },
        "status" => {
            let v = attr(e, "coverage")?;
            DeviceMessage::Status {
                coverage: Coverage::from_name(v)
                    .ok_or_else(|| bad(format!("unknown coverage \"{v}\"")))?,
            }
        }
        "command" => DeviceMessage::Command {
            id: num_attr(e, "id")?,
            command: parse_command(only_child(e)?)?,
        },
        "ack" => DeviceMessage::Ack {
            seq: num_attr(e, "seq")?,
        },
        "logout" => DeviceMessage::Logout,
        other => return Err(bad(format!("unknown device message <{other}>"))),
    })
}

fn parse_command(c: &Element) -> Result<DeviceCommand, WireError> {
    let conv = || attr(c, "conversation").map(str::to_string);
    Ok(match c.name.as_str() {
        "set-presence" => DeviceCommand::SetPresence {
            availability: availability_attr(c)?,
            note: opt_text(c, "note")?,
        },
        "add-contact" => DeviceCommand::AddContact {
            uri: attr(c, "uri")?.to_string(),
            name: opt_text(c, "name")?,
            group: opt_attr(c, "group"),
        },
        "remove-contact" => DeviceCommand::RemoveContact {
            uri: attr(c, "uri")?.to_string(),
        },
        "add-group" => DeviceCommand::AddGroup {
            name: text(c, "name")?,
        },
        "rename-group" => DeviceCommand::RenameGroup {
            group: attr(c, "group")?.to_string(),
            name: text(c, "name")?,
        },
        "remove-group" => DeviceCommand::RemoveGroup {
            group: attr(c, "group")?.to_string(),
        },
        "search" => DeviceCommand::Search {
            query: text(c, "query")?,
        },
        "start-conversation" => DeviceCommand::StartConversation {
            to: nonempty(uris(c, "to")?, "start-conversation")?,
            subject: opt_text(c, "subject")?,
            text: opt_text(c, "text")?,
        },
        "send" => DeviceCommand::Send {
            conversation: conv()?,
            text: text(c, "text")?,
        },
        "typing" => DeviceCommand::Typing {
            conversation: conv()?,
            composing: bool_attr(c, "composing")?,
        },
        "accept" => DeviceCommand::Accept {
            conversation: conv()?,
        },
        "leave" => DeviceCommand::Leave {
            conversation: conv()?,
        },
        "invite" => DeviceCommand::Invite {
            conversation: conv()?,
            uris: nonempty(uris(c, "to")?, "invite")?,
        },
        "subscribe-presence" => DeviceCommand::SubscribePresence {
            uris: nonempty(uris(c, "user")?, "subscribe-presence")?,
        },
        "set-access" => DeviceCommand::SetAccess {
            uri: attr(c, "uri")?.to_string(),
            level: level_attr(c)?,
        },
        "acknowledge-watcher" => {
            let add_contact = match xml::attr(c, "add-contact") {
                None => false,
                Some(_) => bool_attr(c, "add-contact")?,
            };
            let name = opt_text(c, "name")?;
            let group = opt_attr(c, "group");
            if !add_contact && (name.is_some() || group.is_some()) {
                return Err(bad(
                    "<acknowledge-watcher> takes a name or group only with add-contact=\"true\"",
                ));
            }
            DeviceCommand::AcknowledgeWatcher {
                uri: attr(c, "uri")?.to_string(),
                add_contact,
                name,
                group,
            }
        }
        other => return Err(bad(format!("unknown command <{other}>"))),
    })
}

fn parse_service(e: &Element) -> Result<ServiceMessage, WireError> {
    Ok(match e.name.as_str() {
        "login-result" => ServiceMessage::LoginResult {
            status: status_attr(e)?,
            text: opt_text(e, "text")?.unwrap_or_default(),
            session_id: opt_attr(e, "session"),
            sip_uri: opt_attr(e, "sip-uri"),
        },
        "command-result" => ServiceMessage::CommandResult {
            id: num_attr(e, "id")?,
            status: status_attr(e)?,
            text: opt_text(e, "text")?.unwrap_or_default(),
            conversation: opt_attr(e, "conversation"),
        },
        "event" => ServiceMessage::Event {
            seq: num_attr(e, "seq")?,
            event: parse_event(only_child(e)?)?,
        },
        "session-ended" => ServiceMessage::SessionEnded {
            status: status_attr(e)?,
            reason: opt_text(e, "reason")?.unwrap_or_default(),
        },
        "service-stopping" => ServiceMessage::ServiceStopping,
        other => return Err(bad(format!("unknown service message <{other}>"))),
    })
}

/// The optional `part`/`parts` pair of a contact list: both or neither,
/// 1 <= part <= parts.
fn list_part(e: &Element) -> Result<Option<ListPart>, WireError> {
    let number = |name: &str| {
        attr(e, name)
            .ok()
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| bad(format!("contact-list {name}=\"{v}\" is not a number")))
            })
            .transpose()
    };
    match (number("part")?, number("parts")?) {
        (None, None) => Ok(None),
        (Some(n), Some(of)) if n >= 1 && n <= of => Ok(Some(ListPart { number: n, of })),
        _ => Err(bad(
            "contact-list part and parts must come together, 1 <= part <= parts",
        )),
    }
}

fn parse_event(e: &Element) -> Result<DeviceEvent, WireError> {
    let conv = || attr(e, "conversation").map(str::to_string);
    let from = || attr(e, "from").map(str::to_string);
    Ok(match e.name.as_str() {
        "contact-list" => {
            let mut list = ContactList {
                complete: bool_attr(e, "complete")?,
                part: list_part(e)?,
                ..ContactList::default()
            };
            for c in xml::children(e) {
                match c.name.as_str() {
                    "group" => list.groups.push(Group {
                        id: attr(c, "id")?.to_string(),
                        name: text(c, "name")?,
                    }),
                    "contact" => list.contacts.push(Contact {
                        uri: attr(c, "uri")?.to_string(),
                        name: opt_text(c, "name")?,
                        groups: xml::children(c)
                            .filter(|g| g.name == "in-group")
                            .map(|g| attr(g, "id").map(str::to_string))
                            .collect::<Result<_, _>>()?,
                    }),
                    "removed-group" => list.removed_groups.push(attr(c, "id")?.to_string()),
                    "removed-contact" => list.removed_contacts.push(attr(c, "uri")?.to_string()),
                    _ => {}
                }
            }
            DeviceEvent::ContactList(list)
        }
        "presence" => DeviceEvent::Presence(Presence {
            uri: attr(e, "uri")?.to_string(),
            availability: availability_attr(e)?,
            note: opt_text(e, "note")?,
            display_name: opt_text(e, "name")?,
        }),
        "self-presence" => DeviceEvent::SelfPresence {
            availability: availability_attr(e)?,
            note: opt_text(e, "note")?,
        },
        "invitation" => DeviceEvent::Invitation {
            conversation: conv()?,
            from: from()?,
            subject: opt_text(e, "subject")?,
            text: opt_text(e, "text")?,
        },
        "message" => DeviceEvent::Message {
            conversation: conv()?,
            from: from()?,
            text: text(e, "text")?,
        },
        "typing" => DeviceEvent::Typing {
            conversation: conv()?,
            from: from()?,
            composing: bool_attr(e, "composing")?,
        },
        "conversation-state" => {
            let v = attr(e, "state")?;
            DeviceEvent::ConversationState {
                conversation: conv()?,
                state: ConversationState::from_name(v)
                    .ok_or_else(|| bad(format!("unknown conversation state \"{v}\"")))?,
            }
        }
        "participants" => DeviceEvent::Participants {
            conversation: conv()?,
            joined: uris(e, "joined")?,
            left: uris(e, "left")?,
        },
        "delivery-failed" => DeviceEvent::DeliveryFailed {
            conversation: conv()?,
            uri: opt_attr(e, "uri"),
            reason: opt_text(e, "reason")?.unwrap_or_default(),
        },
        "search-result" => DeviceEvent::SearchResult {
            command: num_attr(e, "command")?,
            entries: xml::children(e)
                .filter(|c| c.name == "entry")
                .map(|c| {
                    Ok(SearchEntry {
                        uri: attr(c, "uri")?.to_string(),
                        name: opt_text(c, "name")?,
                        title: opt_text(c, "title")?,
                        office: opt_text(c, "office")?,
                        phone: opt_text(c, "phone")?,
                        email: opt_text(c, "email")?,
                        availability: opt_availability_attr(c)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        "access-levels" => DeviceEvent::AccessLevels {
            default: match xml::attr(e, "default") {
                None => None,
                Some(_) => Some(level_of(e, "default")?),
            },
            entries: xml::children(e)
                .filter(|c| c.name == "access")
                .map(|c| {
                    Ok(AccessEntry {
                        uri: attr(c, "uri")?.to_string(),
                        level: level_attr(c)?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        },
        "watchers" => DeviceEvent::Watchers(
            xml::children(e)
                .filter(|c| c.name == "watcher")
                .map(|c| {
                    Ok(Watcher {
                        uri: attr(c, "uri")?.to_string(),
                        name: opt_text(c, "name")?,
                        acknowledged: bool_attr(c, "acknowledged")?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        other => return Err(bad(format!("unknown event <{other}>"))),
    })
}

// ---------------------------------------------------------------------------
// Typed send and receive on the channel

impl<S: Read + Write> SecureChannel<S> {
    /// Sends a device message (device side).
    pub fn send_device(&mut self, m: &DeviceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Sends a service message (service side).
    pub fn send_service(&mut self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Receives a service message (device side).
    pub fn recv_service(&mut self) -> Result<ServiceMessage, WireError> {
        self.recv_with(ServiceMessage::decode)
    }

    /// Receives a device message (service side).
    pub fn recv_device(&mut self) -> Result<DeviceMessage, WireError> {
        self.recv_with(DeviceMessage::decode)
    }
}

impl<R: Read> SecureReader<R> {
    /// Receives a device message (service side).
    pub fn recv_device(&mut self) -> Result<DeviceMessage, WireError> {
        self.recv_with(DeviceMessage::decode)
    }

    /// Receives a service message (device side).
    pub fn recv_service(&mut self) -> Result<ServiceMessage, WireError> {
        self.recv_with(ServiceMessage::decode)
    }
}

impl<W: Write> SecureWriter<W> {
    /// Sends a service message (service side).
    pub fn send_service(&mut self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Sends a device message (device side).
    pub fn send_device(&mut self, m: &DeviceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }
}
