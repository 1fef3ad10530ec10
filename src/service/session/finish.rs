//! The finisher: once the session has ended, signs out of CWA, tells the
//! device why, closes the link, and writes the registry and the audit.

use crate::wire::{ServiceMessage, Status};

use super::super::spool::RegistryWrite;
use super::super::table::EndReason;
use super::state::lock;
use super::Session;

impl Session {
    /// [`Session::finish`], and if it panics (logged), at least the link
    /// closed and the session forgotten, so that nothing waits for it.
    pub(super) fn finish_guarded(&self) {
        let what = format!("{self:?}: session finisher");
        if crate::ops::panics::guard(&what, || self.finish()).is_none() {
            let link = {
                let mut st = self.state();
                st.finished = true;
                st.link.take()
            };
            if let Some(link) = link {
                link.close();
            }
            self.ctx.forget_session(self.id());
        }
    }

    /// The finisher: runs once, when the session has ended.
    pub(super) fn finish(&self) {
        let reason = self.handle.end_reason().unwrap_or(EndReason::Closed);
        log::info!("{self:?} ended: {reason}");
        {
            let mut commands = lock(&self.commands);
            match reason {
                EndReason::CwaSessionLost(_) => commands.close(),
                _ => {
                    if let Err(e) = commands.sign_out() {
                        log::info!("{self:?}: CWA sign-out: {e}");
                    }
                }
            }
        }
        let link = {
            let mut st = self.state();
            st.finished = true;
            st.link.take()
        };
        if let Some(link) = link {
            let _order = lock(&self.delivery);
            let message = match reason {
                EndReason::ServiceStopping => ServiceMessage::ServiceStopping,
                EndReason::Logout => ServiceMessage::SessionEnded {
                    status: Status::SessionEnded,
                    reason: "logout".to_string(),
                },
                ref other => ServiceMessage::SessionEnded {
                    status: other.status_code(),
                    reason: other.to_string(),
                },
            };
            let _ = link.send_message(&message);
            link.close_gracefully();
        }
        self.state().last_word_sent = true;
        let text = reason.to_string();
        if let Some(row) = self.registry_id {
            self.ctx.record(RegistryWrite::Ended {
                id: row,
                reason: text.clone(),
            });
        }
        let event = match reason {
            EndReason::Logout => "logout",
            EndReason::Evicted(_) => "evicted",
            EndReason::Inactive { .. } => "inactive",
            EndReason::Replaced => "replaced",
            EndReason::CwaSessionLost(_) => "cwa_session_lost",
            EndReason::BufferOverflow { .. } => "buffer_overflow",
            EndReason::ServiceStopping => "service_stopping",
            EndReason::Administrative(_) => "session_ended_by_admin",
            EndReason::Closed => "session_ended",
        };
        self.ctx
            .audit(event, Some(&self.login), Some(self.pin), &text);
        self.ctx.forget_session(self.id());
    }
}
