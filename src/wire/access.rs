//! The device protocol's access levels and watchers (collab-protocol(7),
//! ACCESS LEVELS AND WATCHERS): the [`AccessLevel`] names, one person's
//! level ([`AccessEntry`]) and one watcher ([`Watcher`]). The messages that
//! carry them are variants of [`super::DeviceCommand`] and
//! [`super::DeviceEvent`]; their XML is built and parsed in
//! [`super::message`].

/// How much of the user's presence a person may see, OCS 2007's five
/// levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessLevel {
    /// Sees only the display name and Offline; cannot start conversations.
    Blocked,
    /// Sees the availability, not the note.
    Public,
    /// Sees the availability and the note (the default for the user's own
    /// company).
    Company,
    /// As Company (OCS also shows the calendar and more phone numbers).
    Team,
    /// As Team (OCS also shows home and mobile phones).
    Personal,
}

impl AccessLevel {
    /// Every level, from least to most trusted.
    pub const ALL: [AccessLevel; 5] = [
        AccessLevel::Blocked,
        AccessLevel::Public,
        AccessLevel::Company,
        AccessLevel::Team,
        AccessLevel::Personal,
    ];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            AccessLevel::Blocked => "blocked",
            AccessLevel::Public => "public",
            AccessLevel::Company => "company",
            AccessLevel::Team => "team",
            AccessLevel::Personal => "personal",
        }
    }

    /// The level for a wire name.
    pub fn from_name(s: &str) -> Option<AccessLevel> {
        AccessLevel::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// One person's own access level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessEntry {
    /// The person's SIP URI.
    pub uri: String,
    /// The level.
    pub level: AccessLevel,
}

/// Someone who has the user in their contact list (or watches the user's
/// presence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// The watcher's SIP URI.
    pub uri: String,
    /// Display name, if CWA gave one.
    pub name: Option<String>,
    /// Whether the user has acknowledged this watcher already.
    pub acknowledged: bool,
}
