//! Administration and housekeeping: the admin endpoint's drops, restart,
//! counters and listings, and the sweep that ends idle sessions and
//! forgets stale tickets.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Ocs, OcsStatus};
use crate::sim::events::EndReason;

impl Ocs {
    /// Ends session `sid` (admin "drop"); true if it existed.
    pub fn drop_session(&self, sid: u64) -> bool {
        let mut st = self.lock();
        if st.sessions.contains_key(&sid) {
            self.end_session(&mut st, sid, EndReason::Dropped);
            true
        } else {
            false
        }
    }

    /// Ends every session of the user with this SIP URI or login; the
    /// number ended.
    pub fn drop_user(&self, who: &str) -> usize {
        let Some(user) = self
            .directory
            .by_uri(who)
            .or_else(|| self.directory.by_login(who))
        else {
            return 0;
        };
        let mut st = self.lock();
        let sids = st.users[user].sessions.clone();
        for sid in &sids {
            self.end_session(&mut st, *sid, EndReason::Dropped);
        }
        sids.len()
    }

    /// Forgets every session, ticket and conversation, as a restarted CWA
    /// would. Contact lists (stored by OCS, not CWA) survive.
    pub fn restart(&self) {
        let mut st = self.lock();
        for s in st.sessions.values() {
            s.queue.end(EndReason::Restarted);
        }
        self.sessions_ended
            .fetch_add(st.sessions.len() as u64, Ordering::Relaxed);
        st.sessions.clear();
        st.tickets.clear();
        st.token_index.clear();
        st.conversations.clear();
        for u in &mut st.users {
            u.sessions.clear();
            u.watchers.clear();
        }
    }

    /// Ends sessions idle past the timeout or whose queue ended itself
    /// (overflow), and forgets tickets unused for as long with no session.
    pub fn sweep(&self) {
        let timeout = self.settings.session_timeout;
        let mut st = self.lock();
        let doomed: Vec<(u64, EndReason)> = st
            .sessions
            .iter()
            .filter_map(|(sid, s)| match s.queue.ended() {
                Some(r) => Some((*sid, r)),
                None if s.queue.idle() >= timeout => Some((*sid, EndReason::Expired)),
                None => None,
            })
            .collect();
        for (sid, reason) in doomed {
            log::info!("session {sid}: {}", reason.as_str());
            self.end_session(&mut st, sid, reason);
        }
        let now = Instant::now();
        let stale: Vec<u64> = st
            .tickets
            .iter()
            .filter(|(_, t)| t.sessions == 0 && now.duration_since(t.last_used) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(t) = st.tickets.remove(&id) {
                st.token_index.remove(&t.current);
                if let Some((p, _)) = t.previous {
                    st.token_index.remove(&p);
                }
            }
        }
        // Retire previous tokens past their grace window.
        let expired: Vec<String> = st
            .tickets
            .values_mut()
            .filter_map(|t| match &t.previous {
                Some((_, until)) if now >= *until => t.previous.take().map(|(p, _)| p),
                _ => None,
            })
            .collect();
        for p in expired {
            st.token_index.remove(&p);
        }
    }

    /// Counters for the admin status page.
    pub fn status(&self) -> OcsStatus {
        let st = self.lock();
        OcsStatus {
            tickets: st.tickets.len(),
            sessions: st.sessions.len(),
            conversations: st.conversations.len(),
            sessions_ended: self.sessions_ended.load(Ordering::Relaxed),
        }
    }

    /// One line per user whose clients published a state or reported
    /// activity: what [`Published::line`] says, for `GET /admin/presence`.
    pub fn published_text(&self) -> String {
        let st = self.lock();
        let mut out = String::new();
        for (i, u) in st.users.iter().enumerate() {
            if u.published.publishes == 0 && u.published.user_activity == 0 {
                continue;
            }
            out.push_str(
                &u.published
                    .line(&self.directory.users[i].sip_uri, u.availability),
            );
            out.push('\n');
        }
        out
    }

    /// `(sid, SIP URI)` of every live session, for the admin page.
    pub fn session_list(&self) -> Vec<(u64, String)> {
        let st = self.lock();
        let mut v: Vec<(u64, String)> = st
            .sessions
            .iter()
            .map(|(sid, s)| (*sid, self.directory.users[s.user].sip_uri.clone()))
            .collect();
        v.sort();
        v
    }
}
