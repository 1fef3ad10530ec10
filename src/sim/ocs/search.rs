//! Directory search: `search` over the users file's display names and
//! accounts, answered with one bounded `searchResult` event.

use xmltree::Element;

use super::{accepted, invalid, succeeded, Ocs, State};
use crate::sim::users::UserEntry;
use crate::xml::{child_text, elem, with_child};

/// Most search results.
const MAX_SEARCH_RESULTS: usize = 20;

impl Ocs {
    pub(super) fn search(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        let fields = ["firstName", "lastName", "displayName", "emailAlias"];
        let terms: Vec<(&str, String)> = fields
            .iter()
            .filter_map(|f| child_text(m, f).map(|t| (*f, t.trim().to_lowercase())))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if terms.is_empty() {
            return invalid(
                rid,
                18001,
                "search needs firstName, lastName, displayName or emailAlias",
            );
        }
        let all = matches!(
            child_text(m, "function").as_deref().map(str::trim),
            Some("and")
        );
        let matches = |u: &UserEntry| {
            let mut words = u.display_name.split_whitespace();
            let first = words.next().unwrap_or("").to_lowercase();
            let last = u
                .display_name
                .split_whitespace()
                .last()
                .unwrap_or("")
                .to_lowercase();
            let hit = |(f, t): &(&str, String)| match *f {
                "firstName" => first.starts_with(t.as_str()),
                "lastName" => last.starts_with(t.as_str()),
                "displayName" => u.display_name.to_lowercase().contains(t.as_str()),
                _ => u.account.to_lowercase().starts_with(t.as_str()),
            };
            if all {
                terms.iter().all(hit)
            } else {
                terms.iter().any(hit)
            }
        };
        let found: Vec<&UserEntry> = self.directory.users.iter().filter(|u| matches(u)).collect();
        let more = found.len() > MAX_SEARCH_RESULTS;
        let mut ev = elem(
            "searchResult",
            &[
                ("rid", rid),
                ("moreAvailable", if more { "true" } else { "false" }),
            ],
        );
        for u in found.into_iter().take(MAX_SEARCH_RESULTS) {
            ev = with_child(
                ev,
                elem(
                    "user",
                    &[
                        ("uri", &u.sip_uri),
                        ("displayName", &u.display_name),
                        ("title", ""),
                        ("company", ""),
                        ("emailAlias", &u.account),
                        ("workPhone", ""),
                    ],
                ),
            );
        }
        self.emit(st, sid, ev);
        self.emit(st, sid, succeeded(rid));
        accepted(rid)
    }
}
