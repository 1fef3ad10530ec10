//! What each user's clients keep up in the simulated OCS, for the admin
//! page `GET /admin/presence`: the availabilities published (the last
//! few, oldest first, so a test sees Away and the state restored after
//! it), how many state publications there were (republishes included), and
//! how many event requests said `UA=true` (user activity).

use std::collections::VecDeque;
use std::fmt::Write;

/// Availabilities kept per user.
pub const HISTORY: usize = 64;

/// One user's record.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// State publications since start.
    pub publishes: u64,
    /// Event GETs with `UA=true` since start.
    pub user_activity: u64,
    /// The last [`HISTORY`] availabilities published, oldest first.
    pub history: VecDeque<u32>,
}

impl Published {
    /// A state publication of `availability`.
    pub fn published(&mut self, availability: u32) {
        self.publishes += 1;
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(availability);
    }

    /// One line of the admin page: `URI availability=N publishes=N ua=N
    /// published=A,B,...` (`published=-` when nothing was).
    pub fn line(&self, uri: &str, availability: u32) -> String {
        let mut out = format!(
            "{uri} availability={availability} publishes={} ua={} published=",
            self.publishes, self.user_activity
        );
        if self.history.is_empty() {
            out.push('-');
        }
        for (i, a) in self.history.iter().enumerate() {
            let _ = write!(out, "{}{a}", if i > 0 { "," } else { "" });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_availabilities_and_counts_them_all() {
        let mut p = Published::default();
        assert_eq!(
            p.line("sip:a@x", 3500),
            "sip:a@x availability=3500 publishes=0 ua=0 published=-"
        );
        for a in 0..(HISTORY as u32 + 2) {
            p.published(a);
        }
        p.user_activity += 1;
        assert_eq!(p.publishes, HISTORY as u64 + 2);
        assert_eq!(p.history.front(), Some(&2));
        let last = HISTORY + 1;
        assert!(p.line("sip:a@x", 3500).ends_with(&format!(",{last}")));
        assert!(p.line("sip:a@x", 3500).contains(" availability=3500 "));
    }
}
