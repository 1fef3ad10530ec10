//! Tickets: issuing one at logon, checking the `CWA-Ticket` token each
//! request presents, and rotating it (the replaced token stays valid for a
//! grace window), as cwa-sim(1) says under TICKETS AND SESSIONS.

use std::time::Instant;

use super::{Ocs, Ticket, TicketOk};
use crate::hex;

impl Ocs {
    /// Issues a new ticket for `user` after a successful logon.
    pub fn issue_ticket(&self, user: usize) -> String {
        let token = random_token();
        let mut st = self.lock();
        let id = st.next_ticket;
        st.next_ticket += 1;
        let now = Instant::now();
        st.tickets.insert(
            id,
            Ticket {
                user,
                current: token.clone(),
                issued: now,
                previous: None,
                last_used: now,
                sessions: 0,
            },
        );
        st.token_index.insert(token.clone(), id);
        token
    }

    /// Checks a presented `CWA-Ticket` token, rotating the ticket when its
    /// current token is older than the rotation period. The previous token
    /// stays valid for the grace window. `None`: missing, unknown or
    /// expired.
    pub fn check_ticket(&self, token: &str) -> Option<TicketOk> {
        let (rotate, grace) = self.ticket_timing();
        let now = Instant::now();
        let mut st = self.lock();
        let id = *st.token_index.get(token)?;
        let ticket = st.tickets.get_mut(&id)?;
        let mut retire = None;
        if ticket.current == token {
            if now.duration_since(ticket.issued) >= rotate {
                let fresh = random_token();
                let old = std::mem::replace(&mut ticket.current, fresh.clone());
                if let Some((older, _)) = ticket.previous.replace((old, now + grace)) {
                    retire = Some(older);
                }
                ticket.issued = now;
                let (user, newest) = (ticket.user, fresh.clone());
                ticket.last_used = now;
                st.token_index.insert(fresh, id);
                if let Some(older) = retire {
                    st.token_index.remove(&older);
                }
                return Some(TicketOk {
                    ticket: id,
                    user,
                    newest,
                });
            }
        } else {
            match &ticket.previous {
                Some((prev, until)) if prev == token && now < *until => {}
                _ => {
                    // A token past its grace window is gone for good.
                    st.token_index.remove(token);
                    return None;
                }
            }
        }
        ticket.last_used = now;
        Some(TicketOk {
            ticket: id,
            user: ticket.user,
            newest: ticket.current.clone(),
        })
    }

    /// The newest token of ticket `id` (tickets may rotate while an event
    /// GET is held).
    pub fn newest_token(&self, id: u64) -> Option<String> {
        self.lock().tickets.get(&id).map(|t| t.current.clone())
    }
}

/// A fresh ticket token: 24 random bytes, written as 48 hex digits.
fn random_token() -> String {
    let mut bytes = [0u8; 24];
    // openssl::rand only fails when the system RNG is unusable; a
    // predictable ticket would be worse than stopping.
    openssl::rand::rand_bytes(&mut bytes).expect("system random number generator");
    hex::encode(&bytes)
}
