//! Delivery to the device: attaching and detaching links (with the
//! replay on re-attach), numbering and buffering events, the replay
//! buffer's bound, command results to the link that expects them, and the
//! coverage written to the registry.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::configdb;
use crate::wire::{DeviceEvent, ServiceMessage};

use super::super::listener::Closer;
use super::super::spool::RegistryWrite;
use super::super::table::{Coverage, EndReason};
use super::state::{lock, trim, Link, LinkWriter, State};
use super::{Session, MAX_REPLAY_BYTES, MAX_REPLAY_EVENTS, ROOM_WAIT};

impl Session {
    /// Attach a device link: send it `login_result`, then every event
    /// after `acked` still in the replay buffer, with nothing delivered in
    /// between. Returns the link id, or `None` if the session has finished.
    pub fn attach(
        &self,
        writer: LinkWriter,
        closer: Closer,
        acked: u64,
        login_result: &ServiceMessage,
    ) -> Option<u64> {
        let _order = lock(&self.delivery);
        let (link, old, replay) = {
            let mut st = self.state();
            if st.finished || self.is_ended() {
                return None;
            }
            let link = Link {
                id: st.next_link,
                writer: Arc::new(Mutex::new(writer)),
                closer,
            };
            st.next_link += 1;
            let old = st.link.replace(link.clone());
            trim(&mut st, acked);
            let replay: Vec<Vec<u8>> = st.replay.iter().map(|(_, p)| p.clone()).collect();
            (link, old, replay)
        };
        if let Some(old) = old {
            old.close();
        }
        let mut sent = link.send_message(login_result);
        for payload in &replay {
            if sent.is_err() {
                break;
            }
            sent = link.send(payload);
        }
        if let Err(e) = sent {
            // The session stays, out of coverage, as for any lost link.
            self.detach(link.id, &format!("lost while attaching: {e}"));
            return None;
        }
        if !replay.is_empty() {
            log::info!("{self:?}: replayed {} events on re-attach", replay.len());
        }
        Some(link.id)
    }

    /// Forget link `id` if it is still current; `cut`: shut its socket
    /// down too (from another thread than the link's, to wake it; the link
    /// thread itself leaves the closing to the listener, which lets the
    /// device read what was sent last).
    pub(super) fn drop_link(&self, id: u64, cut: bool) {
        let gone = {
            let mut st = self.state();
            match &st.link {
                Some(l) if l.id == id => st.link.take(),
                _ => None,
            }
        };
        if let Some(link) = gone.filter(|_| cut) {
            link.close();
        }
    }

    /// Link `id` went away without a logout: the session stays, out of
    /// coverage, unless a newer link is attached. Called on the link's own
    /// thread.
    pub(super) fn detach(&self, id: u64, why: &str) {
        self.drop_link(id, false);
        if self.is_ended() {
            return;
        }
        let newer = self.state().link.is_some();
        if newer {
            return;
        }
        log::info!("{self:?}: device link {id} gone ({why}); session kept, out of coverage");
        self.ctx.table.mark_out_of_coverage(self.id());
        self.record_coverage(Coverage::Out);
    }

    /// Write the coverage to the registry if it changed since last time.
    pub(super) fn record_coverage(&self, coverage: Coverage) {
        let held = {
            let mut st = self.state();
            if st.registry_coverage == coverage {
                return;
            }
            st.registry_coverage = coverage;
            if coverage == Coverage::Dormant {
                Vec::new()
            } else {
                st.held.take()
            }
        };
        if !held.is_empty() {
            // Out of dormancy: the latest presence of each contact that
            // changed meanwhile (into the replay buffer if the link is
            // gone, ahead of any newer presence).
            let events = held.into_iter().map(DeviceEvent::Presence).collect();
            if let Err(reason) = self.deliver(events) {
                self.ctx.table.end(self.id(), reason);
            }
        }
        let Some(row) = self.registry_id else { return };
        let db_coverage = match coverage {
            Coverage::In => configdb::Coverage::In,
            Coverage::Dormant => configdb::Coverage::Dormant,
            Coverage::Out => configdb::Coverage::Out,
        };
        self.ctx.record(RegistryWrite::Coverage {
            id: row,
            coverage: db_coverage,
        });
    }

    /// Number, buffer and deliver events, in order. Err: the replay buffer
    /// is full (the caller ends the session).
    pub(super) fn deliver(&self, events: Vec<DeviceEvent>) -> Result<(), EndReason> {
        if events.is_empty() {
            return Ok(());
        }
        let events = super::super::split::fit_frames(events);
        let _order = lock(&self.delivery);
        for event in events {
            if let DeviceEvent::Presence(p) = &event {
                let mut st = self.state();
                if st.registry_coverage == Coverage::Dormant {
                    // A dormant device gets no presence updates (they cost
                    // it radio time); the latest per contact is kept for
                    // when it wakes.
                    if !st.held.hold(p.clone()) {
                        log::info!("{self:?}: presence of {} dropped while dormant", p.uri);
                    }
                    continue;
                }
            }
            // Only this function numbers events, under `delivery`: the
            // number cannot change while the event is encoded.
            let seq = self.state().next_seq;
            let payload = ServiceMessage::Event { seq, event }.encode();
            let link = {
                let mut st = self.room_for(payload.len())?;
                st.next_seq += 1;
                st.replay_bytes += payload.len();
                st.replay.push_back((seq, payload.clone()));
                st.link.clone()
            };
            if let Some(link) = link {
                if let Err(e) = link.send(&payload) {
                    log::info!("{self:?}: cannot write to the device: {e}");
                    self.drop_link(link.id, true);
                }
            }
        }
        Ok(())
    }

    /// Send a command result for a command that came on link `link_id`:
    /// remembered for a resend, and sent to the link the device now
    /// expects it on, if that is still current.
    pub(super) fn answer(&self, link_id: u64, message: ServiceMessage) {
        let link = {
            let mut st = self.state();
            let mut target = link_id;
            if let ServiceMessage::CommandResult { id, .. } = &message {
                if let Some(seen) = st
                    .seen
                    .iter_mut()
                    .rev()
                    .find(|s| s.id == *id && s.origin == link_id)
                {
                    seen.result = Some(message.clone());
                    target = seen.to;
                }
            }
            st.link.clone().filter(|l| l.id == target)
        };
        if let Some(link) = link {
            if let Err(e) = link.send_message(&message) {
                log::info!("{self:?}: cannot write to the device: {e}");
                self.drop_link(link.id, true);
            }
        }
    }

    /// The state, once the replay buffer has room for an event of `len`
    /// bytes. A full buffer with a device attached that is acknowledging
    /// (a long contact list's presence arrives faster than a device
    /// acknowledges) is waited for, as long as acknowledgements keep coming
    /// at least every [`ROOM_WAIT`]; otherwise the buffer overflows and the
    /// session ends.
    pub(super) fn room_for(&self, len: usize) -> Result<MutexGuard<'_, State>, EndReason> {
        let mut oldest = None;
        let mut since = Instant::now();
        loop {
            let st = self.state();
            let full =
                st.replay.len() >= MAX_REPLAY_EVENTS || st.replay_bytes + len > MAX_REPLAY_BYTES;
            if !full {
                return Ok(st);
            }
            let front = st.replay.front().map(|(seq, _)| *seq);
            if front != oldest {
                oldest = front;
                since = Instant::now();
            }
            if st.link.is_none() || since.elapsed() >= ROOM_WAIT || self.is_ended() {
                return Err(EndReason::BufferOverflow {
                    events: st.replay.len(),
                });
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
