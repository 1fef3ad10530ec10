//! Presence upkeep end to end: `collab-device --script` processes signing
//! in through the real `collab-dispatcher` to `collabd`, against `cwa-sim`.
//! What collabd publishes is read from the simulator's `GET
//! /admin/presence` (the availabilities published, oldest first, the
//! number of publications and of `UA=true` event requests); what others
//! see, from their devices' presence events.
//!
//! The periods are short (an away period of 300 ms, a republish period of
//! a few hundred ms) and the simulator holds an event request at most
//! 100 ms, so the sessions' checks run often. Every wait is for a
//! condition, bounded only by the support's generous limit; nothing is
//! timed. Where a test shows that something did *not* happen (a chosen
//! state not replaced by Away), it waits for republishes, which prove the
//! sessions' checks ran meanwhile.

use crate::support;

use collabd::configdb::InstanceSettings;

use support::collabd::{field, finish, sim_line, wait_until, Stack, TestDevice, TestUser};
use support::device_peer::DeviceProcess;
use support::dispatch::Dispatcher;

/// One user's line of `GET /admin/presence`.
#[derive(Debug, Default)]
struct Published {
    publishes: u64,
    ua: u64,
    history: Vec<u32>,
}

/// A stack with the dispatcher in front of collabd.
struct Upkept {
    // Dropped in this order: the dispatcher, then the stack.
    dispatcher: Dispatcher,
    stack: Stack,
    devices: Vec<TestDevice>,
}

impl Upkept {
    /// `names` as users, each the others' contact (`Name_Smith` as display
    /// names), the instance's away period `away_after_ms`, collabd with
    /// `collabd_flags`, and the dispatcher routing to it.
    fn new(names: &[&str], away_after_ms: u64, collabd_flags: &[&str]) -> Upkept {
        let settings = InstanceSettings {
            away_after_ms,
            ..InstanceSettings::default()
        };
        Upkept::with(names, settings, collabd_flags)
    }

    /// [`Upkept::new`] with the whole instance row.
    fn with(names: &[&str], settings: InstanceSettings, collabd_flags: &[&str]) -> Upkept {
        let users: Vec<TestUser> = names.iter().map(|n| TestUser::new(n)).collect();
        let mut sim_users = String::new();
        for u in &users {
            let contacts: Vec<&str> = users
                .iter()
                .filter(|o| o.sip != u.sip)
                .map(|o| o.sip.as_str())
                .collect();
            let name = u.login.rsplit('\\').next().unwrap_or_default();
            sim_users.push_str(&sim_line(
                u,
                &format!("name={name}_Smith contacts={}", contacts.join(",")),
            ));
        }
        let mut stack = Stack::new(&sim_users, settings);
        // Event requests come back at least every 100 ms, so each session's
        // upkeep is checked that often.
        stack.sim.faults("hold_ms=100");
        let mut devices = Vec::new();
        for u in &users {
            stack.add_user(u, true);
            devices.push(stack.add_device(u));
        }
        stack.start_collabd(collabd_flags);
        let dispatcher = Dispatcher::start(&stack.db_url, &[]);
        let live = format!("live instances: {}\n", support::collabd::INSTANCE);
        wait_until("the dispatcher to route to collabd", || {
            dispatcher.log().contains(&live)
        });
        Upkept {
            dispatcher,
            stack,
            devices,
        }
    }

    fn device(&self, name: &str) -> &TestDevice {
        self.devices
            .iter()
            .find(|d| d.user.login.ends_with(&format!("\\{name}")))
            .unwrap_or_else(|| panic!("no device for {name}"))
    }

    /// `name`'s device through the dispatcher, signed in.
    fn sign_in(&self, name: &str) -> DeviceProcess {
        self.stack
            .signed_in_at(self.dispatcher.addr, self.device(name))
    }

    /// What the simulator recorded for `name`'s clients.
    fn published(&self, name: &str) -> Published {
        let (status, body) = self.stack.sim.admin("GET", "/admin/presence", "");
        assert_eq!(status, 200, "{body}");
        let uri = sip(name);
        let Some(line) = body.lines().find(|l| l.split(' ').next() == Some(&uri)) else {
            return Published::default();
        };
        let value = |key: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_string()
        };
        let history = value("published");
        Published {
            publishes: value("publishes").parse().unwrap(),
            ua: value("ua").parse().unwrap(),
            history: if history == "-" {
                Vec::new()
            } else {
                history.split(',').map(|a| a.parse().unwrap()).collect()
            },
        }
    }

    /// Waits until `name`'s clients have published `more` times after
    /// `since` publications; returns the record.
    fn wait_publishes(&self, name: &str, since: u64, more: u64) -> Published {
        let mut last = Published::default();
        wait_until(&format!("{more} more publications by {name}"), || {
            last = self.published(name);
            last.publishes >= since + more
        });
        last
    }
}

fn sip(name: &str) -> String {
    format!("sip:{name}@contoso.com")
}

/// Where `d`'s transcript ends now: lines read from here on are "since".
fn mark(d: &DeviceProcess) -> usize {
    d.transcript.len()
}

/// The first line since `mark` that starts with `prefix` and satisfies
/// `pred`, whether already read (an `expect` for another line may have
/// passed it) or still to come. Panics after the support's wait bound
/// even if other lines keep coming.
fn expect_since(
    d: &mut DeviceProcess,
    mark: usize,
    prefix: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    if let Some(l) = d.transcript[mark.min(d.transcript.len())..]
        .iter()
        .find(|l| l.starts_with(prefix) && pred(l))
    {
        return l.clone();
    }
    let deadline = std::time::Instant::now() + support::collabd::WAIT;
    loop {
        let l = d.expect(prefix);
        if pred(&l) {
            return l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {prefix:?} line as wanted; got:\n{}",
            d.transcript[mark..].join("\n")
        );
    }
}

/// A presence event for `uri` with `availability`, since `mark`.
fn expect_presence(d: &mut DeviceProcess, mark: usize, uri: &str, availability: &str) {
    expect_since(d, mark, "event presence ", |l| {
        field(l, "uri").as_deref() == Some(uri)
            && field(l, "availability").as_deref() == Some(availability)
    });
}

/// A self-presence event with `availability`, since `mark`; returns the
/// mark just after it.
fn expect_self_presence(d: &mut DeviceProcess, mark: usize, availability: &str) -> usize {
    let line = expect_since(d, mark, "event self-presence ", |l| {
        field(l, "availability").as_deref() == Some(availability)
    });
    // (Every event line carries its own seq, so the line is unique.)
    d.transcript.iter().rposition(|l| *l == line).unwrap() + 1
}

/// Sends a command line and waits for its result, which must be ok.
fn command_ok(d: &mut DeviceProcess, line: &str) {
    let m = mark(d);
    d.send(line);
    let result = expect_since(d, m, "result ", |_| true);
    assert_eq!(
        field(&result, "status").as_deref(),
        Some("ok"),
        "{line}: {result}"
    );
}

/// Whether `history` has `first` immediately followed by `then`.
fn has_step(history: &[u32], first: u32, then: u32) -> bool {
    history.windows(2).any(|w| w == [first, then])
}

/// The availabilities published after the last `after` in `history`.
fn published_since(history: &[u32], after: u32) -> &[u32] {
    let i = history
        .iter()
        .rposition(|a| *a == after)
        .unwrap_or_else(|| panic!("{after} never published: {history:?}"));
    &history[i + 1..]
}

#[test]
fn an_unused_device_shows_away_to_watchers_and_the_next_command_brings_the_state_back() {
    // Republishing every 300 ms: each republish is a check of the away
    // period too, so counting them shows the checks ran.
    let up = Upkept::new(&["alice", "bob"], 300, &["--presence-republish-ms", "300"]);
    let mut bob = up.sign_in("bob");
    let mut alice = up.sign_in("alice");

    // Alice does nothing: collabd publishes Away; her device and Bob's see it.
    expect_self_presence(&mut alice, 0, "away");
    expect_presence(&mut bob, 0, &sip("alice"), "away");
    assert!(up.published("alice").history.contains(&15500));

    // Her next command brings back the state from before (online), then runs.
    let (a, b) = (mark(&alice), mark(&bob));
    command_ok(&mut alice, "search query=nobody");
    let back_online = expect_self_presence(&mut alice, a, "online");
    expect_presence(&mut bob, b, &sip("alice"), "online");
    let back = up.published("alice");
    assert!(has_step(&back.history, 15500, 3500), "{back:?}");
    // The command was user activity on the event channel.
    wait_until("UA=true from alice's session", || {
        up.published("alice").ua >= 1
    });

    // Unused again: Away again. She sets Busy while away: Busy is published
    // in place of Away, with no online in between ...
    expect_self_presence(&mut alice, back_online, "away");
    let b = mark(&bob);
    command_ok(&mut alice, "presence availability=busy");
    expect_presence(&mut bob, b, &sip("alice"), "busy");
    let busy = up.published("alice");
    let since_away = published_since(&busy.history, 15500);
    assert!(
        !since_away.is_empty() && since_away.iter().all(|a| *a == 6500),
        "{busy:?}"
    );
    // ... and, being her own choice, is never replaced by Away: three
    // republishes (each one a check, at least an away period apart) and
    // still only Busy since.
    let later = up.wait_publishes("alice", busy.publishes, 3);
    let since_away = published_since(&later.history, 15500);
    assert!(since_away.iter().all(|a| *a == 6500), "{later:?}");
    // Another command: nothing to restore; Busy goes on being republished.
    command_ok(&mut alice, "search query=nobody");
    let last = up.wait_publishes("alice", later.publishes, 2);
    let since_away = published_since(&last.history, 15500);
    assert!(since_away.iter().all(|a| *a == 6500), "{last:?}");

    alice.send("logout");
    alice.expect("ended ");
    bob.send("logout");
    bob.expect("ended ");
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn presence_is_republished_and_only_commands_count_as_user_activity() {
    let up = Upkept::new(&["alice", "bob"], 0, &["--presence-republish-ms", "200"]);
    let mut alice = up.sign_in("alice");
    command_ok(&mut alice, "presence availability=brb note=back\\sat\\s3");
    let set = up.published("alice");
    assert_eq!(set.history.last(), Some(&12500), "{set:?}");
    // Republished with no further command, the same state each time.
    let later = up.wait_publishes("alice", set.publishes, 3);
    // (A republish of the sign-in state may come before her command.)
    let first = later.history.iter().position(|a| *a == 12500).unwrap();
    assert!(
        later.history[first..].iter().all(|a| *a == 12500),
        "{later:?}"
    );
    // The note stays: Bob, signing in now, sees it with the state.
    let mut bob = up.sign_in("bob");
    let line = expect_since(&mut bob, 0, "event presence ", |l| {
        field(l, "uri") == Some(sip("alice"))
    });
    assert_eq!(
        field(&line, "availability").as_deref(),
        Some("brb"),
        "{line}"
    );
    assert_eq!(
        field(&line, "note").as_deref(),
        Some("back\\sat\\s3"),
        "{line}"
    );
    // Bob's device acknowledges events and reports status, but sends no
    // command: no UA=true from his session, while his presence is
    // republished (which proves his event requests went on).
    bob.send("status coverage=active");
    bob.expect("sent status");
    let bob_now = up.published("bob");
    up.wait_publishes("bob", bob_now.publishes, 2);
    assert_eq!(up.published("bob").ua, 0);
    // Alice's command was activity.
    assert!(up.published("alice").ua >= 1);

    alice.send("logout");
    alice.expect("ended ");
    bob.send("logout");
    bob.expect("ended ");
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

/// The `search-entry` lines of the search result for command `id`.
fn search_entries(d: &mut DeviceProcess, mark: usize, id: &str) -> Vec<String> {
    let head = expect_since(d, mark, "event search-result ", |l| {
        field(l, "command").as_deref() == Some(id)
    });
    let n: usize = field(&head, "entries").unwrap().parse().unwrap();
    // The entries follow their head line at once.
    let at = d.transcript.iter().rposition(|l| *l == head).unwrap();
    let mut entries: Vec<String> = d.transcript[at + 1..].iter().take(n).cloned().collect();
    while entries.len() < n {
        entries.push(d.expect("event search-entry "));
    }
    assert!(
        entries.iter().all(|e| e.starts_with("event search-entry ")),
        "{entries:?}"
    );
    entries
}

fn entry_for<'a>(entries: &'a [String], uri: &str) -> &'a str {
    entries
        .iter()
        .find(|e| field(e, "uri").as_deref() == Some(uri))
        .unwrap_or_else(|| panic!("no entry for {uri} in {entries:?}"))
}

#[test]
fn search_results_carry_presence_or_arrive_without_it_when_the_query_fails() {
    let up = Upkept::new(
        &["alice", "bob", "carol"],
        0,
        &["--command-timeout-ms", "2000"],
    );
    let mut alice = up.sign_in("alice");
    let mut bob = up.sign_in("bob");
    command_ok(&mut bob, "presence availability=dnd");
    expect_presence(&mut alice, 0, &sip("bob"), "dnd");

    // Bob is signed in and set do-not-disturb; Carol is not signed in.
    let m = mark(&alice);
    alice.send("search query=smith");
    let result = expect_since(&mut alice, m, "result ", |_| true);
    let id = field(&result, "id").unwrap();
    let entries = search_entries(&mut alice, m, &id);
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(
        field(entry_for(&entries, &sip("bob")), "availability").as_deref(),
        Some("dnd")
    );
    assert_eq!(
        field(entry_for(&entries, &sip("carol")), "availability").as_deref(),
        Some("offline")
    );
    assert_eq!(
        field(entry_for(&entries, &sip("alice")), "availability").as_deref(),
        Some("online")
    );

    // CWA fails the presence query: the result still comes, presence unknown.
    up.stack.sim.faults("query_presence=fail");
    let m = mark(&alice);
    alice.send("search query=carol");
    let result = expect_since(&mut alice, m, "result ", |_| true);
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    let id = field(&result, "id").unwrap();
    let entries = search_entries(&mut alice, m, &id);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        field(entry_for(&entries, &sip("carol")), "availability"),
        None
    );
    up.stack.sim.faults("query_presence=ok");

    alice.send("logout");
    alice.expect("ended ");
    bob.send("logout");
    bob.expect("ended ");
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn a_dormant_device_gets_invitations_and_messages_but_presence_only_when_it_wakes() {
    let mut up = Upkept::new(&["alice", "bob"], 0, &[]);
    let mut bob = up.sign_in("bob");
    let mut alice = up.sign_in("alice");
    expect_presence(&mut bob, 0, &sip("alice"), "online");

    let dormant = mark(&bob);
    bob.send("status coverage=dormant");
    bob.expect("sent status");
    // The session has taken the status once the registry shows it (the
    // registry is written after the session's own record).
    let pin = up.device("bob").pin;
    wait_until("bob's session to be dormant", || {
        up.stack.session_coverage(pin).as_deref() == Some("dormant")
    });

    command_ok(&mut alice, "presence availability=busy note=out");
    command_ok(&mut alice, "presence availability=brb note=lunch");
    alice.send(&format!("start to={} text=ping", sip("bob")));
    let started = alice.expect("result ");
    assert_eq!(
        field(&started, "status").as_deref(),
        Some("ok"),
        "{started}"
    );
    let conv = field(&started, "conv").unwrap();

    // Alice's presence changed twice before she invited Bob; the invitation
    // arrives with no presence event before it.
    let invitation = bob.expect("event invitation ");
    assert_eq!(field(&invitation, "conv").as_deref(), Some(conv.as_str()));
    assert_eq!(field(&invitation, "text").as_deref(), Some("ping"));
    let since_dormant: Vec<&String> = bob.transcript[dormant..]
        .iter()
        .filter(|l| l.starts_with("event presence "))
        .collect();
    assert!(since_dormant.is_empty(), "{since_dormant:?}");
    command_ok(&mut bob, &format!("accept conv={conv}"));
    command_ok(&mut alice, &format!("send conv={conv} text=still\\sthere?"));
    let message = bob.expect("event message ");
    assert_eq!(field(&message, "text").as_deref(), Some("still\\sthere?"));

    // Awake again: Alice's latest presence only.
    let awake = mark(&bob);
    bob.send("status coverage=active");
    let line = expect_since(&mut bob, awake, "event presence ", |_| true);
    assert_eq!(field(&line, "uri").as_deref(), Some(sip("alice").as_str()));
    assert_eq!(
        field(&line, "availability").as_deref(),
        Some("brb"),
        "{line}"
    );
    assert_eq!(field(&line, "note").as_deref(), Some("lunch"), "{line}");

    alice.send("logout");
    alice.expect("ended ");
    bob.send("logout");
    bob.expect("ended ");
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn the_state_the_user_chose_is_published_again_after_a_new_cwa_sign_in() {
    let settings = InstanceSettings {
        away_after_ms: 0,
        password_caching: true,
        ..InstanceSettings::default()
    };
    let up = Upkept::with(&["alice", "bob"], settings, &[]);
    let mut bob = up.sign_in("bob");
    let mut alice = up.sign_in("alice");
    command_ok(&mut alice, "presence availability=busy");
    expect_presence(&mut bob, 0, &sip("alice"), "busy");
    let before = up.published("alice");

    // CWA loses Alice's session: watchers see her offline; collabd signs in
    // again (online, CWA's sign-in state), then publishes Busy again.
    let m = mark(&bob);
    up.stack.sim.faults("drop_user=sip:alice@contoso.com");
    let offline = expect_since(&mut bob, m, "event presence ", |l| {
        field(l, "uri") == Some(sip("alice"))
            && field(l, "availability").as_deref() == Some("offline")
    });
    let after_offline = bob.transcript.iter().rposition(|l| *l == offline).unwrap() + 1;
    expect_presence(&mut bob, after_offline, &sip("alice"), "busy");
    let again = up.published("alice");
    assert!(again.publishes > before.publishes, "{again:?}");
    assert_eq!(again.history.last(), Some(&6500), "{again:?}");
    // Her session went on: a command still works.
    command_ok(&mut alice, "search query=nobody");

    alice.send("logout");
    alice.expect("ended ");
    bob.send("logout");
    bob.expect("ended ");
    assert_eq!(finish(alice).0, 0);
    assert_eq!(finish(bob).0, 0);
}

#[test]
fn a_changed_away_period_applies_to_running_sessions() {
    let mut up = Upkept::new(&["alice", "bob"], 0, &["--presence-republish-ms", "200"]);
    let mut alice = up.sign_in("alice");
    // Off: republishes (each a check of the away period) and no Away.
    let first = up.published("alice");
    let later = up.wait_publishes("alice", first.publishes, 3);
    assert!(!later.history.contains(&15500), "{later:?}");

    // The instance row changes; collabd re-reads it with its heartbeat.
    up.stack.set_instance(collabd::configdb::InstanceChange {
        away_after_ms: Some(300),
        ..Default::default()
    });
    expect_self_presence(&mut alice, 0, "away");
    assert_eq!(up.published("alice").history.last(), Some(&15500));

    alice.send("logout");
    alice.expect("ended ");
    assert_eq!(finish(alice).0, 0);
}
