//! One session's presence upkeep, as plain state the session drives: when
//! the user last acted on the device, the availability the user chose, and
//! whether collabd has shown the user Away for a device left unused
//! (the instance's away period, `away_after_ms`). Also the directory
//! searches waiting for the presence query that follows them, and the
//! contacts' presence held back while the device is dormant.
//!
//! No timer or thread of its own: the session's event loop asks
//! [`Upkeep::away_due`] each time its CWA event request returns, and the
//! link thread reports each user action with [`Upkeep::user_action`]. A
//! user action is a device command; status reports, acknowledgements and
//! re-attaching are not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::{Availability, Presence, SearchEntry};

/// The availability collabd publishes for an unused device (CWA's Away).
pub const AWAY: u32 = 15500;

/// Directory searches whose presence query may be outstanding at once per
/// session; beyond it the oldest is answered without presence.
pub const MAX_PRESENCE_QUERIES: usize = 16;

/// Most people one presence query asks about (CWA's `uris` lists are
/// bounded too); hits past it stay without presence.
pub const MAX_QUERY_URIS: usize = 100;

/// Contacts whose latest presence is held while the device is dormant.
pub const MAX_HELD_PRESENCE: usize = 2000;

/// Whether collabd may replace `availability` with Away: only the online
/// states (online and idle-online). Busy, Do Not Disturb, Be Right Back,
/// Away and Offline are the user's own choice and stay.
pub fn may_show_away(availability: u32) -> bool {
    (3000..6000).contains(&availability)
}

/// The auto-away state of one session.
#[derive(Debug)]
pub struct Upkeep {
    last_action: Instant,
    /// What the user chose last (set-presence), or the sign-in state.
    chosen: u32,
    /// collabd has published Away; the next user action restores `chosen`.
    shown_away: bool,
}

impl Upkeep {
    /// A session that signed in at `now` with `initial` availability (the
    /// sign-in counts as a user action).
    pub fn new(initial: u32, now: Instant) -> Upkeep {
        Upkeep {
            last_action: now,
            chosen: initial,
            shown_away: false,
        }
    }

    /// A user action at `now`; `publishes`: the availability the action
    /// publishes itself (a set-presence). Returns the availability to
    /// publish first to undo an Away collabd published, if any; a
    /// set-presence replaces it instead (the user's new choice wins).
    pub fn user_action(&mut self, now: Instant, publishes: Option<u32>) -> Option<u32> {
        self.last_action = now;
        if let Some(availability) = publishes {
            self.chosen = availability;
            self.shown_away = false;
            return None;
        }
        if self.shown_away {
            self.shown_away = false;
            Some(self.chosen)
        } else {
            None
        }
    }

    /// Whether Away is to be published now for a device unused for
    /// `period` (`None`: off). When it returns true the session counts the
    /// user as shown Away, whatever CWA answers: a failed publish is not
    /// retried until the user has come back and gone again.
    pub fn away_due(&mut self, now: Instant, period: Option<Duration>) -> bool {
        let Some(period) = period else { return false };
        if self.shown_away
            || !may_show_away(self.chosen)
            || now.saturating_duration_since(self.last_action) < period
        {
            return false;
        }
        self.shown_away = true;
        true
    }

    /// Whether collabd shows the user Away now.
    pub fn shown_away(&self) -> bool {
        self.shown_away
    }
}

/// A directory search answered by CWA, waiting for the presence of the
/// people it found.
#[derive(Debug)]
pub struct PresenceQuery {
    /// The session's own number for it.
    pub id: u64,
    /// The `queryPresence` request's rid, once CWA accepted it.
    pub rid: Option<u64>,
    /// The device's search command.
    pub command: u64,
    /// The hits, their availability filled in as the answer arrives.
    pub entries: Vec<SearchEntry>,
    /// When the query was sent (it expires like a command).
    pub sent: Instant,
    /// Its answer (the `userPresence` event) has been taken.
    pub answered: bool,
}

impl PresenceQuery {
    /// The distinct URIs to query, in order, lower-cased for comparing;
    /// at most [`MAX_QUERY_URIS`].
    pub fn uris(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.entries {
            let uri = e.uri.to_ascii_lowercase();
            if out.len() < MAX_QUERY_URIS && !out.contains(&uri) {
                out.push(uri);
            }
        }
        out
    }

    /// Whether a `userPresence` event naming `uris` is this query's answer:
    /// CWA answers a query with one event naming exactly the URIs asked
    /// for. (An update of a subscribed contact names one URI, so it is
    /// taken for an answer only to a search that found that one person;
    /// the presence in it is current either way.)
    pub fn is_answered_by(&self, uris: &[String]) -> bool {
        let mut asked = self.uris();
        let mut got: Vec<String> = uris.iter().map(|u| u.to_ascii_lowercase()).collect();
        asked.sort();
        got.sort();
        got.dedup();
        !asked.is_empty() && asked == got
    }

    /// Sets each entry's availability from `(uri, availability)` pairs.
    pub fn fill(&mut self, presence: &[(String, Availability)]) {
        for e in &mut self.entries {
            if let Some((_, a)) = presence
                .iter()
                .find(|(uri, _)| uri.eq_ignore_ascii_case(&e.uri))
            {
                e.availability = Some(*a);
            }
        }
    }
}

/// Contacts' presence held back while the device is dormant: only the
/// latest per contact, delivered when the device is in coverage again.
#[derive(Debug, Default)]
pub struct HeldPresence {
    latest: BTreeMap<String, Presence>,
}

impl HeldPresence {
    /// Keeps `p` in place of an older presence of the same contact. Past
    /// [`MAX_HELD_PRESENCE`] contacts a new one is dropped (logged by the
    /// caller): a bound on memory, not expected with real contact lists.
    pub fn hold(&mut self, p: Presence) -> bool {
        let key = p.uri.to_ascii_lowercase();
        if self.latest.len() >= MAX_HELD_PRESENCE && !self.latest.contains_key(&key) {
            return false;
        }
        self.latest.insert(key, p);
        true
    }

    /// Everything held, emptying it.
    pub fn take(&mut self) -> Vec<Presence> {
        std::mem::take(&mut self.latest).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn away_after_the_period_then_back_on_the_next_action() {
        let t0 = Instant::now();
        let mut u = Upkeep::new(3500, t0);
        assert!(!u.away_due(t0 + ms(299), Some(ms(300))));
        assert!(u.away_due(t0 + ms(300), Some(ms(300))));
        // Once only.
        assert!(!u.away_due(t0 + ms(900), Some(ms(300))));
        assert!(u.shown_away());
        assert_eq!(u.user_action(t0 + ms(1000), None), Some(3500));
        assert!(!u.shown_away());
        // The period counts from the last action.
        assert!(!u.away_due(t0 + ms(1200), Some(ms(300))));
        assert!(u.away_due(t0 + ms(1300), Some(ms(300))));
    }

    #[test]
    fn off_when_the_period_is_none() {
        let t0 = Instant::now();
        let mut u = Upkeep::new(3500, t0);
        assert!(!u.away_due(t0 + Duration::from_secs(86_400), None));
        assert_eq!(u.user_action(t0 + ms(1), None), None);
    }

    #[test]
    fn a_state_the_user_chose_is_neither_overridden_nor_restored_over() {
        let t0 = Instant::now();
        let mut u = Upkeep::new(3500, t0);
        // Busy: never replaced by Away.
        assert_eq!(u.user_action(t0, Some(6500)), None);
        assert!(!u.away_due(t0 + ms(10_000), Some(ms(300))));
        // Online again, then Away by collabd; the user sets Busy while
        // away: nothing to restore, Busy stands.
        assert_eq!(u.user_action(t0 + ms(10_000), Some(3500)), None);
        assert!(u.away_due(t0 + ms(10_300), Some(ms(300))));
        assert_eq!(u.user_action(t0 + ms(10_400), Some(6500)), None);
        assert!(!u.shown_away());
        assert_eq!(u.user_action(t0 + ms(10_500), None), None);
        for own in [9500, 12500, 15500, 18500] {
            let mut u = Upkeep::new(own, t0);
            assert!(!u.away_due(t0 + ms(10_000), Some(ms(300))), "{own}");
        }
    }

    fn entry(uri: &str) -> SearchEntry {
        SearchEntry {
            uri: uri.into(),
            name: None,
            title: None,
            office: None,
            phone: None,
            email: None,
            availability: None,
        }
    }

    #[test]
    fn a_query_is_answered_by_an_event_naming_exactly_its_uris() {
        let mut q = PresenceQuery {
            id: 1,
            answered: false,
            rid: None,
            command: 7,
            entries: vec![entry("sip:a@x"), entry("sip:B@x"), entry("sip:a@x")],
            sent: Instant::now(),
        };
        assert_eq!(q.uris(), vec!["sip:a@x", "sip:b@x"]);
        let many = PresenceQuery {
            entries: (0..150).map(|i| entry(&format!("sip:u{i}@x"))).collect(),
            ..PresenceQuery {
                id: 2,
                answered: false,
                rid: None,
                command: 8,
                entries: Vec::new(),
                sent: Instant::now(),
            }
        };
        assert_eq!(many.uris().len(), MAX_QUERY_URIS);
        assert!(q.is_answered_by(&["sip:b@x".into(), "sip:A@x".into()]));
        assert!(!q.is_answered_by(&["sip:a@x".into()]));
        assert!(!q.is_answered_by(&["sip:a@x".into(), "sip:b@x".into(), "sip:c@x".into()]));
        q.fill(&[("sip:A@X".into(), Availability::Busy)]);
        assert_eq!(q.entries[0].availability, Some(Availability::Busy));
        assert_eq!(q.entries[1].availability, None);
        assert_eq!(q.entries[2].availability, Some(Availability::Busy));
    }

    #[test]
    fn held_presence_keeps_the_latest_per_contact() {
        let p = |uri: &str, a| Presence {
            uri: uri.into(),
            availability: a,
            note: None,
            display_name: None,
        };
        let mut h = HeldPresence::default();
        assert!(h.hold(p("sip:a@x", Availability::Online)));
        assert!(h.hold(p("sip:A@x", Availability::Away)));
        assert!(h.hold(p("sip:b@x", Availability::Busy)));
        let got = h.take();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].availability, Availability::Away);
        assert!(h.take().is_empty());
    }
}
