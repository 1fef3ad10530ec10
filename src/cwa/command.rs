//! Typed CWA commands (the CWA request methods that the device protocol
//! needs; cwa-sim(1), COMMANDS, lists those the simulator answers)
//! and their XML. Each command becomes one method element of a
//! `cwaRequests` envelope, carrying the rid the command channel chose;
//! conference actions are wrapped in `<conference rid confId>`. Text is
//! always escaped by `xmltree`.

use xmltree::Element;

use super::access::ContainerMember;
use crate::xml::{elem, text_elem, with_child};

/// The SIP namespace of the `state` category.
const STATE_NS: &str = "http://schemas.microsoft.com/2006/09/sip/state";
/// The SIP namespace of the `note` category.
const NOTE_NS: &str = "http://schemas.microsoft.com/2006/09/sip/note";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// The instance mask of the user-state category: by analogy with
/// machineState's 0x30000000, an assumption unverified on a real server.
pub(crate) const USER_STATE_INSTANCE_MASK: &str = "536870912";

/// A message of an IM conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImMessage {
    /// `text/plain`, or an `X-MMS-IM-Format: …` header.
    pub format: String,
    /// The message text.
    pub content: String,
}

impl ImMessage {
    /// A `text/plain` message.
    pub fn plain(content: &str) -> ImMessage {
        ImMessage {
            format: "text/plain".to_string(),
            content: content.to_string(),
        }
    }
}

/// A contact for `addContact` / `updateContact`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContactSpec {
    /// `sip:` URI.
    pub uri: String,
    /// Display name.
    pub name: String,
    /// A permanent presence subscription.
    pub subscribed: bool,
    /// Tagged for status-change alerts.
    pub tag: bool,
    /// Group ids the contact belongs to.
    pub groups: Vec<String>,
}

/// A directory search (CWA's `search` method). Empty fields are left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchQuery {
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// Display name.
    pub display_name: String,
    /// E-mail alias.
    pub email_alias: String,
    /// Combine the fields with AND (default: OR).
    pub match_all: bool,
}

/// One CWA request method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `publishSelfPresence`: user state (availability, e.g. 3500 online,
    /// 6500 busy, 9500 DND, 12500 BRB, 15500 away) and, when given, the
    /// personal note (an empty note clears it).
    PublishPresence {
        /// Availability value.
        availability: u32,
        /// Personal note.
        note: Option<String>,
    },
    /// `subscribePresence`: `userPresence` events follow for these URIs.
    SubscribePresence {
        /// `sip:` URIs.
        uris: Vec<String>,
    },
    /// `unSubscribePresence`.
    UnsubscribePresence {
        /// `sip:` URIs.
        uris: Vec<String>,
    },
    /// `queryPresence`: one `userPresence` event answers.
    QueryPresence {
        /// `sip:` URIs.
        uris: Vec<String>,
    },
    /// `addContact`.
    AddContact(ContactSpec),
    /// `updateContact`.
    UpdateContact(ContactSpec),
    /// `deleteContact`.
    DeleteContact {
        /// `sip:` URI.
        uri: String,
    },
    /// `addGroup`.
    AddGroup {
        /// Group name (unique).
        name: String,
        /// Optional external URI.
        external_uri: Option<String>,
    },
    /// `updateGroup` (rename).
    UpdateGroup {
        /// Group id.
        id: String,
        /// New name.
        name: String,
    },
    /// `deleteGroup` (never the default group, the one named `~`).
    DeleteGroup {
        /// Group id.
        id: String,
    },
    /// `acknowledgeSubscriber`.
    AcknowledgeSubscribers {
        /// Watchers' `sip:` URIs.
        uris: Vec<String>,
    },
    /// `search`; a `searchResult` event answers.
    Search(SearchQuery),
    /// `conference confId="0"` › `initiateImSession`; the reply carries
    /// the conversation's confId ([`crate::cwa::Outcome::ImSessionAccepted`]).
    InitiateImSession {
        /// Invitees' `sip:` URIs.
        uris: Vec<String>,
        /// The first message, if any.
        message: Option<ImMessage>,
        /// Subject, if any.
        subject: Option<String>,
    },
    /// `conference` › `sendMessage`.
    SendMessage {
        /// The conversation.
        conf_id: String,
        /// The message.
        message: ImMessage,
    },
    /// `conference` › `notifyComposing` (composing / idle).
    NotifyComposing {
        /// The conversation.
        conf_id: String,
        /// Typing (true) or idle.
        composing: bool,
    },
    /// `conference` › `acceptImSession`.
    AcceptImSession {
        /// The invitation's conversation.
        conf_id: String,
    },
    /// `conference` › `terminateImSession`: leave, or decline an invitation
    /// (CWA has no decline method; that this one declines is an assumption
    /// unverified on a real server).
    TerminateImSession {
        /// The conversation.
        conf_id: String,
    },
    /// `conference` › `inviteParticipants`.
    InviteParticipants {
        /// The conversation.
        conf_id: String,
        /// Invitees' `sip:` URIs.
        uris: Vec<String>,
    },
    /// `terminateSession` (sign-out).
    TerminateSession,
    /// `updateContainer` moving a member between containers: added to
    /// `add_to`, then deleted from each of `delete_from`. Adding first
    /// means a watcher never sees more than the old or the new level
    /// allows while the document is processed (OCS ranks containers, and
    /// a member of two has the higher).
    SetContainerMember {
        /// The entry.
        member: ContainerMember,
        /// The container it is added to (see [`crate::cwa::access`]).
        add_to: u32,
        /// The containers it is deleted from after the add.
        delete_from: Vec<u32>,
    },
    /// `acknowledgeSubscriber` for one watcher, then `addContact` for the
    /// same person, in one request document.
    AcknowledgeAndAddContact {
        /// The watcher's `sip:` URI.
        uri: String,
        /// The contact to add (its `uri` is the watcher's).
        contact: ContactSpec,
    },
}

/// What a command was, without its data: attached to the asynchronous
/// `requestSucceeded` / `requestFailed` events it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// `initiateSession`.
    InitiateSession,
    /// `publishSelfPresence`.
    PublishPresence,
    /// `subscribePresence`.
    SubscribePresence,
    /// `unSubscribePresence`.
    UnsubscribePresence,
    /// `queryPresence`.
    QueryPresence,
    /// `addContact`.
    AddContact,
    /// `updateContact`.
    UpdateContact,
    /// `deleteContact`.
    DeleteContact,
    /// `addGroup`.
    AddGroup,
    /// `updateGroup`.
    UpdateGroup,
    /// `deleteGroup`.
    DeleteGroup,
    /// `acknowledgeSubscriber`.
    AcknowledgeSubscribers,
    /// `search`.
    Search,
    /// `initiateImSession`.
    InitiateImSession,
    /// `sendMessage`.
    SendMessage,
    /// `notifyComposing`.
    NotifyComposing,
    /// `acceptImSession`.
    AcceptImSession,
    /// `terminateImSession`.
    TerminateImSession,
    /// `inviteParticipants`.
    InviteParticipants,
    /// `terminateSession`.
    TerminateSession,
    /// `updateContainer` (the add, then the deletes).
    SetContainerMember,
    /// `acknowledgeSubscriber` then `addContact`.
    AcknowledgeAndAddContact,
}

impl Command {
    /// What this command is.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::PublishPresence { .. } => CommandKind::PublishPresence,
            Command::SubscribePresence { .. } => CommandKind::SubscribePresence,
            Command::UnsubscribePresence { .. } => CommandKind::UnsubscribePresence,
            Command::QueryPresence { .. } => CommandKind::QueryPresence,
            Command::AddContact(_) => CommandKind::AddContact,
            Command::UpdateContact(_) => CommandKind::UpdateContact,
            Command::DeleteContact { .. } => CommandKind::DeleteContact,
            Command::AddGroup { .. } => CommandKind::AddGroup,
            Command::UpdateGroup { .. } => CommandKind::UpdateGroup,
            Command::DeleteGroup { .. } => CommandKind::DeleteGroup,
            Command::AcknowledgeSubscribers { .. } => CommandKind::AcknowledgeSubscribers,
            Command::Search(_) => CommandKind::Search,
            Command::InitiateImSession { .. } => CommandKind::InitiateImSession,
            Command::SendMessage { .. } => CommandKind::SendMessage,
            Command::NotifyComposing { .. } => CommandKind::NotifyComposing,
            Command::AcceptImSession { .. } => CommandKind::AcceptImSession,
            Command::TerminateImSession { .. } => CommandKind::TerminateImSession,
            Command::InviteParticipants { .. } => CommandKind::InviteParticipants,
            Command::TerminateSession => CommandKind::TerminateSession,
            Command::SetContainerMember { .. } => CommandKind::SetContainerMember,
            Command::AcknowledgeAndAddContact { .. } => CommandKind::AcknowledgeAndAddContact,
        }
    }

    /// Every method element this command sends, in order, with request id
    /// `rid` on the one whose outcome is the command's. The others (the
    /// `deleteMember`s after an `addMember`, the `acknowledgeSubscriber`
    /// before an `addContact`) carry the rids `rid.1`, `rid.2`, ...: CWA's
    /// rids are strings, and an outcome whose rid is no number matches no
    /// command, so theirs are not waited for. CWA processes the methods of
    /// one document in order.
    pub(crate) fn to_elements(&self, rid: u64) -> Vec<Element> {
        let aux = |n: usize| format!("{rid}.{n}");
        match self {
            Command::SetContainerMember {
                member,
                delete_from,
                ..
            } => std::iter::once(self.to_element(rid))
                .chain(
                    delete_from
                        .iter()
                        .enumerate()
                        .map(|(i, id)| update_container(&aux(i + 1), *id, member, false)),
                )
                .collect(),
            Command::AcknowledgeAndAddContact { uri, .. } => vec![
                with_child(
                    elem("acknowledgeSubscriber", &[("rid", &aux(1))]),
                    text_elem("uri", uri),
                ),
                self.to_element(rid),
            ],
            _ => vec![self.to_element(rid)],
        }
    }

    /// The method element for this command with request id `rid`.
    pub(crate) fn to_element(&self, rid: u64) -> Element {
        let rid = rid.to_string();
        let method = |name: &str| elem(name, &[("rid", &rid)]);
        match self {
            Command::PublishPresence { availability, note } => {
                let mut e = method("publishSelfPresence");
                e = with_child(e, state_category(*availability));
                if let Some(note) = note {
                    e = with_child(e, note_category(note));
                }
                e
            }
            Command::SubscribePresence { uris } => {
                with_child(method("subscribePresence"), uris_elem(uris))
            }
            Command::UnsubscribePresence { uris } => {
                with_child(method("unSubscribePresence"), uris_elem(uris))
            }
            Command::QueryPresence { uris } => with_child(method("queryPresence"), uris_elem(uris)),
            Command::AddContact(c) => with_child(method("addContact"), contact_elem(c)),
            Command::UpdateContact(c) => with_child(method("updateContact"), contact_elem(c)),
            Command::DeleteContact { uri } => {
                with_child(method("deleteContact"), text_elem("uri", uri))
            }
            Command::AddGroup { name, external_uri } => {
                let mut g = elem("group", &[("name", name)]);
                if let Some(x) = external_uri {
                    g.attributes.insert("externalUri".into(), x.clone());
                }
                with_child(method("addGroup"), g)
            }
            Command::UpdateGroup { id, name } => with_child(
                method("updateGroup"),
                elem("group", &[("id", id), ("name", name)]),
            ),
            Command::DeleteGroup { id } => {
                with_child(method("deleteGroup"), elem("group", &[("id", id)]))
            }
            Command::AcknowledgeSubscribers { uris } => {
                let mut e = method("acknowledgeSubscriber");
                for uri in uris {
                    e = with_child(e, text_elem("uri", uri));
                }
                e
            }
            Command::Search(q) => {
                let mut e = method("search");
                for (name, value) in [
                    ("firstName", &q.first_name),
                    ("lastName", &q.last_name),
                    ("displayName", &q.display_name),
                    ("emailAlias", &q.email_alias),
                ] {
                    if !value.is_empty() {
                        e = with_child(e, text_elem(name, value));
                    }
                }
                let function = if q.match_all { "and" } else { "or" };
                with_child(e, text_elem("function", function))
            }
            Command::InitiateImSession {
                uris,
                message,
                subject,
            } => {
                let mut action = with_child(Element::new("initiateImSession"), uris_elem(uris));
                if let Some(m) = message {
                    action = with_child(action, message_elem("message", m));
                }
                if let Some(s) = subject {
                    action = with_child(action, text_elem("subject", s));
                }
                conference(&rid, "0", action)
            }
            Command::SendMessage { conf_id, message } => {
                conference(&rid, conf_id, message_elem("sendMessage", message))
            }
            Command::NotifyComposing { conf_id, composing } => {
                let state = if *composing { "composing" } else { "idle" };
                conference(&rid, conf_id, text_elem("notifyComposing", state))
            }
            Command::AcceptImSession { conf_id } => {
                conference(&rid, conf_id, Element::new("acceptImSession"))
            }
            Command::TerminateImSession { conf_id } => {
                conference(&rid, conf_id, Element::new("terminateImSession"))
            }
            Command::InviteParticipants { conf_id, uris } => conference(
                &rid,
                conf_id,
                with_child(Element::new("inviteParticipants"), uris_elem(uris)),
            ),
            Command::TerminateSession => method("terminateSession"),
            Command::SetContainerMember { member, add_to, .. } => {
                update_container(&rid, *add_to, member, true)
            }
            Command::AcknowledgeAndAddContact { contact, .. } => {
                with_child(method("addContact"), contact_elem(contact))
            }
        }
    }
}

/// A `cwaRequests` envelope in the CWA namespace holding `methods`; `sid`
/// is left out only for `logon`.
pub(crate) fn envelope(sid: Option<&str>, methods: Vec<Element>) -> Element {
    let mut e = elem("cwaRequests", &[("xmlns", crate::xml::CWA_NS)]);
    if let Some(sid) = sid {
        e.attributes.insert("sid".into(), sid.to_string());
    }
    for m in methods {
        e = with_child(e, m);
    }
    e
}

/// `<updateContainer rid><container id><addMember|deleteMember/></container></updateContainer>`.
fn update_container(rid: &str, id: u32, member: &ContainerMember, add: bool) -> Element {
    let container = with_child(
        elem("container", &[("id", &id.to_string())]),
        member.to_element(add),
    );
    with_child(elem("updateContainer", &[("rid", rid)]), container)
}

fn conference(rid: &str, conf_id: &str, action: Element) -> Element {
    with_child(
        elem("conference", &[("rid", rid), ("confId", conf_id)]),
        action,
    )
}

fn uris_elem(uris: &[String]) -> Element {
    let mut e = Element::new("uris");
    for uri in uris {
        e = with_child(e, text_elem("uri", uri));
    }
    e
}

fn message_elem(name: &str, m: &ImMessage) -> Element {
    with_child(
        with_child(Element::new(name), text_elem("format", &m.format)),
        text_elem("content", &m.content),
    )
}

fn contact_elem(c: &ContactSpec) -> Element {
    let groups = c.groups.join(" ");
    elem(
        "contact",
        &[
            ("uri", &c.uri),
            ("name", &c.name),
            ("subscribed", if c.subscribed { "true" } else { "false" }),
            ("tag", if c.tag { "true" } else { "false" }),
            ("groups", &groups),
        ],
    )
}

/// `cwaCategory name="state"` with a manual user state:
/// `xsi:type="userState" manual="true"`, instance mask 0x20000000 (an
/// assumption unverified on a real server, as for the mask above).
fn state_category(availability: u32) -> Element {
    let state = with_child(
        elem(
            "state",
            &[
                ("xmlns", STATE_NS),
                ("xmlns:xsi", XSI_NS),
                ("xsi:type", "userState"),
                ("manual", "true"),
            ],
        ),
        text_elem("availability", &availability.to_string()),
    );
    with_child(
        elem(
            "cwaCategory",
            &[
                ("name", "state"),
                ("instanceMask", USER_STATE_INSTANCE_MASK),
            ],
        ),
        state,
    )
}

/// `cwaCategory name="note" instanceMask="0" expires="-1"` with a personal
/// note (R2doc).
fn note_category(note: &str) -> Element {
    let body = with_child(elem("note", &[("xmlns", NOTE_NS)]), {
        let mut b = text_elem("body", note);
        b.attributes.insert("type".into(), "personal".into());
        b
    });
    with_child(
        elem(
            "cwaCategory",
            &[("name", "note"), ("instanceMask", "0"), ("expires", "-1")],
        ),
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    fn round_trip(cmd: &Command, rid: u64) -> Element {
        let s = xml::to_string(&cmd.to_element(rid));
        xml::parse(s.as_bytes(), 1 << 16).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn conference_actions_carry_rid_and_conf_id() {
        let e = round_trip(
            &Command::InitiateImSession {
                uris: vec!["sip:bob@example.com".into()],
                message: Some(ImMessage::plain("hi <b> & \"you\"")),
                subject: None,
            },
            7,
        );
        assert_eq!(e.name, "conference");
        assert_eq!(xml::attr(&e, "rid"), Some("7"));
        assert_eq!(xml::attr(&e, "confId"), Some("0"));
        let action = e.get_child("initiateImSession").unwrap();
        let uri = action.get_child("uris").unwrap().get_child("uri").unwrap();
        assert_eq!(xml::text(uri), "sip:bob@example.com");
        let msg = action.get_child("message").unwrap();
        assert_eq!(
            xml::child_text(msg, "format").as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            xml::child_text(msg, "content").as_deref(),
            Some("hi <b> & \"you\"")
        );

        let e = round_trip(
            &Command::NotifyComposing {
                conf_id: "12".into(),
                composing: true,
            },
            8,
        );
        assert_eq!(xml::attr(&e, "confId"), Some("12"));
        assert_eq!(
            xml::child_text(&e, "notifyComposing").as_deref(),
            Some("composing")
        );
    }

    #[test]
    fn presence_publishes_state_and_note_categories() {
        let cmd = Command::PublishPresence {
            availability: 6500,
            note: Some("in a <meeting>".into()),
        };
        let s = xml::to_string(&cmd.to_element(3));
        assert!(
            s.contains(r#"xmlns="http://schemas.microsoft.com/2006/09/sip/state""#),
            "{s}"
        );
        assert!(s.contains(r#"xsi:type="userState""#), "{s}");
        let e = xml::parse(s.as_bytes(), 1 << 16).unwrap();
        assert_eq!(e.name, "publishSelfPresence");
        let cats: Vec<_> = xml::children(&e).collect();
        assert_eq!(cats.len(), 2);
        assert_eq!(xml::attr(cats[0], "name"), Some("state"));
        let state = cats[0].get_child("state").unwrap();
        assert_eq!(
            xml::child_text(state, "availability").as_deref(),
            Some("6500")
        );
        assert_eq!(xml::attr(cats[1], "expires"), Some("-1"));
        let note = cats[1].get_child("note").unwrap();
        assert_eq!(
            xml::child_text(note, "body").as_deref(),
            Some("in a <meeting>")
        );
    }

    #[test]
    fn contacts_groups_and_search() {
        let e = round_trip(
            &Command::AddContact(ContactSpec {
                uri: "sip:c@x".into(),
                name: "C & D".into(),
                subscribed: true,
                tag: false,
                groups: vec!["1".into(), "2".into()],
            }),
            4,
        );
        let c = e.get_child("contact").unwrap();
        assert_eq!(xml::attr(c, "groups"), Some("1 2"));
        assert_eq!(xml::attr(c, "name"), Some("C & D"));
        assert_eq!(xml::attr(c, "subscribed"), Some("true"));

        let e = round_trip(&Command::DeleteGroup { id: "5".into() }, 5);
        assert_eq!(xml::attr(e.get_child("group").unwrap(), "id"), Some("5"));

        let e = round_trip(
            &Command::Search(SearchQuery {
                display_name: "Bob".into(),
                ..SearchQuery::default()
            }),
            6,
        );
        assert_eq!(xml::child_text(&e, "displayName").as_deref(), Some("Bob"));
        assert!(e.get_child("firstName").is_none());
        assert_eq!(xml::child_text(&e, "function").as_deref(), Some("or"));
    }

    #[test]
    fn moving_a_member_adds_with_the_command_rid_then_deletes() {
        use crate::cwa::access::{BLOCKED, PUBLIC, TEAM};
        let cmd = Command::SetContainerMember {
            member: ContainerMember::uri("sip:bob@x.com"),
            add_to: BLOCKED,
            delete_from: vec![PUBLIC, TEAM],
        };
        let doc: Vec<String> = cmd.to_elements(9).iter().map(xml::to_string).collect();
        assert_eq!(doc.len(), 3);
        assert!(doc[0].contains(r#"rid="9""#) && doc[0].contains(r#"id="32000""#));
        assert!(doc[0].contains("<addMember "));
        assert!(doc[1].contains(r#"rid="9.1""#) && doc[1].contains(r#"<container id="100">"#));
        assert!(doc[1].contains(r#"<deleteMember type="uri" value="sip:bob@x.com""#));
        assert!(doc[2].contains(r#"rid="9.2""#) && doc[2].contains(r#"id="300""#));
        let ack = Command::AcknowledgeAndAddContact {
            uri: "sip:a@x.com".into(),
            contact: ContactSpec {
                uri: "sip:a@x.com".into(),
                subscribed: true,
                ..ContactSpec::default()
            },
        };
        let doc: Vec<String> = ack.to_elements(4).iter().map(xml::to_string).collect();
        assert!(
            doc[0].starts_with(r#"<acknowledgeSubscriber rid="4.1"><uri>sip:a@x.com</uri>"#),
            "{doc:?}"
        );
        assert!(doc[1].starts_with(r#"<addContact rid="4">"#), "{doc:?}");
    }
}
