//! Device commands: run against CWA and answered now or when their
//! asynchronous result arrives (matched by rid, with a small list for
//! results that come first), overdue outcomes answered, and the memory of
//! commands a resumed device sends again.

use std::time::Instant;

use crate::wire::{DeviceCommand, DeviceEvent, DeviceMessage, ServiceMessage, Status};

use crate::cwa::Outcome;

use super::super::translate;
use super::state::{lock, Early, Pending, PendingKind, SeenCommand};
use super::{Session, MAX_SEEN_COMMANDS};

/// Commands awaiting an asynchronous CWA result, per session.
const MAX_PENDING: usize = 64;
/// Results that arrived before their command was registered.
const MAX_EARLY: usize = 32;
/// Presence subscriptions remembered to restore after a new CWA sign-in.
const MAX_SUBSCRIPTIONS: usize = 200;

fn command_digest(id: u64, command: &DeviceCommand) -> [u8; 32] {
    let encoded = DeviceMessage::Command {
        id,
        command: command.clone(),
    }
    .encode();
    openssl::sha::sha256(&encoded)
}

impl Session {
    /// The asynchronous completion of request `rid`: to its command, or
    /// kept until the command thread registers it.
    pub(super) fn complete(&self, rid: u64, what: Early) {
        let pending = {
            let mut st = self.state();
            let known = match (&what, st.pending.get(&rid)) {
                (_, None) => false,
                // A search's requestSucceeded after its result: done.
                (Early::Result(_), Some(p)) if p.kind == PendingKind::Search => {
                    st.pending.remove(&rid);
                    return;
                }
                _ => true,
            };
            if !known {
                st.early.push_back((rid, what));
                while st.early.len() > MAX_EARLY {
                    st.early.pop_front();
                }
                return;
            }
            st.pending.remove(&rid)
        };
        if let Some(p) = pending {
            self.send_completion(p, what);
        }
    }

    pub(super) fn send_completion(&self, p: Pending, what: Early) {
        match (what, &p.kind) {
            (Early::Result(Ok(())), PendingKind::Invite { .. }) => {}
            (Early::Result(Err(reason)), PendingKind::Invite { conversation }) => {
                let event = DeviceEvent::DeliveryFailed {
                    conversation: conversation.clone(),
                    uri: None,
                    reason,
                };
                if let Err(reason) = self.deliver(vec![event]) {
                    self.ctx.table.end(self.id(), reason);
                }
            }
            (Early::Result(outcome), _) => {
                let (status, text) = match outcome {
                    Ok(()) => (Status::Ok, String::new()),
                    Err(why) => (Status::Failed, why),
                };
                self.answer(
                    p.link,
                    ServiceMessage::CommandResult {
                        id: p.command_id,
                        status,
                        text,
                        conversation: None,
                    },
                );
            }
            (Early::Search(entries), _) => self.query_presence(p.command_id, entries),
        }
    }

    /// Run one device command against CWA and answer it (now, or when its
    /// asynchronous result arrives).
    pub(super) fn command(&self, link_id: u64, command_id: u64, command: DeviceCommand) {
        if let Err(why) = translate::check_limits(&command) {
            let refused = ServiceMessage::CommandResult {
                id: command_id,
                status: Status::Failed,
                text: why,
                conversation: None,
            };
            self.answer(link_id, refused);
            return;
        }
        let cwa_command = translate::command(&command);
        if let DeviceCommand::SubscribePresence { uris } = &command {
            let mut st = self.state();
            for uri in uris {
                if st.subscriptions.len() < MAX_SUBSCRIPTIONS && !st.subscriptions.contains(uri) {
                    st.subscriptions.push(uri.clone());
                }
            }
        }
        let result = {
            let mut commands = lock(&self.commands);
            commands.note_user_activity();
            self.note_user_action(&mut commands, &command);
            commands.send(&cwa_command)
        };
        let fail = |status: Status, text: String| ServiceMessage::CommandResult {
            id: command_id,
            status,
            text,
            conversation: None,
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                let status = e.device_status();
                self.answer(link_id, fail(status, e.to_string()));
                return;
            }
        };
        if !reply.events.is_empty() {
            if let Err(reason) = self.handle_events(reply.events) {
                self.ctx.table.end(self.id(), reason);
                return;
            }
        }
        let ok = |conversation: Option<String>| ServiceMessage::CommandResult {
            id: command_id,
            status: Status::Ok,
            text: String::new(),
            conversation,
        };
        match reply.outcome {
            Outcome::Succeeded => self.answer(link_id, ok(None)),
            Outcome::ImSessionAccepted { conf_id } => self.answer(link_id, ok(Some(conf_id))),
            Outcome::Failed(e) => self.answer(link_id, fail(Status::Failed, e.to_string())),
            Outcome::Invalid(e) => self.answer(
                link_id,
                fail(Status::Failed, format!("CWA refused the request: {e}")),
            ),
            Outcome::Accepted => {
                let kind = match &command {
                    DeviceCommand::Search { .. } => PendingKind::Search,
                    DeviceCommand::Invite { conversation, .. } => PendingKind::Invite {
                        conversation: conversation.clone(),
                    },
                    _ => PendingKind::Result,
                };
                if kind != PendingKind::Result {
                    // A search: a command result, then the search-result
                    // event; an invitation: sent.
                    self.answer(link_id, ok(None));
                }
                let search = kind == PendingKind::Search;
                let pending = Pending {
                    link: link_id,
                    command_id,
                    kind,
                    accepted: Instant::now(),
                };
                let early = {
                    let mut st = self.state();
                    let found = st.early.iter().position(|(rid, _)| *rid == reply.rid);
                    match found {
                        Some(i) => st.early.remove(i).map(|(_, e)| e),
                        None => {
                            st.pending.insert(reply.rid, pending);
                            while st.pending.len() > MAX_PENDING {
                                st.pending.pop_first();
                            }
                            return;
                        }
                    }
                };
                if let Some(early) = early {
                    // For a search only its result matters (a later
                    // requestSucceeded finds nothing pending).
                    if !search || matches!(early, Early::Search(_)) {
                        self.send_completion(pending, early);
                    }
                }
            }
        }
    }

    /// Answers the commands whose CWA outcome is overdue
    /// (`command_timeout`): a plain command gets 306; a search, whose
    /// command result was already sent, gets no search-result. An outcome
    /// that arrives later finds nothing pending and is dropped.
    pub(super) fn expire_commands(&self) {
        let limit = self.ctx.timeouts.command_timeout;
        let overdue: Vec<Pending> = {
            let mut st = self.state();
            let rids: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| {
                    !matches!(p.kind, PendingKind::Invite { .. }) && p.accepted.elapsed() >= limit
                })
                .map(|(rid, _)| *rid)
                .collect();
            rids.iter()
                .filter_map(|rid| st.pending.remove(rid))
                .collect()
        };
        self.expire_presence_queries(limit);
        for p in overdue {
            log::info!(
                "{self:?}: no CWA outcome for command {} within {} ms",
                p.command_id,
                limit.as_millis()
            );
            if p.kind == PendingKind::Result {
                self.answer(
                    p.link,
                    ServiceMessage::CommandResult {
                        id: p.command_id,
                        status: Status::CwaUnavailable,
                        text: format!("no outcome from CWA within {} ms", limit.as_millis()),
                        conversation: None,
                    },
                );
            }
        }
    }

    /// Whether command `id` on link `link_id` is one an earlier link
    /// already brought (a device that resumed sends again what got no
    /// result): then it is not run again, and its result, if there is one
    /// yet, goes to this link now, else when it comes. A new command is
    /// remembered.
    pub(super) fn sent_again(&self, link_id: u64, id: u64, command: &DeviceCommand) -> bool {
        let digest = command_digest(id, command);
        let result = {
            let mut st = self.state();
            let earlier = st
                .seen
                .iter_mut()
                .rev()
                .find(|s| s.id == id && s.digest == digest && s.origin != link_id);
            match earlier {
                Some(seen) => {
                    seen.to = link_id;
                    seen.result.clone()
                }
                None => {
                    st.seen.push_back(SeenCommand {
                        id,
                        digest,
                        origin: link_id,
                        to: link_id,
                        result: None,
                    });
                    while st.seen.len() > MAX_SEEN_COMMANDS {
                        st.seen.pop_front();
                    }
                    return false;
                }
            }
        };
        log::info!("{self:?}: command {id} sent again on link {link_id}; not run twice");
        if let Some(result) = result {
            let link = self.state().link.clone().filter(|l| l.id == link_id);
            if let Some(link) = link {
                if let Err(e) = link.send_message(&result) {
                    log::info!("{self:?}: cannot write to the device: {e}");
                    self.drop_link(link.id, true);
                }
            }
        }
        true
    }
}
