//! IM conversations: `conference` and its actions (`initiateImSession`,
//! `acceptImSession`, `sendMessage`, `notifyComposing`,
//! `terminateImSession`, `inviteParticipants`), invitations across a
//! user's endpoints, escalation to a multiparty conversation, and the end
//! of a conversation nobody is left in.

use std::collections::HashMap;

use xmltree::Element;

use super::{
    accepted, err_elem, failed, invalid, sip_err_elem, succeeded, uri_list, Conversation, Member,
    MemberState, Ocs, PendingInvite, State,
};
use crate::sim::containers;
use crate::xml::{self, attr, child_text, children, elem, text_elem, with_child};

/// A `conference` event of conversation `conf` carrying `item`.
fn conf_event(conf: u64, item: Element) -> Element {
    with_child(elem("conference", &[("confId", &conf.to_string())]), item)
}

/// `(format, content)` of a message: `message/format,content` under `e`,
/// or `format`/`content` directly under it.
fn message_of(e: &Element) -> Option<(String, String)> {
    let holder = e.get_child("message").unwrap_or(e);
    let content = child_text(holder, "content")?;
    let format = child_text(holder, "format").unwrap_or_else(|| "text/plain".into());
    Some((format, content))
}

fn message_elem(format: &str, content: &str) -> Element {
    with_child(
        with_child(elem("message", &[]), text_elem("format", format)),
        text_elem("content", content),
    )
}

impl Ocs {
    pub(super) fn conference(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let Some(conf) = attr(m, "confId").and_then(|c| c.trim().parse::<u64>().ok()) else {
            return invalid(rid, 18001, "conference without a numeric confId");
        };
        let Some(action) = children(m).next() else {
            return invalid(rid, 18001, "conference without an action");
        };
        match action.name.as_str() {
            "initiateImSession" => self.initiate_im(st, sid, rid, action),
            "acceptImSession" => self.accept_im(st, sid, rid, conf),
            "sendMessage" => self.send_message(st, sid, rid, conf, action),
            "notifyComposing" => self.notify_composing(st, sid, rid, conf, action),
            "terminateImSession" => {
                if !st.sessions[&sid].conversations.contains(&conf) {
                    return failed(rid, err_elem(18102, "not in this conversation"));
                }
                self.leave_conversation(st, sid, conf, Some(rid), 603, "Decline");
                accepted(rid)
            }
            "inviteParticipants" => self.invite_participants(st, sid, rid, conf, action),
            other => invalid(rid, 18001, &format!("unknown conference action `{other}`")),
        }
    }

    fn participant_elem(&self, user: usize) -> Element {
        let u = &self.directory.users[user];
        elem(
            "participant",
            &[
                ("uri", &u.sip_uri),
                ("name", &u.display_name),
                ("role", "attendee"),
                ("archiving", "false"),
            ],
        )
    }

    fn initiate_im(&self, st: &mut State, sid: u64, rid: &str, action: &Element) -> Element {
        let uris = match uri_list(action) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        let me = st.sessions[&sid].user;
        if uris.iter().any(|u| self.directory.by_uri(u) == Some(me)) {
            return invalid(rid, 18001, "cannot invite yourself");
        }
        let first = message_of(action);
        let subject = child_text(action, "subject").unwrap_or_default();
        let conf = st.next_conf;
        st.next_conf += 1;
        st.conversations.insert(
            conf,
            Conversation {
                subject,
                members: vec![Member {
                    user: me,
                    state: MemberState::Connected { sid },
                }],
                connected_once: false,
                escalated: false,
                pending: HashMap::new(),
            },
        );
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.conversations.insert(conf);
        }
        self.emit(
            st,
            sid,
            conf_event(conf, text_elem("imSessionState", "connecting")),
        );
        self.invite(st, sid, rid, conf, &uris, first, uris.len() == 1);
        elem(
            "initiateImSessionAccepted",
            &[("rid", rid), ("confId", &conf.to_string())],
        )
    }

    /// Sends invitations for `uris` to conversation `conf` on behalf of
    /// session `sid` (request `rid`), failing offline invitees at once.
    #[allow(clippy::too_many_arguments)]
    fn invite(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        uris: &[String],
        first: Option<(String, String)>,
        peer_to_peer: bool,
    ) {
        let inviter = st.sessions[&sid].user;
        let mut online = 0usize;
        for uri in uris {
            let target = self.directory.by_uri(uri);
            let already = target.is_some_and(|t| {
                st.conversations
                    .get(&conf)
                    .is_some_and(|c| c.members.iter().any(|m| m.user == t))
            });
            // A user who blocked the inviter is offline to them.
            let blocked = target.is_some_and(|t| {
                st.users[t]
                    .containers
                    .level_of(&self.directory.users[inviter].sip_uri, true)
                    == containers::BLOCKED
            });
            let sids: Vec<u64> = match target {
                Some(t) if !already && !blocked => st.users[t].sessions.clone(),
                _ => Vec::new(),
            };
            if sids.is_empty() {
                // Offline, blocking or unknown (or already present): SIP 480.
                self.emit(
                    st,
                    sid,
                    conf_event(conf, elem("inviteFailed", &[("uri", uri)])),
                );
                continue;
            }
            let t = target.unwrap_or_default();
            online += 1;
            let mut invitation = elem("imSessionReceived", &[]);
            let iu = &self.directory.users[inviter];
            invitation = with_child(
                invitation,
                elem(
                    "inviter",
                    &[
                        ("uri", &iu.sip_uri),
                        ("name", &iu.display_name),
                        ("sourceNetwork", "sameEnterprise"),
                    ],
                ),
            );
            invitation = with_child(invitation, text_elem("role", "attendee"));
            invitation = with_child(
                invitation,
                text_elem(
                    "escalationMode",
                    if peer_to_peer {
                        "invitingPeer"
                    } else {
                        "escalating"
                    },
                ),
            );
            let subject = st
                .conversations
                .get(&conf)
                .map(|c| c.subject.clone())
                .unwrap_or_default();
            invitation = with_child(invitation, text_elem("subject", &subject));
            if let Some((format, content)) = &first {
                invitation = with_child(invitation, message_elem(format, content));
            }
            for s in &sids {
                self.emit(st, *s, conf_event(conf, invitation.clone()));
                if let Some(sess) = st.sessions.get_mut(s) {
                    sess.conversations.insert(conf);
                }
            }
            if let Some(c) = st.conversations.get_mut(&conf) {
                c.members.push(Member {
                    user: t,
                    state: MemberState::Invited {
                        sids,
                        by: (sid, rid.to_string()),
                    },
                });
            }
        }
        if online == 0 {
            self.emit(
                st,
                sid,
                failed(rid, sip_err_elem(480, "Temporarily Unavailable")),
            );
            self.maybe_end_conversation(st, conf);
        } else if let Some(c) = st.conversations.get_mut(&conf) {
            c.pending.insert(
                (sid, rid.to_string()),
                PendingInvite {
                    remaining: online,
                    succeeded: false,
                },
            );
        }
    }

    fn accept_im(&self, st: &mut State, sid: u64, rid: &str, conf: u64) -> Element {
        let user = st.sessions[&sid].user;
        let Some(c) = st.conversations.get_mut(&conf) else {
            return failed(rid, err_elem(18102, "no such conversation"));
        };
        let Some(idx) = c.members.iter().position(|m| {
            m.user == user
                && matches!(&m.state, MemberState::Invited { sids, .. } if sids.contains(&sid))
        }) else {
            return failed(
                rid,
                err_elem(18102, "no pending invitation in this conversation"),
            );
        };
        let MemberState::Invited { sids, by } =
            std::mem::replace(&mut c.members[idx].state, MemberState::Connected { sid })
        else {
            unreachable!("matched Invited above");
        };
        let first_connect = !c.connected_once;
        c.connected_once = true;
        let others: Vec<(u64, usize)> = c
            .members
            .iter()
            .filter_map(|m| match m.state {
                MemberState::Connected { sid: s } if s != sid => Some((s, m.user)),
                _ => None,
            })
            .collect();
        let escalate = !c.escalated && others.len() >= 2;
        if escalate {
            c.escalated = true;
        }
        let inviter_done = match c.pending.get_mut(&by) {
            Some(p) if !p.succeeded => {
                p.succeeded = true;
                p.remaining = p.remaining.saturating_sub(1);
                true
            }
            Some(p) => {
                p.remaining = p.remaining.saturating_sub(1);
                false
            }
            None => false,
        };
        // Other endpoints of the same user stop ringing.
        for s in sids.iter().filter(|s| **s != sid) {
            self.emit(
                st,
                *s,
                conf_event(conf, text_elem("imSessionState", "terminated")),
            );
            if let Some(sess) = st.sessions.get_mut(s) {
                sess.conversations.remove(&conf);
            }
        }
        for (s, u) in &others {
            self.emit(st, sid, conf_event(conf, self.participant_elem(*u)));
            self.emit(st, *s, conf_event(conf, self.participant_elem(user)));
            if first_connect {
                self.emit(
                    st,
                    *s,
                    conf_event(conf, text_elem("imSessionState", "connected")),
                );
            }
        }
        self.emit(
            st,
            sid,
            conf_event(conf, text_elem("imSessionState", "connected")),
        );
        if escalate {
            let all: Vec<u64> = others.iter().map(|(s, _)| *s).chain([sid]).collect();
            for s in all {
                self.emit(
                    st,
                    s,
                    conf_event(conf, text_elem("escalationMode", "escalated")),
                );
            }
        }
        if inviter_done {
            self.emit(st, by.0, succeeded(&by.1));
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn connected_peers(&self, st: &State, conf: u64, sid: u64) -> Option<Vec<u64>> {
        let c = st.conversations.get(&conf)?;
        let mut me_connected = false;
        let mut peers = Vec::new();
        for m in &c.members {
            if let MemberState::Connected { sid: s } = m.state {
                if s == sid {
                    me_connected = true;
                } else {
                    peers.push(s);
                }
            }
        }
        me_connected.then_some(peers)
    }

    fn send_message(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let Some((format, content)) = message_of(action) else {
            return invalid(rid, 18001, "sendMessage without content");
        };
        let Some(peers) = self.connected_peers(st, conf, sid) else {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        };
        if peers.is_empty() {
            // Until someone else has joined, a message has nobody to go to:
            // `messageSendFailed`, then the request fails.
            self.emit(
                st,
                sid,
                conf_event(conf, elem("messageSendFailed", &[("messageId", rid)])),
            );
            self.emit(
                st,
                sid,
                failed(rid, err_elem(18102, "no connected participant")),
            );
            return accepted(rid);
        }
        let sender = self.directory.users[st.sessions[&sid].user].sip_uri.clone();
        let ev = conf_event(
            conf,
            with_child(
                elem("messageReceived", &[("sender", &sender)]),
                message_elem(&format, &content),
            ),
        );
        for p in peers {
            self.emit(st, p, ev.clone());
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn notify_composing(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let state = xml::text(action).trim().to_string();
        if state != "composing" && state != "idle" {
            return invalid(rid, 18001, "notifyComposing must be composing or idle");
        }
        let Some(peers) = self.connected_peers(st, conf, sid) else {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        };
        let uri = self.directory.users[st.sessions[&sid].user].sip_uri.clone();
        let mut item = text_elem("composingState", &state);
        item.attributes.insert("uri".into(), uri);
        let ev = conf_event(conf, item);
        for p in peers {
            self.emit(st, p, ev.clone());
        }
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }

    fn invite_participants(
        &self,
        st: &mut State,
        sid: u64,
        rid: &str,
        conf: u64,
        action: &Element,
    ) -> Element {
        let uris = match uri_list(action) {
            Ok(u) => u,
            Err(why) => return invalid(rid, 18001, &why),
        };
        if self.connected_peers(st, conf, sid).is_none() {
            return failed(rid, err_elem(18102, "not connected to this conversation"));
        }
        self.invite(st, sid, rid, conf, &uris, None, false);
        accepted(rid)
    }

    /// Session `sid` leaves conversation `conf`: by `terminateImSession`
    /// (`rid` set; a pending invitation is declined with `decline_code`) or
    /// because the session ended (`rid` None).
    pub(super) fn leave_conversation(
        &self,
        st: &mut State,
        sid: u64,
        conf: u64,
        rid: Option<&str>,
        decline_code: u16,
        decline_reason: &str,
    ) {
        if let Some(s) = st.sessions.get_mut(&sid) {
            s.conversations.remove(&conf);
        }
        let Some(c) = st.conversations.get_mut(&conf) else {
            return;
        };
        let Some(idx) = c.members.iter().position(|m| match &m.state {
            MemberState::Connected { sid: s } => *s == sid,
            MemberState::Invited { sids, .. } => sids.contains(&sid),
        }) else {
            return;
        };
        let user = c.members[idx].user;
        let uri = self.directory.users[user].sip_uri.clone();
        let mut notes: Vec<(u64, Element)> = Vec::new();
        match &mut c.members[idx].state {
            MemberState::Connected { .. } => {
                c.members.remove(idx);
                for m in &c.members {
                    if let MemberState::Connected { sid: s } = m.state {
                        notes.push((s, conf_event(conf, text_elem("participantRemoved", &uri))));
                    }
                }
                if rid.is_some() {
                    notes.push((
                        sid,
                        conf_event(conf, text_elem("imSessionState", "terminated")),
                    ));
                }
            }
            MemberState::Invited { sids, by } => {
                sids.retain(|s| *s != sid);
                if sids.is_empty() {
                    let by = by.clone();
                    c.members.remove(idx);
                    notes.push((
                        by.0,
                        conf_event(conf, elem("inviteFailed", &[("uri", &uri)])),
                    ));
                    if let Some(p) = c.pending.get_mut(&by) {
                        p.remaining = p.remaining.saturating_sub(1);
                        if p.remaining == 0 && !p.succeeded {
                            notes.push((
                                by.0,
                                failed(&by.1, sip_err_elem(decline_code, decline_reason)),
                            ));
                        }
                    }
                }
            }
        }
        for (s, e) in notes {
            self.emit(st, s, e);
        }
        if let Some(rid) = rid {
            self.emit(st, sid, succeeded(rid));
        }
        self.maybe_end_conversation(st, conf);
    }

    /// Ends a conversation left with fewer than two members (connected or
    /// invited), or whose only members are invitations nobody can answer.
    fn maybe_end_conversation(&self, st: &mut State, conf: u64) {
        let Some(c) = st.conversations.get(&conf) else {
            return;
        };
        let connected = c
            .members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Connected { .. }))
            .count();
        if c.members.len() >= 2 && connected >= 1 {
            return;
        }
        let Some(c) = st.conversations.remove(&conf) else {
            return;
        };
        for m in c.members {
            let sids = match m.state {
                MemberState::Connected { sid } => vec![sid],
                MemberState::Invited { sids, .. } => sids,
            };
            for s in sids {
                self.emit(
                    st,
                    s,
                    conf_event(conf, text_elem("imSessionState", "terminated")),
                );
                if let Some(sess) = st.sessions.get_mut(&s) {
                    sess.conversations.remove(&conf);
                }
            }
        }
    }
}
