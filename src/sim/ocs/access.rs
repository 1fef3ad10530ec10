//! The commands on access levels and watchers: `updateContainer` (the
//! levels themselves are in `sim::containers`; what each watcher sees of
//! them is in `presence`) and `acknowledgeSubscriber` (cwa-sim(1), ACCESS
//! LEVELS and WATCHERS).

use xmltree::Element;

use super::{accepted, failed, invalid, sip_err_elem, succeeded, Ocs, State, MAX_URIS};
use crate::sim::containers;
use crate::sim::users::valid_sip_uri;
use crate::xml::{self, children};

impl Ocs {
    /// `updateContainer` › `container id` › `addMember`/`deleteMember`:
    /// the user's sessions get the changed container, and watchers whose
    /// view changed their new view of the user's presence.
    pub(super) fn update_container(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let user = st.sessions[&sid].user;
        let (id, changes) = match containers::parse_update(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        let before = self.watcher_views(st, user);
        if let Err((code, reason)) = st.users[user].containers.update(id, &changes) {
            return failed(rid, sip_err_elem(code, reason));
        }
        let ev = st.users[user].containers.delta_event(id);
        self.emit_user(st, user, &ev);
        let uri = self.directory.users[user].sip_uri.clone();
        for (watcher, now) in self.watcher_views(st, user) {
            if before.iter().any(|(s, was)| *s == watcher && *was != now) {
                let viewer = st.sessions[&watcher].user;
                let ev = self.user_presence_event(st, viewer, std::slice::from_ref(&uri));
                self.emit(st, watcher, ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    /// `acknowledgeSubscriber` › `uri…`: marks the watchers acknowledged;
    /// the user's sessions get a `subscribers` event saying so for each
    /// who watches the user. URIs of people who are no users here are
    /// acknowledged as a no-op.
    pub(super) fn acknowledge_subscriber(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let user = st.sessions[&sid].user;
        let uris: Vec<String> = children(m)
            .filter(|c| c.name == "uri")
            .map(|c| xml::text(c).trim().to_string())
            .take(MAX_URIS + 1)
            .collect();
        if uris.is_empty() || uris.len() > MAX_URIS {
            return invalid(rid, 18001, "acknowledgeSubscriber needs 1 to 100 <uri>");
        }
        if let Some(bad) = uris.iter().find(|u| !valid_sip_uri(u)) {
            return invalid(rid, 18001, &format!("`{bad}` is not a sip: URI"));
        }
        let watchers: Vec<usize> = uris
            .iter()
            .filter_map(|u| self.directory.by_uri(u))
            .filter(|w| *w != user)
            .collect();
        st.users[user].acknowledged.extend(watchers.iter().copied());
        // Only people who watch the user now show up as watchers; the
        // others are remembered as acknowledged for when they do.
        let me = &self.directory.users[user].sip_uri;
        for w in watchers {
            let has_me = st.users[w]
                .contacts
                .iter()
                .any(|c| c.uri.eq_ignore_ascii_case(me));
            let subscribed = st.users[user]
                .watchers
                .iter()
                .any(|s| st.sessions.get(s).is_some_and(|s| s.user == w));
            if has_me || subscribed {
                let ev = self.subscriber_delta(w, true);
                self.emit_user(st, user, &ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }
}
