//! A running session's shared state: the attached device link, the
//! replay buffer, the commands awaiting their asynchronous CWA results and
//! those remembered for a resend, presence queries and held presence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::wire::{self, SecureReader, SecureWriter, ServiceMessage, WireError};

use super::super::access::AccessBook;
use super::super::listener::{Closer, ReadHalf, WriteHalf};
use super::super::table::Coverage;
use super::super::upkeep::{HeldPresence, PresenceQuery};

/// The device link's reading half.
pub type LinkReader = SecureReader<ReadHalf>;
/// The device link's writing half.
pub type LinkWriter = SecureWriter<WriteHalf>;

/// A device connection attached to the session.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) id: u64,
    pub(super) writer: Arc<Mutex<LinkWriter>>,
    pub(super) closer: Closer,
}

impl Link {
    pub(super) fn send(&self, payload: &[u8]) -> Result<(), WireError> {
        lock(&self.writer).send(payload)
    }

    pub(super) fn send_message(&self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// The device is gone or replaced: cut the connection (this wakes
    /// its link thread).
    pub(super) fn close(&self) {
        self.closer.close_now();
    }

    /// After the last message: end the connection so that the device
    /// reads that message (see [`Closer`]).
    pub(super) fn close_gracefully(&self) {
        self.closer.close_gracefully();
    }
}

/// Something the event channel delivered before the command thread knew
/// the rid.
pub(super) enum Early {
    Result(Result<(), String>),
    Search(Vec<wire::SearchEntry>),
}

/// A command waiting for its asynchronous CWA result.
pub(super) struct Pending {
    pub(super) link: u64,
    pub(super) command_id: u64,
    pub(super) kind: PendingKind,
    /// When CWA accepted it (for the command timeout).
    pub(super) accepted: Instant,
}

/// What the asynchronous result of a command still has to do.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum PendingKind {
    /// Becomes the command's result.
    Result,
    /// A search: the command result was already sent; the search-result
    /// event needs the command id.
    Search,
    /// An invitation: answered at once (CWA completes it only when the
    /// invitee answers, which may take minutes); a failure (declined,
    /// unreachable) becomes a delivery-failed event.
    Invite {
        /// The conversation.
        conversation: String,
    },
}

/// A command the session received, for recognising it when a resumed
/// device sends it again.
pub(super) struct SeenCommand {
    pub(super) id: u64,
    /// SHA-256 of the command's encoding: the same id with another
    /// command is a new command (a client that numbers afresh).
    pub(super) digest: [u8; 32],
    /// The link it came on.
    pub(super) origin: u64,
    /// The link its result goes to (a newer one after a resend).
    pub(super) to: u64,
    pub(super) result: Option<ServiceMessage>,
}

pub(super) struct State {
    pub(super) seen: VecDeque<SeenCommand>,
    pub(super) link: Option<Link>,
    pub(super) next_link: u64,
    pub(super) next_seq: u64,
    pub(super) replay: VecDeque<(u64, Vec<u8>)>,
    pub(super) replay_bytes: usize,
    pub(super) pending: BTreeMap<u64, Pending>,
    pub(super) early: VecDeque<(u64, Early)>,
    pub(super) subscriptions: Vec<String>,
    /// Coverage last written to the registry.
    pub(super) registry_coverage: Coverage,
    /// The finisher has run: no link may attach any more.
    pub(super) finished: bool,
    /// The finisher has told the device why the session ended (or had no
    /// link to tell): a link thread still reading may now return.
    pub(super) last_word_sent: bool,
    /// Searches waiting for the presence of the people found.
    pub(super) queries: Vec<PresenceQuery>,
    /// Contacts' presence held while the device is dormant.
    pub(super) held: HeldPresence,
    pub(super) next_query: u64,
    /// The access-level containers as CWA last sent them.
    pub(super) access: AccessBook,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drop acknowledged events from the replay buffer.
pub(super) fn trim(st: &mut State, acked: u64) {
    while let Some((seq, payload)) = st.replay.front() {
        if *seq > acked {
            break;
        }
        st.replay_bytes -= payload.len();
        st.replay.pop_front();
    }
}
