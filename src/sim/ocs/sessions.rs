//! Sessions: `initiateSession` with the first events a session gets,
//! the end of a session and what hangs off it, the event channel's view of
//! a session, and the `signInData` echoed from the logon.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use xmltree::Element;

use super::{
    accepted, err_elem, failed, invalid, Ocs, PollRefusal, Session, SessionReply, State, TicketOk,
};
use crate::sim::events::{iso_utc, EndReason, SessionQueue};
use crate::xml::{self, child_text, elem, text_elem, with_child};

/// Users in one `userPresence` event of a session's first presence.
const PRESENCE_USERS_PER_EVENT: usize = 100;

impl Ocs {
    /// The queue of session `sid` for an event GET by `ticket`'s user;
    /// `user_active` (`UA=true`) counts as activity.
    pub fn poll_session(
        &self,
        ticket: &TicketOk,
        sid: u64,
        user_active: bool,
    ) -> Result<Arc<SessionQueue>, PollRefusal> {
        let mut st = self.lock();
        match st.sessions.get(&sid) {
            Some(s) if s.user == ticket.user && s.queue.ended().is_none() => {
                let queue = Arc::clone(&s.queue);
                if user_active {
                    queue.touch();
                    st.users[ticket.user].published.user_activity += 1;
                }
                Ok(queue)
            }
            Some(s) if s.user == ticket.user => Err(PollRefusal::SessionNotFound(
                s.queue
                    .ended()
                    .map(EndReason::as_str)
                    .unwrap_or("session ended")
                    .into(),
            )),
            _ => Err(PollRefusal::SessionNotFound("session not found".into())),
        }
    }

    /// Seconds left before session expiry (`cwaEvents@sessionTimeout`).
    pub fn session_timeout_left(&self, queue: &SessionQueue) -> u64 {
        self.settings
            .session_timeout
            .saturating_sub(queue.idle())
            .as_secs()
    }

    pub(super) fn initiate_session(
        &self,
        st: &mut State,
        ticket: &TicketOk,
        rid: &str,
        m: &Element,
    ) -> Element {
        if rid.is_empty() {
            return invalid("", 18001, "initiateSession without rid");
        }
        let user = ticket.user;
        let expected_sign_in = sign_in_data(&self.directory.users[user].sip_uri);
        match child_text(m, "signInData") {
            Some(s) if s.trim() == expected_sign_in => {}
            _ => return invalid(rid, 18001, "signInData must echo the logon's signInData"),
        }
        let availability = match child_text(m, "userStateAvailability") {
            None => 3500,
            Some(t) => match t.trim().parse::<u32>() {
                Ok(a) if a <= 20_000 => a,
                _ => return invalid(rid, 18001, "userStateAvailability is not a number 0..20000"),
            },
        };
        let Some(t) = st.tickets.get_mut(&ticket.ticket) else {
            return failed(rid, err_elem(18100, "ticket no longer valid"));
        };
        if t.sessions >= self.settings.max_sessions_per_ticket {
            return failed(rid, err_elem(18102, "too many sessions for this ticket"));
        }
        t.sessions += 1;
        let sid = st.next_sid;
        st.next_sid += 1;
        let queue = Arc::new(SessionQueue::new(
            sid,
            user,
            self.settings.event_log,
            self.epoch,
        ));
        st.sessions.insert(
            sid,
            Session {
                queue,
                user,
                ticket: ticket.ticket,
                watching: HashSet::new(),
                conversations: HashSet::new(),
            },
        );
        let was_offline = st.users[user].sessions.is_empty();
        st.users[user].sessions.push(sid);
        {
            let u = &mut st.users[user];
            if was_offline || u.availability != availability {
                u.availability = availability;
                u.state_version += 1;
                u.publish_time = iso_utc(SystemTime::now());
            }
        }
        log::info!(
            "session {sid} started for {}",
            self.directory.users[user].sip_uri
        );

        // Initial events: configuration, the full contact list, own
        // presence, watchers, then the presence of subscribed contacts.
        self.emit(st, sid, configuration_event());
        let full = self.contact_group_full(st, user);
        self.emit(st, sid, full);
        let me = self.self_presence(st, user);
        self.emit(st, sid, me);
        let subs = self.subscribers_event(st, user);
        self.emit(st, sid, subs);
        let access = st.users[user].containers.full_event();
        self.emit(st, sid, access);
        let subscribed: Vec<usize> = st.users[user]
            .contacts
            .iter()
            .filter(|c| c.subscribed)
            .filter_map(|c| self.directory.by_uri(&c.uri))
            .collect();
        if !subscribed.is_empty() {
            for &w in &subscribed {
                st.users[w].watchers.insert(sid);
            }
            if let Some(s) = st.sessions.get_mut(&sid) {
                s.watching.extend(subscribed.iter().copied());
            }
            let uris: Vec<String> = subscribed
                .iter()
                .map(|&i| self.directory.users[i].sip_uri.clone())
                .collect();
            // A long contact list's presence in several events, so that
            // no one event is larger than an event GET should carry.
            for chunk in uris.chunks(PRESENCE_USERS_PER_EVENT) {
                let ev = self.user_presence_event(st, user, chunk);
                self.emit(st, sid, ev);
            }
        }
        // Others see this user come online (or change availability).
        self.presence_changed(st, user, Some(sid));

        let sid_s = sid.to_string();
        let poll = self.settings.poll_wait_ms.to_string();
        match self.settings.session_reply {
            SessionReply::Attributes => elem(
                "initiateSessionAccepted",
                &[("rid", rid), ("sid", &sid_s), ("pollWaitTime", &poll)],
            ),
            SessionReply::Elements => {
                let mut e = accepted(rid);
                e = with_child(e, text_elem("sid", &sid_s));
                e = with_child(e, text_elem("uri", &self.directory.users[user].sip_uri));
                with_child(e, text_elem("pollWaitTime", &poll))
            }
        }
    }

    /// Ends a session and everything hanging off it.
    pub(super) fn end_session(&self, st: &mut State, sid: u64, reason: EndReason) {
        let Some(session) = st.sessions.get(&sid) else {
            return;
        };
        let user = session.user;
        let convs: Vec<u64> = session.conversations.iter().copied().collect();
        for conf in convs {
            self.leave_conversation(st, sid, conf, None, 480, "Temporarily Unavailable");
        }
        let Some(session) = st.sessions.remove(&sid) else {
            return;
        };
        session.queue.end(reason);
        self.sessions_ended.fetch_add(1, Ordering::Relaxed);
        for w in &session.watching {
            st.users[*w].watchers.remove(&sid);
        }
        if let Some(t) = st.tickets.get_mut(&session.ticket) {
            t.sessions = t.sessions.saturating_sub(1);
        }
        st.users[user].sessions.retain(|s| *s != sid);
        log::info!(
            "session {sid} of {} ended: {}",
            self.directory.users[user].sip_uri,
            reason.as_str()
        );
        if st.users[user].sessions.is_empty() {
            st.users[user].state_version += 1;
            st.users[user].publish_time = iso_utc(SystemTime::now());
            self.presence_changed(st, user, None);
        }
    }
}

/// The `configuration` event sent at each sign-in.
fn configuration_event() -> Element {
    let mut ev = elem("configuration", &[]);
    ev = with_child(
        ev,
        elem(
            "search",
            &[
                ("defaultFunction", "or"),
                ("defaultFields", "displayName emailAlias"),
            ],
        ),
    );
    ev = with_child(
        ev,
        elem(
            "imComposingTimers",
            &[("refreshInterval", "5"), ("timeout", "60")],
        ),
    );
    ev = with_child(ev, text_elem("enableAppearOffline", "true"));
    ev
}

/// The opaque `signInData` handed out at logon and to be echoed in
/// `initiateSession`: base64 of a small XML fragment naming the user.
pub fn sign_in_data(sip_uri: &str) -> String {
    let fragment = xml::to_string(&with_child(
        elem("signInData", &[]),
        text_elem("uri", sip_uri),
    ));
    crate::ntlm::base64_encode(fragment.as_bytes())
}
