//! collabctl's plain-text output: an instance's settings, aligned tables,
//! times and ages.

use std::io::Write;

use crate::configdb::Instance;

use super::error::CliError;

pub(super) fn show_instance(i: &Instance, out: &mut dyn Write) -> Result<(), CliError> {
    let rows = vec![
        ("name", i.name.clone()),
        ("cwa url", i.cwa_url.clone()),
        ("auth", i.auth_mode.to_string()),
        ("max sessions", or_none(i.max_sessions.map(u64::from))),
        ("idle timeout ms", or_none(i.idle_timeout_ms)),
        ("inactivity timeout ms", or_none(i.inactivity_timeout_ms)),
        ("http max connections", i.http_max_connections.to_string()),
        ("password caching", on_off(i.password_caching).to_string()),
        ("away after ms", i.away_after_ms.to_string()),
        (
            "listen addr",
            i.listen_addr.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "heartbeat",
            i.heartbeat_at_ms.map_or("never".to_string(), format_time),
        ),
        ("sessions in use", i.sessions_in_use.to_string()),
        (
            "session limit",
            i.session_limit.map_or("-".to_string(), |n| n.to_string()),
        ),
        ("healthy", yes_no(i.healthy).to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in rows {
        writeln!(out, "{key:<width$}  {value}")?;
    }
    Ok(())
}

pub(super) fn or_none(value: Option<u64>) -> String {
    value.map_or("none".to_string(), |n| n.to_string())
}

pub(super) fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub(super) fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Prints `rows` under `headers` in aligned columns (two spaces apart; the
/// last column is not padded).
pub(super) fn table(
    out: &mut dyn Write,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), CliError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                text.push_str(&" ".repeat(pad));
            }
        }
        text
    };
    writeln!(out, "{}", line(headers.to_vec()))?;
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SSZ` (UTC) of an epoch-milliseconds time.
pub fn format_time(epoch_ms: i64) -> String {
    let t = crate::ops::utc::Utc::from_epoch_ms(epoch_ms);
    format!("{} {}Z", t.date(), t.time())
}

/// A heartbeat's age for `sessions`: how long ago, in seconds.
pub(super) fn format_age(ms: i64) -> String {
    let ms = ms.max(0);
    format!("{}.{}s ago", ms / 1000, (ms % 1000) / 100)
}
