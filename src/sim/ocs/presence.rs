//! Presence: the categories a viewer sees of a user, `userPresence` and
//! `selfPresence` events, `publishSelfPresence`, subscriptions
//! (`subscribePresence`, `unSubscribePresence`, `queryPresence`) and the
//! `subscribers` events that tell users who watches them; what a viewer
//! may see as their access level allows (`sim::containers`), and presence
//! sent to each watcher accordingly.

use std::time::SystemTime;

use xmltree::Element;

use super::{accepted, failed, invalid, sip_err_elem, succeeded, uri_list, Ocs, State};
use crate::sim::containers::{self, Containers};
use crate::sim::events::iso_utc;
use crate::xml::{self, attr, children, elem, text_elem, with_child};

/// The first descendant of `e` called `name` (depth-bounded by the
/// document depth check done before parsing).
fn find_descendant<'a>(e: &'a Element, name: &str) -> Option<&'a Element> {
    for c in children(e) {
        if c.name == name {
            return Some(c);
        }
        if let Some(found) = find_descendant(c, name) {
            return Some(found);
        }
    }
    None
}

impl Ocs {
    fn aggregate_availability(&self, st: &State, user: usize) -> u32 {
        if st.users[user].sessions.is_empty() {
            18000
        } else {
            st.users[user].availability
        }
    }

    /// `user`'s presence categories as `viewer` may see them (a user sees
    /// all of their own).
    fn categories(&self, st: &State, user: usize, viewer: usize) -> Vec<Element> {
        let u = &st.users[user];
        let entry = &self.directory.users[user];
        let sees = self.visibility(st, user, viewer);
        let avail = if sees.availability {
            self.aggregate_availability(st, user)
        } else {
            18000
        }
        .to_string();
        let state = with_child(
            elem(
                "state",
                &[
                    ("xmlns", "http://schemas.microsoft.com/2006/09/sip/state"),
                    ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"),
                    ("xsi:type", "aggregateState"),
                ],
            ),
            text_elem("availability", &avail),
        );
        let state_cat = with_child(
            elem(
                "cwaCategory",
                &[
                    ("name", "state"),
                    ("instance", "0"),
                    ("version", &u.state_version.to_string()),
                    ("publishTime", &u.publish_time),
                ],
            ),
            state,
        );
        let note_cat = if u.note.is_empty() || !sees.note {
            elem("cwaCategory", &[("name", "note")])
        } else {
            let mut text = elem("body", &[("type", "personal")]);
            text.children.push(xmltree::XMLNode::Text(u.note.clone()));
            let body = with_child(
                elem(
                    "note",
                    &[("xmlns", "http://schemas.microsoft.com/2006/09/sip/note")],
                ),
                text,
            );
            with_child(
                elem(
                    "cwaCategory",
                    &[
                        ("name", "note"),
                        ("instance", "0"),
                        ("version", &u.note_version.to_string()),
                        ("publishTime", &u.publish_time),
                    ],
                ),
                body,
            )
        };
        let card = with_child(
            elem(
                "contactCard",
                &[(
                    "xmlns",
                    "http://schemas.microsoft.com/2006/09/sip/contactcard",
                )],
            ),
            with_child(
                with_child(
                    elem("identity", &[]),
                    with_child(
                        elem("name", &[]),
                        text_elem("displayName", &entry.display_name),
                    ),
                ),
                text_elem("email", entry.sip_uri.trim_start_matches("sip:")),
            ),
        );
        let card_cat = with_child(
            elem(
                "cwaCategory",
                &[
                    ("name", "contactCard"),
                    ("instance", "0"),
                    ("version", "0"),
                    ("publishTime", &u.publish_time),
                ],
            ),
            card,
        );
        vec![card_cat, note_cat, state_cat]
    }

    /// The `userPresence` event for `uris` as `viewer` may see them.
    pub(super) fn user_presence_event(
        &self,
        st: &State,
        viewer: usize,
        uris: &[String],
    ) -> Element {
        let mut ev = elem("userPresence", &[]);
        for uri in uris {
            let user_elem = match self.directory.by_uri(uri) {
                Some(i) => {
                    let mut u = elem(
                        "user",
                        &[
                            ("uri", &self.directory.users[i].sip_uri),
                            ("sourceNetwork", "sameEnterprise"),
                        ],
                    );
                    for c in self.categories(st, i, viewer) {
                        u = with_child(u, c);
                    }
                    u
                }
                // Unknown to this OCS: a user with no categories.
                None => elem("user", &[("uri", uri), ("sourceNetwork", "unknown")]),
            };
            ev = with_child(ev, user_elem);
        }
        ev
    }

    pub(super) fn self_presence(&self, st: &State, user: usize) -> Element {
        let mut ev = elem("selfPresence", &[]);
        for c in self.categories(st, user, user) {
            ev = with_child(ev, c);
        }
        ev
    }

    /// Tells watchers (and, unless only `skip_self` is new, the user's own
    /// other sessions) about a change of `user`'s presence.
    pub(super) fn presence_changed(&self, st: &State, user: usize, new_session: Option<u64>) {
        self.presence_to_watchers(st, user);
        let me = self.self_presence(st, user);
        for sid in &st.users[user].sessions {
            if Some(*sid) != new_session {
                self.emit(st, *sid, me.clone());
            }
        }
    }

    pub(super) fn publish_self_presence(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let user = st.sessions[&sid].user;
        let mut new_avail = None;
        let mut new_note = None;
        let cats: Vec<&Element> = children(m).filter(|c| c.name == "cwaCategory").collect();
        if cats.is_empty() {
            return invalid(rid, 18001, "publishSelfPresence without cwaCategory");
        }
        for cat in cats {
            match attr(cat, "name") {
                Some("state") => {
                    let Some(a) = find_descendant(cat, "availability") else {
                        return invalid(rid, 18001, "state category without availability");
                    };
                    match xml::text(a).trim().parse::<u32>() {
                        Ok(v) if v <= 20_000 => new_avail = Some(v),
                        _ => return invalid(rid, 18001, "availability is not a number 0..20000"),
                    }
                }
                Some("note") => {
                    let body = find_descendant(cat, "body")
                        .map(xml::text)
                        .unwrap_or_default();
                    if body.len() > 2048 {
                        return invalid(rid, 18001, "note longer than 2048 bytes");
                    }
                    new_note = Some(body);
                }
                Some(_) => {} // other categories are accepted and not modelled
                None => return invalid(rid, 18001, "cwaCategory without name"),
            }
        }
        let now = iso_utc(SystemTime::now());
        let u = &mut st.users[user];
        if let Some(a) = new_avail {
            u.availability = a;
            u.state_version += 1;
            u.published.published(a);
        }
        if let Some(n) = new_note {
            u.note = n;
            u.note_version += 1;
        }
        u.publish_time = now;
        self.presence_changed(st, user, None);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    pub(super) fn watch(&self, st: &mut State, sid: u64, target: usize) {
        st.users[target].watchers.insert(sid);
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.watching.insert(target);
        }
    }

    pub(super) fn unwatch(&self, st: &mut State, sid: u64, target: usize) {
        st.users[target].watchers.remove(&sid);
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.watching.remove(&target);
        }
    }

    pub(super) fn subscribe(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
        on: bool,
    ) -> Element {
        let uris = match uri_list(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        for uri in &uris {
            if let Some(target) = self.directory.by_uri(uri) {
                if on {
                    self.watch(st, sid, target);
                } else {
                    self.unwatch(st, sid, target);
                }
            }
        }
        if on {
            let viewer = st.sessions[&sid].user;
            let ev = self.user_presence_event(st, viewer, &uris);
            self.emit(st, sid, ev);
            // Targets learn of their new watcher.
            let watcher = st.sessions[&sid].user;
            for uri in &uris {
                if let Some(target) = self.directory.by_uri(uri) {
                    let acknowledged = st.users[target].acknowledged.contains(&watcher);
                    let ev = self.subscriber_delta(watcher, acknowledged);
                    self.emit_user(st, target, &ev);
                }
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    pub(super) fn query_presence(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let uris = match uri_list(m) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        if self.fails_query_presence() {
            log::warn!("fault: queryPresence of session {sid} fails");
            let error = sip_err_elem(504, "Server Time-out");
            self.emit(st, sid, failed(rid, error));
            return accepted(rid);
        }
        let viewer = st.sessions[&sid].user;
        let ev = self.user_presence_event(st, viewer, &uris);
        self.emit(st, sid, ev);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    pub(super) fn subscribers_event(&self, st: &State, user: usize) -> Element {
        let me = &self.directory.users[user].sip_uri;
        let mut ev = elem("subscribers", &[]);
        for (i, u) in st.users.iter().enumerate() {
            if i != user && u.contacts.iter().any(|c| c.uri.eq_ignore_ascii_case(me)) {
                let w = &self.directory.users[i];
                ev = with_child(
                    ev,
                    elem(
                        "subscriber",
                        &[
                            ("uri", &w.sip_uri),
                            ("displayName", &w.display_name),
                            ("sourceNetwork", "sameEnterprise"),
                            (
                                "acknowledged",
                                if st.users[user].acknowledged.contains(&i) {
                                    "true"
                                } else {
                                    "false"
                                },
                            ),
                        ],
                    ),
                );
            }
        }
        ev
    }

    pub(super) fn subscriber_delta(&self, watcher: usize, acknowledged: bool) -> Element {
        let w = &self.directory.users[watcher];
        with_child(
            elem("subscribers", &[]),
            elem(
                "subscriber",
                &[
                    ("uri", &w.sip_uri),
                    ("displayName", &w.display_name),
                    ("sourceNetwork", "sameEnterprise"),
                    ("acknowledged", if acknowledged { "true" } else { "false" }),
                ],
            ),
        )
    }

    /// What `viewer` may see of `user`'s presence.
    fn visibility(&self, st: &State, user: usize, viewer: usize) -> containers::Visibility {
        if viewer == user {
            return containers::Visibility {
                availability: true,
                note: true,
            };
        }
        let level = st.users[user]
            .containers
            .level_of(&self.directory.users[viewer].sip_uri, true);
        Containers::visibility(level)
    }

    /// Each session watching `user`, with what its user may see.
    pub(super) fn watcher_views(
        &self,
        st: &State,
        user: usize,
    ) -> Vec<(u64, containers::Visibility)> {
        st.users[user]
            .watchers
            .iter()
            .filter_map(|sid| {
                let viewer = st.sessions.get(sid)?.user;
                Some((*sid, self.visibility(st, user, viewer)))
            })
            .collect()
    }

    /// Sends `user`'s presence to every session watching it, each as its
    /// user's access level lets it see.
    fn presence_to_watchers(&self, st: &State, user: usize) {
        let uri = self.directory.users[user].sip_uri.clone();
        for sid in &st.users[user].watchers {
            let Some(viewer) = st.sessions.get(sid).map(|s| s.user) else {
                continue;
            };
            let ev = self.user_presence_event(st, viewer, std::slice::from_ref(&uri));
            self.emit(st, *sid, ev);
        }
    }
}
