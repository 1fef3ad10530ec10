//! Sign-in (cwa-sim(1), SIGN-IN): `logon` by NTLMv2 on `/iwa/logon.html` and/or by forms
//! on `/forms/logon.html`, then `initiateSession`, each failure classified
//! into a [`SignInError`].
//!
//! The IWA handshake is our reading of IIS (cwa-sim(1), SIGN-IN): the client
//! POSTs the `logon` document with `Authorization: NTLM <NEGOTIATE>`, reads
//! the server's CHALLENGE from the 401's `WWW-Authenticate`, and POSTs
//! again with the AUTHENTICATE message. Both legs go over the session's own
//! agent, whose pool then holds exactly that one connection, so the whole
//! handshake stays on one connection. Success needs a 2xx, a `CWA-Ticket`
//! and `requestSucceeded`. The status mapping (401 bad credentials, 403 not
//! enabled, 503 / 18101 busy) is our reading too; raw status and body
//! are logged at debug level (never the request, which holds the password).
//!
//! The whole sign-in runs in a [`WipeScope`]: every buffer that held the
//! password is zeroed when freed, and the forms logon's connection is not
//! kept (see [`logon_forms`]).

use xmltree::Element;

use super::command::envelope;
use super::error::{CwaError, SignInError};
use super::http::{Http, HttpFailure, HttpReply};
use super::response::{parse_logon, parse_session_accepted};
use super::{xmlguard, AuthMode, ClientConfig, SignedInVia};
use crate::ntlm;
use crate::wire::secret::{wipe_vec, WipeScope};
use crate::xml::{self, elem, text_elem, with_child};

/// Where a successful logon leaves us.
struct LogonOk {
    ticket: String,
    uri: Option<String>,
    sign_in_data: Option<String>,
    via: SignedInVia,
}

/// A signed-in session before it is split into channels.
pub(crate) struct SignedIn {
    pub http: Http,
    pub ticket: String,
    pub sid: String,
    pub own_uri: String,
    pub poll_wait_ms: Option<u64>,
    pub via: SignedInVia,
}

/// The rid of `initiateSession`, the first request of every session.
pub(crate) const INITIATE_SESSION_RID: u64 = 1;

/// Signs `login` in with `password` according to `config.auth_mode`, then
/// runs `initiateSession`.
pub(crate) fn sign_in(
    config: &ClientConfig,
    login: &str,
    password: &str,
) -> Result<SignedIn, SignInError> {
    // Every block freed here may have held the password (request bodies,
    // the NTLM hashing, the connection that carried the forms logon).
    let _scope = WipeScope::enter();
    let http = Http::new(config).map_err(SignInError::Config)?;
    let logon = match config.auth_mode {
        AuthMode::Iwa => logon_iwa(&http, config, login, password)?,
        AuthMode::Forms => logon_forms(&http, login, password)?,
        AuthMode::IwaThenForms => match logon_iwa(&http, config, login, password) {
            Ok(ok) => ok,
            // Forms would meet the same network, TLS or load problem.
            Err(
                e @ (SignInError::Unavailable(_)
                | SignInError::Tls(_)
                | SignInError::Config(_)
                | SignInError::ServerBusy),
            ) => return Err(e),
            Err(e) => {
                log::info!("CWA IWA sign-in for {login} failed ({e}); trying forms");
                logon_forms(&http, login, password)?
            }
        },
    };
    initiate_session(http, config, logon)
}

/// Splits `DOMAIN\user` for NTLM; a UPN or bare name goes with an empty
/// domain, which NTLM accepts.
fn split_login(login: &str) -> (&str, &str) {
    match login.split_once('\\') {
        Some((domain, user)) => (domain, user),
        None => ("", login),
    }
}

fn logon_document() -> Vec<u8> {
    xml::to_string(&envelope(None, vec![Element::new("logon")])).into_bytes()
}

fn logon_iwa(
    http: &Http,
    config: &ClientConfig,
    login: &str,
    password: &str,
) -> Result<LogonOk, SignInError> {
    const PATH: &str = "/iwa/logon.html";
    let body = logon_document();
    let negotiate = ntlm::header_value(&ntlm::negotiate_message());
    let first = http
        .post(PATH, None, &[("Authorization", &negotiate)], &body)
        .map_err(network_error)?;
    if first.status != 401 {
        // Already authenticated (or refused outright): judge the answer.
        return judge_logon(&first, SignedInVia::Iwa);
    }
    let challenge = first
        .www_authenticate
        .iter()
        .find_map(|v| ntlm::parse_header_value(v).ok())
        .ok_or_else(|| {
            log::debug!(
                "CWA IWA: 401 without an NTLM challenge ({:?})",
                first.www_authenticate
            );
            SignInError::Protocol("IWA: 401 without an NTLM challenge".into())
        })?;
    let challenge = ntlm::parse_challenge(&challenge)
        .map_err(|e| SignInError::Protocol(format!("IWA: bad NTLM challenge: {e}")))?;
    // From the kernel, as the device handshake's (see `random_bytes`).
    let mut client_challenge = [0u8; 8];
    crate::wire::crypto::fill_random(&mut client_challenge)
        .map_err(|e| SignInError::Unavailable(format!("no random bytes: {e}")))?;
    let (domain, user) = split_login(login);
    let authenticate = ntlm::authenticate_message(
        &challenge,
        domain,
        user,
        password,
        &config.workstation,
        client_challenge,
        ntlm::filetime_now(),
    )
    // Without HMAC-MD5 no IWA sign-in can work: CWA is unusable from here.
    .map_err(|e| SignInError::Unavailable(format!("IWA: {e}")))?;
    let authorization = ntlm::header_value(&authenticate);
    let second = http
        .post(PATH, None, &[("Authorization", &authorization)], &body)
        .map_err(network_error)?;
    judge_logon(&second, SignedInVia::Iwa)
}

fn logon_forms(http: &Http, login: &str, password: &str) -> Result<LogonOk, SignInError> {
    let logon = with_child(
        with_child(Element::new("logon"), text_elem("user", login)),
        text_elem("password", password),
    );
    let mut body = xml::to_string(&envelope(None, vec![logon])).into_bytes();
    // The HTTP client copies the body into its connection's output buffer,
    // which a pooled connection would keep for the session's life: this
    // connection is closed after the reply, and its buffers freed (zeroed,
    // inside the sign-in's wipe scope). The ticket, not the connection,
    // carries the session.
    let reply = http.post("/forms/logon.html", None, &[("Connection", "close")], &body);
    wipe_vec(&mut body);
    judge_logon(&reply.map_err(network_error)?, SignedInVia::Forms)
}

/// Classifies a logon reply.
fn judge_logon(reply: &HttpReply, via: SignedInVia) -> Result<LogonOk, SignInError> {
    log::debug!(
        "CWA logon ({via:?}): HTTP {} ticket={} body: {}",
        reply.status,
        reply.ticket.is_some(),
        reply.body_for_log()
    );
    if reply.is_redirect() {
        return Err(SignInError::Protocol(format!(
            "logon redirected (HTTP {}) to {}",
            reply.status,
            reply.location.as_deref().unwrap_or("?")
        )));
    }
    match reply.status {
        401 => return Err(SignInError::BadCredentials),
        403 => return Err(SignInError::NotEnabled),
        503 => return Err(SignInError::ServerBusy),
        s if s >= 500 => return Err(SignInError::Unavailable(format!("logon: HTTP {s}"))),
        s if !(200..300).contains(&s) => {
            return Err(SignInError::Protocol(format!("logon: HTTP {s}")))
        }
        _ => {}
    }
    let root = xmlguard::parse(&reply.body, usize::MAX)
        .map_err(|why| SignInError::Protocol(format!("logon reply: {why}")))?;
    match (parse_logon(&root), &reply.ticket) {
        (Ok(ok), Some(ticket)) => Ok(LogonOk {
            ticket: ticket.clone(),
            uri: ok.uri,
            sign_in_data: ok.sign_in_data,
            via,
        }),
        (Ok(_), None) => Err(SignInError::Protocol(
            "logon succeeded without a CWA-Ticket".into(),
        )),
        (Err(Some(e)), _) if e.is_throttled() => Err(SignInError::ServerBusy),
        // Credentials accepted (a ticket came) but CWA refused the user.
        (Err(Some(_)), Some(_)) => Err(SignInError::NotEnabled),
        (Err(Some(_)), None) => Err(SignInError::BadCredentials),
        (Err(None), _) => Err(SignInError::Protocol(
            "logon reply holds neither requestSucceeded nor an error".into(),
        )),
    }
}

fn initiate_session(
    http: Http,
    config: &ClientConfig,
    logon: LogonOk,
) -> Result<SignedIn, SignInError> {
    let rid = INITIATE_SESSION_RID.to_string();
    let mut method = elem("initiateSession", &[("rid", &rid)]);
    method = with_child(method, text_elem("localeId", "1033"));
    method = with_child(method, text_elem("securityMode", "private"));
    method = with_child(
        method,
        text_elem(
            "userStateAvailability",
            &config.initial_availability.to_string(),
        ),
    );
    method = with_child(
        method,
        elem("options", &[("autoPublishMachineState", "true")]),
    );
    if let Some(data) = &logon.sign_in_data {
        method = with_child(method, text_elem("signInData", data));
    }
    let body = xml::to_string(&envelope(Some("0"), vec![method])).into_bytes();
    let reply = http
        .post(
            "/cwa/MainCommandHandler.ashx",
            Some(&logon.ticket),
            &[],
            &body,
        )
        .map_err(network_error)?;
    log::debug!(
        "CWA initiateSession: HTTP {} body: {}",
        reply.status,
        reply.body_for_log()
    );
    if reply.is_redirect() {
        return Err(SignInError::Protocol(format!(
            "initiateSession redirected (HTTP {})",
            reply.status
        )));
    }
    match reply.status {
        403 => return Err(SignInError::NotEnabled),
        503 => return Err(SignInError::ServerBusy),
        s if s >= 500 => {
            return Err(SignInError::Unavailable(format!(
                "initiateSession: HTTP {s}"
            )))
        }
        s if !(200..300).contains(&s) => {
            return Err(SignInError::Protocol(format!(
                "initiateSession: HTTP {s} with a fresh ticket"
            )))
        }
        _ => {}
    }
    let root = xmlguard::parse(&reply.body, usize::MAX)
        .map_err(|why| SignInError::Protocol(format!("initiateSession reply: {why}")))?;
    let accepted = parse_session_accepted(&root, INITIATE_SESSION_RID).map_err(|e| match e {
        Ok(cwa) => classify_initiate_error(&cwa),
        Err(why) => SignInError::Protocol(format!("initiateSession reply: {why}")),
    })?;
    let own_uri = accepted.uri.or(logon.uri).unwrap_or_default();
    Ok(SignedIn {
        http,
        ticket: reply.ticket.unwrap_or(logon.ticket),
        sid: accepted.sid,
        own_uri,
        poll_wait_ms: accepted.poll_wait_ms,
        via: logon.via,
    })
}

/// A CWA error answering `initiateSession`: CWA authorizes the user here
/// (SIP URI, OCS enablement), so an OCS-side refusal means "not enabled".
fn classify_initiate_error(e: &CwaError) -> SignInError {
    match e.code {
        Some(18101) => SignInError::ServerBusy,
        Some(18000..=18099) => SignInError::Protocol(format!("initiateSession refused: {e}")),
        Some(18203 | 18301 | 18302 | 18400) => {
            SignInError::Unavailable(format!("initiateSession: {e}"))
        }
        _ => SignInError::NotEnabled,
    }
}

fn network_error(f: HttpFailure) -> SignInError {
    match f {
        HttpFailure::Tls(why) => SignInError::Tls(why),
        HttpFailure::Connect(_) | HttpFailure::Dropped(_) | HttpFailure::Timeout(_) => {
            SignInError::Unavailable(f.to_string())
        }
        HttpFailure::TooLarge(_) | HttpFailure::Protocol(_) => SignInError::Protocol(f.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_split_for_ntlm() {
        assert_eq!(split_login(r"EXAMPLE\alice"), ("EXAMPLE", "alice"));
        assert_eq!(split_login("alice@example.com"), ("", "alice@example.com"));
    }

    #[test]
    fn the_forms_document_escapes_the_password() {
        let logon = with_child(
            with_child(Element::new("logon"), text_elem("user", r"EX\a")),
            text_elem("password", "p<&>\"'"),
        );
        let s = xml::to_string(&envelope(None, vec![logon]));
        let back = xml::parse(s.as_bytes(), 4096).unwrap();
        assert_eq!(back.namespace.as_deref(), Some(xml::CWA_NS));
        let l = back.get_child("logon").unwrap();
        assert_eq!(xml::child_text(l, "password").as_deref(), Some("p<&>\"'"));
    }

    fn reply(status: u16, ticket: Option<&str>, body: &str) -> HttpReply {
        HttpReply {
            status,
            ticket: ticket.map(str::to_string),
            www_authenticate: vec![],
            location: Some("https://elsewhere/".into()),
            body: body.as_bytes().to_vec(),
            arrived: std::time::Instant::now(),
        }
    }

    #[test]
    fn logon_replies_are_classified() {
        let ok = r#"<cwaResponses><requestSucceeded><uri>sip:a@x</uri><signInData>x</signInData></requestSucceeded></cwaResponses>"#;
        assert!(judge_logon(&reply(200, Some("T"), ok), SignedInVia::Forms).is_ok());
        assert!(matches!(
            judge_logon(&reply(200, None, ok), SignedInVia::Forms),
            Err(SignInError::Protocol(_))
        ));
        let busy =
            r#"<cwaResponses><requestFailed><error code="18101"/></requestFailed></cwaResponses>"#;
        let fail =
            r#"<cwaResponses><requestFailed><error code="18201"/></requestFailed></cwaResponses>"#;
        let cases = [
            (reply(401, None, ""), SignInError::BadCredentials),
            (reply(403, None, ""), SignInError::NotEnabled),
            (reply(503, None, ""), SignInError::ServerBusy),
            (reply(200, None, busy), SignInError::ServerBusy),
            (reply(200, Some("T"), fail), SignInError::NotEnabled),
            (reply(200, None, fail), SignInError::BadCredentials),
        ];
        for (r, want) in cases {
            assert_eq!(judge_logon(&r, SignedInVia::Forms).err(), Some(want));
        }
        for r in [
            reply(302, None, ""),
            reply(200, Some("T"), "<html><body>hello</body></html>"),
            reply(200, Some("T"), "<cwaResponses><requestSucceeded>"),
            reply(404, None, ""),
        ] {
            assert!(
                matches!(
                    judge_logon(&r, SignedInVia::Forms),
                    Err(SignInError::Protocol(_))
                ),
                "{}",
                r.status
            );
        }
    }
}
