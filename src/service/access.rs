//! Access levels and watchers between the device protocol and CWA.
//!
//! CWA sends the user's presence containers whole after sign-in and then
//! one changed container at a time; the device gets the whole list of
//! people with a level of their own each time. So a session keeps the
//! last membership of the five OCS level containers ([`AccessBook`]).
//! A person named (as a `uri` member) in several level containers has the
//! highest of them, Blocked above all, as OCS ranks containers; `default`
//! is the level of the container holding CWA's `sameEnterprise` member
//! (the user's own company), else of `everyone`. Domain, federated and
//! public-cloud rules are not relayed.
//!
//! Setting a level is one CWA request document: `addMember` to the new
//! level's container, then `deleteMember` from the four others (see
//! [`Command::SetContainerMember`] for why in that order).
//! Acknowledging a watcher is `acknowledgeSubscriber`, followed in the
//! same document by `addContact` when the device adds the watcher back.

use std::collections::BTreeMap;

use crate::cwa::access::{self, Container, ContainerMember, MemberType};
use crate::cwa::{Command, ContactSpec, Subscriber};
use crate::wire::{AccessEntry, AccessLevel, DeviceEvent, Watcher};

/// Most people with a level of their own sent to the device; the rest
/// (by URI order) are left out, logged.
pub const MAX_ACCESS_ENTRIES: usize = 1000;
/// Most watchers in one `watchers` event; more are sent in several.
pub const MAX_WATCHERS_PER_EVENT: usize = 500;
/// Most bytes of text (URIs, names) in one access-levels or watchers
/// event: with the markup around them such an event still fits one
/// frame after deflate, whatever the text.
pub const MAX_EVENT_TEXT_BYTES: usize = 48 * 1024;

/// The CWA container of a level.
pub fn container_of(level: AccessLevel) -> u32 {
    match level {
        AccessLevel::Blocked => access::BLOCKED,
        AccessLevel::Public => access::PUBLIC,
        AccessLevel::Company => access::COMPANY,
        AccessLevel::Team => access::TEAM,
        AccessLevel::Personal => access::PERSONAL,
    }
}

/// The level of a CWA container, if it is one of the five.
pub fn level_of(container: u32) -> Option<AccessLevel> {
    AccessLevel::ALL
        .into_iter()
        .find(|l| container_of(*l) == container)
}

/// The CWA command that gives `uri` the level `level`.
pub fn set_access_command(uri: &str, level: AccessLevel) -> Command {
    let add_to = container_of(level);
    Command::SetContainerMember {
        member: ContainerMember::uri(uri),
        add_to,
        delete_from: access::LEVELS
            .into_iter()
            .filter(|c| *c != add_to)
            .collect(),
    }
}

/// The CWA command that acknowledges `uri` and, with `add_contact`, adds
/// them as a subscribed contact.
pub fn acknowledge_command(
    uri: &str,
    add_contact: bool,
    name: Option<&str>,
    group: Option<&str>,
) -> Command {
    if !add_contact {
        return Command::AcknowledgeSubscribers {
            uris: vec![uri.to_string()],
        };
    }
    Command::AcknowledgeAndAddContact {
        uri: uri.to_string(),
        contact: ContactSpec {
            uri: uri.to_string(),
            name: name.unwrap_or_default().to_string(),
            subscribed: true,
            tag: false,
            groups: group.iter().map(|g| g.to_string()).collect(),
        },
    }
}

/// The device events for a CWA `subscribers` event: none for an empty
/// list, else the watchers in events of at most
/// [`MAX_WATCHERS_PER_EVENT`] watchers and [`MAX_EVENT_TEXT_BYTES`] of
/// text. `cut` shortens a display name to what a device event carries.
pub fn watchers_events(
    subscribers: Vec<Subscriber>,
    cut: impl Fn(String) -> String,
) -> Vec<DeviceEvent> {
    let mut events = Vec::new();
    let mut batch: Vec<Watcher> = Vec::new();
    let mut bytes = 0;
    for s in subscribers.into_iter().filter(|s| !s.uri.is_empty()) {
        let w = Watcher {
            uri: s.uri,
            name: (!s.display_name.is_empty()).then(|| cut(s.display_name)),
            acknowledged: s.acknowledged,
        };
        let size = w.uri.len() + w.name.as_ref().map_or(0, String::len);
        if !batch.is_empty()
            && (batch.len() == MAX_WATCHERS_PER_EVENT || bytes + size > MAX_EVENT_TEXT_BYTES)
        {
            events.push(DeviceEvent::Watchers(std::mem::take(&mut batch)));
            bytes = 0;
        }
        bytes += size;
        batch.push(w);
    }
    if !batch.is_empty() {
        events.push(DeviceEvent::Watchers(batch));
    }
    events
}

/// The last known membership of the level containers of one session.
#[derive(Debug, Default)]
pub struct AccessBook {
    levels: BTreeMap<u32, Vec<ContainerMember>>,
}

impl AccessBook {
    /// Takes in a CWA `containers` event; false when it named no level
    /// container (nothing for the device).
    pub fn merge(&mut self, containers: Vec<Container>) -> bool {
        let mut changed = false;
        for c in containers {
            if level_of(c.id).is_some() {
                self.levels.insert(c.id, c.members);
                changed = true;
            }
        }
        changed
    }

    /// The device event with the whole list.
    pub fn event(&self) -> DeviceEvent {
        let mut own: BTreeMap<String, (u32, AccessLevel)> = BTreeMap::new();
        let mut default: Option<(u8, u32)> = None;
        for (id, members) in &self.levels {
            let Some(level) = level_of(*id) else { continue };
            // Blocked over Personal over Team over Company over Public is
            // also the order of their ids.
            let rank = *id;
            for m in members {
                match m.kind {
                    MemberType::Uri if !m.value.is_empty() => {
                        let key = m.value.to_ascii_lowercase();
                        let best = own.entry(key).or_insert((rank, level));
                        if rank > best.0 {
                            *best = (rank, level);
                        }
                    }
                    MemberType::SameEnterprise | MemberType::Everyone => {
                        let specific = u8::from(m.kind == MemberType::SameEnterprise);
                        if default.map_or(true, |d| (specific, rank) > d) {
                            default = Some((specific, rank));
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (uri, (_, level)) in &own {
            if entries.len() == MAX_ACCESS_ENTRIES || bytes + uri.len() > MAX_EVENT_TEXT_BYTES {
                log::warn!(
                    "{} people with an access level of their own: the device gets the first {}",
                    own.len(),
                    entries.len()
                );
                break;
            }
            bytes += uri.len();
            entries.push(AccessEntry {
                uri: uri.clone(),
                level: *level,
            });
        }
        DeviceEvent::AccessLevels {
            default: default.and_then(|(_, id)| level_of(id)),
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: u32, members: &[(MemberType, &str)]) -> Container {
        Container {
            id,
            members: members
                .iter()
                .map(|(kind, value)| ContainerMember {
                    kind: *kind,
                    value: value.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_book_merges_deltas_and_blocked_wins() {
        let mut book = AccessBook::default();
        let full = vec![
            container(access::PUBLIC, &[(MemberType::Federated, "")]),
            container(access::COMPANY, &[(MemberType::SameEnterprise, "")]),
            container(access::TEAM, &[(MemberType::Uri, "sip:Bob@x.com")]),
            container(access::PERSONAL, &[]),
            container(access::BLOCKED, &[]),
            container(7, &[(MemberType::Uri, "sip:ignored@x.com")]),
        ];
        assert!(book.merge(full));
        let DeviceEvent::AccessLevels { default, entries } = book.event() else {
            panic!()
        };
        assert_eq!(default, Some(AccessLevel::Company));
        assert_eq!(
            entries,
            vec![AccessEntry {
                uri: "sip:bob@x.com".into(),
                level: AccessLevel::Team
            }]
        );
        // A delta naming only Blocked keeps Team's members.
        let delta = vec![container(
            access::BLOCKED,
            &[
                (MemberType::Uri, "sip:bob@x.com"),
                (MemberType::Uri, "sip:eve@x.com"),
            ],
        )];
        assert!(book.merge(delta));
        let DeviceEvent::AccessLevels { entries, .. } = book.event() else {
            panic!()
        };
        let levels: Vec<(&str, AccessLevel)> =
            entries.iter().map(|e| (e.uri.as_str(), e.level)).collect();
        assert_eq!(
            levels,
            vec![
                ("sip:bob@x.com", AccessLevel::Blocked),
                ("sip:eve@x.com", AccessLevel::Blocked)
            ]
        );
        assert!(!book.merge(vec![container(9, &[])]));
    }

    #[test]
    fn commands_move_a_person_and_ack_adds_back() {
        let Command::SetContainerMember {
            add_to,
            delete_from,
            member,
        } = set_access_command("sip:bob@x.com", AccessLevel::Blocked)
        else {
            panic!()
        };
        assert_eq!(add_to, access::BLOCKED);
        assert_eq!(delete_from.len(), 4);
        assert!(!delete_from.contains(&access::BLOCKED));
        assert_eq!(member, ContainerMember::uri("sip:bob@x.com"));
        assert!(matches!(
            acknowledge_command("sip:a@x", false, None, None),
            Command::AcknowledgeSubscribers { uris } if uris == vec!["sip:a@x".to_string()]
        ));
        let Command::AcknowledgeAndAddContact { uri, contact } =
            acknowledge_command("sip:a@x", true, Some("A"), Some("3"))
        else {
            panic!()
        };
        assert_eq!(uri, "sip:a@x");
        assert!(contact.subscribed);
        assert_eq!(contact.groups, vec!["3".to_string()]);
    }

    #[test]
    fn watchers_are_split_and_empty_lists_send_nothing() {
        let sub = |i: usize| Subscriber {
            uri: format!("sip:w{i}@x"),
            display_name: String::new(),
            acknowledged: false,
        };
        assert!(watchers_events(Vec::new(), |s| s).is_empty());
        let events = watchers_events((0..MAX_WATCHERS_PER_EVENT + 1).map(sub).collect(), |s| s);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], DeviceEvent::Watchers(w) if w.len() == 1 && w[0].name.is_none())
        );
        // Long names: split by bytes as well, nobody lost.
        let named = |i: usize| Subscriber {
            display_name: "n".repeat(8192),
            ..sub(i)
        };
        let events = watchers_events((0..20).map(named).collect(), |s| s);
        assert!(events.len() >= 4, "{}", events.len());
        let total: usize = events
            .iter()
            .map(|e| match e {
                DeviceEvent::Watchers(w) => w.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn long_lists_are_cut_to_fit_a_frame() {
        let team = |n: usize, len: usize| Container {
            id: access::TEAM,
            members: (0..n)
                .map(|i| ContainerMember::uri(&format!("sip:{i:05}{}@x", "u".repeat(len))))
                .collect(),
        };
        let mut book = AccessBook::default();
        book.merge(vec![team(MAX_ACCESS_ENTRIES + 1, 1)]);
        let DeviceEvent::AccessLevels { entries, .. } = book.event() else {
            panic!()
        };
        assert_eq!(entries.len(), MAX_ACCESS_ENTRIES);
        assert_eq!(entries[0].uri, "sip:00000u@x", "in URI order");
        book.merge(vec![team(100, 1000)]);
        let DeviceEvent::AccessLevels { entries, .. } = book.event() else {
            panic!()
        };
        let text: usize = entries.iter().map(|e| e.uri.len()).sum();
        assert!(
            text <= MAX_EVENT_TEXT_BYTES && entries.len() < 100,
            "{text}"
        );
    }

    /// Text that deflate cannot shrink much: letters and digits from a
    /// fixed xorshift sequence.
    fn noise(state: &mut u64, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                ALPHABET[(*state % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }

    #[test]
    fn the_largest_events_fit_one_frame_after_deflate() {
        use crate::wire::{channel::MAX_SEALED_PAYLOAD, crypto, ServiceMessage};
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let sealed = |event: DeviceEvent| {
            crypto::deflate(
                &ServiceMessage::Event {
                    seq: u64::MAX,
                    event,
                }
                .encode(),
            )
            .len()
        };
        for len in [20, 200, 1000] {
            let members = (0..MAX_ACCESS_ENTRIES)
                .map(|_| ContainerMember::uri(&format!("sip:{}", noise(&mut state, len))))
                .collect();
            let mut book = AccessBook::default();
            book.merge(vec![Container {
                id: access::PERSONAL,
                members,
            }]);
            let size = sealed(book.event());
            assert!(size <= MAX_SEALED_PAYLOAD, "{len}-byte URIs: {size}");
            // Enough for several full events at each length.
            let subscribers = (0..MAX_EVENT_TEXT_BYTES * 3 / (len * 9))
                .map(|_| Subscriber {
                    uri: format!("sip:{}", noise(&mut state, len)),
                    display_name: noise(&mut state, len * 8),
                    acknowledged: true,
                })
                .collect();
            for event in watchers_events(subscribers, |s| s) {
                let size = sealed(event);
                assert!(size <= MAX_SEALED_PAYLOAD, "{len}-byte URIs: {size}");
            }
        }
    }
}
