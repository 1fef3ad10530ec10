//! What a [`DeviceClient`](super::DeviceClient) remembers of its session
//! to resume without losing or repeating anything: the session id, the
//! last event delivered and acknowledged, the commands still without a
//! result (the reconnect that uses it is in `reconnect.rs`).

use std::collections::BTreeMap;

use crate::wire::{DeviceCommand, Resume};

/// Most commands remembered without a result; beyond it the oldest is
/// forgotten (it is not sent again after a resume).
pub const MAX_UNANSWERED: usize = 256;

/// What the client remembers of its session for a resume.
#[derive(Debug, Default, Clone)]
pub struct Kept {
    /// The session id of the last login.
    pub session_id: Option<String>,
    /// The highest event sequence delivered to the caller: a replayed
    /// event at or below it is not delivered again.
    pub delivered: u64,
    /// The highest event sequence acknowledged to the service.
    pub acked: u64,
    /// Commands sent without a result yet, by id.
    pub unanswered: BTreeMap<u64, DeviceCommand>,
}

impl Kept {
    /// The `resume` for the next login, if there is a session.
    pub fn resume(&self) -> Option<Resume> {
        self.session_id.as_ref().map(|id| Resume {
            session_id: id.clone(),
            last_acked_seq: self.acked,
        })
    }

    /// Notes event `seq`; false if it was delivered before (a replay).
    pub fn first_delivery(&mut self, seq: u64) -> bool {
        if seq <= self.delivered {
            return false;
        }
        self.delivered = seq;
        true
    }

    /// Notes a command sent (or about to be).
    pub fn sent(&mut self, id: u64, command: DeviceCommand) {
        self.unanswered.insert(id, command);
        while self.unanswered.len() > MAX_UNANSWERED {
            self.unanswered.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_delivered_once_and_the_resume_carries_the_ack() {
        let mut k = Kept {
            session_id: Some("s-3".into()),
            ..Kept::default()
        };
        assert!(k.first_delivery(1) && k.first_delivery(2));
        assert!(!k.first_delivery(2) && !k.first_delivery(1));
        k.acked = 1;
        assert_eq!(k.resume().map(|r| r.last_acked_seq), Some(1));
        for id in 0..(MAX_UNANSWERED as u64 + 5) {
            k.sent(id, DeviceCommand::RemoveGroup { group: "2".into() });
        }
        assert_eq!(k.unanswered.len(), MAX_UNANSWERED);
        assert_eq!(k.unanswered.keys().next(), Some(&5));
    }
}
