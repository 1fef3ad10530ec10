//! The simulator's sign-in pages: forms on `/forms/logon.html`, NTLMv2 on
//! `/iwa/logon.html` (challenge, then authenticate), and what a signed-in
//! or disabled user is answered.

use std::time::Instant;

use crate::ntlm;
use crate::xml::{child_text, elem, text_elem, with_child};

use super::{
    cwa_doc, error_doc, parse_body, password_matches, ConnState, Server, NTLM_CHALLENGE_TTL,
};
use crate::sim::http::{Request, Response};
use crate::sim::ocs::sign_in_data;

impl Server {
    pub(super) fn logon_success(&self, user: usize) -> Response {
        let entry = &self.ocs.directory.users[user];
        let token = self.ocs.issue_ticket(user);
        let body = with_child(
            with_child(
                elem("requestSucceeded", &[]),
                text_elem("uri", &entry.sip_uri),
            ),
            text_elem("signInData", &sign_in_data(&entry.sip_uri)),
        );
        log::info!("{}: signed in", entry.sip_uri);
        Response::xml(200, cwa_doc(body)).with_header("CWA-Ticket", token)
    }

    pub(super) fn not_enabled(&self, user: usize) -> Response {
        log::warn!(
            "{}: refused sign-in, not enabled for Communications Server (403)",
            self.ocs.directory.users[user].sip_uri
        );
        Response::xml(
            403,
            error_doc(
                "requestFailed",
                Some(18102),
                "user not enabled for Communications Server",
            ),
        )
    }

    pub(super) fn forms_logon(&self, st: &mut ConnState, req: &Request) -> Response {
        let doc = match parse_body(&req.body, self.settings.limits.max_body) {
            Ok(d) => d,
            Err(why) => {
                log::warn!("{}: forms logon: {why} (400)", st.peer);
                return Response::xml(400, error_doc("requestInvalid", Some(18000), &why));
            }
        };
        let Some(logon) = (doc.name == "cwaRequests")
            .then(|| doc.get_child("logon"))
            .flatten()
        else {
            log::warn!(
                "{}: forms logon without <cwaRequests><logon> (400)",
                st.peer
            );
            return Response::xml(
                400,
                error_doc(
                    "requestInvalid",
                    Some(18001),
                    "expected <cwaRequests><logon>",
                ),
            );
        };
        let login = child_text(logon, "user").unwrap_or_default();
        let password = child_text(logon, "password").unwrap_or_default();
        let login = login.trim();
        let user = self.ocs.directory.by_login(login);
        let ok = match user {
            Some(u) => password_matches(&password, &self.ocs.directory.users[u].password),
            None => false,
        };
        let (Some(user), true) = (user, ok) else {
            log::warn!(
                "{}: forms logon refused for {login:?}: unknown user or bad password (401)",
                st.peer
            );
            return Response::xml(
                401,
                error_doc(
                    "requestFailed",
                    None,
                    "logon failed: unknown user or bad password",
                ),
            );
        };
        self.note_user(st.id, "forms", user);
        if !self.ocs.directory.users[user].enabled {
            return self.not_enabled(user);
        }
        self.logon_success(user)
    }

    pub(super) fn ntlm_offer(&self) -> Response {
        Response::xml(
            401,
            error_doc("requestFailed", None, "authentication required"),
        )
        .with_header("WWW-Authenticate", "Negotiate")
        .with_header("WWW-Authenticate", "NTLM")
    }

    pub(super) fn iwa_logon(&self, st: &mut ConnState, req: &Request) -> Response {
        let Some(auth) = req.header("Authorization") else {
            if let Some(user) = st.ntlm_user {
                // IIS keeps NTLM authentication for the connection.
                if !self.ocs.directory.users[user].enabled {
                    return self.not_enabled(user);
                }
                return self.logon_success(user);
            }
            return self.ntlm_offer();
        };
        let scheme = if auth.trim_start().len() >= 9
            && auth.trim_start()[..9].eq_ignore_ascii_case("Negotiate")
        {
            "Negotiate"
        } else {
            "NTLM"
        };
        let msg = match ntlm::parse_header_value(auth) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("{}: IWA logon: {e} (400)", st.peer);
                st.pending_challenge = None;
                return Response::xml(
                    400,
                    error_doc("requestInvalid", Some(18000), &e.to_string()),
                );
            }
        };
        let msg_type = msg
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match msg_type {
            Some(1) if msg.len() >= 16 => {
                let mut challenge = [0u8; 8];
                openssl::rand::rand_bytes(&mut challenge).expect("system random number generator");
                let info = ntlm::target_info("CWASIM", "CWA01");
                let type2 = ntlm::challenge_message(challenge, "CWASIM", &info);
                st.pending_challenge = Some((challenge, Instant::now(), scheme));
                st.ntlm_user = None;
                let value = format!("{scheme} {}", ntlm::base64_encode(&type2));
                Response::xml(401, error_doc("requestFailed", None, "NTLM challenge"))
                    .with_header("WWW-Authenticate", value)
            }
            Some(3) => self.iwa_authenticate(st, req, &msg),
            _ => {
                log::warn!("{}: IWA logon: unexpected NTLM message (400)", st.peer);
                st.pending_challenge = None;
                Response::xml(
                    400,
                    error_doc(
                        "requestInvalid",
                        Some(18000),
                        "unexpected NTLM message type",
                    ),
                )
            }
        }
    }

    pub(super) fn iwa_authenticate(
        &self,
        st: &mut ConnState,
        req: &Request,
        msg: &[u8],
    ) -> Response {
        let auth = match ntlm::parse_authenticate(msg) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("{}: IWA logon: {e} (400)", st.peer);
                st.pending_challenge = None;
                return Response::xml(
                    400,
                    error_doc("requestInvalid", Some(18000), &e.to_string()),
                );
            }
        };
        // The challenge is single-use and belongs to this connection.
        let Some((challenge, issued, _)) = st.pending_challenge.take() else {
            log::warn!(
                "{}: IWA logon: AUTHENTICATE for {}\\{} without a challenge on this connection (401)",
                st.peer,
                auth.domain,
                auth.user
            );
            return self.ntlm_offer();
        };
        if issued.elapsed() > NTLM_CHALLENGE_TTL {
            log::warn!("{}: IWA logon: challenge expired (401)", st.peer);
            return self.ntlm_offer();
        }
        let user = self
            .ocs
            .directory
            .by_domain_account(&auth.domain, &auth.user);
        let verified = user.is_some_and(|u| {
            match ntlm::verify_ntlmv2(&auth, challenge, &self.ocs.directory.users[u].password) {
                Ok(verified) => verified,
                Err(e) => {
                    log::error!("{}: IWA logon cannot be checked: {e}", st.peer);
                    false
                }
            }
        });
        let Some(user) = user.filter(|_| verified) else {
            log::warn!(
                "{}: IWA logon refused for {}\\{}: unknown user or bad password (401)",
                st.peer,
                auth.domain,
                auth.user
            );
            return self.ntlm_offer();
        };
        if !self.ocs.directory.users[user].iwa {
            log::warn!(
                "{}: IWA logon refused for {}: IWA not available for this user (401)",
                st.peer,
                auth.user
            );
            return self.ntlm_offer();
        }
        st.ntlm_user = Some(user);
        self.note_user(st.id, "ntlm", user);
        if !req.body.is_empty() {
            if let Err(why) = parse_body(&req.body, self.settings.limits.max_body) {
                log::warn!("{}: IWA logon body: {why} (400)", st.peer);
                return Response::xml(400, error_doc("requestInvalid", Some(18000), &why));
            }
        }
        if !self.ocs.directory.users[user].enabled {
            return self.not_enabled(user);
        }
        self.logon_success(user)
    }
}
