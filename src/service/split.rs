//! Contact lists too large for one frame (collab-protocol(7), under
//! `contact-list`): a `contact-list` event whose message would be longer
//! than [`MAX_LIST_EVENT_BYTES`] is sent as several consecutive events,
//! parts `1..=n` of `n`. The first keeps the list's `complete` flag and
//! carries every group and removal; the others are deltas that add
//! contacts. A client that knows nothing of parts still ends with the
//! right list; one that does shows it once the last part is in.
//!
//! The bound is on the message before compression, so a part always fits a
//! frame however badly it compresses (deflate adds a few bytes per 64 KiB
//! to incompressible input).

use crate::wire::{ContactList, DeviceEvent, ListPart, ServiceMessage};

/// The longest `contact-list` event message, in bytes of XML, before it is
/// split into parts.
pub const MAX_LIST_EVENT_BYTES: usize = 60 * 1024;

/// The sequence number a part is measured with: the longest a sequence
/// number can be, so that the real one never makes a part longer.
const WIDEST_SEQ: u64 = u64::MAX;

/// `events` with every contact list too long for one message split into
/// parts; other events unchanged, order kept.
pub fn fit_frames(events: Vec<DeviceEvent>) -> Vec<DeviceEvent> {
    if !events.iter().any(is_long_list) {
        return events;
    }
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        match event {
            DeviceEvent::ContactList(list) if fits(&list) => {
                out.push(DeviceEvent::ContactList(list))
            }
            DeviceEvent::ContactList(list) => {
                out.extend(split(list).into_iter().map(DeviceEvent::ContactList))
            }
            other => out.push(other),
        }
    }
    out
}

fn is_long_list(e: &DeviceEvent) -> bool {
    matches!(e, DeviceEvent::ContactList(l) if !fits(l))
}

fn encoded_len(list: &ContactList) -> usize {
    ServiceMessage::Event {
        seq: WIDEST_SEQ,
        event: DeviceEvent::ContactList(list.clone()),
    }
    .encode()
    .len()
}

fn fits(list: &ContactList) -> bool {
    encoded_len(list) <= MAX_LIST_EVENT_BYTES
}

/// Splits `list` into parts that each fit, filling each part with as many
/// contacts as fit (one contact's size measured at a time).
fn split(list: ContactList) -> Vec<ContactList> {
    let widest_part = Some(ListPart {
        number: u32::MAX,
        of: u32::MAX,
    });
    let first = ContactList {
        complete: list.complete,
        groups: list.groups,
        contacts: Vec::new(),
        removed_groups: list.removed_groups,
        removed_contacts: list.removed_contacts,
        part: widest_part,
    };
    let empty_delta = ContactList {
        complete: false,
        part: widest_part,
        ..ContactList::default()
    };
    // What one contact adds to a part: its length in a list of its own,
    // less that list's frame.
    let bare = encoded_len(&empty_delta);
    let mut parts = vec![first];
    let mut used = encoded_len(&parts[0]);
    for contact in list.contacts {
        let single = ContactList {
            contacts: vec![contact],
            ..empty_delta.clone()
        };
        let cost = encoded_len(&single) - bare;
        if used + cost > MAX_LIST_EVENT_BYTES && !parts.last().is_some_and(is_empty_part) {
            parts.push(empty_delta.clone());
            used = bare;
        }
        used += cost;
        let part = parts.last_mut().expect("a part");
        part.contacts.extend(single.contacts);
    }
    let of = parts.len() as u32;
    for (i, part) in parts.iter_mut().enumerate() {
        part.part = Some(ListPart {
            number: i as u32 + 1,
            of,
        });
    }
    parts
}

fn is_empty_part(l: &ContactList) -> bool {
    l.contacts.is_empty()
        && l.groups.is_empty()
        && l.removed_groups.is_empty()
        && l.removed_contacts.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Contact, Group};

    fn big_list(n: usize) -> ContactList {
        ContactList {
            complete: true,
            groups: vec![
                Group {
                    id: "1".into(),
                    name: "~".into(),
                },
                Group {
                    id: "2".into(),
                    name: "Team".into(),
                },
            ],
            contacts: (0..n)
                .map(|i| Contact {
                    uri: format!("sip:contact{i:05}@contoso.com"),
                    name: Some(format!("Contact number {i}")),
                    groups: vec!["1".into(), "2".into()],
                })
                .collect(),
            ..ContactList::default()
        }
    }

    #[test]
    fn a_short_list_is_one_event_without_parts() {
        let list = big_list(10);
        let out = fit_frames(vec![DeviceEvent::ContactList(list.clone())]);
        assert_eq!(out, vec![DeviceEvent::ContactList(list)]);
    }

    #[test]
    fn a_long_list_becomes_numbered_parts_that_each_fit_and_add_up() {
        let list = big_list(2000);
        assert!(!fits(&list));
        let presence = DeviceEvent::SelfPresence {
            availability: crate::wire::Availability::Online,
            note: None,
        };
        let out = fit_frames(vec![
            DeviceEvent::ContactList(list.clone()),
            presence.clone(),
        ]);
        assert_eq!(out.last(), Some(&presence), "order kept");
        let parts: Vec<&ContactList> = out
            .iter()
            .filter_map(|e| match e {
                DeviceEvent::ContactList(l) => Some(l),
                _ => None,
            })
            .collect();
        let n = parts.len() as u32;
        assert!(n >= 3, "{n} parts");
        let mut contacts = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(
                p.part,
                Some(ListPart {
                    number: i as u32 + 1,
                    of: n
                })
            );
            assert_eq!(p.complete, i == 0, "only the first replaces the list");
            assert_eq!(p.groups.is_empty(), i != 0, "groups come first");
            assert!(encoded_len(p) <= MAX_LIST_EVENT_BYTES);
            let real = ServiceMessage::Event {
                seq: 1,
                event: DeviceEvent::ContactList((*p).clone()),
            }
            .encode();
            assert!(crate::wire::crypto::deflate(&real).len() <= crate::wire::MAX_SEALED_PAYLOAD);
            contacts.extend(p.contacts.iter().cloned());
        }
        assert_eq!(contacts, list.contacts);
    }
}
