//! The banner printed once the demo runs: where each part is, its log, and
//! the exact `collab-device` command for each user.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::configdb::format_pin;

use super::users::USERS;

/// The last line of the banner: the demo is ready once it is printed.
pub const READY_LINE: &str = "Press Ctrl-C to stop the demo and remove its state.";

/// The addresses and files the banner shows.
pub(super) struct Started {
    pub(super) state_dir: PathBuf,
    pub(super) database_url: String,
    pub(super) postgres_pid: Option<u32>,
    pub(super) postgres_log: PathBuf,
    pub(super) sim_url: String,
    pub(super) collabd_addr: SocketAddr,
    pub(super) dispatcher_addr: SocketAddr,
    /// Each child's pid, by program name.
    pub(super) pids: Vec<(&'static str, u32)>,
    /// The programs named in the commands shown.
    pub(super) device: PathBuf,
    pub(super) collabctl: PathBuf,
}

pub(super) fn write_banner(started: &Started, out: &mut dyn Write) -> io::Result<()> {
    let dir = &started.state_dir;
    let pid = |program: &str| {
        started
            .pids
            .iter()
            .find(|(p, _)| *p == program)
            .map_or("?".to_string(), |(_, pid)| pid.to_string())
    };
    let log = |name: &str| dir.join(name).display().to_string();
    writeln!(out)?;
    writeln!(out, "collabd demo is running.")?;
    writeln!(out, "  state dir          {}", dir.display())?;
    writeln!(
        out,
        "  postgresql         pid {}, log {}",
        started
            .postgres_pid
            .map_or("?".to_string(), |p| p.to_string()),
        started.postgres_log.display()
    )?;
    writeln!(
        out,
        "  cwa-sim            pid {}, {}, log {}",
        pid("cwa-sim"),
        started.sim_url,
        log("cwa-sim.log")
    )?;
    writeln!(
        out,
        "  collabd            pid {}, {}, log {}",
        pid("collabd"),
        started.collabd_addr,
        log("collabd.log")
    )?;
    writeln!(
        out,
        "  collab-dispatcher  pid {}, {}, log {}",
        pid("collab-dispatcher"),
        started.dispatcher_addr,
        log("collab-dispatcher.log")
    )?;
    writeln!(
        out,
        "  config db          {}",
        shell_quote(&started.database_url)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Sign in as alice, bob and carol, each in a terminal of its own:"
    )?;
    let connect = crate::net::local_connect_addr(started.dispatcher_addr);
    for user in &USERS {
        writeln!(out)?;
        writeln!(
            out,
            "  # {} ({}, {}, device {})",
            user.display_name,
            user.login(),
            user.sip_uri(),
            format_pin(user.pin)
        )?;
        let words = [
            started.device.display().to_string(),
            "--connect".into(),
            connect.to_string(),
            "--pin".into(),
            format_pin(user.pin),
            "--key-file".into(),
            user.key_file(dir).display().to_string(),
            "--user".into(),
            user.login(),
            "--password-file".into(),
            user.password_file(dir).display().to_string(),
        ];
        let line: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
        writeln!(out, "  {}", line.join(" "))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Then chat (/help in collab-device lists every command):"
    )?;
    writeln!(out, "  alice:  /msg sip:bob@contoso.com Hello Bob")?;
    writeln!(
        out,
        "  bob:    /accept CONV      (CONV is the id in brackets in the invitation)"
    )?;
    writeln!(
        out,
        "  bob:    Hi Alice          (plain lines go to the current conversation)"
    )?;
    writeln!(
        out,
        "  alice:  /invite CONV sip:carol@contoso.com   (carol: /accept CONV)"
    )?;
    writeln!(out, "  anyone: /contacts, /status busy In a meeting, /quit")?;
    writeln!(out)?;
    writeln!(
        out,
        "Look at the Config DB: {} --database {} sessions",
        shell_quote(&started.collabctl.display().to_string()),
        shell_quote(&started.database_url)
    )?;
    writeln!(out, "{READY_LINE}")?;
    out.flush()
}

/// Quotes `word` for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+=,-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/x/alice.key"), "/tmp/x/alice.key");
        assert_eq!(shell_quote("CONTOSO\\alice"), "'CONTOSO\\alice'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
