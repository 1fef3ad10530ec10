//! Synchronous CWA replies (cwa-sim(1), COMMANDS): the `cwaResponses` body of a command POST,
//! of `initiateSession` (both documented forms) and of `logon`.

use xmltree::Element;

use super::error::CwaError;
use super::event::{parse_events, Event, ParsedEvents};
use crate::xml;

/// What the POST of a command answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `requestAccepted`: well-formed; the result follows on the event
    /// channel as `requestSucceeded` / `requestFailed` with this rid.
    Accepted,
    /// `requestSucceeded` in the reply itself.
    Succeeded,
    /// `initiateImSessionAccepted`: the conversation's confId, to be used
    /// by every later action on it.
    ImSessionAccepted {
        /// The confId CWA assigned.
        conf_id: String,
    },
    /// `requestFailed`, `requestRejected` or a bare `error`.
    Failed(CwaError),
    /// `requestInvalid`: a malformed request (a bug on our side).
    Invalid(CwaError),
}

/// The reply to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandReply {
    /// The rid the command was sent with; asynchronous results carry it.
    pub rid: u64,
    /// What CWA answered.
    pub outcome: Outcome,
    /// Events embedded in the reply (our reading; cwa-sim(1), COMMANDS). They are also recorded
    /// so that the event channel does not hand them out a second time.
    pub events: Vec<Event>,
}

/// The parsed body of a command reply.
#[derive(Debug)]
pub(crate) struct ParsedReply {
    pub outcome: Outcome,
    pub embedded: Vec<ParsedEvents>,
}

const RESULT_NAMES: [&str; 7] = [
    "requestAccepted",
    "requestSucceeded",
    "initiateImSessionAccepted",
    "initiateSessionAccepted",
    "requestFailed",
    "requestRejected",
    "requestInvalid",
];

/// Parses a `cwaResponses` body for the result of request `rid`.
pub(crate) fn parse_reply(root: &Element, rid: u64) -> Result<ParsedReply, String> {
    if root.name != "cwaResponses" {
        return Err(format!("expected <cwaResponses>, got <{}>", root.name));
    }
    let rid_text = rid.to_string();
    let mut mine: Option<&Element> = None;
    let mut anonymous: Option<&Element> = None;
    let mut bare_error: Option<&Element> = None;
    let mut embedded = Vec::new();
    for child in xml::children(root) {
        let name = child.name.as_str();
        if name == "cwaEvents" {
            embedded.push(parse_events(child));
        } else if name == "error" {
            bare_error.get_or_insert(child);
        } else if RESULT_NAMES.contains(&name) {
            match xml::attr(child, "rid") {
                Some(r) if r.trim() == rid_text => {
                    mine.get_or_insert(child);
                }
                Some(_) => {}
                None => {
                    anonymous.get_or_insert(child);
                }
            }
        }
    }
    let outcome = match mine.or(anonymous) {
        Some(result) => outcome_of(result)?,
        None => match bare_error {
            Some(e) => Outcome::Failed(CwaError::from_element(e)),
            None => return Err(format!("no result for request {rid} in the reply")),
        },
    };
    Ok(ParsedReply { outcome, embedded })
}

fn outcome_of(result: &Element) -> Result<Outcome, String> {
    Ok(match result.name.as_str() {
        "requestAccepted" | "initiateSessionAccepted" => Outcome::Accepted,
        "requestSucceeded" => Outcome::Succeeded,
        "initiateImSessionAccepted" => {
            let conf_id = xml::attr(result, "confId")
                .map(str::to_string)
                .or_else(|| xml::child_text(result, "confId"))
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .ok_or("initiateImSessionAccepted without a confId")?;
            Outcome::ImSessionAccepted { conf_id }
        }
        "requestInvalid" => Outcome::Invalid(CwaError::child_of(result)),
        _ => Outcome::Failed(CwaError::child_of(result)),
    })
}

/// What `initiateSession` answered when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionAccepted {
    pub sid: String,
    pub poll_wait_ms: Option<u64>,
    pub uri: Option<String>,
}

/// Parses the reply to `initiateSession`, in either documented form:
/// `<initiateSessionAccepted rid sid pollWaitTime/>` (attributes) or
/// `<requestAccepted rid><sid/><uri/><pollWaitTime/></requestAccepted>`.
/// `Err(Ok(error))` is a CWA refusal, `Err(Err(why))` a malformed reply.
pub(crate) fn parse_session_accepted(
    root: &Element,
    rid: u64,
) -> Result<SessionAccepted, Result<CwaError, String>> {
    let parsed = parse_reply(root, rid).map_err(Err)?;
    match parsed.outcome {
        Outcome::Accepted | Outcome::Succeeded => {}
        Outcome::Failed(e) | Outcome::Invalid(e) => return Err(Ok(e)),
        Outcome::ImSessionAccepted { .. } => {
            return Err(Err(
                "initiateImSessionAccepted answering initiateSession".into()
            ))
        }
    }
    // parse_reply found the element; find it again to read its fields.
    let result = xml::children(root)
        .find(|c| c.name == "initiateSessionAccepted" || c.name == "requestAccepted")
        .or_else(|| xml::children(root).find(|c| c.name == "requestSucceeded"))
        .ok_or_else(|| Err("no initiateSession result".to_string()))?;
    let field = |name: &str| {
        xml::attr(result, name)
            .map(str::to_string)
            .or_else(|| xml::child_text(result, name))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let sid = field("sid").ok_or_else(|| Err("initiateSession reply without a sid".to_string()))?;
    Ok(SessionAccepted {
        sid,
        poll_wait_ms: field("pollWaitTime").and_then(|v| v.parse().ok()),
        uri: field("uri"),
    })
}

/// What a successful `logon` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogonSucceeded {
    pub uri: Option<String>,
    pub sign_in_data: Option<String>,
}

/// Reads a logon reply: `Ok` for `requestSucceeded` (with `uri` and
/// `signInData`), `Err(Some(error))` for a CWA error, `Err(None)` when the
/// body holds neither.
pub(crate) fn parse_logon(root: &Element) -> Result<LogonSucceeded, Option<CwaError>> {
    let find = |name: &str| -> Option<&Element> {
        if root.name == name {
            Some(root)
        } else {
            xml::children(root).find(|c| c.name == name)
        }
    };
    if let Some(ok) = find("requestSucceeded") {
        return Ok(LogonSucceeded {
            uri: xml::child_text(ok, "uri").map(|u| u.trim().to_string()),
            sign_in_data: xml::child_text(ok, "signInData"),
        });
    }
    for name in ["requestFailed", "requestRejected", "requestInvalid"] {
        if let Some(e) = find(name) {
            return Err(Some(CwaError::child_of(e)));
        }
    }
    Err(find("error").map(CwaError::from_element))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Element {
        xml::parse(s.as_bytes(), 1 << 16).unwrap()
    }

    #[test]
    fn both_initiate_session_forms_are_read() {
        // M:bb969634: attributes.
        let a = doc(
            r#"<cwaResponses requestProcessed="1"><initiateSessionAccepted rid="1" sid="42" pollWaitTime="1000"/></cwaResponses>"#,
        );
        let s = parse_session_accepted(&a, 1).unwrap();
        assert_eq!(s.sid, "42");
        assert_eq!(s.poll_wait_ms, Some(1000));
        // M:bb969597 / cwalib: child elements.
        let b = doc(
            r#"<cwaResponses xmlns="http://schemas.microsoft.com/2006/09/rtc/cwa"><requestAccepted rid="1"><sid>7</sid><uri>sip:alice@x</uri><pollWaitTime>3000</pollWaitTime></requestAccepted></cwaResponses>"#,
        );
        let s = parse_session_accepted(&b, 1).unwrap();
        assert_eq!(s.sid, "7");
        assert_eq!(s.uri.as_deref(), Some("sip:alice@x"));
        assert_eq!(s.poll_wait_ms, Some(3000));
        let c = doc(
            r#"<cwaResponses><requestFailed rid="1"><error code="18101"/></requestFailed></cwaResponses>"#,
        );
        assert!(matches!(parse_session_accepted(&c, 1), Err(Ok(e)) if e.is_throttled()));
        let d = doc(r#"<cwaResponses><requestAccepted rid="1"/></cwaResponses>"#);
        assert!(matches!(parse_session_accepted(&d, 1), Err(Err(_))));
    }

    #[test]
    fn command_results_are_matched_by_rid() {
        let r = doc(
            r#"<cwaResponses><requestAccepted rid="4"/><initiateImSessionAccepted rid="5" confId="77"/></cwaResponses>"#,
        );
        assert_eq!(
            parse_reply(&r, 5).unwrap().outcome,
            Outcome::ImSessionAccepted {
                conf_id: "77".into()
            }
        );
        assert_eq!(parse_reply(&r, 4).unwrap().outcome, Outcome::Accepted);
        assert!(parse_reply(&r, 6).is_err());
        let f = doc(
            r#"<cwaResponses><requestInvalid rid="3"><error code="18001"/></requestInvalid></cwaResponses>"#,
        );
        assert!(
            matches!(parse_reply(&f, 3).unwrap().outcome, Outcome::Invalid(e) if e.code == Some(18001))
        );
        let bare = doc(r#"<cwaResponses><error code="18100"/></cwaResponses>"#);
        assert!(
            matches!(parse_reply(&bare, 3).unwrap().outcome, Outcome::Failed(e) if e.is_session_gone())
        );
        // M:bb969556: events nested in a reply.
        let nested = doc(
            r#"<cwaResponses><initiateImSessionAccepted rid="2" confId="9"/><cwaEvents ackId="3"><conference eid="3" confId="9"><imSessionState>connecting</imSessionState></conference></cwaEvents></cwaResponses>"#,
        );
        let p = parse_reply(&nested, 2).unwrap();
        assert_eq!(p.embedded.len(), 1);
        assert_eq!(p.embedded[0].events[0].0, Some(3));
    }

    #[test]
    fn logon_reply() {
        let ok = doc(
            r#"<cwaResponses><requestSucceeded><uri>sip:alice@x</uri><signInData>PHA+</signInData></requestSucceeded></cwaResponses>"#,
        );
        let s = parse_logon(&ok).unwrap();
        assert_eq!(s.uri.as_deref(), Some("sip:alice@x"));
        assert_eq!(s.sign_in_data.as_deref(), Some("PHA+"));
        let bad = doc(
            r#"<cwaResponses><requestFailed><error code="18101"/></requestFailed></cwaResponses>"#,
        );
        assert!(matches!(parse_logon(&bad), Err(Some(e)) if e.is_throttled()));
        assert_eq!(parse_logon(&doc("<html/>")), Err(None));
    }
}
