//! The event thread: the CWA event long-poll, each batch translated and
//! delivered (results to their commands), presence kept up between polls,
//! and a new CWA sign-in when CWA lost the session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cwa::{CwaSession, EventChannel, SessionError};

use super::super::table::{EndReason, SlotGuard};
use super::super::translate::{self, Translated};
use super::state::{lock, Early};
use super::Session;

/// Event polls failing in a row (network, busy, timeouts) before the
/// session is given up as lost.
const MAX_POLL_FAILURES: u32 = 6;
/// CWA sign-in attempts after CWA lost the session, with password caching
/// (at most three, with back-off: collabd(8), DESCRIPTION).
const RESIGN_ATTEMPTS: u32 = 3;

/// What the event thread starts with: its session, the CWA event channel
/// and the session's table slot. Boxed into the thread, so that none of it
/// is copied into the frames that stay under the long-poll's wait.
pub struct EventStart {
    pub session: Arc<Session>,
    pub events: EventChannel,
    pub slot: SlotGuard,
}

/// The event thread: holds the slot and the CWA long-poll until the
/// session ends.
// Boxed on purpose (see `EventStart`).
#[allow(clippy::boxed_local)]
pub fn run_events(start: Box<EventStart>) {
    let EventStart {
        session,
        events,
        slot,
    } = *start;
    let _slot = slot;
    // The name is made only for a panic's report: this frame stays under
    // the long-poll's wait for the session's life.
    let what = || format!("{session:?}: event thread");
    if crate::ops::panics::guard_named(what, || poll_events(&session, events)).is_none() {
        // The finisher tells the device and signs out of CWA; the slot is
        // freed when `_slot` drops, just after.
        session.ctx.table.end(session.id(), EndReason::Closed);
    }
}

/// The event thread's loop, until the session ends. It waits in
/// `events.poll()` for hours on end, so everything else is out of line and
/// this frame stays small.
fn poll_events(session: &Arc<Session>, mut events: EventChannel) {
    let mut failures = 0u32;
    while !session.is_ended() {
        // The stack pages of the sign-in and of the last batch go back
        // during the long-poll's wait, from under it (the transport's
        // `HeldWait`; see `ops::memory`), once CWA has held the GET a
        // moment: this thread lives as long as the session.
        between_polls(session);
        let polled = events.poll();
        if !take_poll(session, &mut events, polled, &mut failures) {
            break;
        }
    }
}

/// What a poll brought: a batch handed to the device and acknowledged to
/// CWA, a new CWA sign-in when CWA lost the session, or a failure counted.
/// False when the session is to end (ended here).
#[inline(never)]
fn take_poll(
    session: &Arc<Session>,
    events: &mut EventChannel,
    polled: Result<crate::cwa::EventBatch, SessionError>,
    failures: &mut u32,
) -> bool {
    match polled {
        Ok(mut batch) => {
            *failures = 0;
            if let Err(reason) = session.handle_events(std::mem::take(&mut batch.events)) {
                session.ctx.table.end(session.id(), reason);
                return false;
            }
            // Acknowledged to CWA only now that the device has them (or
            // the replay buffer does).
            events.ack(&batch);
            true
        }
        Err(e) if e.is_final() => {
            if session.is_ended() {
                return false;
            }
            match session.sign_in_again(&e) {
                Ok(new_events) => {
                    *events = new_events;
                    true
                }
                Err(why) => {
                    session
                        .ctx
                        .table
                        .end(session.id(), EndReason::CwaSessionLost(why));
                    false
                }
            }
        }
        Err(e) => !session.is_ended() && poll_failed(session, &e, failures),
    }
}

/// Between polls: commands whose results are overdue, auto-away and the
/// periodic presence republish.
#[inline(never)]
fn between_polls(session: &Arc<Session>) {
    session.expire_commands();
    if let Ok(mut commands) = session.commands.try_lock() {
        // (Busy: a command is running, which is user activity anyway.)
        session.publish_away_if_due(&mut commands);
        if commands.republish_due() {
            if let Err(e) = commands.republish() {
                log::info!("{session:?}: presence republish: {e}");
            }
        }
    }
}

/// A poll that failed but may succeed again: counted, and waited out with
/// back-off. False when the session is to end (ended here).
#[inline(never)]
fn poll_failed(session: &Arc<Session>, e: &SessionError, failures: &mut u32) -> bool {
    *failures += 1;
    let failures = *failures;
    log::info!("{session:?}: event poll failed ({failures} in a row): {e}");
    if failures >= MAX_POLL_FAILURES {
        session.ctx.table.end(
            session.id(),
            EndReason::CwaSessionLost(format!("CWA unreachable: {e}")),
        );
        return false;
    }
    let backoff = Duration::from_millis(500 << failures.min(6));
    session.sleep(backoff.min(Duration::from_secs(30)));
    true
}

impl Session {
    /// A CWA event batch: results to their commands, events to the device.
    #[inline(never)]
    pub(super) fn handle_events(&self, events: Vec<crate::cwa::Event>) -> Result<(), EndReason> {
        let mut out = Vec::new();
        // Containers events are merged into what CWA sent before; one
        // setting of a level changes several containers, so the device
        // gets one access-levels event, where the batch's last one was.
        let last_containers = events
            .iter()
            .rposition(|e| matches!(e, crate::cwa::Event::Containers { .. }));
        let mut levels_changed = false;
        for (i, e) in events.into_iter().enumerate() {
            let e = match e {
                crate::cwa::Event::Containers { containers } => {
                    let mut st = self.state();
                    levels_changed |= st.access.merge(containers);
                    if Some(i) == last_containers && levels_changed {
                        out.push(st.access.event());
                    }
                    continue;
                }
                other => other,
            };
            if let crate::cwa::Event::UserPresence { users } = &e {
                if self.answer_presence_query(users) {
                    continue;
                }
            }
            match translate::event(e) {
                Translated::Events(mut evs) => out.append(&mut evs),
                Translated::Result { rid, outcome } => {
                    // Keep the order of events and results as CWA sent them.
                    self.deliver(std::mem::take(&mut out))?;
                    if self.finish_presence_query(rid, &outcome)? {
                        continue;
                    }
                    self.complete(rid, Early::Result(outcome));
                }
                Translated::SearchResult { rid, entries } => {
                    self.deliver(std::mem::take(&mut out))?;
                    match rid {
                        Some(rid) => self.complete(rid, Early::Search(entries)),
                        None => log::info!("{self:?}: search result without rid dropped"),
                    }
                }
            }
        }
        self.deliver(out)
    }

    /// Sign in to CWA again with the cached password (up to three times,
    /// with back-off) and restore presence subscriptions. Returns the new
    /// event channel, or why the session is lost.
    #[inline(never)]
    pub(super) fn sign_in_again(&self, lost: &SessionError) -> Result<EventChannel, String> {
        let Some(password) = self.credential.cached_password() else {
            return Err(lost.to_string());
        };
        let mut last = lost.to_string();
        for attempt in 0..RESIGN_ATTEMPTS {
            if attempt > 0 && !self.sleep(Duration::from_secs(1 << attempt)) {
                return Err("session ended".into());
            }
            let settings = self.ctx.cwa();
            match CwaSession::sign_in(&settings.client, &self.login, password.expose()) {
                Ok(cwa) => {
                    let (mut commands, events) = cwa.split();
                    let subscriptions = self.state().subscriptions.clone();
                    if !subscriptions.is_empty() {
                        let command = crate::cwa::Command::SubscribePresence {
                            uris: subscriptions,
                        };
                        if let Err(e) = commands.send(&command) {
                            log::warn!("{self:?}: restoring subscriptions: {e}");
                        }
                    }
                    {
                        let mut current = lock(&self.commands);
                        self.carry_presence(&current, &mut commands);
                        *current = commands;
                    }
                    self.forget_old_rids();
                    log::info!("{self:?}: signed in to CWA again after: {lost}");
                    return Ok(events);
                }
                Err(e) => {
                    log::warn!("{self:?}: CWA sign-in again, attempt {}: {e}", attempt + 1);
                    last = e.to_string();
                }
            }
        }
        Err(format!("{lost}; signing in again failed: {last}"))
    }

    /// Sleep up to `d`, waking early when the session ends. Returns false
    /// if it ended.
    pub(super) fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        while !self.is_ended() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }
}
