//! Administration and housekeeping: the admin endpoint's drops, restart,
//! counters and listings, and the sweep that ends idle sessions and
//! forgets stale tickets.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Ocs, OcsStatus};
use crate::sim::events::EndReason;

/// How many sessions or tickets [`Ocs::sweep`] looks at per hold of the
/// state lock.
const SWEEP_CHUNK: usize = 32;

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
    /// (overflow), forgets tickets unused for as long with no session, and
    /// retires previous tokens past their grace window.
    ///
    /// The state lock is held only to copy the keys (0.07 ms at 5,000
    /// sessions) and then per [`SWEEP_CHUNK`] entries, never for the whole
    /// scan: every request waits on that lock, and at 5,000 sessions one
    /// scan under it held every request back 3 ms (7 ms at worst) twice a
    /// second; in chunks the longest hold of a sweep was 0.14 ms (medians;
    /// load run, timed around each hold). Between chunks the sweeper also
    /// yields its CPU: even with the lock free, a scan that ran 1-3 ms
    /// without a break sat in front of a request thread woken onto its CPU
    /// (2 of the 18 messages slower than 3 ms in a scheduler trace of a
    /// 5,000-session latency run), and a session's verdict reads neither
    /// the clock nor its queue's lock ([`SessionQueue::sweep_verdict`]).
    ///
    /// [`SessionQueue::sweep_verdict`]: crate::sim::events::SessionQueue::sweep_verdict
    pub fn sweep(&self) {
        let timeout = self.settings.session_timeout;
        let sids: Vec<u64> = self.lock().sessions.keys().copied().collect();
        for chunk in sids.chunks(SWEEP_CHUNK) {
            let now = Instant::now();
            let mut st = self.lock();
            for &sid in chunk {
                let Some(s) = st.sessions.get(&sid) else {
                    continue;
                };
                let Some(reason) = s.queue.sweep_verdict(now, timeout) else {
                    continue;
                };
                log::info!("session {sid}: {}", reason.as_str());
                self.end_session(&mut st, sid, reason);
            }
            drop(st);
            std::thread::yield_now();
        }
        let ids: Vec<u64> = self.lock().tickets.keys().copied().collect();
        for chunk in ids.chunks(SWEEP_CHUNK) {
            let now = Instant::now();
            let mut st = self.lock();
            for id in chunk {
                let Some(t) = st.tickets.get_mut(id) else {
                    continue;
                };
                if t.sessions == 0 && now.duration_since(t.last_used) >= timeout {
                    if let Some(t) = st.tickets.remove(id) {
                        st.token_index.remove(&t.current);
                        if let Some((p, _)) = t.previous {
                            st.token_index.remove(&p);
                        }
                    }
                    continue;
                }
                let retired = match &t.previous {
                    Some((_, until)) if now >= *until => t.previous.take().map(|(p, _)| p),
                    _ => None,
                };
                if let Some(p) = retired {
                    st.token_index.remove(&p);
                }
            }
            drop(st);
            std::thread::yield_now();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::ocs::{sign_in_data, OcsSettings};
    use crate::sim::users::Directory;
    use crate::xml::{self, CWA_NS};

    /// An OCS of `users` users, each signed in with one session.
    fn signed_in(users: usize, session_timeout: Duration) -> Ocs {
        let text: String = (0..users)
            .map(|i| format!("CONTOSO\\u{i} pw sip:u{i}@contoso.com\n"))
            .collect();
        let settings = OcsSettings {
            session_timeout,
            ..OcsSettings::default()
        };
        let hour = Duration::from_secs(3600);
        let ocs = Ocs::new(Directory::parse(&text).unwrap(), settings, hour, hour);
        for i in 0..users {
            let token = ocs.issue_ticket(i);
            let ticket = ocs.check_ticket(&token).unwrap();
            let doc = xml::parse(
                format!(
                    "<cwaRequests xmlns=\"{CWA_NS}\"><initiateSession rid=\"1\">\
                     <signInData>{}</signInData></initiateSession></cwaRequests>",
                    sign_in_data(&format!("sip:u{i}@contoso.com"))
                )
                .as_bytes(),
                1 << 16,
            )
            .unwrap();
            let reply = ocs.handle_requests(&ticket, &doc);
            assert!(
                reply.get_child("initiateSessionAccepted").is_some(),
                "{}",
                xml::to_string(&reply)
            );
        }
        ocs
    }

    #[test]
    fn a_sweep_in_chunks_ends_every_idle_session_and_forgets_their_tickets() {
        let users = 3 * SWEEP_CHUNK + 5;
        let ocs = signed_in(users, Duration::ZERO);
        assert_eq!(ocs.status().sessions, users);
        ocs.sweep();
        let status = ocs.status();
        assert_eq!(status.sessions, 0, "every session was idle past 0 s");
        assert_eq!(status.sessions_ended, users as u64);
        assert_eq!(status.tickets, 0, "tickets unused for 0 s with no session");
    }

    #[test]
    fn a_sweep_leaves_active_sessions_and_their_tickets_alone() {
        let users = 2 * SWEEP_CHUNK + 1;
        let ocs = signed_in(users, Duration::from_secs(3600));
        ocs.sweep();
        let status = ocs.status();
        assert_eq!((status.sessions, status.tickets), (users, users));
        assert_eq!(status.sessions_ended, 0);
    }
}
