//! Translation between the device protocol and CWA: a [`DeviceCommand`]
//! becomes a [`cwa::Command`], and a [`cwa::Event`] becomes what the device
//! must see: zero or more [`DeviceEvent`]s, or the asynchronous result of
//! an earlier command.
//!
//! Conversation ids on the device link are CWA's confIds, as strings:
//! a `start-conversation` is `initiateImSession` (confId 0 on the wire)
//! and the confId CWA assigns goes back in the command result. Presence
//! availabilities map by CWA's bands ([`Availability::from_cwa`]); a search
//! term is matched against display names and e-mail aliases (CWA's OR).
//! CWA events the device protocol has no use for (configuration, message
//! ids, roles, escalation) are dropped here. Access levels and watchers
//! are translated in [`super::access`]; the session keeps the container
//! memberships a `containers` event is merged into.

use super::access;
use crate::cwa::{self, Category, Command, ConferenceItem, ContactSpec, Event, ImMessage};
use crate::wire::{
    Availability, Contact, ContactList, ConversationState, DeviceCommand, DeviceEvent, Group,
    Presence, SearchEntry,
};

/// The longest free text (message text, subject, note, name, search query)
/// a device command may carry, in UTF-8 bytes. Even escaped in the worst
/// way (`"` becomes `&quot;`) such a text keeps the CWA request and the
/// event that brings it to another device well inside their limits.
pub const MAX_TEXT_BYTES: usize = 8192;
/// The longest identifier (SIP URI, conversation or group id) in a device
/// command, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// The most URIs one command may name.
pub const MAX_URIS: usize = 100;
/// The largest CWA request body collabd sends for one device command
/// (the command's XML, before its small envelope); a command that would
/// need more is refused like one over the per-field limits.
pub const MAX_CWA_COMMAND_BYTES: usize = 60 * 1024;

/// Checks a device command against the relay limits above. `Err` says which
/// limit the command breaks; the session answers it with a command result
/// of status 300 and sends nothing to CWA, whatever CWA's own limits are.
pub fn check_limits(cmd: &DeviceCommand) -> Result<(), String> {
    let text = |what: &str, value: &str| {
        if value.len() > MAX_TEXT_BYTES {
            Err(format!(
                "{what} of {} bytes is over the limit of {MAX_TEXT_BYTES} bytes",
                value.len()
            ))
        } else {
            Ok(())
        }
    };
    let id = |what: &str, value: &str| {
        if value.len() > MAX_ID_BYTES {
            Err(format!(
                "{what} of {} bytes is over the limit of {MAX_ID_BYTES} bytes",
                value.len()
            ))
        } else {
            Ok(())
        }
    };
    let uris = |list: &[String]| {
        if list.len() > MAX_URIS {
            return Err(format!(
                "{} URIs in one command, over the limit of {MAX_URIS}",
                list.len()
            ));
        }
        list.iter().try_for_each(|u| id("URI", u))
    };
    match cmd {
        DeviceCommand::SetPresence { note, .. } => note.iter().try_for_each(|n| text("note", n))?,
        DeviceCommand::AddContact { uri, name, group } => {
            id("URI", uri)?;
            name.iter().try_for_each(|n| text("name", n))?;
            group.iter().try_for_each(|g| id("group id", g))?;
        }
        DeviceCommand::RemoveContact { uri } => id("URI", uri)?,
        DeviceCommand::AddGroup { name } => text("name", name)?,
        DeviceCommand::RenameGroup { group, name } => {
            id("group id", group)?;
            text("name", name)?;
        }
        DeviceCommand::RemoveGroup { group } => id("group id", group)?,
        DeviceCommand::Search { query } => text("query", query)?,
        DeviceCommand::StartConversation {
            to,
            subject,
            text: first,
        } => {
            uris(to)?;
            subject.iter().try_for_each(|s| text("subject", s))?;
            first.iter().try_for_each(|t| text("message text", t))?;
        }
        DeviceCommand::Send {
            conversation,
            text: body,
        } => {
            id("conversation id", conversation)?;
            text("message text", body)?;
        }
        DeviceCommand::Typing { conversation, .. }
        | DeviceCommand::Accept { conversation }
        | DeviceCommand::Leave { conversation } => id("conversation id", conversation)?,
        DeviceCommand::Invite {
            conversation,
            uris: list,
        } => {
            id("conversation id", conversation)?;
            uris(list)?;
        }
        DeviceCommand::SubscribePresence { uris: list } => uris(list)?,
        DeviceCommand::SetAccess { uri, .. } => id("URI", uri)?,
        DeviceCommand::AcknowledgeWatcher {
            uri, name, group, ..
        } => {
            id("URI", uri)?;
            name.iter().try_for_each(|n| text("name", n))?;
            group.iter().try_for_each(|g| id("group id", g))?;
        }
    }
    let request: usize = command(cmd)
        .to_elements(0)
        .iter()
        .map(|e| crate::xml::to_string(e).len())
        .sum();
    if request > MAX_CWA_COMMAND_BYTES {
        return Err(format!(
            "the CWA request would be {request} bytes, over the limit of {MAX_CWA_COMMAND_BYTES}"
        ));
    }
    Ok(())
}

/// The CWA command for a device command.
pub fn command(cmd: &DeviceCommand) -> Command {
    match cmd {
        DeviceCommand::SetPresence { availability, note } => Command::PublishPresence {
            availability: availability.code(),
            note: note.clone(),
        },
        DeviceCommand::AddContact { uri, name, group } => Command::AddContact(ContactSpec {
            uri: uri.clone(),
            name: name.clone().unwrap_or_default(),
            subscribed: true,
            tag: false,
            groups: group.iter().cloned().collect(),
        }),
        DeviceCommand::RemoveContact { uri } => Command::DeleteContact { uri: uri.clone() },
        DeviceCommand::AddGroup { name } => Command::AddGroup {
            name: name.clone(),
            external_uri: None,
        },
        DeviceCommand::RenameGroup { group, name } => Command::UpdateGroup {
            id: group.clone(),
            name: name.clone(),
        },
        DeviceCommand::RemoveGroup { group } => Command::DeleteGroup { id: group.clone() },
        DeviceCommand::Search { query } => Command::Search(cwa::SearchQuery {
            display_name: query.clone(),
            email_alias: query.clone(),
            ..cwa::SearchQuery::default()
        }),
        DeviceCommand::StartConversation { to, subject, text } => Command::InitiateImSession {
            uris: to.clone(),
            message: text.as_deref().map(ImMessage::plain),
            subject: subject.clone(),
        },
        DeviceCommand::Send { conversation, text } => Command::SendMessage {
            conf_id: conversation.clone(),
            message: ImMessage::plain(text),
        },
        DeviceCommand::Typing {
            conversation,
            composing,
        } => Command::NotifyComposing {
            conf_id: conversation.clone(),
            composing: *composing,
        },
        DeviceCommand::Accept { conversation } => Command::AcceptImSession {
            conf_id: conversation.clone(),
        },
        DeviceCommand::Leave { conversation } => Command::TerminateImSession {
            conf_id: conversation.clone(),
        },
        DeviceCommand::Invite { conversation, uris } => Command::InviteParticipants {
            conf_id: conversation.clone(),
            uris: uris.clone(),
        },
        DeviceCommand::SubscribePresence { uris } => {
            Command::SubscribePresence { uris: uris.clone() }
        }
        DeviceCommand::SetAccess { uri, level } => access::set_access_command(uri, *level),
        DeviceCommand::AcknowledgeWatcher {
            uri,
            add_contact,
            name,
            group,
        } => access::acknowledge_command(uri, *add_contact, name.as_deref(), group.as_deref()),
    }
}

/// What a CWA event means for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// Events to deliver, in order (possibly none).
    Events(Vec<DeviceEvent>),
    /// The asynchronous outcome of the request with this rid:
    /// `Ok(())` succeeded, `Err(text)` failed.
    Result {
        /// The CWA request id.
        rid: u64,
        /// Succeeded, or why not.
        outcome: Result<(), String>,
    },
    /// Search results for the request with this rid; the device event
    /// carries the device's command id, which only the session knows.
    SearchResult {
        /// The CWA request id of the search.
        rid: Option<u64>,
        /// The hits.
        entries: Vec<SearchEntry>,
    },
}

/// A text from CWA cut to [`MAX_TEXT_BYTES`] on a character boundary, so
/// the event that carries it always fits a frame (other clients of CWA
/// may send longer texts than a device may).
fn cut_text(mut s: String) -> String {
    if s.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn none_if_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn availability_of(categories: &[Category]) -> Option<u32> {
    categories.iter().find_map(|c| c.availability)
}

fn note_of(categories: &[Category]) -> Option<String> {
    categories.iter().find_map(|c| c.note.clone()).map(cut_text)
}

/// The device's view of a CWA event.
pub fn event(e: Event) -> Translated {
    let events = match e {
        Event::RequestSucceeded { rid: Some(rid), .. } => {
            return Translated::Result {
                rid,
                outcome: Ok(()),
            }
        }
        Event::RequestFailed {
            rid: Some(rid),
            error,
            ..
        } => {
            return Translated::Result {
                rid,
                outcome: Err(error.to_string()),
            }
        }
        Event::SearchResult { rid, users, .. } => {
            return Translated::SearchResult {
                rid,
                entries: users
                    .into_iter()
                    .map(|u| SearchEntry {
                        uri: u.uri,
                        name: none_if_empty(&u.display_name),
                        title: none_if_empty(&u.title),
                        office: none_if_empty(&u.company),
                        phone: None,
                        email: none_if_empty(&u.email_alias),
                        // Filled in by the presence query that follows
                        // (CWA's search result carries none).
                        availability: None,
                    })
                    .collect(),
            };
        }
        Event::ContactGroup {
            full_list,
            groups,
            contacts,
            ..
        } => {
            let deleted = |a: &Option<String>| a.as_deref() == Some("deleted");
            let mut list = ContactList {
                complete: full_list,
                ..ContactList::default()
            };
            for g in groups {
                if deleted(&g.action) {
                    list.removed_groups.push(g.id);
                } else {
                    list.groups.push(Group {
                        id: g.id,
                        name: g.name,
                    });
                }
            }
            for c in contacts {
                if deleted(&c.action) {
                    list.removed_contacts.push(c.uri);
                } else {
                    list.contacts.push(Contact {
                        uri: c.uri,
                        name: none_if_empty(&c.name),
                        groups: c.groups,
                    });
                }
            }
            vec![DeviceEvent::ContactList(list)]
        }
        Event::SelfPresence { categories } => match availability_of(&categories) {
            Some(n) => vec![DeviceEvent::SelfPresence {
                availability: Availability::from_cwa(n),
                note: note_of(&categories),
            }],
            None => Vec::new(),
        },
        Event::UserPresence { users } => users
            .into_iter()
            .filter_map(|u| {
                let availability = Availability::from_cwa(u.availability()?);
                Some(DeviceEvent::Presence(Presence {
                    availability,
                    note: u.note().map(|n| cut_text(n.to_string())),
                    display_name: u.categories.iter().find_map(|c| c.display_name.clone()),
                    uri: u.uri,
                }))
            })
            .collect(),
        Event::Conference { conf_id, item } => conference(conf_id, item),
        Event::Subscribers { subscribers } => access::watchers_events(subscribers, cut_text),
        // Merged into the session's AccessBook before it gets here.
        Event::Containers { .. } => Vec::new(),
        Event::RequestSucceeded { rid: None, .. }
        | Event::RequestFailed { rid: None, .. }
        | Event::Configuration(_)
        | Event::Unknown(_) => Vec::new(),
    };
    Translated::Events(events)
}

fn conference(conversation: String, item: ConferenceItem) -> Vec<DeviceEvent> {
    let event = match item {
        ConferenceItem::ImSessionReceived {
            inviter_uri,
            subject,
            message,
            ..
        } => DeviceEvent::Invitation {
            conversation,
            from: inviter_uri,
            // CWA sends an empty <subject/> when the inviter gave none.
            subject: subject.filter(|s| !s.trim().is_empty()).map(cut_text),
            text: message.map(|m| cut_text(m.content)),
        },
        ConferenceItem::MessageReceived { sender, message } => DeviceEvent::Message {
            conversation,
            from: sender,
            text: cut_text(message.content),
        },
        ConferenceItem::ComposingState { uri, composing } => DeviceEvent::Typing {
            conversation,
            from: uri.unwrap_or_default(),
            composing,
        },
        ConferenceItem::ImSessionState(state) => match ConversationState::from_name(&state) {
            Some(state) => DeviceEvent::ConversationState {
                conversation,
                state,
            },
            None => return Vec::new(),
        },
        ConferenceItem::Participant(p) => DeviceEvent::Participants {
            conversation,
            joined: vec![p.uri],
            left: Vec::new(),
        },
        ConferenceItem::ParticipantRemoved { uri } => DeviceEvent::Participants {
            conversation,
            joined: Vec::new(),
            left: vec![uri],
        },
        ConferenceItem::MessageSendFailed { message_id } => DeviceEvent::DeliveryFailed {
            conversation,
            uri: None,
            reason: format!("message {message_id} could not be delivered"),
        },
        ConferenceItem::InviteFailed { uri } => DeviceEvent::DeliveryFailed {
            conversation,
            uri: Some(uri),
            reason: "the invitation could not be delivered".to_string(),
        },
        ConferenceItem::MessageIdReceived { .. } | ConferenceItem::Other(_) => return Vec::new(),
    };
    vec![event]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cwa::{ContactItem, GroupItem, UserPresence};

    #[test]
    fn commands_over_the_relay_limits_are_refused_before_cwa() {
        let send = |text: String| DeviceCommand::Send {
            conversation: "c1".into(),
            text,
        };
        assert!(check_limits(&send("x".repeat(MAX_TEXT_BYTES))).is_ok());
        let why = check_limits(&send("x".repeat(MAX_TEXT_BYTES + 1))).unwrap_err();
        assert!(why.contains("8192"), "{why}");
        // Multi-byte text counts bytes, not characters.
        assert!(check_limits(&send("é".repeat(MAX_TEXT_BYTES / 2 + 1))).is_err());
        let invite = |n: usize, len: usize| DeviceCommand::Invite {
            conversation: "c1".into(),
            uris: vec![format!("sip:{}@x", "u".repeat(len)); n],
        };
        assert!(check_limits(&invite(MAX_URIS, 10)).is_ok());
        assert!(check_limits(&invite(MAX_URIS + 1, 10)).is_err());
        assert!(check_limits(&invite(1, MAX_ID_BYTES)).is_err());
        // Within every per-field limit, but escaping makes the request too
        // big: 100 URIs of 1000 quotes each.
        let quoted = DeviceCommand::SubscribePresence {
            uris: vec!["\"".repeat(1000); MAX_URIS],
        };
        let why = check_limits(&quoted).unwrap_err();
        assert!(why.contains("CWA request"), "{why}");
    }

    #[test]
    fn long_texts_from_cwa_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let events = conference(
            "3".into(),
            ConferenceItem::MessageReceived {
                sender: "sip:bob@x".into(),
                message: ImMessage::plain(&long),
            },
        );
        let [DeviceEvent::Message { text, .. }] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(text.len(), MAX_TEXT_BYTES);
        assert!(long.starts_with(text.as_str()));
    }

    #[test]
    fn an_empty_cwa_subject_is_no_subject() {
        let invitation = |subject: Option<&str>| {
            conference(
                "3".into(),
                ConferenceItem::ImSessionReceived {
                    inviter_uri: "sip:alice@contoso.com".into(),
                    inviter_name: "Alice".into(),
                    subject: subject.map(str::to_string),
                    message: None,
                },
            )
        };
        let subject_of = |events: Vec<DeviceEvent>| match &events[..] {
            [DeviceEvent::Invitation { subject, .. }] => subject.clone(),
            other => panic!("not one invitation: {other:?}"),
        };
        assert_eq!(subject_of(invitation(Some(""))), None);
        assert_eq!(subject_of(invitation(Some("  "))), None);
        assert_eq!(subject_of(invitation(None)), None);
        assert_eq!(subject_of(invitation(Some("Lunch"))), Some("Lunch".into()));
    }

    #[test]
    fn commands_map_to_cwa_methods() {
        let c = command(&DeviceCommand::StartConversation {
            to: vec!["sip:bob@contoso.com".into()],
            subject: Some("Lunch".into()),
            text: Some("Now?".into()),
        });
        assert_eq!(
            c,
            Command::InitiateImSession {
                uris: vec!["sip:bob@contoso.com".into()],
                message: Some(ImMessage::plain("Now?")),
                subject: Some("Lunch".into()),
            }
        );
        assert_eq!(
            command(&DeviceCommand::SetPresence {
                availability: Availability::Busy,
                note: None
            }),
            Command::PublishPresence {
                availability: 6500,
                note: None
            }
        );
        assert_eq!(
            command(&DeviceCommand::Send {
                conversation: "7".into(),
                text: "hi".into()
            }),
            Command::SendMessage {
                conf_id: "7".into(),
                message: ImMessage::plain("hi")
            }
        );
    }

    #[test]
    fn contact_deltas_split_deletions_and_results_carry_the_rid() {
        let t = event(Event::ContactGroup {
            full_list: false,
            delta_num: Some(2),
            groups: vec![GroupItem {
                id: "3".into(),
                action: Some("deleted".into()),
                ..GroupItem::default()
            }],
            contacts: vec![ContactItem {
                uri: "sip:a@b.c".into(),
                name: "A".into(),
                groups: vec!["~".into()],
                action: Some("added".into()),
                ..ContactItem::default()
            }],
        });
        let Translated::Events(events) = t else {
            panic!("{t:?}")
        };
        let DeviceEvent::ContactList(list) = &events[0] else {
            panic!()
        };
        assert!(!list.complete);
        assert_eq!(list.removed_groups, vec!["3".to_string()]);
        assert_eq!(list.contacts[0].name.as_deref(), Some("A"));
        assert_eq!(
            event(Event::RequestSucceeded {
                rid: Some(9),
                kind: None
            }),
            Translated::Result {
                rid: 9,
                outcome: Ok(())
            }
        );
    }

    #[test]
    fn presence_without_availability_is_dropped_and_bands_map_to_names() {
        let t = event(Event::UserPresence {
            users: vec![
                UserPresence {
                    uri: "sip:a@b.c".into(),
                    categories: vec![Category {
                        name: "state".into(),
                        availability: Some(6500),
                        ..Category::default()
                    }],
                },
                UserPresence {
                    uri: "sip:x@b.c".into(),
                    categories: Vec::new(),
                },
            ],
        });
        let Translated::Events(events) = t else {
            panic!()
        };
        assert_eq!(events.len(), 1);
        assert!(matches!(
            &events[0],
            DeviceEvent::Presence(Presence {
                availability: Availability::Busy,
                ..
            })
        ));
    }
}
