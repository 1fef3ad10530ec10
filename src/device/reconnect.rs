//! Keeping a session across lost links: the reconnect itself
//! ([`DeviceClient::reconnect`], with what the client remembers in
//! [`Kept`]),
//! and the wait between attempts ([`Backoff`]: exponential with jitter,
//! bounded in attempts and in time; collab-device(1) states the figures).

use std::time::{Duration, Instant};

use super::kept::Kept;
use super::{DeviceClient, DeviceConfig, DeviceError};
use crate::wire::{Coverage, Secret, Status, WireError};

/// The ceiling of the first wait; each later ceiling doubles.
pub const FIRST_WAIT: Duration = Duration::from_millis(500);
/// The largest ceiling of one wait.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Attempts after one lost link unless told otherwise.
pub const DEFAULT_ATTEMPTS: u32 = 10;
/// No attempt starts later than this after the link was lost.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// How a reconnect ended.
#[derive(Debug)]
pub enum Reattached {
    /// The session resumed: events after `acked` are replayed (those
    /// delivered before are not delivered again), and `resent` commands
    /// that had no result were sent again with their ids.
    Resumed {
        /// The session id.
        session: String,
        /// The acknowledged sequence the resume carried.
        acked: u64,
        /// Commands sent again.
        resent: Vec<u64>,
    },
    /// The service no longer held the session and started a new one
    /// (sequence numbers start at 1 again); `dropped` commands had no
    /// result in the old session and are not sent again.
    NewSession {
        /// The session that is gone.
        old: Option<String>,
        /// The new session's id.
        session: Option<String>,
        /// The user's SIP URI.
        sip_uri: Option<String>,
        /// The login result's text.
        text: String,
        /// Commands of the old session that never got a result.
        dropped: Vec<u64>,
    },
}

/// Whether a failure to reconnect is worth another attempt: a lost or
/// refused connection, or a refusal that says "not now" (busy, CWA or the
/// Config DB unavailable, no instance, an instance stopping). A wrong key,
/// a refused password, an unknown PIN or a broken protocol is final.
pub fn worth_retrying(e: &DeviceError) -> bool {
    let passing = |s: &Status| {
        matches!(
            s,
            Status::Failed
                | Status::ServerBusy
                | Status::CwaUnavailable
                | Status::ConfigUnavailable
                | Status::NoInstance
                | Status::ServiceStopping
        )
    };
    match e {
        DeviceError::Connect(_) | DeviceError::Tls(_) => true,
        DeviceError::LoginRefused(s, _) => passing(s),
        DeviceError::Wire(WireError::Refused(s, _)) => passing(s),
        DeviceError::Wire(w) => is_lost_link(w),
        DeviceError::Unexpected(_) => false,
    }
}

/// Whether a failure of a signed-in link is a lost link (worth a resume)
/// rather than a broken or refused protocol. A stream that ends inside a
/// frame is what a cut link looks like.
pub fn is_lost_link(w: &WireError) -> bool {
    matches!(
        w,
        WireError::Io(_) | WireError::Timeout | WireError::Closed | WireError::Truncated
    )
}

/// The waits between reconnect attempts after one lost link: attempt `n`
/// (from 0) waits a random time between half and all of
/// `min(FIRST_WAIT * 2^n, MAX_WAIT)`, so that devices cut at the same
/// moment do not all come back at once; at most `attempts` attempts, and
/// none that would start more than [`GIVE_UP_AFTER`] after the loss.
#[derive(Debug)]
pub struct Backoff {
    attempts: u32,
    tried: u32,
    lost_at: Instant,
}

impl Backoff {
    /// Starts counting at the moment the link was lost.
    pub fn new(attempts: u32) -> Backoff {
        Backoff {
            attempts,
            tried: 0,
            lost_at: Instant::now(),
        }
    }

    /// Attempts made so far.
    pub fn tried(&self) -> u32 {
        self.tried
    }

    /// The wait before the next attempt, or `None` when the bounds are
    /// reached.
    pub fn next_wait(&mut self) -> Option<Duration> {
        if self.tried >= self.attempts {
            return None;
        }
        let ceiling = FIRST_WAIT
            .saturating_mul(1u32 << self.tried.min(16))
            .min(MAX_WAIT);
        let wait = ceiling / 2 + jitter(ceiling / 2);
        if self.lost_at.elapsed() + wait > GIVE_UP_AFTER {
            return None;
        }
        self.tried += 1;
        Some(wait)
    }
}

/// A random duration from zero to `max` (millisecond steps).
fn jitter(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    // Without randomness the wait is the ceiling: still bounded, just not
    // spread.
    if openssl::rand::rand_bytes(&mut b).is_err() {
        return max;
    }
    let span = max.as_millis() as u64 + 1;
    Duration::from_millis(u64::from_le_bytes(b) % span)
}

impl DeviceClient {
    /// Opens a new connection and signs in again with a resume of the
    /// kept session, replacing this client's link. On a resume, commands
    /// without a result are sent again with their ids and a coverage
    /// other than in-coverage is reported again. The caller waits between
    /// attempts (see [`Backoff`]); this makes one.
    pub fn reconnect(
        &mut self,
        cfg: &DeviceConfig,
        user: &str,
        password: &Secret,
    ) -> Result<Reattached, DeviceError> {
        let mut fresh = DeviceClient::connect(cfg)?;
        let kept = self.kept.clone();
        let accepted = fresh.login(user, password, kept.resume())?;
        fresh.continue_numbering(self.next_command_id);
        let coverage = self.coverage;
        let old = kept.session_id.clone();
        let outcome = if accepted.session_id.is_some() && accepted.session_id == old {
            fresh.kept = kept;
            let resent: Vec<u64> = fresh.kept.unanswered.keys().copied().collect();
            for id in &resent {
                let command = fresh.kept.unanswered[id].clone();
                fresh.send_command_again(*id, command)?;
            }
            Reattached::Resumed {
                session: accepted.session_id.clone().unwrap_or_default(),
                acked: fresh.kept.acked,
                resent,
            }
        } else {
            // `login` noted the new session id in `fresh.kept`.
            Reattached::NewSession {
                old,
                session: accepted.session_id,
                sip_uri: accepted.sip_uri,
                text: accepted.text,
                dropped: kept.unanswered.keys().copied().collect(),
            }
        };
        if coverage != Coverage::InCoverage {
            fresh.send_status(coverage)?;
        }
        let old_link = std::mem::replace(self, fresh);
        let _ = old_link
            .channel
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
        Ok(outcome)
    }

    /// What the client remembers of its session.
    pub fn kept(&self) -> &Kept {
        &self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_jitter_within_their_ceilings_and_stop_at_the_bound() {
        let mut b = Backoff::new(12);
        let mut ceilings = Vec::new();
        while let Some(w) = b.next_wait() {
            let n = b.tried() - 1;
            let ceiling = FIRST_WAIT.saturating_mul(1 << n).min(MAX_WAIT);
            assert!(
                w >= ceiling / 2 && w <= ceiling,
                "{n}: {w:?} vs {ceiling:?}"
            );
            ceilings.push(ceiling);
        }
        assert_eq!(b.tried(), 12, "12 attempts fit in {GIVE_UP_AFTER:?}");
        assert_eq!(ceilings[0], FIRST_WAIT);
        assert_eq!(*ceilings.last().unwrap(), MAX_WAIT);
        assert!(Backoff::new(0).next_wait().is_none());
    }

    #[test]
    fn only_passing_failures_are_retried() {
        assert!(worth_retrying(&DeviceError::Connect("x".into())));
        assert!(worth_retrying(&DeviceError::Wire(WireError::Closed)));
        assert!(worth_retrying(&DeviceError::LoginRefused(
            Status::ServerBusy,
            String::new()
        )));
        assert!(!worth_retrying(&DeviceError::LoginRefused(
            Status::BadCredentials,
            String::new()
        )));
        assert!(!worth_retrying(&DeviceError::Wire(WireError::Refused(
            Status::UnknownDevice,
            String::new()
        ))));
        assert!(!worth_retrying(&DeviceError::Wire(WireError::Auth)));
    }
}
