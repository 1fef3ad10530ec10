//! Presence upkeep hooks of a session (see [`super::super::upkeep`]):
//! auto-away, the presence carried to a new CWA sign-in, and searches
//! whose hits get their presence from a presence query.

use std::time::{Duration, Instant};

use crate::cwa::{CommandChannel, Outcome};
use crate::wire::{self, DeviceCommand, DeviceEvent};

use super::super::table::EndReason;
use super::super::upkeep::{PresenceQuery, AWAY, MAX_PRESENCE_QUERIES};
use super::state::{lock, Early};
use super::Session;

/// Presence upkeep (see [`super::super::upkeep`]): auto-away, and searches that
/// carry presence.
impl Session {
    /// A user action (a device command), with the command channel held:
    /// it restarts the away period and undoes an Away that collabd
    /// published, before the command itself goes to CWA.
    pub(super) fn note_user_action(&self, commands: &mut CommandChannel, command: &DeviceCommand) {
        let publishes = match command {
            DeviceCommand::SetPresence { availability, .. } => Some(availability.code()),
            _ => None,
        };
        let restore = lock(&self.upkeep).user_action(Instant::now(), publishes);
        if let Some(availability) = restore {
            log::info!("{self:?}: the user is back; publishing availability {availability} again");
            self.publish_upkeep(commands, availability, "restoring presence after Away");
        }
    }

    /// From the event loop, with the command channel held: Away for a
    /// device unused for the instance's away period. Checked each time
    /// the CWA event request returns, so it can come up to CWA's hold
    /// time after the period.
    pub(super) fn publish_away_if_due(&self, commands: &mut CommandChannel) {
        let due = lock(&self.upkeep).away_due(Instant::now(), self.ctx.away_after());
        if due {
            log::info!("{self:?}: device unused for the away period; publishing Away");
            self.publish_upkeep(commands, AWAY, "publishing Away");
        }
    }

    /// Publishes `availability` (the note stays as it is). Its outcome
    /// event matches no device command and is dropped.
    pub(super) fn publish_upkeep(
        &self,
        commands: &mut CommandChannel,
        availability: u32,
        what: &str,
    ) {
        let command = crate::cwa::Command::PublishPresence {
            availability,
            note: None,
        };
        match commands.send(&command) {
            Ok(reply) => match reply.outcome {
                Outcome::Failed(e) | Outcome::Invalid(e) => {
                    log::info!("{self:?}: {what}: CWA refused: {e}")
                }
                _ => {}
            },
            Err(e) => log::info!("{self:?}: {what}: {e}"),
        }
    }

    /// A search's hits: CWA's search result carries no presence, so ask
    /// for it (`queryPresence`); the search-result event goes to the
    /// device when the answer is in, or with presence unknown when the
    /// query fails or runs past the command timeout.
    pub(super) fn query_presence(&self, command: u64, entries: Vec<wire::SearchEntry>) {
        let (id, uris, evicted) = {
            let mut st = self.state();
            let id = st.next_query;
            st.next_query += 1;
            let query = PresenceQuery {
                id,
                rid: None,
                command,
                entries,
                sent: Instant::now(),
                answered: false,
            };
            let uris = query.uris();
            if uris.is_empty() {
                drop(st);
                self.deliver_search(query);
                return;
            }
            let evicted = (st.queries.len() >= MAX_PRESENCE_QUERIES).then(|| st.queries.remove(0));
            st.queries.push(query);
            (id, uris, evicted)
        };
        if let Some(old) = evicted {
            log::info!(
                "{self:?}: too many presence queries; search {} answered without",
                old.command
            );
            self.deliver_search(old);
        }
        let result = lock(&self.commands).send(&crate::cwa::Command::QueryPresence { uris });
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                log::info!("{self:?}: presence query for search {command}: {e}");
                self.finish_query(|q| q.id == id);
                return;
            }
        };
        if !reply.events.is_empty() {
            if let Err(reason) = self.handle_events(reply.events) {
                self.ctx.table.end(self.id(), reason);
                return;
            }
        }
        match reply.outcome {
            Outcome::Accepted => {
                // Its outcome may have come before the rid was known.
                let early = {
                    let mut st = self.state();
                    if let Some(q) = st.queries.iter_mut().find(|q| q.id == id) {
                        q.rid = Some(reply.rid);
                    }
                    let found = st.early.iter().position(|(rid, _)| *rid == reply.rid);
                    found.and_then(|i| st.early.remove(i))
                };
                if let Some((rid, Early::Result(outcome))) = early {
                    if let Err(reason) = self.finish_presence_query(rid, &outcome) {
                        self.ctx.table.end(self.id(), reason);
                    }
                }
            }
            Outcome::Succeeded => self.finish_query(|q| q.id == id),
            Outcome::Failed(e) | Outcome::Invalid(e) => {
                log::info!("{self:?}: presence query for search {command}: CWA refused: {e}");
                self.finish_query(|q| q.id == id);
            }
            Outcome::ImSessionAccepted { .. } => self.finish_query(|q| q.id == id),
        }
    }

    /// Takes a `userPresence` event that answers a waiting presence query
    /// into it. Returns false if it answers none (an ordinary presence
    /// update).
    pub(super) fn answer_presence_query(&self, users: &[crate::cwa::UserPresence]) -> bool {
        let mut st = self.state();
        if st.queries.is_empty() {
            return false;
        }
        let uris: Vec<String> = users.iter().map(|u| u.uri.clone()).collect();
        let Some(q) = st
            .queries
            .iter_mut()
            .find(|q| !q.answered && q.is_answered_by(&uris))
        else {
            return false;
        };
        let presence: Vec<(String, wire::Availability)> = users
            .iter()
            .filter_map(|u| {
                Some((
                    u.uri.clone(),
                    wire::Availability::from_cwa(u.availability()?),
                ))
            })
            .collect();
        q.fill(&presence);
        q.answered = true;
        true
    }

    /// The outcome of request `rid`, if it is a presence query: its search
    /// result goes to the device. Returns whether it was one.
    pub(super) fn finish_presence_query(
        &self,
        rid: u64,
        outcome: &Result<(), String>,
    ) -> Result<bool, EndReason> {
        let query = {
            let mut st = self.state();
            let found = st.queries.iter().position(|q| q.rid == Some(rid));
            found.map(|i| st.queries.remove(i))
        };
        let Some(query) = query else { return Ok(false) };
        if let Err(why) = outcome {
            log::info!(
                "{self:?}: presence query for search {} failed: {why}",
                query.command
            );
        }
        self.deliver(vec![search_result(query)])?;
        Ok(true)
    }

    /// Answers the first waiting query that `which` picks, with the
    /// presence it has (possibly none).
    pub(super) fn finish_query(&self, which: impl Fn(&PresenceQuery) -> bool) {
        let query = {
            let mut st = self.state();
            let found = st.queries.iter().position(which);
            found.map(|i| st.queries.remove(i))
        };
        if let Some(query) = query {
            self.deliver_search(query);
        }
    }

    /// Answers the presence queries older than `limit` with what they have.
    pub(super) fn expire_presence_queries(&self, limit: Duration) {
        let overdue: Vec<PresenceQuery> = {
            let mut st = self.state();
            let (old, keep) = std::mem::take(&mut st.queries)
                .into_iter()
                .partition(|q| q.sent.elapsed() >= limit);
            st.queries = keep;
            old
        };
        for q in overdue {
            log::info!(
                "{self:?}: no presence from CWA for search {} within {} ms",
                q.command,
                limit.as_millis()
            );
            self.deliver_search(q);
        }
    }

    /// After a new CWA sign-in: the state the old session published (the
    /// user's own, or Away) is published on the new one, which starts from
    /// the sign-in state.
    pub(super) fn carry_presence(&self, old: &CommandChannel, new: &mut CommandChannel) {
        let (availability, note) = old.presence();
        if availability == new.presence().0 && note.is_none() {
            return;
        }
        let command = crate::cwa::Command::PublishPresence { availability, note };
        if let Err(e) = new.send(&command) {
            log::info!("{self:?}: publishing the presence again after a new sign-in: {e}");
        }
    }

    /// After a new CWA sign-in rids start again: results kept for rids of
    /// the old session must not answer the new session's requests, and
    /// waiting presence queries get no answer any more.
    pub(super) fn forget_old_rids(&self) {
        let queries = {
            let mut st = self.state();
            st.early.clear();
            std::mem::take(&mut st.queries)
        };
        for q in queries {
            self.deliver_search(q);
        }
    }

    pub(super) fn deliver_search(&self, query: PresenceQuery) {
        if let Err(reason) = self.deliver(vec![search_result(query)]) {
            self.ctx.table.end(self.id(), reason);
        }
    }
}

fn search_result(query: PresenceQuery) -> DeviceEvent {
    DeviceEvent::SearchResult {
        command: query.command,
        entries: query.entries,
    }
}
