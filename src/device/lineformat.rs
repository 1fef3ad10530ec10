//! The line format of `collab-device --script` (documented in
//! collab-device(1)): one record per line, a word, then `key=value` fields
//! separated by single spaces, values escaped so that a record is always
//! exactly one line. Escapes: `\\` backslash, `\s` space, `\t` tab, `\n`
//! line feed, `\r` carriage return, `\xHH` any other control character.
//! Repeated keys carry lists. The same format is used for commands read
//! from standard input and for records written to standard output.

use std::fmt::Write as _;

use crate::wire::{
    AccessLevel, Availability, Coverage, DeviceCommand, DeviceEvent, ServiceMessage, Status,
};

/// Escapes a value so it holds no space, tab, line end or control byte.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' => out.push_str("\\s"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape`]; `None` for a malformed escape.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            's' => out.push(' '),
            't' => out.push('\t'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                if hex.len() != 2 {
                    return None;
                }
                out.push(char::from(u8::from_str_radix(&hex, 16).ok()?));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A parsed input line: the command word and its fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The first word.
    pub word: String,
    /// `key=value` fields, values unescaped.
    pub fields: Vec<(String, String)>,
}

impl Record {
    /// Parses a line. Empty lines and lines starting with `#` give `Ok(None)`.
    pub fn parse(line: &str) -> Result<Option<Record>, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            return Ok(None);
        }
        let mut words = line.split(' ').filter(|w| !w.is_empty());
        let word = words.next().unwrap_or_default().to_string();
        let mut fields = Vec::new();
        for w in words {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("field \"{w}\" is not key=value"))?;
            let v = unescape(v).ok_or_else(|| format!("bad escape in \"{w}\""))?;
            fields.push((k.to_string(), v));
        }
        Ok(Some(Record { word, fields }))
    }

    /// The single value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The required value of `key`.
    pub fn need(&self, key: &str) -> Result<String, String> {
        self.get(key)
            .map(str::to_string)
            .ok_or_else(|| format!("{} needs {key}=", self.word))
    }

    /// Every value of a repeated `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Refuses keys outside `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self
            .fields
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()))
        {
            Some((k, _)) => Err(format!("{} does not take {k}=", self.word)),
            None => Ok(()),
        }
    }
}

/// What one script line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptAction {
    /// Send a command.
    Command(DeviceCommand),
    /// Send a status report and keep reporting this coverage.
    Status(Coverage),
    /// Acknowledge events up to `seq`.
    Ack(u64),
    /// Sign out and exit.
    Logout,
}

/// Parses one script line into an action.
pub fn parse_action(r: &Record) -> Result<ScriptAction, String> {
    let nonempty = |v: Vec<String>, key: &str| {
        if v.is_empty() {
            Err(format!("{} needs at least one {key}=", r.word))
        } else {
            Ok(v)
        }
    };
    let cmd = |c| Ok(ScriptAction::Command(c));
    match r.word.as_str() {
        "status" => {
            r.only(&["coverage"])?;
            let v = r.need("coverage")?;
            Coverage::from_name(&v)
                .map(ScriptAction::Status)
                .ok_or_else(|| format!("unknown coverage {v}"))
        }
        "ack" => {
            r.only(&["seq"])?;
            r.need("seq")?
                .parse()
                .map(ScriptAction::Ack)
                .map_err(|_| "ack seq= must be a number".to_string())
        }
        "logout" => {
            r.only(&[])?;
            Ok(ScriptAction::Logout)
        }
        "presence" => {
            r.only(&["availability", "note"])?;
            let v = r.need("availability")?;
            cmd(DeviceCommand::SetPresence {
                availability: Availability::from_wire(&v)
                    .ok_or_else(|| format!("unknown availability {v}"))?,
                note: r.get("note").map(str::to_string),
            })
        }
        "add-contact" => {
            r.only(&["uri", "name", "group"])?;
            cmd(DeviceCommand::AddContact {
                uri: r.need("uri")?,
                name: r.get("name").map(str::to_string),
                group: r.get("group").map(str::to_string),
            })
        }
        "remove-contact" => {
            r.only(&["uri"])?;
            cmd(DeviceCommand::RemoveContact {
                uri: r.need("uri")?,
            })
        }
        "add-group" => {
            r.only(&["name"])?;
            cmd(DeviceCommand::AddGroup {
                name: r.need("name")?,
            })
        }
        "rename-group" => {
            r.only(&["group", "name"])?;
            cmd(DeviceCommand::RenameGroup {
                group: r.need("group")?,
                name: r.need("name")?,
            })
        }
        "remove-group" => {
            r.only(&["group"])?;
            cmd(DeviceCommand::RemoveGroup {
                group: r.need("group")?,
            })
        }
        "search" => {
            r.only(&["query"])?;
            cmd(DeviceCommand::Search {
                query: r.need("query")?,
            })
        }
        "start" => {
            r.only(&["to", "subject", "text"])?;
            cmd(DeviceCommand::StartConversation {
                to: nonempty(r.all("to"), "to")?,
                subject: r.get("subject").map(str::to_string),
                text: r.get("text").map(str::to_string),
            })
        }
        "send" => {
            r.only(&["conv", "text"])?;
            cmd(DeviceCommand::Send {
                conversation: r.need("conv")?,
                text: r.need("text")?,
            })
        }
        "typing" => {
            r.only(&["conv", "composing"])?;
            let composing = match r.need("composing")?.as_str() {
                "true" => true,
                "false" => false,
                v => return Err(format!("composing={v} is not true or false")),
            };
            cmd(DeviceCommand::Typing {
                conversation: r.need("conv")?,
                composing,
            })
        }
        "accept" => {
            r.only(&["conv"])?;
            cmd(DeviceCommand::Accept {
                conversation: r.need("conv")?,
            })
        }
        "leave" => {
            r.only(&["conv"])?;
            cmd(DeviceCommand::Leave {
                conversation: r.need("conv")?,
            })
        }
        "invite" => {
            r.only(&["conv", "to"])?;
            cmd(DeviceCommand::Invite {
                conversation: r.need("conv")?,
                uris: nonempty(r.all("to"), "to")?,
            })
        }
        "subscribe" => {
            r.only(&["uri"])?;
            cmd(DeviceCommand::SubscribePresence {
                uris: nonempty(r.all("uri"), "uri")?,
            })
        }
        "set-access" => {
            r.only(&["uri", "level"])?;
            let v = r.need("level")?;
            cmd(DeviceCommand::SetAccess {
                uri: r.need("uri")?,
                level: AccessLevel::from_name(&v).ok_or_else(|| {
                    format!("unknown level {v}: blocked public company team personal")
                })?,
            })
        }
        "acknowledge-watcher" => {
            r.only(&["uri", "add-contact", "name", "group"])?;
            let add_contact = match r.get("add-contact") {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => return Err(format!("add-contact={v} is not true or false")),
            };
            if !add_contact && (r.get("name").is_some() || r.get("group").is_some()) {
                return Err("name= and group= need add-contact=true".into());
            }
            cmd(DeviceCommand::AcknowledgeWatcher {
                uri: r.need("uri")?,
                add_contact,
                name: r.get("name").map(str::to_string),
                group: r.get("group").map(str::to_string),
            })
        }
        other => Err(format!("unknown command {other}")),
    }
}

/// Builds one output line: `word key=value ...`.
pub struct Line(String);

impl Line {
    /// Starts a line with `word` (one or more space-separated words, not
    /// escaped: they are fixed vocabulary).
    pub fn new(word: &str) -> Line {
        Line(word.to_string())
    }

    /// Adds `key=value` (value escaped).
    pub fn kv(mut self, key: &str, value: &str) -> Line {
        self.0.push(' ');
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&escape(value));
        self
    }

    /// Adds `key=value` when present.
    pub fn opt(self, key: &str, value: Option<&str>) -> Line {
        match value {
            Some(v) => self.kv(key, v),
            None => self,
        }
    }

    /// Adds `key=value` for each value.
    pub fn each(mut self, key: &str, values: &[String]) -> Line {
        for v in values {
            self = self.kv(key, v);
        }
        self
    }

    /// The finished line (no line end).
    pub fn done(self) -> String {
        self.0
    }
}

fn status_line(word: &str, status: Status, key: &str, text: &str) -> Line {
    Line::new(word)
        .kv("code", &status.code().to_string())
        .kv("name", status.name())
        .kv(key, text)
}

/// The output lines for one service message.
pub fn service_lines(m: &ServiceMessage) -> Vec<String> {
    match m {
        ServiceMessage::LoginResult {
            status: Status::Ok,
            text,
            session_id,
            sip_uri,
        } => vec![Line::new("login ok")
            .opt("session", session_id.as_deref())
            .opt("sip", sip_uri.as_deref())
            .kv("text", text)
            .done()],
        ServiceMessage::LoginResult { status, text, .. } => {
            vec![status_line("login refused", *status, "text", text).done()]
        }
        ServiceMessage::CommandResult {
            id,
            status,
            text,
            conversation,
        } => vec![Line::new("result")
            .kv("id", &id.to_string())
            .kv(
                "status",
                if *status == Status::Ok {
                    "ok"
                } else {
                    "failed"
                },
            )
            .kv("code", &status.code().to_string())
            .opt("conv", conversation.as_deref())
            .kv("text", text)
            .done()],
        ServiceMessage::SessionEnded { status, reason } => {
            vec![status_line("ended", *status, "reason", reason).done()]
        }
        ServiceMessage::ServiceStopping => vec![Line::new("stopping").done()],
        ServiceMessage::Event { seq, event } => event_lines(*seq, event),
    }
}

fn event_lines(seq: u64, e: &DeviceEvent) -> Vec<String> {
    let head = |name: &str| Line::new(&format!("event {name}")).kv("seq", &seq.to_string());
    let conv = |name: &str, c: &str| head(name).kv("conv", c);
    match e {
        DeviceEvent::ContactList(list) => {
            let mut out = vec![head("contact-list")
                .kv("complete", if list.complete { "true" } else { "false" })
                .kv("groups", &list.groups.len().to_string())
                .kv("contacts", &list.contacts.len().to_string())
                .kv("removed-groups", &list.removed_groups.len().to_string())
                .kv("removed-contacts", &list.removed_contacts.len().to_string())
                .opt("part", list.part.map(|p| p.number.to_string()).as_deref())
                .opt("parts", list.part.map(|p| p.of.to_string()).as_deref())
                .done()];
            for g in &list.groups {
                out.push(
                    head("contact-list-group")
                        .kv("id", &g.id)
                        .kv("name", &g.name)
                        .done(),
                );
            }
            for c in &list.contacts {
                out.push(
                    head("contact-list-contact")
                        .kv("uri", &c.uri)
                        .opt("name", c.name.as_deref())
                        .each("group", &c.groups)
                        .done(),
                );
            }
            for g in &list.removed_groups {
                out.push(head("contact-list-removed-group").kv("id", g).done());
            }
            for u in &list.removed_contacts {
                out.push(head("contact-list-removed-contact").kv("uri", u).done());
            }
            out
        }
        DeviceEvent::Presence(p) => vec![head("presence")
            .kv("uri", &p.uri)
            .kv("availability", &p.availability.to_wire())
            .opt("note", p.note.as_deref())
            .opt("name", p.display_name.as_deref())
            .done()],
        DeviceEvent::SelfPresence { availability, note } => vec![head("self-presence")
            .kv("availability", &availability.to_wire())
            .opt("note", note.as_deref())
            .done()],
        DeviceEvent::Invitation {
            conversation,
            from,
            subject,
            text,
        } => vec![conv("invitation", conversation)
            .kv("from", from)
            .opt("subject", subject.as_deref())
            .opt("text", text.as_deref())
            .done()],
        DeviceEvent::Message {
            conversation,
            from,
            text,
        } => vec![conv("message", conversation)
            .kv("from", from)
            .kv("text", text)
            .done()],
        DeviceEvent::Typing {
            conversation,
            from,
            composing,
        } => vec![conv("typing", conversation)
            .kv("from", from)
            .kv("composing", if *composing { "true" } else { "false" })
            .done()],
        DeviceEvent::ConversationState {
            conversation,
            state,
        } => {
            vec![conv("conversation-state", conversation)
                .kv("state", state.name())
                .done()]
        }
        DeviceEvent::Participants {
            conversation,
            joined,
            left,
        } => vec![conv("participants", conversation)
            .each("joined", joined)
            .each("left", left)
            .done()],
        DeviceEvent::DeliveryFailed {
            conversation,
            uri,
            reason,
        } => vec![conv("delivery-failed", conversation)
            .opt("uri", uri.as_deref())
            .kv("reason", reason)
            .done()],
        DeviceEvent::SearchResult { command, entries } => {
            let mut out = vec![head("search-result")
                .kv("command", &command.to_string())
                .kv("entries", &entries.len().to_string())
                .done()];
            for en in entries {
                out.push(
                    head("search-entry")
                        .kv("uri", &en.uri)
                        .opt("name", en.name.as_deref())
                        .opt("title", en.title.as_deref())
                        .opt("office", en.office.as_deref())
                        .opt("phone", en.phone.as_deref())
                        .opt("email", en.email.as_deref())
                        .opt(
                            "availability",
                            en.availability.map(|a| a.to_wire()).as_deref(),
                        )
                        .done(),
                );
            }
            out
        }
        DeviceEvent::AccessLevels { default, entries } => {
            let mut out = vec![head("access-levels")
                .opt("default", default.map(AccessLevel::name))
                .kv("entries", &entries.len().to_string())
                .done()];
            for a in entries {
                out.push(
                    head("access")
                        .kv("uri", &a.uri)
                        .kv("level", a.level.name())
                        .done(),
                );
            }
            out
        }
        DeviceEvent::Watchers(watchers) => {
            let mut out = vec![head("watchers")
                .kv("count", &watchers.len().to_string())
                .done()];
            for w in watchers {
                out.push(
                    head("watcher")
                        .kv("uri", &w.uri)
                        .opt("name", w.name.as_deref())
                        .kv(
                            "acknowledged",
                            if w.acknowledged { "true" } else { "false" },
                        )
                        .done(),
                );
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_stays_on_one_line() {
        for s in [
            "",
            "a b",
            "x\\sy",
            "tab\there\nnew\rcr",
            "\u{1}\u{7f}é☃",
            "k=v",
        ] {
            let e = escape(s);
            assert!(!e.contains([' ', '\n', '\r', '\t']), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("hello world"), "hello\\sworld");
        assert_eq!(unescape("bad\\q"), None);
        assert_eq!(unescape("bad\\x4"), None);
        assert_eq!(unescape("trailing\\"), None);
    }

    #[test]
    fn script_lines_parse_into_actions() {
        let r = Record::parse("start to=sip:a@x to=sip:b@x text=hi\\sthere\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            parse_action(&r).unwrap(),
            ScriptAction::Command(DeviceCommand::StartConversation {
                to: vec!["sip:a@x".into(), "sip:b@x".into()],
                subject: None,
                text: Some("hi there".into()),
            })
        );
        let r = Record::parse("status coverage=dormant").unwrap().unwrap();
        assert_eq!(
            parse_action(&r).unwrap(),
            ScriptAction::Status(Coverage::Dormant)
        );
        assert_eq!(Record::parse("  # comment").unwrap(), None);
        assert!(Record::parse("send conv").is_err());
        for bad in [
            "send conv=c1",
            "send conv=c1 text=x bogus=1",
            "fly",
            "status coverage=up",
            "ack seq=x",
            "start text=x",
        ] {
            let r = Record::parse(bad).unwrap().unwrap();
            assert!(parse_action(&r).is_err(), "{bad}");
        }
    }
}
