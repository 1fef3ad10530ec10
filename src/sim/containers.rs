//! Access levels in the simulated OCS: each user's presence containers
//! (CWA's `containers` event, `updateContainer` › `container id` ›
//! `addMember`/`deleteMember type value`), which level a watcher falls
//! in, and what each level lets the watcher see.
//!
//! The levels are OCS 2007's five predefined containers: Public (100),
//! Company (200), Team (300), Personal (400) and Blocked (32000). Other
//! ids in 1..=32767 are kept as CWA keeps them but filter nothing.
//!
//! Choices CWA's documented behaviour leaves open (cwa-sim(1), ACCESS
//! LEVELS):
//! - a new user starts with `sameEnterprise` in Company and `federated`
//!   and `publicCloud` in Public, as Office Communicator 2007 sets up;
//! - a watcher falls in the container of its most specific member (a
//!   `uri` over a `domain`, a `domain` over `sameEnterprise`, `federated`
//!   and `publicCloud`, those over `everyone`); among containers that
//!   match equally, the highest id (Blocked over Personal over ... );
//!   a watcher no member matches is Public;
//! - every user of the simulator is of one enterprise: `sameEnterprise`
//!   matches them all, `federated` and `publicCloud` none;
//! - Blocked sees the availability Offline (18000) and no note, Public the
//!   real availability and no note, Company, Team and Personal everything
//!   (Office Communicator 2007 shows the note from Company up);
//! - deleting a member a container does not hold succeeds (so a client
//!   can clear a person from every other level without knowing where
//!   they are); a container holds at most [`MAX_MEMBERS`] members and a
//!   user [`MAX_TOTAL_MEMBERS`] in all, beyond which `addMember` fails
//!   with SIP 413, the answer CWA documents for a full container.

use std::collections::BTreeMap;

use xmltree::Element;

use crate::xml::{attr, children, elem, with_child};

/// The Public container.
pub const PUBLIC: u32 = 100;
/// The Company container.
pub const COMPANY: u32 = 200;
/// The Team container.
pub const TEAM: u32 = 300;
/// The Personal container.
pub const PERSONAL: u32 = 400;
/// The Blocked container.
pub const BLOCKED: u32 = 32000;
/// Most members in one container.
pub const MAX_MEMBERS: usize = 500;
/// Most members in all of a user's containers.
pub const MAX_TOTAL_MEMBERS: usize = 2000;
/// Container ids CWA accepts.
const ID_RANGE: std::ops::RangeInclusive<u32> = 1..=32767;

/// A member's type (`addMember type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberType {
    /// One user (`value` is the SIP URI).
    Uri,
    /// Every user of a domain (`value` is the domain).
    Domain,
    /// Every user of the same enterprise.
    SameEnterprise,
    /// Users of federated companies.
    Federated,
    /// Users of public IM clouds.
    PublicCloud,
    /// Everyone.
    Everyone,
}

impl MemberType {
    /// Parses CWA's name.
    pub fn from_name(s: &str) -> Option<MemberType> {
        Some(match s {
            "uri" => MemberType::Uri,
            "domain" => MemberType::Domain,
            "sameEnterprise" => MemberType::SameEnterprise,
            "federated" => MemberType::Federated,
            "publicCloud" => MemberType::PublicCloud,
            "everyone" => MemberType::Everyone,
            _ => return None,
        })
    }

    /// CWA's name.
    pub fn name(self) -> &'static str {
        match self {
            MemberType::Uri => "uri",
            MemberType::Domain => "domain",
            MemberType::SameEnterprise => "sameEnterprise",
            MemberType::Federated => "federated",
            MemberType::PublicCloud => "publicCloud",
            MemberType::Everyone => "everyone",
        }
    }

    /// How specific a match on this type is (higher wins).
    fn specificity(self) -> u8 {
        match self {
            MemberType::Uri => 3,
            MemberType::Domain => 2,
            MemberType::SameEnterprise | MemberType::Federated | MemberType::PublicCloud => 1,
            MemberType::Everyone => 0,
        }
    }
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The type.
    pub kind: MemberType,
    /// The URI or domain (lower case), empty for the other types.
    pub value: String,
}

impl Member {
    /// Whether `watcher` (a SIP URI of this simulator's enterprise when
    /// `same_enterprise`) matches this entry.
    fn matches(&self, watcher: &str, same_enterprise: bool) -> bool {
        match self.kind {
            MemberType::Uri => self.value.eq_ignore_ascii_case(watcher),
            MemberType::Domain => watcher
                .rsplit_once('@')
                .is_some_and(|(_, host)| host.eq_ignore_ascii_case(&self.value)),
            MemberType::SameEnterprise => same_enterprise,
            MemberType::Federated | MemberType::PublicCloud => false,
            MemberType::Everyone => true,
        }
    }
}

/// What a watcher at some level may see of a user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// The real availability (else Offline, 18000).
    pub availability: bool,
    /// The note.
    pub note: bool,
}

/// One add or delete from an `updateContainer` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// True for `addMember`, false for `deleteMember`.
    pub add: bool,
    /// The entry.
    pub member: Member,
}

/// A user's containers.
#[derive(Debug, Clone)]
pub struct Containers {
    by_id: BTreeMap<u32, Vec<Member>>,
}

impl Default for Containers {
    fn default() -> Self {
        let rule = |kind| Member {
            kind,
            value: String::new(),
        };
        let mut by_id = BTreeMap::new();
        by_id.insert(
            PUBLIC,
            vec![rule(MemberType::Federated), rule(MemberType::PublicCloud)],
        );
        by_id.insert(COMPANY, vec![rule(MemberType::SameEnterprise)]);
        by_id.insert(TEAM, Vec::new());
        by_id.insert(PERSONAL, Vec::new());
        by_id.insert(BLOCKED, Vec::new());
        Containers { by_id }
    }
}

impl Containers {
    /// The container `watcher` falls in (see the module notes).
    pub fn level_of(&self, watcher: &str, same_enterprise: bool) -> u32 {
        let mut best: Option<(u8, u32)> = None;
        for (id, members) in &self.by_id {
            for m in members
                .iter()
                .filter(|m| m.matches(watcher, same_enterprise))
            {
                let key = (m.kind.specificity(), *id);
                if best.map_or(true, |b| key > b) {
                    best = Some(key);
                }
            }
        }
        best.map_or(PUBLIC, |(_, id)| id)
    }

    /// What a watcher in container `level` sees.
    pub fn visibility(level: u32) -> Visibility {
        match level {
            BLOCKED => Visibility {
                availability: false,
                note: false,
            },
            COMPANY | TEAM | PERSONAL => Visibility {
                availability: true,
                note: true,
            },
            // Public, and containers that are no OCS 2007 level.
            _ => Visibility {
                availability: true,
                note: false,
            },
        }
    }

    /// Applies `changes` to container `id`, all or nothing. Err: SIP code
    /// and reason.
    pub fn update(&mut self, id: u32, changes: &[Change]) -> Result<(), (u16, &'static str)> {
        let mut next = self.by_id.get(&id).cloned().unwrap_or_default();
        for c in changes {
            let at = next.iter().position(|m| *m == c.member);
            match (c.add, at) {
                (true, None) => next.push(c.member.clone()),
                (false, Some(i)) => {
                    next.remove(i);
                }
                // Adding a member twice or deleting an absent one: no-op.
                _ => {}
            }
        }
        let others: usize = self
            .by_id
            .iter()
            .filter(|(k, _)| **k != id)
            .map(|(_, v)| v.len())
            .sum();
        if next.len() > MAX_MEMBERS || others + next.len() > MAX_TOTAL_MEMBERS {
            return Err((413, "Request Entity Too Large"));
        }
        self.by_id.insert(id, next);
        Ok(())
    }

    /// The `<container id>` element of container `id`.
    pub fn container_elem(&self, id: u32) -> Element {
        let mut e = elem("container", &[("id", &id.to_string())]);
        for m in self.by_id.get(&id).into_iter().flatten() {
            let mut me = elem("member", &[("type", m.kind.name())]);
            if !m.value.is_empty() {
                me.attributes.insert("value".into(), m.value.clone());
            }
            e = with_child(e, me);
        }
        e
    }

    /// The `containers` event with every container.
    pub fn full_event(&self) -> Element {
        let mut ev = elem("containers", &[]);
        for id in self.by_id.keys() {
            ev = with_child(ev, self.container_elem(*id));
        }
        ev
    }

    /// The `containers` event for one changed container.
    pub fn delta_event(&self, id: u32) -> Element {
        with_child(elem("containers", &[]), self.container_elem(id))
    }
}

/// Parses `<updateContainer rid>` › `<container id>` › `addMember` /
/// `deleteMember`: the container id and its changes, or why the request
/// is invalid. Only the first `container` counts, as with CWA's other
/// single-item requests.
pub fn parse_update(m: &Element) -> Result<(u32, Vec<Change>), String> {
    let c = m
        .get_child("container")
        .ok_or("updateContainer without container")?;
    let id_text = attr(c, "id").ok_or("container without id")?;
    let id = id_text
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|i| ID_RANGE.contains(i))
        .ok_or_else(|| format!("container id `{id_text}` is not in 1..32767"))?;
    let mut changes = Vec::new();
    for op in children(c) {
        let add = match op.name.as_str() {
            "addMember" => true,
            "deleteMember" => false,
            other => return Err(format!("unexpected <{other}> in container")),
        };
        if changes.len() >= MAX_MEMBERS {
            return Err(format!("more than {MAX_MEMBERS} changes in one request"));
        }
        let type_text = attr(op, "type").ok_or("member without type")?;
        let kind = MemberType::from_name(type_text)
            .ok_or_else(|| format!("unknown member type `{type_text}`"))?;
        let value = attr(op, "value").unwrap_or("").trim().to_ascii_lowercase();
        let value = match kind {
            MemberType::Uri if super::users::valid_sip_uri(&value) => value,
            MemberType::Uri => return Err(format!("uri member `{value}` is not a sip: URI")),
            MemberType::Domain if !value.is_empty() && value.len() <= 255 => value,
            MemberType::Domain => return Err("domain member without a domain".into()),
            _ => String::new(),
        };
        changes.push(Change {
            add,
            member: Member { kind, value },
        });
    }
    if changes.is_empty() {
        return Err("container without addMember or deleteMember".into());
    }
    Ok((id, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    fn uri(u: &str) -> Member {
        Member {
            kind: MemberType::Uri,
            value: u.into(),
        }
    }

    #[test]
    fn the_most_specific_member_wins_then_the_highest_container() {
        let mut c = Containers::default();
        assert_eq!(c.level_of("sip:bob@contoso.com", true), COMPANY);
        assert_eq!(c.level_of("sip:bob@contoso.com", false), PUBLIC);
        let add = |m| Change {
            add: true,
            member: m,
        };
        c.update(TEAM, &[add(uri("sip:bob@contoso.com"))]).unwrap();
        assert_eq!(c.level_of("sip:BOB@contoso.com", true), TEAM);
        c.update(BLOCKED, &[add(uri("sip:bob@contoso.com"))])
            .unwrap();
        assert_eq!(c.level_of("sip:bob@contoso.com", true), BLOCKED);
        let domain = Member {
            kind: MemberType::Domain,
            value: "contoso.com".into(),
        };
        c.update(PERSONAL, &[add(domain)]).unwrap();
        assert_eq!(c.level_of("sip:eve@contoso.com", true), PERSONAL);
        assert_eq!(c.level_of("sip:bob@contoso.com", true), BLOCKED);
        // Deleting what is not there is no error.
        let del = Change {
            add: false,
            member: uri("sip:nobody@contoso.com"),
        };
        c.update(TEAM, &[del]).unwrap();
        assert!(!Containers::visibility(BLOCKED).availability);
        assert!(!Containers::visibility(PUBLIC).note);
        assert!(Containers::visibility(TEAM).note);
    }

    #[test]
    fn containers_are_bounded() {
        let mut c = Containers::default();
        let many: Vec<Change> = (0..=MAX_MEMBERS)
            .map(|i| Change {
                add: true,
                member: uri(&format!("sip:u{i}@x.com")),
            })
            .collect();
        assert_eq!(
            c.update(TEAM, &many),
            Err((413, "Request Entity Too Large"))
        );
        assert_eq!(c.level_of("sip:u0@x.com", true), COMPANY, "all or nothing");
    }

    #[test]
    fn malformed_updates_are_refused_with_a_reason() {
        let parse = |s: &str| parse_update(&xml::parse(s.as_bytes(), 1 << 16).unwrap());
        let ok = parse(
            r#"<updateContainer rid="1"><container id="400"><deleteMember type="uri" value="sip:A@x.com"/><addMember type="everyone"/></container></updateContainer>"#,
        )
        .unwrap();
        assert_eq!(ok.0, 400);
        assert_eq!(ok.1[0].member, uri("sip:a@x.com"));
        assert!(!ok.1[0].add);
        for (doc, why) in [
            (r#"<updateContainer rid="1"/>"#, "without container"),
            (
                r#"<updateContainer><container id="0"><addMember type="everyone"/></container></updateContainer>"#,
                "1..32767",
            ),
            (
                r#"<updateContainer><container id="x"><addMember type="everyone"/></container></updateContainer>"#,
                "1..32767",
            ),
            (
                r#"<updateContainer><container id="5"><addMember type="friends"/></container></updateContainer>"#,
                "unknown member type",
            ),
            (
                r#"<updateContainer><container id="5"><addMember type="uri" value="bob"/></container></updateContainer>"#,
                "not a sip: URI",
            ),
            (
                r#"<updateContainer><container id="5"><addMember type="domain"/></container></updateContainer>"#,
                "without a domain",
            ),
            (
                r#"<updateContainer><container id="5"/></updateContainer>"#,
                "without addMember",
            ),
            (
                r#"<updateContainer><container id="5"><member/></container></updateContainer>"#,
                "unexpected <member>",
            ),
        ] {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(why), "{doc}: {e}");
        }
    }

    #[test]
    fn events_list_members_with_cwa_names() {
        let c = Containers::default();
        let s = xml::to_string(&c.full_event());
        let company = xml::parse(s.as_bytes(), 1 << 16).unwrap();
        let kinds: Vec<(String, String)> = children(&company)
            .flat_map(|c| {
                children(c).map(move |m| {
                    (
                        attr(c, "id").unwrap().to_string(),
                        attr(m, "type").unwrap().to_string(),
                    )
                })
            })
            .collect();
        assert!(
            kinds.contains(&("200".into(), "sameEnterprise".into())),
            "{s}"
        );
        assert!(s.contains(r#"id="32000""#), "{s}");
        let d = xml::to_string(&c.delta_event(TEAM));
        assert!(d.contains(r#"<container id="300""#), "{d}");
    }
}
