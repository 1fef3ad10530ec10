//! Contact lists and groups: the `contactGroup` full list and deltas,
//! `addContact`, `updateContact`, `deleteContact`, `addGroup`,
//! `updateGroup` and `deleteGroup`.

use xmltree::Element;

use super::{
    accepted, err_elem, failed, invalid, sip_err_elem, succeeded, Contact, Group, Ocs, State,
    DEFAULT_GROUP_ID, DEFAULT_GROUP_NAME,
};
use crate::sim::users::valid_sip_uri;
use crate::xml::{attr, child_text, elem, with_child};

/// Bounds on a user's contact list, so one client cannot grow memory
/// without limit.
const MAX_CONTACTS: usize = 1000;
const MAX_GROUPS: usize = 64;

impl Ocs {
    fn contact_elem(c: &Contact, action: Option<&str>) -> Element {
        let groups: Vec<String> = c.groups.iter().map(u32::to_string).collect();
        let mut e = elem(
            "contact",
            &[
                ("uri", &c.uri),
                ("name", &c.name),
                ("subscribed", if c.subscribed { "true" } else { "false" }),
                ("tag", &c.tag),
                ("groups", &groups.join(" ")),
            ],
        );
        if let Some(a) = action {
            e.attributes.insert("action".into(), a.into());
        }
        e
    }

    fn group_elem(g: &Group, action: Option<&str>) -> Element {
        let mut e = elem(
            "group",
            &[
                ("id", &g.id.to_string()),
                ("name", &g.name),
                ("externalUri", &g.external_uri),
            ],
        );
        if let Some(a) = action {
            e.attributes.insert("action".into(), a.into());
        }
        e
    }

    pub(super) fn contact_group_full(&self, st: &State, user: usize) -> Element {
        let u = &st.users[user];
        let mut ev = elem(
            "contactGroup",
            &[("fullList", "true"), ("deltaNum", &u.delta_num.to_string())],
        );
        for g in &u.groups {
            ev = with_child(ev, Self::group_elem(g, None));
        }
        for c in &u.contacts {
            ev = with_child(ev, Self::contact_elem(c, None));
        }
        ev
    }

    fn contact_group_delta(&self, st: &mut State, user: usize, item: Element) {
        st.users[user].delta_num += 1;
        let ev = with_child(
            elem(
                "contactGroup",
                &[
                    ("fullList", "false"),
                    ("deltaNum", &st.users[user].delta_num.to_string()),
                ],
            ),
            item,
        );
        self.emit_user(st, user, &ev);
    }

    pub(super) fn add_update_contact(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let user = st.sessions[&sid].user;
        let adding = m.name == "addContact";
        let Some(c) = m.get_child("contact") else {
            return invalid(rid, 18001, "missing contact");
        };
        let Some(uri) = attr(c, "uri").map(str::trim).filter(|u| valid_sip_uri(u)) else {
            return invalid(rid, 18001, "contact without a valid sip: uri");
        };
        let mut groups = Vec::new();
        for g in attr(c, "groups").unwrap_or("").split_whitespace() {
            match g.parse::<u32>() {
                Ok(id) if st.users[user].groups.iter().any(|x| x.id == id) => groups.push(id),
                _ => return failed(rid, err_elem(18102, &format!("no group with id {g}"))),
            }
        }
        let existing = st.users[user]
            .contacts
            .iter()
            .position(|x| x.uri.eq_ignore_ascii_case(uri));
        let target = self.directory.by_uri(uri);
        let contact = match (adding, existing) {
            (true, Some(_)) => return failed(rid, sip_err_elem(409, "Conflict")),
            (false, None) => return failed(rid, sip_err_elem(404, "Not Found")),
            (true, None) => {
                if st.users[user].contacts.len() >= MAX_CONTACTS {
                    return failed(rid, err_elem(18102, "contact list full"));
                }
                let c = Contact {
                    uri: uri.to_string(),
                    name: attr(c, "name")
                        .map(str::to_string)
                        .or_else(|| target.map(|t| self.directory.users[t].display_name.clone()))
                        .unwrap_or_default(),
                    subscribed: attr(c, "subscribed") == Some("true"),
                    tag: attr(c, "tag").unwrap_or("").to_string(),
                    groups: if groups.is_empty() {
                        vec![DEFAULT_GROUP_ID]
                    } else {
                        groups
                    },
                };
                st.users[user].contacts.push(c.clone());
                c
            }
            (false, Some(i)) => {
                let x = &mut st.users[user].contacts[i];
                if let Some(n) = attr(c, "name") {
                    x.name = n.to_string();
                }
                if let Some(s) = attr(c, "subscribed") {
                    x.subscribed = s == "true";
                }
                if let Some(t) = attr(c, "tag") {
                    x.tag = t.to_string();
                }
                if !groups.is_empty() {
                    x.groups = groups;
                }
                x.clone()
            }
        };
        self.contact_group_delta(
            st,
            user,
            Self::contact_elem(&contact, Some(if adding { "added" } else { "updated" })),
        );
        if let Some(t) = target {
            let sids = st.users[user].sessions.clone();
            for s in sids {
                if contact.subscribed {
                    self.watch(st, s, t);
                } else {
                    self.unwatch(st, s, t);
                }
            }
            if contact.subscribed {
                let ev = self.user_presence_event(st, user, std::slice::from_ref(&contact.uri));
                self.emit_user(st, user, &ev);
            }
            if adding {
                let acknowledged = st.users[t].acknowledged.contains(&user);
                let ev = self.subscriber_delta(user, acknowledged);
                self.emit_user(st, t, &ev);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    pub(super) fn delete_contact(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        m: &Element,
    ) -> Element {
        let user = st.sessions[&sid].user;
        let uri = child_text(m, "uri")
            .or_else(|| {
                m.get_child("contact")
                    .and_then(|c| attr(c, "uri").map(str::to_string))
            })
            .unwrap_or_default();
        let uri = uri.trim();
        if !valid_sip_uri(uri) {
            return invalid(rid, 18001, "deleteContact without a valid uri");
        }
        let Some(i) = st.users[user]
            .contacts
            .iter()
            .position(|x| x.uri.eq_ignore_ascii_case(uri))
        else {
            return failed(rid, sip_err_elem(404, "Not Found"));
        };
        let c = st.users[user].contacts.remove(i);
        self.contact_group_delta(st, user, Self::contact_elem(&c, Some("deleted")));
        if let Some(t) = self.directory.by_uri(uri) {
            let sids = st.users[user].sessions.clone();
            for s in sids {
                self.unwatch(st, s, t);
            }
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    pub(super) fn group_op(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let user = st.sessions[&sid].user;
        let Some(g) = m.get_child("group") else {
            return invalid(rid, 18001, "missing group");
        };
        let name = attr(g, "name").map(str::trim);
        let id = attr(g, "id").and_then(|s| s.trim().parse::<u32>().ok());
        let u = &mut st.users[user];
        let item = match m.name.as_str() {
            "addGroup" => {
                let Some(name) = name.filter(|n| !n.is_empty() && n.len() <= 256) else {
                    return invalid(rid, 18001, "addGroup without a name");
                };
                if u.groups.iter().any(|x| x.name.eq_ignore_ascii_case(name)) {
                    return failed(rid, sip_err_elem(485, "Ambiguous"));
                }
                if u.groups.len() >= MAX_GROUPS {
                    return failed(rid, err_elem(18102, "too many groups"));
                }
                let grp = Group {
                    id: u.next_group_id,
                    name: name.to_string(),
                    external_uri: attr(g, "externalUri").unwrap_or("").to_string(),
                };
                u.next_group_id += 1;
                u.groups.push(grp.clone());
                Self::group_elem(&grp, Some("added"))
            }
            "updateGroup" => {
                let Some(id) = id else {
                    return invalid(rid, 18001, "updateGroup without an id");
                };
                if let Some(n) = name {
                    if u.groups
                        .iter()
                        .any(|x| x.id != id && x.name.eq_ignore_ascii_case(n))
                    {
                        return failed(rid, sip_err_elem(485, "Ambiguous"));
                    }
                }
                let Some(grp) = u.groups.iter_mut().find(|x| x.id == id) else {
                    return failed(rid, sip_err_elem(404, "Not Found"));
                };
                if grp.id == DEFAULT_GROUP_ID && name.is_some_and(|n| n != DEFAULT_GROUP_NAME) {
                    return failed(rid, err_elem(18102, "the default group cannot be renamed"));
                }
                if let Some(n) = name.filter(|n| !n.is_empty()) {
                    grp.name = n.to_string();
                }
                if let Some(x) = attr(g, "externalUri") {
                    grp.external_uri = x.to_string();
                }
                Self::group_elem(grp, Some("updated"))
            }
            _ => {
                let Some(id) = id else {
                    return invalid(rid, 18001, "deleteGroup without an id");
                };
                if id == DEFAULT_GROUP_ID {
                    return failed(rid, err_elem(18102, "the default group cannot be deleted"));
                }
                let Some(i) = u.groups.iter().position(|x| x.id == id) else {
                    return failed(rid, sip_err_elem(404, "Not Found"));
                };
                let grp = u.groups.remove(i);
                // Contacts left without a group move to the default group.
                for c in &mut u.contacts {
                    c.groups.retain(|x| *x != id);
                    if c.groups.is_empty() {
                        c.groups.push(DEFAULT_GROUP_ID);
                    }
                }
                Self::group_elem(&grp, Some("deleted"))
            }
        };
        self.contact_group_delta(st, user, item);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }
}
