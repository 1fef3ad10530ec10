//! The interactive line UI: typed lines to commands, and messages to
//! lines for a person, with what it remembers of contacts and
//! conversations.

use std::collections::BTreeMap;

use super::super::{DeviceClient, DeviceError};
use super::output::Output;
use crate::wire::{
    self, Availability, Coverage, DeviceCommand, DeviceEvent, ServiceMessage, Status,
};

/// The interactive UI's memory: contacts with presence, conversations, and
/// which conversation plain text goes to.
#[derive(Default)]
pub(super) struct Interactive {
    contacts: BTreeMap<String, (Option<String>, Option<String>)>,
    presence: BTreeMap<String, (Availability, Option<String>)>,
    conversations: BTreeMap<String, String>,
    current: Option<String>,
    pending_start: BTreeMap<u64, String>,
    /// People's own access levels, and the level of everyone else.
    levels: BTreeMap<String, wire::AccessLevel>,
    default_level: Option<wire::AccessLevel>,
    /// Watchers: name and whether acknowledged.
    watchers: BTreeMap<String, (Option<String>, bool)>,
}

pub(super) const HELP: &str = "\
commands:
  /contacts                     contacts, their presence and access level
  /convs                        open conversations
  /msg URI TEXT                 start a conversation with URI
  /send CONV TEXT               send to a conversation
  /to CONV                      plain lines go to CONV from now on
  TEXT                          send to the current conversation
  /accept CONV  /leave CONV  /invite CONV URI
  /status AVAIL [NOTE]          online busy dnd brb away offline
  /coverage in-coverage|dormant|active
  /add URI [NAME]  /remove URI  /search TEXT  /watch URI
  /access [URI LEVEL]           access levels; set URI's to blocked public
                                company team or personal
  /watchers                     people who added you
  /allow URI                    acknowledge a watcher
  /addback URI [NAME]           acknowledge a watcher and add them
  /quit                         sign out";

impl Interactive {
    pub(super) fn name_of(&self, uri: &str) -> String {
        match self.contacts.get(uri) {
            Some((Some(name), _)) if !name.is_empty() => format!("{name} <{uri}>"),
            _ => uri.to_string(),
        }
    }

    /// Runs one typed line; true means sign out. Err: a write to the
    /// service failed.
    pub(super) fn line(
        &mut self,
        client: &mut DeviceClient,
        line: &str,
        out: &mut Output,
    ) -> Result<bool, DeviceError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(false);
        }
        let (cmd, rest) = match line.strip_prefix('/') {
            Some(l) => l.split_once(' ').map_or((l, ""), |(c, r)| (c, r.trim())),
            None => ("", line),
        };
        let (first, tail) = rest
            .split_once(' ')
            .map_or((rest, ""), |(a, b)| (a, b.trim()));
        let command = match cmd {
            "" => match &self.current {
                Some(c) => Some(DeviceCommand::Send {
                    conversation: c.clone(),
                    text: rest.to_string(),
                }),
                None => {
                    out.human("no current conversation: /msg URI TEXT or /to CONV");
                    None
                }
            },
            "quit" | "logout" => return Ok(true),
            "help" => {
                out.human(HELP);
                None
            }
            "contacts" => {
                for (uri, _) in self.contacts.iter() {
                    let p = match self.presence.get(uri) {
                        Some((a, Some(n))) if !n.is_empty() => format!("{} ({n})", a.to_wire()),
                        Some((a, _)) => a.to_wire(),
                        None => "unknown".into(),
                    };
                    // The access list carries URIs in lower case.
                    let level = self
                        .levels
                        .get(&uri.to_ascii_lowercase())
                        .or(self.default_level.as_ref())
                        .map_or(String::new(), |l| format!("  [{}]", l.name()));
                    out.human(&format!("  {:<40} {p}{level}", self.name_of(uri)));
                }
                None
            }
            "convs" => {
                for (c, who) in &self.conversations {
                    let mark = if self.current.as_deref() == Some(c) {
                        "*"
                    } else {
                        " "
                    };
                    out.human(&format!(" {mark}{c}  {who}"));
                }
                None
            }
            "to" => {
                self.current = Some(first.to_string());
                None
            }
            "msg" if !first.is_empty() => Some(DeviceCommand::StartConversation {
                to: vec![first.to_string()],
                subject: None,
                text: (!tail.is_empty()).then(|| tail.to_string()),
            }),
            "send" if !first.is_empty() && !tail.is_empty() => Some(DeviceCommand::Send {
                conversation: first.to_string(),
                text: tail.to_string(),
            }),
            "accept" if !first.is_empty() => {
                self.current = Some(first.to_string());
                Some(DeviceCommand::Accept {
                    conversation: first.to_string(),
                })
            }
            "leave" if !first.is_empty() => Some(DeviceCommand::Leave {
                conversation: first.to_string(),
            }),
            "invite" if !first.is_empty() && !tail.is_empty() => Some(DeviceCommand::Invite {
                conversation: first.to_string(),
                uris: tail.split_whitespace().map(str::to_string).collect(),
            }),
            "status" => match Availability::from_wire(first) {
                Some(availability) => Some(DeviceCommand::SetPresence {
                    availability,
                    note: (!tail.is_empty()).then(|| tail.to_string()),
                }),
                None => {
                    out.human("availability: online busy dnd brb away offline, or a number");
                    None
                }
            },
            "coverage" => {
                match Coverage::from_name(first) {
                    Some(c) => client.send_status(c)?,
                    None => out.human("coverage: in-coverage dormant active"),
                }
                None
            }
            "add" if !first.is_empty() => Some(DeviceCommand::AddContact {
                uri: first.to_string(),
                name: (!tail.is_empty()).then(|| tail.to_string()),
                group: None,
            }),
            "remove" if !first.is_empty() => Some(DeviceCommand::RemoveContact {
                uri: first.to_string(),
            }),
            "search" if !rest.is_empty() => Some(DeviceCommand::Search {
                query: rest.to_string(),
            }),
            "watch" if !first.is_empty() => Some(DeviceCommand::SubscribePresence {
                uris: rest.split_whitespace().map(str::to_string).collect(),
            }),
            "access" if first.is_empty() => {
                let default = self
                    .default_level
                    .map_or("unknown", wire::AccessLevel::name);
                out.human(&format!("  everyone else: {default}"));
                for (uri, level) in &self.levels {
                    out.human(&format!("  {:<40} {}", self.name_of(uri), level.name()));
                }
                None
            }
            "access" => match wire::AccessLevel::from_name(tail) {
                Some(level) => Some(DeviceCommand::SetAccess {
                    uri: first.to_string(),
                    level,
                }),
                None => {
                    out.human("level: blocked public company team personal");
                    None
                }
            },
            "watchers" => {
                for (uri, (name, acknowledged)) in &self.watchers {
                    let who = match name {
                        Some(n) => format!("{n} <{uri}>"),
                        None => uri.clone(),
                    };
                    let mark = if *acknowledged {
                        ""
                    } else {
                        "  (new: /allow or /addback)"
                    };
                    out.human(&format!("  {who}{mark}"));
                }
                None
            }
            "allow" if !first.is_empty() => Some(DeviceCommand::AcknowledgeWatcher {
                uri: first.to_string(),
                add_contact: false,
                name: None,
                group: None,
            }),
            "addback" if !first.is_empty() => Some(DeviceCommand::AcknowledgeWatcher {
                uri: first.to_string(),
                add_contact: true,
                name: (!tail.is_empty())
                    .then(|| tail.to_string())
                    .or_else(|| self.watchers.get(first).and_then(|w| w.0.clone())),
                group: None,
            }),
            _ => {
                out.human("not understood; /help lists commands");
                None
            }
        };
        if let Some(c) = command {
            let start_to = match &c {
                DeviceCommand::StartConversation { to, .. } => Some(to.join(", ")),
                _ => None,
            };
            let id = client.send_command(c)?;
            if let Some(to) = start_to {
                self.pending_start.insert(id, to);
            }
        }
        Ok(false)
    }

    /// Lines to show for a message, updating the UI's memory.
    pub(super) fn show(&mut self, m: &ServiceMessage) -> Vec<String> {
        match m {
            ServiceMessage::LoginResult { status, text, .. } => {
                vec![format!("login: {} ({text})", status.text())]
            }
            ServiceMessage::CommandResult {
                id,
                status,
                text,
                conversation,
            } => {
                let started = self.pending_start.remove(id);
                if let (Some(c), Some(to)) = (conversation, started) {
                    self.conversations.insert(c.clone(), to.clone());
                    self.current = Some(c.clone());
                    vec![format!("[{c}] conversation with {to}")]
                } else if *status != Status::Ok {
                    vec![format!(
                        "*** command {id} failed: {} ({text})",
                        status.text()
                    )]
                } else {
                    vec![]
                }
            }
            ServiceMessage::SessionEnded { reason, .. } => {
                vec![format!("*** session ended: {reason}")]
            }
            ServiceMessage::ServiceStopping => vec!["*** the service is stopping".into()],
            ServiceMessage::Event { event, .. } => self.show_event(event),
        }
    }

    pub(super) fn show_event(&mut self, e: &DeviceEvent) -> Vec<String> {
        match e {
            DeviceEvent::ContactList(list) => {
                if list.complete {
                    self.contacts.clear();
                }
                for c in &list.contacts {
                    self.contacts.insert(c.uri.clone(), (c.name.clone(), None));
                }
                for u in &list.removed_contacts {
                    self.contacts.remove(u);
                }
                // A list in parts is shown once it is whole.
                if list.part.is_some_and(|p| p.number < p.of) {
                    return vec![];
                }
                vec![format!(
                    "* contact list: {} contacts (/contacts)",
                    self.contacts.len()
                )]
            }
            DeviceEvent::Presence(p) => {
                if let Some(n) = &p.display_name {
                    let entry = self.contacts.entry(p.uri.clone()).or_insert((None, None));
                    if entry.0.is_none() {
                        entry.0 = Some(n.clone());
                    }
                }
                self.presence
                    .insert(p.uri.clone(), (p.availability, p.note.clone()));
                let note = p
                    .note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                vec![format!(
                    "* {} is {}{note}",
                    self.name_of(&p.uri),
                    p.availability.to_wire()
                )]
            }
            DeviceEvent::SelfPresence { availability, note } => {
                let note = note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                vec![format!("* you are {}{note}", availability.to_wire())]
            }
            DeviceEvent::Invitation {
                conversation,
                from,
                subject,
                text,
            } => {
                self.conversations
                    .insert(conversation.clone(), from.clone());
                let mut v = vec![format!(
                    "[{conversation}] {} invites you{} (/accept {conversation})",
                    self.name_of(from),
                    subject
                        .as_deref()
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                )];
                if let Some(t) = text {
                    v.push(format!("[{conversation}] {}: {t}", self.name_of(from)));
                }
                v
            }
            DeviceEvent::Message {
                conversation,
                from,
                text,
            } => vec![format!("[{conversation}] {}: {text}", self.name_of(from))],
            DeviceEvent::Typing {
                conversation,
                from,
                composing: true,
            } => vec![format!(
                "[{conversation}] {} is typing...",
                self.name_of(from)
            )],
            DeviceEvent::Typing { .. } => vec![],
            DeviceEvent::ConversationState {
                conversation,
                state,
            } => {
                if *state == wire::ConversationState::Terminated {
                    self.conversations.remove(conversation);
                    if self.current.as_deref() == Some(conversation) {
                        self.current = None;
                    }
                }
                vec![format!("[{conversation}] {}", state.name())]
            }
            DeviceEvent::Participants {
                conversation,
                joined,
                left,
            } => joined
                .iter()
                .map(|u| format!("[{conversation}] {} joined", self.name_of(u)))
                .chain(
                    left.iter()
                        .map(|u| format!("[{conversation}] {} left", self.name_of(u))),
                )
                .collect(),
            DeviceEvent::DeliveryFailed {
                conversation,
                reason,
                ..
            } => vec![format!("[{conversation}] *** not delivered: {reason}")],
            DeviceEvent::SearchResult { entries, .. } => {
                let mut v = vec![format!("* {} found", entries.len())];
                for en in entries {
                    let presence = en.availability.map(|a| a.to_wire());
                    v.push(format!(
                        "  {} {} ({})",
                        en.uri,
                        en.name.as_deref().unwrap_or(""),
                        presence.as_deref().unwrap_or("presence unknown")
                    ));
                }
                v
            }
            DeviceEvent::AccessLevels { default, entries } => {
                self.default_level = *default;
                self.levels = entries.iter().map(|a| (a.uri.clone(), a.level)).collect();
                vec![format!(
                    "* access levels: {} people with their own (/access)",
                    self.levels.len()
                )]
            }
            DeviceEvent::Watchers(watchers) => {
                let mut v = Vec::new();
                for w in watchers {
                    self.watchers
                        .insert(w.uri.clone(), (w.name.clone(), w.acknowledged));
                    if !w.acknowledged {
                        let who = match &w.name {
                            Some(n) => format!("{n} <{}>", w.uri),
                            None => w.uri.clone(),
                        };
                        v.push(format!(
                            "* {who} added you (/allow {0} or /addback {0})",
                            w.uri
                        ));
                    }
                }
                v
            }
        }
    }
}
