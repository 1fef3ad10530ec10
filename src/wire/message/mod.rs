//! The XML messages carried inside `Data` frames, as Rust types:
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
//! [`MAX_MESSAGE_LEN`](super::MAX_MESSAGE_LEN), with a DTD, nested deeper than
//! [`MAX_DEPTH`] or holding more than [`MAX_ELEMENTS`] elements, with
//! anything but whitespace and comments after the message element (one
//! message per frame), with an unknown message, command or event element,
//! or with a missing or malformed attribute; unknown extra attributes and
//! child elements are ignored.
//!
//! This file owns the types and their wire names; `encode.rs` builds the
//! XML (`to_element`, `encode`), `decode.rs` parses it (`decode`, with the
//! bounds above) and `channel_io.rs` gives the secure channel typed
//! `send_*`/`recv_*`. Data flows one way: those three import the types,
//! the types import none of them.

mod channel_io;
mod decode;
mod encode;

pub use decode::{MAX_DEPTH, MAX_ELEMENTS};

use super::access::{AccessEntry, AccessLevel, Watcher};
use super::secret::Secret;
use super::status::Status;

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
