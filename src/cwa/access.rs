//! Access levels as CWA carries them: OCS 2007's presence containers,
//! their members (`member` / `addMember` / `deleteMember` with
//! `type value`), and the parsing of the `containers` event.
//!
//! Shapes (cwa-sim(1), ACCESS LEVELS, answers the same):
//! `<containers eid><container id><member type value/>…</container>…</containers>`
//! and `<updateContainer rid><container id><addMember type value/></container></updateContainer>`.
//! A `containers` event lists every container after `initiateSession`,
//! then only the container that changed, always with all its members.
//!
//! An assumption, unverified on a real server: moving a person between levels is one document of
//! several `updateContainer` methods, the extra ones with rids `N.1`,
//! `N.2`, ... (rids are strings) whose outcomes nobody waits for; see
//! [`crate::cwa::Command::SetContainerMember`]. A `deleteMember` for a
//! container that does not hold the person may fail on a real CWA: that
//! outcome is ignored, and the `containers` events show what holds.

use xmltree::Element;

use crate::xml;

/// OCS 2007's Public container.
pub const PUBLIC: u32 = 100;
/// OCS 2007's Company container.
pub const COMPANY: u32 = 200;
/// OCS 2007's Team container.
pub const TEAM: u32 = 300;
/// OCS 2007's Personal container.
pub const PERSONAL: u32 = 400;
/// OCS 2007's Blocked container.
pub const BLOCKED: u32 = 32000;
/// The five predefined levels, lowest to highest.
pub const LEVELS: [u32; 5] = [PUBLIC, COMPANY, TEAM, PERSONAL, BLOCKED];
/// Most members kept from one container of a `containers` event; CWA
/// itself refuses more than a few hundred (SIP 413).
pub const MAX_MEMBERS: usize = 2000;
/// Most containers kept from one `containers` event.
pub const MAX_CONTAINERS: usize = 64;

/// Who a container entry stands for (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberType {
    /// One user; the value is the SIP URI.
    Uri,
    /// Every user of a domain; the value is the domain.
    Domain,
    /// Everyone of the user's own company.
    SameEnterprise,
    /// Users of federated companies.
    Federated,
    /// Users of public IM clouds.
    PublicCloud,
    /// Everyone.
    Everyone,
}

impl MemberType {
    /// CWA's name for the type.
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

    /// The type for CWA's name.
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
}

/// One entry of a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerMember {
    /// The type.
    pub kind: MemberType,
    /// The SIP URI (`uri`) or domain (`domain`); empty for the others.
    pub value: String,
}

impl ContainerMember {
    /// A `uri` member.
    pub fn uri(uri: &str) -> ContainerMember {
        ContainerMember {
            kind: MemberType::Uri,
            value: uri.to_string(),
        }
    }

    /// The `addMember` / `deleteMember` element for this entry.
    pub(crate) fn to_element(&self, add: bool) -> Element {
        let name = if add { "addMember" } else { "deleteMember" };
        let mut e = xml::elem(name, &[("type", self.kind.name())]);
        if !self.value.is_empty() {
            e.attributes.insert("value".into(), self.value.clone());
        }
        e
    }
}

/// One container of a `containers` event, with all its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The container id (see [`LEVELS`]).
    pub id: u32,
    /// Its members, at most [`MAX_MEMBERS`].
    pub members: Vec<ContainerMember>,
}

/// The containers of a `containers` event. Containers without a numeric
/// id and members of an unknown type are skipped (logged): one bad entry
/// must not hide the rest.
pub(crate) fn parse_containers(e: &Element) -> Vec<Container> {
    let mut out = Vec::new();
    for c in xml::children(e).filter(|c| c.name == "container") {
        if out.len() >= MAX_CONTAINERS {
            log::warn!("containers event with more than {MAX_CONTAINERS} containers: rest dropped");
            break;
        }
        let Some(id) = xml::attr(c, "id").and_then(|i| i.trim().parse::<u32>().ok()) else {
            log::warn!("containers event: container without a numeric id skipped");
            continue;
        };
        let mut members = Vec::new();
        for m in xml::children(c).filter(|m| m.name == "member") {
            let Some(kind) = xml::attr(m, "type").and_then(MemberType::from_name) else {
                log::warn!("container {id}: member of unknown type skipped");
                continue;
            };
            if members.len() >= MAX_MEMBERS {
                log::warn!("container {id}: more than {MAX_MEMBERS} members, rest dropped");
                break;
            }
            let value = xml::attr(m, "value").unwrap_or("").trim().to_string();
            members.push(ContainerMember { kind, value });
        }
        out.push(Container { id, members });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_parse_and_skip_what_is_malformed() {
        let doc = r#"<containers eid="4">
            <container id="32000"><member type="uri" value=" sip:eve@x.com "/></container>
            <container id="200"><member type="sameEnterprise"/><member type="friends" value="x"/><member/></container>
            <container id="x"><member type="everyone"/></container>
            <container><member type="everyone"/></container>
            <container id="400"/>
        </containers>"#;
        let c = parse_containers(&xml::parse(doc.as_bytes(), 1 << 16).unwrap());
        assert_eq!(
            c,
            vec![
                Container {
                    id: BLOCKED,
                    members: vec![ContainerMember::uri("sip:eve@x.com")]
                },
                Container {
                    id: COMPANY,
                    members: vec![ContainerMember {
                        kind: MemberType::SameEnterprise,
                        value: String::new()
                    }]
                },
                Container {
                    id: PERSONAL,
                    members: vec![]
                },
            ]
        );
    }

    #[test]
    fn members_per_container_are_bounded() {
        let mut doc = String::from(r#"<containers><container id="300">"#);
        for i in 0..MAX_MEMBERS + 5 {
            doc.push_str(&format!(r#"<member type="uri" value="sip:u{i}@x"/>"#));
        }
        doc.push_str("</container></containers>");
        let c = parse_containers(&xml::parse(doc.as_bytes(), 1 << 20).unwrap());
        assert_eq!(c[0].members.len(), MAX_MEMBERS);
    }
}
