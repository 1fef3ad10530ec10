//! Encoding: the messages of the device protocol as XML elements and as
//! the UTF-8 bytes of a `Data` frame's payload. Free text goes in child
//! elements, everything else in attributes; characters XML 1.0 cannot
//! carry become U+FFFD (the text rules of collab-protocol(7)).

use xmltree::Element;

use super::{DeviceCommand, DeviceEvent, DeviceMessage, ServiceMessage};
use crate::wire::access::AccessLevel;
use crate::wire::status::Status;
use crate::xml;

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
