//! The demo's command line (`collabctl demo --help`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::ops::args::Args;

use super::error::DemoError;

/// Where devices connect by default (the dispatcher's real port).
pub const DEFAULT_DISPATCHER_LISTEN: &str = "127.0.0.1:3101";
/// Where collabd listens by default (its real port).
pub const DEFAULT_COLLABD_LISTEN: &str = "127.0.0.1:3200";

/// The text of `collabctl demo --help`.
pub const HELP: &str = "\
usage: collabctl demo [--dir DIR] [--listen-dispatcher ADDR] [--listen-collabd ADDR] [--keep]

Starts a throwaway PostgreSQL, cwa-sim with the users alice, bob and carol,
collabd and collab-dispatcher, provisions a device for each user, and prints
the collab-device commands that sign them in. Ctrl-C stops everything and
removes the state directory.

  --dir DIR                 state directory, new or empty (default: a new
                            directory under $TMPDIR)
  --listen-dispatcher ADDR  where devices connect (default 127.0.0.1:3101)
  --listen-collabd ADDR     where collabd listens (default 127.0.0.1:3200)
  --keep                    keep the state directory (logs, keys, settings)
ADDR is IP:PORT, :PORT or PORT (on 127.0.0.1); port 0 picks a free port.
Needs the PostgreSQL server binaries and every program built next to
collabctl (cargo build --release).
";

/// The demo's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// The state directory, or `None` for a new one under `$TMPDIR`.
    pub dir: Option<PathBuf>,
    /// Where collab-dispatcher listens.
    pub dispatcher_listen: SocketAddr,
    /// Where collabd listens.
    pub collabd_listen: SocketAddr,
    /// Keep the state directory at the end.
    pub keep: bool,
    /// `--help` was asked for.
    pub help: bool,
}

impl DemoOptions {
    /// Parses the words after `demo`.
    pub fn parse(words: &[String]) -> Result<DemoOptions, DemoError> {
        let mut options = DemoOptions {
            dir: None,
            dispatcher_listen: parse_listen("--listen-dispatcher", DEFAULT_DISPATCHER_LISTEN)?,
            collabd_listen: parse_listen("--listen-collabd", DEFAULT_COLLABD_LISTEN)?,
            keep: false,
            help: false,
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut args = Args::new(words.iter().cloned());
        while let Some(word) = args.next_word() {
            let known = [
                "--dir",
                "--listen-dispatcher",
                "--listen-collabd",
                "--keep",
                "--help",
                "-h",
            ]
            .into_iter()
            .find(|k| *k == word)
            .ok_or_else(|| {
                let shown = match args.has_inline_value() {
                    true => format!("{word}={}", args.value().unwrap_or_default()),
                    false => word.clone(),
                };
                DemoError::Usage(format!("unknown argument {shown:?}"))
            })?;
            if seen.contains(&known) {
                return Err(DemoError::Usage(format!("{known} given twice")));
            }
            seen.push(known);
            let mut value = || {
                args.value()
                    .ok_or_else(|| DemoError::Usage(format!("{known} needs a value")))
            };
            match known {
                "--dir" => {
                    let dir = value()?;
                    if dir.is_empty() {
                        return Err(DemoError::Usage("--dir needs a directory".into()));
                    }
                    options.dir = Some(PathBuf::from(dir));
                }
                "--listen-dispatcher" => {
                    options.dispatcher_listen = parse_listen(known, &value()?)?;
                }
                "--listen-collabd" => options.collabd_listen = parse_listen(known, &value()?)?,
                "--keep" | "--help" | "-h" => {
                    if args.has_inline_value() {
                        return Err(DemoError::Usage(format!("{known} takes no value")));
                    }
                    if known == "--keep" {
                        options.keep = true;
                    } else {
                        options.help = true;
                    }
                }
                _ => unreachable!("every known argument is handled"),
            }
        }
        if options.collabd_listen.ip().is_unspecified() {
            return Err(DemoError::Usage(format!(
                "--listen-collabd {}: collabd must listen on an address the dispatcher can \
                 reach, such as 127.0.0.1, not on every address",
                options.collabd_listen
            )));
        }
        if options.collabd_listen.port() != 0
            && options.collabd_listen.port() == options.dispatcher_listen.port()
            && (options.collabd_listen.ip() == options.dispatcher_listen.ip()
                || options.dispatcher_listen.ip().is_unspecified())
        {
            return Err(DemoError::Usage(
                "--listen-dispatcher and --listen-collabd name the same address".into(),
            ));
        }
        Ok(options)
    }
}

/// `IP:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
fn parse_listen(flag: &str, text: &str) -> Result<SocketAddr, DemoError> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse().map_err(|_| {
        DemoError::Usage(format!(
            "{flag} {text:?} is not IP:PORT, :PORT or PORT (e.g. 127.0.0.1:3101 or :0)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<DemoOptions, DemoError> {
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        DemoOptions::parse(&words)
    }

    #[test]
    fn options() {
        let o = parse("").unwrap();
        assert_eq!(o.dispatcher_listen, "127.0.0.1:3101".parse().unwrap());
        assert_eq!(o.collabd_listen, "127.0.0.1:3200".parse().unwrap());
        assert!(!o.keep && o.dir.is_none());
        let o = parse("--listen-dispatcher :0 --listen-collabd=0 --keep --dir /x").unwrap();
        assert_eq!(o.dispatcher_listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(o.collabd_listen, "127.0.0.1:0".parse().unwrap());
        assert!(o.keep);
        assert_eq!(o.dir, Some(PathBuf::from("/x")));
        let o = parse("--listen-dispatcher 0.0.0.0:3111 --listen-collabd [::1]:3210").unwrap();
        assert_eq!(o.dispatcher_listen, "0.0.0.0:3111".parse().unwrap());
        assert_eq!(o.collabd_listen, "[::1]:3210".parse().unwrap());
        assert!(parse("--help").unwrap().help);
        for bad in [
            "--bogus",
            "extra",
            "--keep --keep",
            "--keep=yes",
            "--dir",
            "--listen-collabd 0.0.0.0:3200",
            "--listen-dispatcher localhost:1",
            "--listen-dispatcher 70000",
            "--listen-dispatcher :3300 --listen-collabd :3300",
        ] {
            match parse(bad) {
                Err(e) => assert_eq!(e.exit_code(), 64, "{bad}: {e}"),
                Ok(o) => panic!("{bad}: accepted as {o:?}"),
            }
        }
    }
}
