//! Decoding: a `Data` frame's payload parsed into a message of the device
//! protocol, within the bounds collab-protocol(7) states (size, nesting,
//! element count, no DTD, UTF-8 only, one message per frame); whatever it
//! refuses comes back as a [`WireError`] saying why.

use xmltree::{Element, ParserConfig, XMLNode};

use super::{
    Availability, Contact, ContactList, ConversationState, Coverage, DeviceCommand, DeviceEvent,
    DeviceMessage, Group, ListPart, Presence, Resume, SearchEntry, ServiceMessage,
};
use crate::wire::access::{AccessEntry, AccessLevel, Watcher};
use crate::wire::channel::MAX_MESSAGE_LEN;
use crate::wire::secret::Secret;
use crate::wire::status::Status;
use crate::wire::WireError;
use crate::xml;

/// The deepest element nesting a message may have (ours go 4 deep).
pub const MAX_DEPTH: usize = 16;
/// The most elements one message may hold. A frame's 65504 deflated bytes
/// carry a few thousand contacts at most; the bound keeps a small deflate
/// bomb of `<a/>`s from building a tree of millions of elements.
pub const MAX_ELEMENTS: usize = 20_000;

impl DeviceMessage {
    /// Parses a payload.
    pub fn decode(bytes: &[u8]) -> Result<DeviceMessage, WireError> {
        parse_device(&parse_document(bytes)?)
    }
}

impl ServiceMessage {
    /// Parses a payload.
    pub fn decode(bytes: &[u8]) -> Result<ServiceMessage, WireError> {
        parse_service(&parse_document(bytes)?)
    }
}

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
