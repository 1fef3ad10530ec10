//! collabd's own configuration: what the daemon needs before it can reach
//! the Config DB. Everything else (CWA URL, session limits, timeouts) is the
//! instance's row in the Config DB.
//!
//! Sources, highest precedence first:
//!
//! 1. command-line flags (`--listen ADDR` or `--listen=ADDR`; every file key
//!    has a flag, its `_` written `-`);
//! 2. the environment: `COLLABD_DATABASE_URL` for `database`, `RUST_LOG` for
//!    `log_level`;
//! 3. the configuration file (`--config FILE`, default
//!    `/etc/collabd/collabd.conf`, which may be absent when the flags say
//!    everything);
//! 4. built-in defaults.
//!
//! The file is `key = value` lines; `#` starts a comment line; blank lines
//! are ignored; a value may be wrapped in double quotes to keep leading or
//! trailing spaces; `#` inside a value is part of it. Unknown keys,
//! duplicate keys, empty values and bad values are errors that name the
//! file and line. The format and every key are documented in
//! collabd.conf(5). Nothing here ever prints the database password:
//! [`Config`]'s `Debug` and [`redact_database`] hide it.
//!
//! This file reads the command line and puts the sources together; what a
//! configuration holds is in `settings`, the file's syntax in `file`, and
//! the checking of each value in `resolve`. It imports the listener's
//! limits, `ops` (logging filters, the command-line reader) and `hex`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use crate::ops::args::Args;

mod file;
mod resolve;
mod settings;

pub use file::parse_file;
use file::read_file;
use resolve::resolve;
use settings::{known_key, Raw};
pub use settings::{
    redact_database, Config, ConfigError, Origin, TlsFiles, DEFAULT_CONFIG_FILE, EX_CONFIG,
    EX_USAGE, KEYS, MAX_FILE_BYTES,
};

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(Config),
    /// `--check-config`: validate, print the resolved configuration, exit.
    CheckConfig(Config),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// The `--help` text.
pub fn usage() -> String {
    let mut text = String::from(
        "usage: collabd [--config FILE] [--check-config] [--KEY VALUE ...]\n\
         \n\
         The collaboration service. Settings (see collabd.conf(5)):\n",
    );
    for key in KEYS {
        text.push_str(&format!("  --{}\n", key.replace('_', "-")));
    }
    text.push_str(
        "Other flags: --config FILE (default /etc/collabd/collabd.conf), --check-config,\n\
         --help, --version. Environment: COLLABD_DATABASE_URL, RUST_LOG.\n",
    );
    text
}

impl Command {
    /// Resolve the command line of this process with its environment.
    pub fn from_process() -> Result<Command, ConfigError> {
        Command::parse(std::env::args_os().skip(1), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Resolve `args` (without the program name) with `env` as the
    /// environment. Files are read from the paths the arguments give.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, ConfigError> {
        let mut flags: Vec<(&'static str, String, String)> = Vec::new();
        let mut config_file: Option<PathBuf> = None;
        let mut check = false;
        let words = args
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|a| ConfigError::Usage(format!("argument {a:?} is not UTF-8")))
            })
            .collect::<Result<Vec<String>, ConfigError>>()?;
        let mut args = Args::new(words);
        while let Some(flag) = args.next_word() {
            let mut value = |flag: &str| {
                args.value()
                    .ok_or_else(|| ConfigError::Usage(format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                "--check-config" => check = true,
                "-c" | "--config" => config_file = Some(PathBuf::from(value(&flag)?)),
                other => {
                    let key = other
                        .strip_prefix("--")
                        .and_then(|name| known_key(&name.replace('-', "_")))
                        .filter(|_| !other.contains('_'))
                        .ok_or_else(|| ConfigError::Usage(format!("unknown option {other:?}")))?;
                    let v = value(&flag)?;
                    flags.push((key, v, flag.clone()));
                }
            }
        }

        let mut raw: Raw = HashMap::new();
        let file = match config_file {
            Some(path) => Some(path),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = &file {
            let text = read_file(path)?;
            for (key, value, line) in parse_file(path, &text)? {
                raw.insert(
                    key,
                    (
                        value,
                        Origin::File {
                            path: path.clone(),
                            line,
                        },
                    ),
                );
            }
        }
        for (key, var) in [
            ("database", "COLLABD_DATABASE_URL"),
            ("log_level", "RUST_LOG"),
        ] {
            if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
                raw.insert(key, (v, Origin::Env(var)));
            }
        }
        for (key, value, flag) in flags {
            if value.is_empty() {
                return Err(ConfigError::Usage(format!("{flag} has an empty value")));
            }
            raw.insert(key, (value, Origin::Flag(flag)));
        }
        let config = resolve(raw, file, env)?;
        Ok(if check {
            Command::CheckConfig(config)
        } else {
            Command::Run(config)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::settings::*;
    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let mut random = [0u8; 8];
            openssl::rand::rand_bytes(&mut random).unwrap();
            let hex = crate::hex::encode(&random);
            let dir = std::env::temp_dir().join(format!("collabd-config-{hex}"));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
        Command::parse(args.iter().map(OsString::from), env)
    }

    fn run_config(cmd: Command) -> Config {
        match cmd {
            Command::Run(c) => c,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn file_values_and_defaults() {
        let dir = Scratch::new();
        let path = dir.file(
            "collabd.conf",
            "# collabd\n\ninstance = bcs-01\ndatabase = postgresql://collabd@db/collab\n\
             tls_cert = /etc/collabd/cert.pem\ntls_key=/etc/collabd/key.pem\n\
             log_level = \"collabd=debug,warn\"\nstatus_timeout_ms = 30000\n",
        );
        let c = run_config(parse(&["--config", path.to_str().unwrap()], &no_env).unwrap());
        assert_eq!(c.instance, "bcs-01");
        assert_eq!(c.database, "postgresql://collabd@db/collab");
        assert_eq!(c.listen, "0.0.0.0:3200".parse().unwrap());
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: "/etc/collabd/cert.pem".into(),
                key: "/etc/collabd/key.pem".into()
            })
        );
        assert_eq!(c.log_filter, "collabd=debug,warn");
        assert_eq!(c.status_timeout, Duration::from_secs(30));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_unauthenticated, 256);
        assert_eq!(c.thread_stack_size, 512 * 1024);
        assert_eq!(c.config_file, Some(path));
        let limits = c.listener_limits();
        assert_eq!(limits.max_unauthenticated, 256);
        assert_eq!(limits.read_timeout, Duration::from_secs(10));
        assert_eq!(limits.thread_stack_size, 512 * 1024);
    }

    #[test]
    fn flags_override_environment_overrides_file() {
        let dir = Scratch::new();
        let path = dir.file(
            "c.conf",
            "instance = a\ndatabase = host=file\nlisten = 127.0.0.1:1\nlog_level = warn\n",
        );
        let env = |name: &str| match name {
            "COLLABD_DATABASE_URL" => Some("host=env".to_string()),
            "RUST_LOG" => Some("debug".to_string()),
            _ => None,
        };
        let p = path.to_str().unwrap();
        let c = run_config(parse(&["-c", p], &env).unwrap());
        assert_eq!(c.database, "host=env");
        assert_eq!(c.log_filter, "debug");
        assert_eq!(c.listen, "127.0.0.1:1".parse().unwrap());
        let c = run_config(
            parse(
                &[
                    "-c",
                    p,
                    "--database=host=flag",
                    "--listen",
                    "[::1]:3300",
                    "--instance",
                    "b",
                    "--log-level",
                    "trace",
                ],
                &env,
            )
            .unwrap(),
        );
        assert_eq!(c.database, "host=flag");
        assert_eq!(c.listen, "[::1]:3300".parse().unwrap());
        assert_eq!(c.instance, "b");
        assert_eq!(c.log_filter, "trace");
    }

    #[test]
    fn flags_alone_are_enough_and_check_config_is_recognised() {
        let cmd = parse(
            &[
                "--config",
                "/nonexistent-dir-for-test/none.conf",
                "--instance",
                "x",
                "--database",
                "host=db",
            ],
            &no_env,
        );
        assert!(
            matches!(cmd, Err(ConfigError::Read { .. })),
            "explicit file must exist"
        );
        let dir = Scratch::new();
        let empty = dir.file("empty.conf", "# nothing\n");
        let cmd = parse(
            &[
                "--check-config",
                "-c",
                empty.to_str().unwrap(),
                "--instance",
                "x",
                "--database",
                "host=db",
            ],
            &no_env,
        )
        .unwrap();
        assert!(matches!(cmd, Command::CheckConfig(ref c) if c.instance == "x"));
        assert_eq!(parse(&["--help"], &no_env).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"], &no_env).unwrap(), Command::Version);
    }

    #[test]
    fn errors_name_the_line_and_exit_78() {
        let dir = Scratch::new();
        let cases = [
            ("instance = a\nbogus = 1\n", 2, "unknown key"),
            (
                "instance = a\nno equals sign\n",
                2,
                "expected `key = value`",
            ),
            ("instance = a\ninstance = b\n", 2, "already set on line 1"),
            ("\n\nlisten =\n", 3, "empty value"),
            ("log_level = \"info\n", 1, "unbalanced quotes"),
        ];
        for (text, line, needle) in cases {
            let path = dir.file("bad.conf", text);
            let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
            assert!(
                matches!(err, ConfigError::Syntax { line: l, .. } if l == line),
                "{text:?}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains(needle), "{message}");
            assert!(message.contains(&format!("bad.conf:{line}:")), "{message}");
            assert_eq!(err.exit_code(), EX_CONFIG);
        }
    }

    #[test]
    fn bad_values_name_their_origin() {
        let dir = Scratch::new();
        let path = dir.file(
            "v.conf",
            "instance = a\ndatabase = host=x\nhandshake_timeout_ms = 10s\n",
        );
        let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("v.conf:3: handshake_timeout_ms"),
            "{message}"
        );
        assert_eq!(err.exit_code(), 78);

        let path = dir.file("w.conf", "instance = a\ndatabase = host=x\n");
        let p = path.to_str().unwrap();
        for (args, needle) in [
            (vec!["--listen", "nowhere"], "flag --listen: listen"),
            (vec!["--max-unauthenticated", "0"], "outside 1..=65536"),
            (vec!["--thread-stack-kib", "1"], "outside 64..=16384"),
            (
                vec!["--presence-republish-ms", "600000"],
                "outside 100..=300000",
            ),
            (vec!["--tls-cert", "/c.pem"], "tls_key must be set too"),
            (vec!["--log-level", "loud"], "log_level"),
            (vec!["--instance", "bad name"], "instance"),
            (
                vec![
                    "--instance-lost-after-ms",
                    "1000",
                    "--heartbeat-interval-ms",
                    "500",
                ],
                "not more than twice heartbeat_interval_ms",
            ),
        ] {
            let mut all = vec!["-c", p];
            all.extend(args);
            let err = parse(&all, &no_env).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(err.exit_code(), 78);
        }
    }

    #[test]
    fn usage_errors_exit_64_and_missing_settings_78() {
        let dir = Scratch::new();
        let empty = dir.file("e.conf", "");
        let p = empty.to_str().unwrap();
        for args in [
            vec!["--frobnicate"],
            vec!["-c", p, "--instance"],
            vec!["--max_unauthenticated", "3"],
        ] {
            let err = parse(&args, &no_env).unwrap_err();
            assert_eq!(err.exit_code(), EX_USAGE, "{args:?}: {err}");
        }
        let err = parse(&["-c", p, "--database", "host=x"], &no_env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                key: "instance",
                ..
            }
        ));
        let err = parse(&["-c", p, "--instance", "x"], &no_env).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                key: "database",
                ..
            }
        ));
        assert_eq!(err.exit_code(), EX_CONFIG);
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused() {
        let dir = Scratch::new();
        let big = dir.file("big.conf", &"# x\n".repeat(20_000));
        let err = parse(&["-c", big.to_str().unwrap()], &no_env).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let path = dir.0.join("latin1.conf");
        std::fs::write(&path, b"instance = caf\xe9\n").unwrap();
        let err = parse(&["-c", path.to_str().unwrap()], &no_env).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn credentials_directory_supplies_the_password_file() {
        let dir = Scratch::new();
        let pass = dir.file("dbpass", "secret\n");
        let conf = dir.file("c.conf", "instance = a\ndatabase = host=db user=collabd\n");
        let creds = dir.0.to_str().unwrap().to_string();
        let env = move |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
        let c = run_config(parse(&["-c", conf.to_str().unwrap()], &env).unwrap());
        assert_eq!(c.database_password_file, Some(pass));
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        assert_eq!(
            redact_database("postgresql://collabd:s3cret@db:5432/collab?sslmode=require"),
            "postgresql://collabd:***@db:5432/collab?sslmode=require"
        );
        assert_eq!(
            redact_database("postgresql://db/collab?user=u&password=s3cret&sslmode=require"),
            "postgresql://db/collab?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_database("host=db user=collabd password='s3 cret' dbname=collab"),
            "host=db user=collabd password=*** dbname=collab"
        );
        assert_eq!(
            redact_database("host=db mypassword=x"),
            "host=db mypassword=x"
        );
        let dir = Scratch::new();
        let conf = dir.file(
            "c.conf",
            "instance = a\ndatabase = host=db password=s3cret\n",
        );
        let c = run_config(parse(&["-c", conf.to_str().unwrap()], &no_env).unwrap());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_shipped_example_parses_and_the_man_page_documents_every_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = root.join("dist/collabd.conf.example");
        let c = run_config(parse(&["-c", example.to_str().unwrap()], &no_env).unwrap());
        assert_eq!(c.instance, "bcs-01");
        assert_eq!(c.listen, "0.0.0.0:3200".parse().unwrap());
        let page = std::fs::read_to_string(root.join("man/collabd.conf.5")).unwrap();
        let flags = std::fs::read_to_string(root.join("man/collabd.8")).unwrap();
        for key in KEYS {
            assert!(
                page.contains(&format!(".BI {key} ")),
                "collabd.conf(5) lacks {key}"
            );
            let flag = format!("\\-\\-{}", key.replace('_', "\\-"));
            assert!(flags.contains(&flag), "collabd(8) lacks {flag}");
        }
    }

    #[test]
    fn advertise_is_host_and_port() {
        let base = ["--instance", "a", "--database", "postgresql://x/y"];
        let with = |v: &str| {
            let mut args: Vec<&str> = base.to_vec();
            args.extend(["--advertise", v]);
            parse(&args, &no_env)
        };
        let c = run_config(with("bcs-01.example.com:3200").unwrap());
        assert_eq!(c.advertise.as_deref(), Some("bcs-01.example.com:3200"));
        assert_eq!(run_config(parse(&base, &no_env).unwrap()).advertise, None);
        for bad in ["bcs-01", ":3200", "host:0", "host:99999", "a b:1"] {
            assert!(
                matches!(
                    with(bad),
                    Err(ConfigError::Invalid {
                        key: "advertise",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
