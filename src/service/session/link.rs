//! The link thread: reads the device's messages (status reports,
//! commands, acknowledgements, logout) until logout, a lost or silent
//! link, or the end of the session.

use std::sync::Arc;
use std::time::Instant;

use crate::ops::{memory, thread_cache};
use crate::wire::{self, DeviceMessage, Status, WireError};

use super::super::table::{Coverage, EndReason};
use super::state::{lock, trim, LinkReader};
use super::Session;

fn table_coverage(c: wire::Coverage) -> Coverage {
    match c {
        wire::Coverage::Dormant => Coverage::Dormant,
        wire::Coverage::InCoverage | wire::Coverage::Active => Coverage::In,
    }
}

/// The link thread: reads the device's messages until logout, a lost or
/// silent link, or the end of the session.
pub fn serve_link(session: &Arc<Session>, link_id: u64, reader: &mut LinkReader) {
    let status_timeout = session.ctx.timeouts.status_timeout;
    if let Err(e) = reader
        .get_ref()
        .tcp()
        .set_read_timeout(Some(status_timeout))
    {
        session.detach(link_id, &format!("cannot set the read timeout: {e}"));
        return;
    }
    loop {
        // About to wait for the device, at the loop's shallowest point: the
        // deep sign-in (TLS, CWA, Config DB) ran on this thread, and a
        // session lives for hours; once the device has been quiet a moment,
        // its stack pages go back rather than stay resident (see
        // `ops::memory`). Cheaper than handing the link to a fresh small
        // thread: no thread start per sign-in, and the pages of every
        // later deep command are released as well.
        // The quiet moment counts towards the status timeout, so a silent
        // device is still dropped `status_timeout` after its last word.
        let quiet = memory::RELEASE_AFTER_QUIET.min(status_timeout);
        let will_wait = !reader.has_partial_frame() && !reader.get_ref().has_buffered();
        if will_wait {
            // The small blocks the last message freed are kept over the
            // wait only within the process's budget: held for the quiet
            // moment by every session of a burst, they grew the heap by
            // about 18 KiB a session, for good (`ops::thread_cache`).
            thread_cache::before_wait();
        }
        let message = if will_wait && !crate::net::readable_within(reader.get_ref().tcp(), quiet) {
            memory::release_idle_memory();
            let rest = status_timeout.saturating_sub(quiet);
            if crate::net::readable_within(reader.get_ref().tcp(), rest) {
                reader.recv_device()
            } else {
                Err(WireError::Timeout)
            }
        } else {
            reader.recv_device()
        };
        if !take_message(session, link_id, status_timeout, message) {
            return;
        }
    }
}

/// One message (or read failure) from the device; false when the link is
/// done. Out of line: the link thread waits under `serve_link`'s frame for
/// hours, so what a message does stays out of that frame.
#[inline(never)]
fn take_message(
    session: &Arc<Session>,
    link_id: u64,
    status_timeout: std::time::Duration,
    message: Result<DeviceMessage, WireError>,
) -> bool {
    if session.is_ended() {
        // The finisher tells the device why, then ends the connection
        // gracefully (the device reads that, then end of stream). Until it
        // has, keep reading: returning now would close the connection
        // under the last word.
        return message.is_ok() && !session.state().last_word_sent;
    }
    let now = Instant::now();
    match message {
        Ok(DeviceMessage::Status { coverage }) => {
            let coverage = table_coverage(coverage);
            session.ctx.table.note_status(session.id(), coverage, now);
            session.record_coverage(coverage);
        }
        Ok(DeviceMessage::Command { id, command }) => {
            session.ctx.table.note_activity(session.id(), now);
            if !session.sent_again(link_id, id, &command) {
                session.command(link_id, id, command);
            }
        }
        Ok(DeviceMessage::Ack { seq }) => {
            session.ctx.table.note_activity(session.id(), now);
            let last = {
                let mut st = session.state();
                let last = st.next_seq - 1;
                if seq <= last {
                    trim(&mut st, seq);
                }
                last
            };
            if seq > last {
                // Trimming would drop events the device never had.
                let why = format!("ack of event {seq}, beyond the last event sent ({last})");
                refuse_link(session, link_id, &why);
                return false;
            }
        }
        Ok(DeviceMessage::Logout) => {
            session.ctx.table.note_activity(session.id(), now);
            session.ctx.table.end(session.id(), EndReason::Logout);
            // Read on until the finisher's answer has gone out (see
            // above).
        }
        Ok(DeviceMessage::Login { .. }) => {
            refuse_link(session, link_id, "login after the session started");
            return false;
        }
        Err(WireError::Timeout) => {
            session.detach(
                link_id,
                &format!("nothing for {} ms", status_timeout.as_millis()),
            );
            return false;
        }
        Err(e) if e.is_protocol_violation() => {
            refuse_link(session, link_id, &e.to_string());
            return false;
        }
        Err(e) => {
            session.detach(link_id, &e.to_string());
            return false;
        }
    }
    true
}

/// A protocol violation on a signed-in link: Refused 308, then the link is
/// dropped (the session stays, out of coverage).
fn refuse_link(session: &Arc<Session>, link_id: u64, why: &str) {
    log::info!("{session:?}: protocol error on link {link_id}: {why}");
    let link = session.state().link.clone().filter(|l| l.id == link_id);
    if let Some(link) = link {
        let _ = lock(&link.writer).refuse(Status::ProtocolError, why);
    }
    session.detach(link_id, "protocol error");
}
