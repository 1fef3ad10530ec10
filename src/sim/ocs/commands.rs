//! The command channel: a `cwaRequests` document sent with a valid ticket
//! becomes a `cwaResponses` document, each method checked against its
//! session and handed to the file that owns its job (cwa-sim(1),
//! COMMANDS).

use xmltree::Element;

use super::{accepted, err_elem, failed, invalid, Ocs, State, TicketOk};
use crate::sim::events::EndReason;
use crate::xml::{attr, children, elem, CWA_NS};

/// Most methods processed from one `cwaRequests` document.
const MAX_METHODS: usize = 32;

impl Ocs {
    /// Executes a `cwaRequests` document sent with a valid ticket and
    /// returns the `cwaResponses` document.
    pub fn handle_requests(&self, ticket: &TicketOk, doc: &Element) -> Element {
        let mut out = elem("cwaResponses", &[("xmlns", CWA_NS)]);
        if doc.name != "cwaRequests" || doc.namespace.as_deref() != Some(CWA_NS) {
            out.children.push(xmltree::XMLNode::Element(invalid(
                "",
                18000,
                "expected <cwaRequests xmlns=\"http://schemas.microsoft.com/2006/09/rtc/cwa\">",
            )));
            return out;
        }
        let sid_attr = attr(doc, "sid").and_then(|s| s.trim().parse::<u64>().ok());
        let mut processed = 0usize;
        let mut unexpected = 0usize;
        let mut st = self.lock();
        for method in children(doc).take(MAX_METHODS) {
            let rid = attr(method, "rid").unwrap_or("").to_string();
            let reply = if method.name == "initiateSession" {
                self.initiate_session(&mut st, ticket, &rid, method)
            } else if rid.is_empty() {
                invalid("", 18001, &format!("{} without rid", method.name))
            } else {
                match self.session_of(&st, ticket, sid_attr) {
                    Err(why) => failed(&rid, err_elem(18100, why)),
                    Ok(sid) => {
                        let reply = self.dispatch(&mut st, sid, &rid, method);
                        // OCS refusals (18201 with a SIP code) arrive
                        // asynchronously, like the OCS answer they model.
                        let from_ocs = reply.name == "requestFailed"
                            && reply.get_child("error").and_then(|e| attr(e, "code"))
                                == Some("18201");
                        if from_ocs {
                            self.emit(&st, sid, reply);
                            accepted(&rid)
                        } else {
                            reply
                        }
                    }
                }
            };
            if reply.name == "requestInvalid" {
                unexpected += 1;
            } else {
                processed += 1;
            }
            out.children.push(xmltree::XMLNode::Element(reply));
        }
        if processed + unexpected == 0 {
            out.children.push(xmltree::XMLNode::Element(invalid(
                "",
                18001,
                "no method in cwaRequests",
            )));
            unexpected += 1;
        }
        out.attributes
            .insert("requestProcessed".into(), processed.to_string());
        out.attributes
            .insert("unexpectedElement".into(), unexpected.to_string());
        out
    }

    fn session_of(
        &self,
        st: &State,
        ticket: &TicketOk,
        sid: Option<u64>,
    ) -> Result<u64, &'static str> {
        let sid = sid.ok_or("missing or invalid sid")?;
        match st.sessions.get(&sid) {
            Some(s) if s.user == ticket.user && s.queue.ended().is_none() => {
                s.queue.touch();
                Ok(sid)
            }
            _ => Err("session not found"),
        }
    }

    fn dispatch(&self, st: &mut State, sid: u64, rid: &str, m: &Element) -> Element {
        match m.name.as_str() {
            "terminateSession" => {
                self.end_session(st, sid, EndReason::Terminated);
                accepted(rid)
            }
            "publishSelfPresence" => self.publish_self_presence(st, sid, rid, m),
            "subscribePresence" => self.subscribe(st, sid, rid, m, true),
            "unSubscribePresence" => self.subscribe(st, sid, rid, m, false),
            "queryPresence" => self.query_presence(st, sid, rid, m),
            "addContact" | "updateContact" => self.add_update_contact(st, sid, rid, m),
            "deleteContact" => self.delete_contact(st, sid, rid, m),
            "addGroup" | "updateGroup" | "deleteGroup" => self.group_op(st, sid, rid, m),
            "search" => self.search(st, sid, rid, m),
            "conference" => self.conference(st, sid, rid, m),
            "updateContainer" => self.update_container(st, sid, rid, m),
            "acknowledgeSubscriber" => self.acknowledge_subscriber(st, sid, rid, m),
            other => invalid(rid, 18001, &format!("unknown method `{other}`")),
        }
    }
}
