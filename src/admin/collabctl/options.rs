//! The options of one collabctl command and the values they carry: counts,
//! switches, auth modes, session targets, an instance's settings.

use std::collections::BTreeMap;

use crate::configdb::{parse_cwa_url, parse_pin, AuthMode, DbError, InstanceChange, SessionTarget};
use crate::ops::args::Args;

use super::error::{bad, usage, CliError};

/// Options of one command: `--name value` or `--name=value`, each at most
/// once, from a fixed set.
pub(super) struct Options {
    values: BTreeMap<&'static str, String>,
    positional: Vec<String>,
}

impl Options {
    pub(super) fn parse(words: &[String], allowed: &[&'static str]) -> Result<Options, CliError> {
        let mut values = BTreeMap::new();
        let mut positional = Vec::new();
        let mut args = Args::new(words.iter().cloned());
        while let Some(word) = args.next_word() {
            let Some(name) = word.strip_prefix("--") else {
                positional.push(word);
                continue;
            };
            let known = allowed
                .iter()
                .find(|a| **a == name)
                .ok_or_else(|| usage(format!("unknown option --{name}")))?;
            let value = args
                .value()
                .ok_or_else(|| usage(format!("--{name} needs a value")))?;
            if values.insert(*known, value).is_some() {
                return Err(usage(format!("--{name} given twice")));
            }
        }
        Ok(Options { values, positional })
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Exactly `n` positional arguments, named `names` in messages.
    pub(super) fn positionals(&self, names: &[&str]) -> Result<Vec<String>, CliError> {
        if self.positional.len() < names.len() {
            return Err(usage(format!("missing {}", names[self.positional.len()])));
        }
        if self.positional.len() > names.len() {
            return Err(usage(format!(
                "unexpected argument {:?}",
                self.positional[names.len()]
            )));
        }
        Ok(self.positional.clone())
    }
}

/// `session end`'s target: exactly eight hex digits are a device PIN (as
/// everywhere in collabctl); any other run of decimal digits is a session
/// ID (an eight-digit ID is written with a leading zero).
pub(super) fn parse_session_target(text: &str) -> Result<SessionTarget, CliError> {
    if text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(SessionTarget::Pin(parse_pin(text)?));
    }
    match text.parse::<i64>() {
        Ok(id) if id > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(SessionTarget::Id(id)),
        _ => Err(bad(format!(
            "{text:?} is neither a PIN (8 hex digits) nor a session ID (digits)"
        ))),
    }
}

pub(super) const INSTANCE_OPTIONS: &[&str] = &[
    "cwa-url",
    "max-sessions",
    "idle-timeout-ms",
    "inactivity-timeout-ms",
    "http-max-connections",
    "auth",
    "password-caching",
    "away-after-ms",
];

/// A count or duration above zero; `none` gives `None` when `nullable`.
pub(super) fn parse_positive(
    option: &str,
    text: &str,
    nullable: bool,
) -> Result<Option<u64>, CliError> {
    if nullable && text == "none" {
        return Ok(None);
    }
    let n: u64 = match text.parse::<i128>() {
        Ok(n) if n > 0 && n <= i64::MAX as i128 => n as u64,
        Ok(_) => return Err(bad(format!("--{option} {text} must be above 0"))),
        Err(_) => {
            return Err(bad(format!(
                "--{option} {text:?} is not a whole number{}",
                if nullable { " or none" } else { "" }
            )))
        }
    };
    Ok(Some(n))
}

pub(super) fn parse_u32(option: &str, text: &str, nullable: bool) -> Result<Option<u32>, CliError> {
    match parse_positive(option, text, nullable)? {
        None => Ok(None),
        Some(n) if n <= i32::MAX as u64 => Ok(Some(n as u32)),
        Some(_) => Err(bad(format!("--{option} {text} is too large"))),
    }
}

pub(super) fn parse_switch(
    option: &str,
    text: &str,
    yes: &str,
    no: &str,
) -> Result<bool, CliError> {
    if text == yes {
        Ok(true)
    } else if text == no {
        Ok(false)
    } else {
        Err(bad(format!(
            "--{option} must be {yes} or {no}, not {text:?}"
        )))
    }
}

pub(super) fn instance_change(options: &Options) -> Result<InstanceChange, CliError> {
    let mut change = InstanceChange {
        cwa_url: options.get("cwa-url").map(str::to_string),
        ..InstanceChange::default()
    };
    if let Some(url) = &change.cwa_url {
        parse_cwa_url(url)?;
    }
    if let Some(v) = options.get("max-sessions") {
        change.max_sessions = Some(parse_u32("max-sessions", v, true)?);
    }
    if let Some(v) = options.get("idle-timeout-ms") {
        change.idle_timeout_ms = Some(parse_positive("idle-timeout-ms", v, true)?);
    }
    if let Some(v) = options.get("inactivity-timeout-ms") {
        change.inactivity_timeout_ms = Some(parse_positive("inactivity-timeout-ms", v, true)?);
    }
    if let Some(v) = options.get("http-max-connections") {
        change.http_max_connections = parse_u32("http-max-connections", v, false)?;
    }
    if let Some(v) = options.get("auth") {
        change.auth_mode = Some(
            v.parse::<AuthMode>()
                .map_err(|e| DbError::bad(e.to_string()))?,
        );
    }
    if let Some(v) = options.get("password-caching") {
        change.password_caching = Some(parse_switch("password-caching", v, "on", "off")?);
    }
    if let Some(v) = options.get("away-after-ms") {
        // 0 is allowed here: it turns the away period off.
        change.away_after_ms = Some(match v {
            "0" => 0,
            _ => parse_positive("away-after-ms", v, false)?.unwrap_or(0),
        });
    }
    Ok(change)
}
