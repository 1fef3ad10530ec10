//! Where collab-device's output goes: records in script mode (with the
//! contact list assembled from its parts), prose otherwise.

use std::io::{self, Write};

use super::super::lineformat::{self, Line};
use crate::wire::{self, DeviceEvent, ServiceMessage, Status};

pub(super) fn status_record(word: &str, s: Status, text: &str) -> String {
    Line::new(word)
        .kv("code", &s.code().to_string())
        .kv("name", s.name())
        .kv("text", text)
        .done()
}

/// Where output goes: records in script mode, prose otherwise.
pub(super) struct Output {
    pub(super) script: bool,
    pub(super) stdout: io::Stdout,
    /// A lost link is reconnected and resumed, not the end (then the
    /// `lost` record waits until reconnecting gives up).
    pub(super) resumes: bool,
    /// The contact list as the events so far make it, for the record
    /// that says a list sent in parts is whole.
    pub(super) list: ListAssembly,
}

impl Output {
    pub(super) fn new(script: bool) -> Output {
        Output {
            script,
            stdout: io::stdout(),
            resumes: false,
            list: ListAssembly::default(),
        }
    }

    pub(super) fn put(&mut self, line: &str) {
        let mut lock = self.stdout.lock();
        // A closed stdout is not worth dying for; the exit code still tells.
        let _ = writeln!(lock, "{line}");
        let _ = lock.flush();
    }

    /// A script-mode record.
    pub(super) fn record(&mut self, line: String) {
        if self.script {
            self.put(&line);
        }
    }

    /// An interactive-mode line.
    pub(super) fn human(&mut self, line: &str) {
        if !self.script {
            self.put(line);
        }
    }

    /// A service message's records (script mode).
    pub(super) fn script_message(&mut self, m: &ServiceMessage) {
        for l in lineformat::service_lines(m) {
            self.put(&l);
        }
        if let ServiceMessage::Event {
            seq,
            event: DeviceEvent::ContactList(list),
        } = m
        {
            if let Some(whole) = self.list.apply(*seq, list) {
                self.put(&whole);
            }
        }
    }
}

/// The device's contact list as assembled from `contact-list` events: a
/// complete list replaces it, a delta changes it. When the last part of a
/// list sent in parts is in, [`ListAssembly::apply`] gives the
/// `contact-list whole` record (collab-device(1)).
#[derive(Default)]
pub(super) struct ListAssembly {
    pub(super) groups: std::collections::BTreeSet<String>,
    pub(super) contacts: std::collections::BTreeSet<String>,
}

impl ListAssembly {
    pub(super) fn apply(&mut self, seq: u64, list: &wire::ContactList) -> Option<String> {
        if list.complete {
            self.groups.clear();
            self.contacts.clear();
        }
        self.groups.extend(list.groups.iter().map(|g| g.id.clone()));
        self.contacts
            .extend(list.contacts.iter().map(|c| c.uri.clone()));
        for g in &list.removed_groups {
            self.groups.remove(g);
        }
        for u in &list.removed_contacts {
            self.contacts.remove(u);
        }
        let part = list.part?;
        (part.number == part.of).then(|| {
            Line::new("contact-list whole")
                .kv("seq", &seq.to_string())
                .kv("parts", &part.of.to_string())
                .kv("groups", &self.groups.len().to_string())
                .kv("contacts", &self.contacts.len().to_string())
                .done()
        })
    }
}
