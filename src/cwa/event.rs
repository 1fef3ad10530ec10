//! Typed CWA events (cwa-sim(1), EVENTS, lists those the simulator sends)
//! and the parsing of a `cwaEvents` document. An
//! event the client does not know becomes [`Event::Unknown`] and is logged,
//! never an error; missing optional attributes are left empty rather than
//! refused, because CWA's pages disagree on details.

use xmltree::Element;

use super::command::{CommandKind, ImMessage};
use super::error::CwaError;
use crate::xml;

/// One batch of events from one event-channel response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    /// The `ackId` of the response: what [`super::EventChannel::ack`]
    /// will send back once the batch has been handled.
    pub ack_id: u64,
    /// The events, in server order, without any event already handed out
    /// (see the eid bookkeeping in [`super::EventChannel`]).
    pub events: Vec<Event>,
    /// `sessionTimeout` of the response (seconds, as far as known).
    pub session_timeout: Option<u64>,
}

/// One CWA event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The asynchronous success of the request `rid`.
    RequestSucceeded {
        /// The request id, if numeric.
        rid: Option<u64>,
        /// What the request was, if this session sent it.
        kind: Option<CommandKind>,
    },
    /// The asynchronous failure of the request `rid`.
    RequestFailed {
        /// The request id, if numeric.
        rid: Option<u64>,
        /// What the request was, if this session sent it.
        kind: Option<CommandKind>,
        /// CWA's error.
        error: CwaError,
    },
    /// The contact list: a full snapshot (`full_list`) or a delta.
    ContactGroup {
        /// A full snapshot (at sign-in) rather than a delta.
        full_list: bool,
        /// `deltaNum`.
        delta_num: Option<u64>,
        /// Groups (with `action` on deltas).
        groups: Vec<GroupItem>,
        /// Contacts (with `action` on deltas).
        contacts: Vec<ContactItem>,
    },
    /// The user's own presence.
    SelfPresence {
        /// The published categories.
        categories: Vec<Category>,
    },
    /// Others' presence.
    UserPresence {
        /// One entry per user.
        users: Vec<UserPresence>,
    },
    /// Watchers.
    Subscribers {
        /// The watchers.
        subscribers: Vec<Subscriber>,
    },
    /// The answer to a `search`.
    SearchResult {
        /// The search's request id.
        rid: Option<u64>,
        /// More results exist than were sent.
        more_available: bool,
        /// The users found (no presence: query it separately).
        users: Vec<SearchUser>,
    },
    /// Policy sent at each sign-in.
    Configuration(Configuration),
    /// One item of an IM conversation.
    Conference {
        /// The conversation.
        conf_id: String,
        /// What happened.
        item: ConferenceItem,
    },
    /// An event the client does not know, by element name.
    Unknown(String),
    /// Access levels: every container after `initiateSession`, later the
    /// one that changed, each with all its members.
    Containers {
        /// The containers.
        containers: Vec<super::access::Container>,
    },
}

/// A group of the contact list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupItem {
    /// Group id (the default group is the one named `~`; OCS 2007 gives
    /// it id 1).
    pub id: String,
    /// Name.
    pub name: String,
    /// `externalUri`, if any.
    pub external_uri: Option<String>,
    /// `added` / `updated` / `deleted` on deltas.
    pub action: Option<String>,
}

/// A contact of the contact list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactItem {
    /// `sip:` URI.
    pub uri: String,
    /// Display name.
    pub name: String,
    /// Permanently subscribed.
    pub subscribed: bool,
    /// Tagged for alerts.
    pub tag: bool,
    /// Group ids.
    pub groups: Vec<String>,
    /// `added` / `updated` / `deleted` on deltas.
    pub action: Option<String>,
}

/// One `cwaCategory` of a presence document, with the fields the device
/// protocol uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Category {
    /// `state`, `note`, `contactCard`, `calendarData`, `services`, ...
    pub name: String,
    /// `instance`, if any.
    pub instance: Option<String>,
    /// `state/availability`, for state categories.
    pub availability: Option<u32>,
    /// `note/body`, for note categories.
    pub note: Option<String>,
    /// `contactCard/identity/name/displayName`, for contact cards.
    pub display_name: Option<String>,
}

/// One user's presence in a `userPresence` event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPresence {
    /// `sip:` URI.
    pub uri: String,
    /// Categories (a full snapshot per change).
    pub categories: Vec<Category>,
}

impl UserPresence {
    /// The availability of the first state category that has one.
    pub fn availability(&self) -> Option<u32> {
        self.categories.iter().find_map(|c| c.availability)
    }

    /// The first non-empty note.
    pub fn note(&self) -> Option<&str> {
        self.categories
            .iter()
            .filter_map(|c| c.note.as_deref())
            .find(|n| !n.is_empty())
    }
}

/// A watcher in a `subscribers` event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscriber {
    /// `sip:` URI.
    pub uri: String,
    /// Display name.
    pub display_name: String,
    /// Already acknowledged.
    pub acknowledged: bool,
}

/// A user found by `search`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchUser {
    /// `sip:` URI.
    pub uri: String,
    /// Display name.
    pub display_name: String,
    /// Title.
    pub title: String,
    /// Company.
    pub company: String,
    /// E-mail alias.
    pub email_alias: String,
}

/// The `configuration` event's policy values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Configuration {
    /// `imComposingTimers refreshInterval`.
    pub composing_refresh_interval: Option<u64>,
    /// `imComposingTimers timeout`.
    pub composing_timeout: Option<u64>,
    /// `userNotice` text.
    pub user_notice: Option<String>,
    /// `customAuthLogoffUrl` (SSO).
    pub custom_auth_logoff_url: Option<String>,
    /// `enableAppearOffline`.
    pub enable_appear_offline: Option<bool>,
}

/// A participant of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Participant {
    /// `sip:` URI.
    pub uri: String,
    /// Display name.
    pub name: String,
    /// Role (e.g. `attendee`, `presenter`).
    pub role: String,
}

/// What happened in a conversation (children of `conference`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConferenceItem {
    /// An invitation, possibly with the first message.
    ImSessionReceived {
        /// The inviter's `sip:` URI.
        inviter_uri: String,
        /// The inviter's name.
        inviter_name: String,
        /// Subject, if any.
        subject: Option<String>,
        /// The first message, if any.
        message: Option<ImMessage>,
    },
    /// A message.
    MessageReceived {
        /// The sender's `sip:` URI.
        sender: String,
        /// The message.
        message: ImMessage,
    },
    /// Someone is typing (true) or stopped.
    ComposingState {
        /// Who, when CWA says.
        uri: Option<String>,
        /// Typing or idle.
        composing: bool,
    },
    /// `connected` / `incoming` / `connecting` / `terminated`.
    ImSessionState(String),
    /// A participant joined or changed.
    Participant(Participant),
    /// A participant left.
    ParticipantRemoved {
        /// Their `sip:` URI.
        uri: String,
    },
    /// A message could not be delivered.
    MessageSendFailed {
        /// The message id from `messageIdReceived`.
        message_id: String,
    },
    /// An invitee could not be reached.
    InviteFailed {
        /// Their `sip:` URI.
        uri: String,
    },
    /// The id CWA gave to our message (request `rid`).
    MessageIdReceived {
        /// The `sendMessage` request id.
        rid: Option<u64>,
        /// The message id.
        message_id: String,
    },
    /// Another conference item (`role`, `escalationMode`, `locked`,
    /// `confUri`, ...) by element name.
    Other(String),
}

/// The parsed content of one `cwaEvents` element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ParsedEvents {
    /// `ackId`, if present.
    pub ack_id: Option<u64>,
    /// `pollWaitTime` in milliseconds, if present.
    pub poll_wait_ms: Option<u64>,
    /// `sessionTimeout`, if present.
    pub session_timeout: Option<u64>,
    /// `(eid, event)` in document order.
    pub events: Vec<(Option<u64>, Event)>,
    /// An `<error>` directly inside `cwaEvents`, if any.
    pub error: Option<CwaError>,
}

/// Parses a `cwaEvents` element.
pub(crate) fn parse_events(root: &Element) -> ParsedEvents {
    let mut out = ParsedEvents {
        ack_id: num_attr(root, "ackId"),
        poll_wait_ms: num_attr(root, "pollWaitTime"),
        session_timeout: num_attr(root, "sessionTimeout"),
        ..ParsedEvents::default()
    };
    for child in xml::children(root) {
        if child.name == "error" {
            out.error = Some(CwaError::from_element(child));
            continue;
        }
        let eid = num_attr(child, "eid");
        if child.name == "conference" {
            let conf_id = xml::attr(child, "confId").unwrap_or_default().to_string();
            let mut any = false;
            for item in xml::children(child) {
                any = true;
                out.events.push((
                    eid,
                    Event::Conference {
                        conf_id: conf_id.clone(),
                        item: parse_conference_item(item),
                    },
                ));
            }
            if !any {
                log::debug!("CWA conference event {conf_id} without an item");
            }
            continue;
        }
        let event = parse_event(child);
        if let Event::Unknown(name) = &event {
            log::info!("CWA sent an unknown event <{name}> (eid {eid:?}); ignored");
        }
        out.events.push((eid, event));
    }
    out
}

/// Parses one child of `cwaEvents` other than `conference`.
pub(crate) fn parse_event(e: &Element) -> Event {
    match e.name.as_str() {
        "requestSucceeded" => Event::RequestSucceeded {
            rid: num_attr(e, "rid"),
            kind: None,
        },
        "requestFailed" => Event::RequestFailed {
            rid: num_attr(e, "rid"),
            kind: None,
            error: CwaError::child_of(e),
        },
        "contactGroup" => {
            let mut groups = Vec::new();
            let mut contacts = Vec::new();
            for c in xml::children(e) {
                match c.name.as_str() {
                    "group" => groups.push(GroupItem {
                        id: attr_string(c, "id"),
                        name: attr_string(c, "name"),
                        external_uri: xml::attr(c, "externalUri").map(str::to_string),
                        action: xml::attr(c, "action").map(str::to_string),
                    }),
                    "contact" => contacts.push(ContactItem {
                        uri: attr_string(c, "uri"),
                        name: attr_string(c, "name"),
                        subscribed: bool_attr(c, "subscribed"),
                        tag: bool_attr(c, "tag"),
                        groups: xml::attr(c, "groups")
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string)
                            .collect(),
                        action: xml::attr(c, "action").map(str::to_string),
                    }),
                    _ => {}
                }
            }
            Event::ContactGroup {
                full_list: bool_attr(e, "fullList"),
                delta_num: num_attr(e, "deltaNum"),
                groups,
                contacts,
            }
        }
        "selfPresence" => Event::SelfPresence {
            categories: categories(e),
        },
        "userPresence" => Event::UserPresence {
            users: xml::children(e)
                .filter(|u| u.name == "user")
                .map(|u| UserPresence {
                    uri: attr_string(u, "uri"),
                    categories: categories(u),
                })
                .collect(),
        },
        "subscribers" => Event::Subscribers {
            subscribers: xml::children(e)
                .filter(|s| s.name == "subscriber")
                .map(|s| Subscriber {
                    uri: attr_string(s, "uri"),
                    display_name: attr_string(s, "displayName"),
                    acknowledged: bool_attr(s, "acknowledged"),
                })
                .collect(),
        },
        "searchResult" => Event::SearchResult {
            rid: num_attr(e, "rid"),
            more_available: bool_attr(e, "moreAvailable"),
            users: xml::children(e)
                .filter(|u| u.name == "user")
                .map(|u| SearchUser {
                    uri: value(u, "uri").unwrap_or_default(),
                    display_name: value(u, "displayName").unwrap_or_default(),
                    title: value(u, "title").unwrap_or_default(),
                    company: value(u, "company").unwrap_or_default(),
                    email_alias: value(u, "emailAlias").unwrap_or_default(),
                })
                .collect(),
        },
        "configuration" => {
            let timers = e.get_child("imComposingTimers");
            Event::Configuration(Configuration {
                composing_refresh_interval: timers.and_then(|t| num_attr(t, "refreshInterval")),
                composing_timeout: timers.and_then(|t| num_attr(t, "timeout")),
                user_notice: xml::child_text(e, "userNotice"),
                custom_auth_logoff_url: xml::child_text(e, "customAuthLogoffUrl"),
                enable_appear_offline: xml::child_text(e, "enableAppearOffline")
                    .map(|v| v.trim().eq_ignore_ascii_case("true")),
            })
        }
        "containers" => Event::Containers {
            containers: super::access::parse_containers(e),
        },
        other => Event::Unknown(other.to_string()),
    }
}

fn parse_conference_item(item: &Element) -> ConferenceItem {
    match item.name.as_str() {
        "imSessionReceived" => {
            let inviter = item.get_child("inviter");
            ConferenceItem::ImSessionReceived {
                inviter_uri: inviter.and_then(|i| value(i, "uri")).unwrap_or_default(),
                inviter_name: inviter.and_then(|i| value(i, "name")).unwrap_or_default(),
                subject: xml::child_text(item, "subject"),
                message: item.get_child("message").map(message),
            }
        }
        "messageReceived" => ConferenceItem::MessageReceived {
            sender: value(item, "sender").unwrap_or_default(),
            message: item.get_child("message").map(message).unwrap_or(ImMessage {
                format: xml::child_text(item, "format").unwrap_or_default(),
                content: xml::child_text(item, "content").unwrap_or_default(),
            }),
        },
        "composingState" => ConferenceItem::ComposingState {
            uri: xml::attr(item, "uri")
                .or_else(|| xml::attr(item, "sender"))
                .map(str::to_string),
            composing: xml::text(item).trim() == "composing",
        },
        "imSessionState" => ConferenceItem::ImSessionState(xml::text(item).trim().to_string()),
        "participant" => ConferenceItem::Participant(Participant {
            uri: value(item, "uri").unwrap_or_default(),
            name: value(item, "name").unwrap_or_default(),
            role: value(item, "role").unwrap_or_default(),
        }),
        "participantRemoved" => ConferenceItem::ParticipantRemoved {
            uri: value(item, "uri").unwrap_or_else(|| xml::text(item).trim().to_string()),
        },
        "messageSendFailed" => ConferenceItem::MessageSendFailed {
            message_id: value(item, "messageId").unwrap_or_default(),
        },
        "inviteFailed" => ConferenceItem::InviteFailed {
            uri: value(item, "uri").unwrap_or_else(|| xml::text(item).trim().to_string()),
        },
        "messageIdReceived" => ConferenceItem::MessageIdReceived {
            rid: value(item, "rid").and_then(|v| v.trim().parse().ok()),
            message_id: value(item, "messageId").unwrap_or_default(),
        },
        other => ConferenceItem::Other(other.to_string()),
    }
}

fn message(m: &Element) -> ImMessage {
    ImMessage {
        format: xml::child_text(m, "format").unwrap_or_default(),
        content: xml::child_text(m, "content").unwrap_or_default(),
    }
}

fn categories(parent: &Element) -> Vec<Category> {
    xml::children(parent)
        .filter(|c| c.name == "cwaCategory")
        .map(|c| Category {
            name: attr_string(c, "name"),
            instance: xml::attr(c, "instance").map(str::to_string),
            availability: c
                .get_child("state")
                .and_then(|s| xml::child_text(s, "availability"))
                .and_then(|a| a.trim().parse().ok()),
            note: c
                .get_child("note")
                .map(|n| xml::child_text(n, "body").unwrap_or_default()),
            display_name: c
                .get_child("contactCard")
                .and_then(|cc| cc.get_child("identity"))
                .and_then(|i| i.get_child("name"))
                .and_then(|n| xml::child_text(n, "displayName"))
                .map(|d| d.trim().to_string()),
        })
        .collect()
}

/// An attribute, else the text of a child element of that name.
fn value(e: &Element, name: &str) -> Option<String> {
    xml::attr(e, name)
        .map(str::to_string)
        .or_else(|| xml::child_text(e, name))
}

fn attr_string(e: &Element, name: &str) -> String {
    xml::attr(e, name).unwrap_or_default().to_string()
}

fn num_attr(e: &Element, name: &str) -> Option<u64> {
    xml::attr(e, name).and_then(|v| v.trim().parse().ok())
}

fn bool_attr(e: &Element, name: &str) -> bool {
    xml::attr(e, name).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(doc: &str) -> ParsedEvents {
        parse_events(&crate::xml::parse(doc.as_bytes(), 1 << 20).unwrap())
    }

    /// A `userPresence` event captured from a live CWA 2007, shortened.
    #[test]
    fn real_user_presence_sample() {
        let doc = r#"<cwaEvents sid="2" pollWaitTime="3000" ackId="11"><userPresence eid="11">
    <user uri="sip:Kasturi_Rao@satyam.com" sourceNetwork="sameEnterprise">
      <cwaCategory name="calendarData" instance="1155267548" version="0" publishTime="2010-09-01T03:00:37Z">
        <calendarData xmlns="http://schemas.microsoft.com/2006/09/sip/calendarData" mailboxID="Kasturi_Rao@mahindrasatyam.com"><freeBusy startTime="2010-08-30T18:30:00Z" granularity="PT15M" encodingVersion="1">AAAA</freeBusy></calendarData>
      </cwaCategory>
      <cwaCategory name="contactCard" instance="0" version="0" publishTime="2010-06-08T15:32:20Z">
        <contactCard xmlns="http://schemas.microsoft.com/2006/09/sip/contactcard"><identity><name><displayName>
Kasturi_Rao</displayName></name><email>
Kasturi_Rao@mahindrasatyam.com</email></identity></contactCard>
      </cwaCategory>
      <cwaCategory name="note" />
      <cwaCategory name="state" instance="1" version="0" publishTime="2010-09-01T06:28:10Z">
        <state xsi:type="aggregateState" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>3500</availability></state>
      </cwaCategory>
      <cwaCategory name="services" />
    </user>
    <user uri="sip:Peter_Thomas@satyam.com" sourceNetwork="sameEnterprise">
      <cwaCategory name="calendarData" />
      <cwaCategory name="note" />
      <cwaCategory name="state" instance="0" version="0" publishTime="2010-08-23T10:25:09Z">
        <state xsi:type="aggregateState" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>18000</availability></state>
      </cwaCategory>
    </user>
</userPresence></cwaEvents>"#;
        let p = parse(doc);
        assert_eq!(p.ack_id, Some(11));
        assert_eq!(p.poll_wait_ms, Some(3000));
        assert_eq!(p.events.len(), 1);
        let (eid, Event::UserPresence { users }) = &p.events[0] else {
            panic!("{:?}", p.events[0]);
        };
        assert_eq!(*eid, Some(11));
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].uri, "sip:Kasturi_Rao@satyam.com");
        assert_eq!(users[0].availability(), Some(3500));
        assert_eq!(users[1].availability(), Some(18000));
        let card = users[0]
            .categories
            .iter()
            .find(|c| c.name == "contactCard")
            .unwrap();
        assert_eq!(card.display_name.as_deref(), Some("Kasturi_Rao"));
        assert_eq!(users[0].note(), None);
    }

    #[test]
    fn conference_items_requests_and_unknown_events() {
        let doc = r#"<cwaEvents ackId="23" pollWaitTime="1000" sessionTimeout="594">
  <conference eid="18" confId="4"><imSessionReceived><inviter uri="sip:bob@x" name="Bob"/><subject>s</subject><message><format>text/plain</format><content>hi &amp; bye</content></message></imSessionReceived></conference>
  <conference eid="19" confId="4"><messageReceived sender="sip:bob@x"><message><format>text/plain</format><content>second</content></message></messageReceived></conference>
  <conference eid="20" confId="4"><composingState>composing</composingState></conference>
  <conference eid="21" confId="4"><imSessionState>connected</imSessionState></conference>
  <conference eid="22" confId="4"><participant uri="sip:bob@x" name="Bob" role="attendee"/></conference>
  <conference eid="22" confId="4"><inviteFailed uri="sip:carol@x"/></conference>
  <conference eid="22" confId="4"><participantRemoved>sip:bob@x</participantRemoved></conference>
  <requestFailed eid="23" rid="9"><error code="18201" reason="Operation failed"><sipResponse code="480" reason="Temporarily Unavailable"/></error></requestFailed>
  <holographicCall eid="23"/>
</cwaEvents>"#;
        let p = parse(doc);
        assert_eq!(p.session_timeout, Some(594));
        let items: Vec<_> = p.events.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(
            items[0],
            Event::Conference {
                conf_id: "4".into(),
                item: ConferenceItem::ImSessionReceived {
                    inviter_uri: "sip:bob@x".into(),
                    inviter_name: "Bob".into(),
                    subject: Some("s".into()),
                    message: Some(ImMessage::plain("hi & bye")),
                }
            }
        );
        assert!(matches!(
            &items[1],
            Event::Conference { item: ConferenceItem::MessageReceived { sender, message }, .. }
                if sender == "sip:bob@x" && message.content == "second"
        ));
        assert!(matches!(
            &items[2],
            Event::Conference {
                item: ConferenceItem::ComposingState {
                    composing: true,
                    ..
                },
                ..
            }
        ));
        assert!(matches!(
            &items[3],
            Event::Conference { item: ConferenceItem::ImSessionState(s), .. } if s == "connected"
        ));
        assert!(matches!(
            &items[4],
            Event::Conference { item: ConferenceItem::Participant(p), .. } if p.role == "attendee"
        ));
        assert!(matches!(
            &items[5],
            Event::Conference { item: ConferenceItem::InviteFailed { uri }, .. } if uri == "sip:carol@x"
        ));
        assert!(matches!(
            &items[6],
            Event::Conference { item: ConferenceItem::ParticipantRemoved { uri }, .. } if uri == "sip:bob@x"
        ));
        let Event::RequestFailed { rid, error, .. } = &items[7] else {
            panic!("{:?}", items[7]);
        };
        assert_eq!(*rid, Some(9));
        assert_eq!(error.sip_code, Some(480));
        assert_eq!(items[8], Event::Unknown("holographicCall".into()));
    }

    #[test]
    fn contact_list_configuration_subscribers_and_search() {
        let doc = r#"<cwaEvents ackId="5">
  <contactGroup eid="1" fullList="true" deltaNum="1"><group id="~" name="Other Contacts"/><group id="2" name="Team"/><contact uri="sip:bob@x" name="Bob" subscribed="true" tag="false" groups="~ 2"/></contactGroup>
  <configuration eid="2"><imComposingTimers refreshInterval="3" timeout="60"/><userNotice>be nice</userNotice></configuration>
  <subscribers eid="3"><subscriber uri="sip:eve@x" displayName="Eve" acknowledged="false"/></subscribers>
  <searchResult eid="4" rid="6" moreAvailable="false"><user uri="sip:bob@x" displayName="Bob" title="Eng" company="X" emailAlias="bob"/></searchResult>
  <selfPresence eid="5"><cwaCategory name="note"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal">lunch</body></note></cwaCategory></selfPresence>
</cwaEvents>"#;
        let p = parse(doc);
        let Event::ContactGroup {
            full_list,
            groups,
            contacts,
            ..
        } = &p.events[0].1
        else {
            panic!()
        };
        assert!(full_list);
        assert_eq!(groups.len(), 2);
        assert_eq!(contacts[0].groups, vec!["~", "2"]);
        assert!(contacts[0].subscribed);
        let Event::Configuration(c) = &p.events[1].1 else {
            panic!()
        };
        assert_eq!(c.composing_refresh_interval, Some(3));
        assert_eq!(c.composing_timeout, Some(60));
        assert_eq!(c.user_notice.as_deref(), Some("be nice"));
        assert!(
            matches!(&p.events[2].1, Event::Subscribers { subscribers } if subscribers[0].uri == "sip:eve@x")
        );
        assert!(
            matches!(&p.events[3].1, Event::SearchResult { rid: Some(6), users, .. } if users[0].title == "Eng")
        );
        assert!(
            matches!(&p.events[4].1, Event::SelfPresence { categories } if categories[0].note.as_deref() == Some("lunch"))
        );
    }
    /// A whitespace-only message, subject or note is what the user sent:
    /// it reaches the device as sent, while layout white space between
    /// elements is not text.
    #[test]
    fn whitespace_only_texts_arrive_as_sent() {
        let doc = "<cwaEvents ackId=\"3\">\n  <conference eid=\"1\" confId=\"4\"><imSessionReceived><inviter uri=\"sip:bob@x\" name=\"Bob\"/><subject> </subject><message><format>text/plain</format><content>\t </content></message></imSessionReceived></conference>\n  <conference eid=\"2\" confId=\"4\">\n    <messageReceived sender=\"sip:bob@x\"><message><format>text/plain</format><content>   </content></message></messageReceived>\n  </conference>\n  <selfPresence eid=\"3\"><cwaCategory name=\"note\"><note><body>  </body></note></cwaCategory></selfPresence>\n</cwaEvents>";
        let p = parse(doc);
        assert_eq!(p.events.len(), 3, "{:?}", p.events);
        let Event::Conference {
            item:
                ConferenceItem::ImSessionReceived {
                    subject, message, ..
                },
            ..
        } = &p.events[0].1
        else {
            panic!("{:?}", p.events[0]);
        };
        assert_eq!(subject.as_deref(), Some(" "));
        assert_eq!(message.as_ref().map(|m| m.content.as_str()), Some("\t "));
        let Event::Conference {
            item: ConferenceItem::MessageReceived { message, .. },
            ..
        } = &p.events[1].1
        else {
            panic!("{:?}", p.events[1]);
        };
        assert_eq!(message.content, "   ");
        let Event::SelfPresence { categories } = &p.events[2].1 else {
            panic!("{:?}", p.events[2]);
        };
        assert_eq!(categories[0].note.as_deref(), Some("  "));
    }
}
