//! The simulator's admin endpoint: status and connection reports, and the
//! faults and actions a test sets with `key=value` pairs.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Server;
use crate::sim::http::{Request, Response};

impl Server {
    pub(super) fn status_text(&self) -> String {
        let s = self.ocs.status();
        let (rotate, grace) = self.ocs.ticket_timing();
        let mut out = String::new();
        let _ = writeln!(out, "uptime_s={}", self.started.elapsed().as_secs());
        let _ = writeln!(out, "connections={}", self.conns().len());
        let _ = writeln!(
            out,
            "refused_connections={}",
            self.refused_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "held_polls={}",
            self.held_polls.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "tickets={}", s.tickets);
        let _ = writeln!(out, "sessions={}", s.sessions);
        let _ = writeln!(out, "sessions_ended={}", s.sessions_ended);
        let _ = writeln!(out, "conversations={}", s.conversations);
        let _ = writeln!(
            out,
            "max_connections={}",
            self.faults.max_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "throttle={}", self.faults.throttle_text());
        let _ = writeln!(
            out,
            "latency_ms={}",
            self.faults.latency_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "hold_ms={}",
            self.faults.hold_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "ticket_rotate_ms={}", rotate.as_millis());
        let _ = writeln!(out, "ticket_grace_ms={}", grace.as_millis());
        let withheld = if self.ocs.withholds_outcomes() {
            "on"
        } else {
            "off"
        };
        let _ = writeln!(out, "withhold_outcomes={withheld}");
        let query = if self.ocs.fails_query_presence() {
            "fail"
        } else {
            "ok"
        };
        let _ = writeln!(out, "query_presence={query}");
        for (sid, uri) in self.ocs.session_list() {
            let _ = writeln!(out, "session {sid} {uri}");
        }
        out
    }

    pub(super) fn connections_text(&self) -> String {
        let conns = self.conns();
        let mut ids: Vec<&u64> = conns.keys().collect();
        ids.sort();
        let list = |s: &BTreeSet<String>| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.iter().cloned().collect::<Vec<_>>().join(",")
            }
        };
        let mut out = String::new();
        for id in ids {
            let c = &conns[id];
            let _ = writeln!(
                out,
                "{id} {} tls={} ntlm={} forms={} tickets={}",
                c.peer,
                if c.tls { "yes" } else { "no" },
                list(&c.ntlm),
                list(&c.forms),
                list(&c.tickets)
            );
        }
        out
    }

    pub(super) fn admin(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/admin/status") => Response::text(200, self.status_text()),
            ("GET", "/admin/connections") => Response::text(200, self.connections_text()),
            ("GET", "/admin/presence") => Response::text(200, self.ocs.published_text()),
            ("POST", "/admin/faults") => match self.apply_faults(&req.body) {
                Ok(done) => Response::text(200, format!("ok {done}\n{}", self.status_text())),
                Err(why) => {
                    log::warn!("admin: refused faults: {why} (400)");
                    Response::text(400, format!("{why}\n"))
                }
            },
            (_, "/admin/status" | "/admin/connections" | "/admin/faults" | "/admin/presence") => {
                Response::text(405, "wrong method\n")
            }
            _ => Response::text(404, "unknown admin path\n"),
        }
    }

    /// Applies `key=value` pairs (newline- or `&`-separated); validates all
    /// before applying any. Returns a summary of the actions taken.
    pub(super) fn apply_faults(&self, body: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(body).map_err(|_| "body is not UTF-8".to_string())?;
        enum Action {
            MaxConnections(usize),
            Throttle(i64),
            Latency(u64),
            Hold(u64),
            Rotate(u64),
            Grace(u64),
            DropSession(u64),
            DropUser(String),
            WithholdOutcomes(bool),
            FailQueryPresence(bool),
            Restart,
        }
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}={v}: expected a number"))
        };
        let mut actions = Vec::new();
        for pair in text
            .split(['\n', '&'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            actions.push(match k {
                "max_connections" => Action::MaxConnections(num(k, v)? as usize),
                "throttle" => Action::Throttle(match v {
                    "on" => -1,
                    "off" => 0,
                    n => num(k, n)?.min(i64::MAX as u64) as i64,
                }),
                "latency_ms" => Action::Latency(num(k, v)?),
                "hold_ms" => Action::Hold(num(k, v)?),
                "ticket_rotate_ms" => Action::Rotate(num(k, v)?),
                "ticket_grace_ms" => Action::Grace(num(k, v)?),
                "drop_session" => Action::DropSession(num(k, v)?),
                "drop_user" => Action::DropUser(v.to_string()),
                "withhold_outcomes" => Action::WithholdOutcomes(match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("{k}={v}: expected on or off")),
                }),
                "query_presence" => Action::FailQueryPresence(match v {
                    "fail" => true,
                    "ok" => false,
                    _ => return Err(format!("{k}={v}: expected fail or ok")),
                }),
                "restart" if matches!(v, "yes" | "true" | "1") => Action::Restart,
                _ => return Err(format!("unknown setting `{pair}`")),
            });
        }
        let mut done = Vec::new();
        for a in actions {
            match a {
                Action::MaxConnections(n) => {
                    self.faults.max_connections.store(n, Ordering::Relaxed)
                }
                Action::Throttle(n) => self.faults.throttle.store(n, Ordering::Relaxed),
                Action::Latency(n) => self.faults.latency_ms.store(n, Ordering::Relaxed),
                Action::Hold(n) => self.faults.hold_ms.store(n, Ordering::Relaxed),
                Action::WithholdOutcomes(on) => self.ocs.set_withhold_outcomes(on),
                Action::FailQueryPresence(on) => self.ocs.set_fail_query_presence(on),
                Action::Rotate(n) => self
                    .ocs
                    .set_ticket_timing(Some(Duration::from_millis(n)), None),
                Action::Grace(n) => self
                    .ocs
                    .set_ticket_timing(None, Some(Duration::from_millis(n))),
                Action::DropSession(sid) => {
                    let found = self.ocs.drop_session(sid);
                    log::warn!(
                        "admin: drop session {sid}: {}",
                        if found { "dropped" } else { "not found" }
                    );
                    done.push(format!("dropped_sessions={}", usize::from(found)));
                }
                Action::DropUser(who) => {
                    let n = self.ocs.drop_user(&who);
                    log::warn!("admin: drop user {who}: {n} session(s)");
                    done.push(format!("dropped_sessions={n}"));
                }
                Action::Restart => {
                    log::warn!("admin: restart: forgetting every session and ticket");
                    self.ocs.restart();
                    done.push("restarted".into());
                }
            }
        }
        Ok(done.join(" "))
    }
}
