//! Runs the real `cwa-sim` binary for tests: writes a users file to a temp
//! dir, starts the simulator on 127.0.0.1 port 0 with a separate admin
//! listener (also port 0), reads both bound addresses from its stdout, and
//! kills it on drop. The simulator's log (stderr) goes to a file that tests
//! can read ([`SimProcess::log`]); it is printed if the test panics.
//!
//! The admin helpers speak plain HTTP/1.1 over a raw `TcpStream`.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tls::TestCa;
use super::tmp::TempDir;

/// A running simulator.
pub struct SimProcess {
    child: Child,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: bool,
    dir: TempDir,
}

/// One line of `GET /admin/connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConnection {
    /// The simulator's connection id.
    pub id: u64,
    /// The client's address as the simulator sees it.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// SIP URIs that authenticated with NTLM on it.
    pub ntlm: Vec<String>,
    /// SIP URIs that signed in with forms on it.
    pub forms: Vec<String>,
    /// SIP URIs whose tickets were presented on it.
    pub tickets: Vec<String>,
}

impl SimConnection {
    /// Every user seen on the connection, by any means.
    pub fn users(&self) -> BTreeSet<String> {
        self.ntlm
            .iter()
            .chain(&self.forms)
            .chain(&self.tickets)
            .cloned()
            .collect()
    }
}

fn list(field: &str) -> Vec<String> {
    if field == "-" {
        Vec::new()
    } else {
        field.split(',').map(str::to_string).collect()
    }
}

impl SimProcess {
    /// Starts a plain-HTTP simulator with the given users file text.
    pub fn start(users: &str) -> SimProcess {
        SimProcess::start_with(users, &[])
    }

    /// Starts a plain-HTTP simulator with extra command-line flags.
    pub fn start_with(users: &str, args: &[&str]) -> SimProcess {
        SimProcess::spawn(users, args, None)
    }

    /// Starts an HTTPS simulator using `ca`'s server certificate.
    pub fn start_tls(users: &str, ca: &TestCa, args: &[&str]) -> SimProcess {
        SimProcess::spawn(users, args, Some(ca))
    }

    fn spawn(users: &str, args: &[&str], ca: Option<&TestCa>) -> SimProcess {
        let dir = TempDir::new("cwa-sim");
        let users_path = dir.join("users");
        std::fs::write(&users_path, users).expect("write users file");
        let log = std::fs::File::create(dir.join("sim.log")).expect("create log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cwa-sim"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--users")
            .arg(&users_path);
        if let Some(ca) = ca {
            cmd.arg("--tls-cert")
                .arg(&ca.cert_path)
                .arg("--tls-key")
                .arg(&ca.key_path);
        }
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("CWA_SIM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn cwa-sim");
        let stdout = child.stdout.take().expect("cwa-sim stdout");
        // Read the two address lines on a helper thread so a simulator that
        // never prints cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut found = (None, None);
            while let Some(Ok(line)) = lines.next() {
                if let Some(a) = line.strip_prefix("admin listening on ") {
                    found.1 = a.parse::<SocketAddr>().ok();
                } else if let Some(a) = line.strip_prefix("listening on ") {
                    found.0 = a.parse::<SocketAddr>().ok();
                }
                if found.0.is_some() && found.1.is_some() {
                    break;
                }
            }
            let _ = tx.send(found);
            // Keep draining so the simulator never blocks on stdout.
            for _ in lines {}
        });
        let found = rx.recv_timeout(Duration::from_secs(60));
        let Ok((Some(addr), Some(admin_addr))) = found else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("sim.log")).unwrap_or_default();
            panic!("cwa-sim did not announce its addresses; log:\n{log}");
        };
        SimProcess {
            child,
            addr,
            admin_addr,
            tls: ca.is_some(),
            dir,
        }
    }

    /// The CWA listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The simulator's process id (for `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS (the
    /// name the test certificate is issued for).
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The simulator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sim.log")).unwrap_or_default()
    }

    /// Kills the process (the listener is gone from then on).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One admin request; returns (status, body).
    pub fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.admin_addr).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).expect("read admin answer");
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad admin answer: {raw}"));
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Applies fault settings (`key=value` lines); panics unless accepted.
    pub fn faults(&self, settings: &str) -> String {
        let (status, body) = self.admin("POST", "/admin/faults", settings);
        assert_eq!(status, 200, "faults {settings:?} refused: {body}");
        body
    }

    /// `GET /admin/status` as key=value pairs (session lines under
    /// `session <sid>` keys).
    pub fn status(&self) -> HashMap<String, String> {
        let (status, body) = self.admin("GET", "/admin/status", "");
        assert_eq!(status, 200);
        body.lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .or_else(|| {
                        l.rsplit_once(' ')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
            })
            .collect()
    }

    /// `GET /admin/connections`, parsed.
    pub fn connections(&self) -> Vec<SimConnection> {
        let (status, body) = self.admin("GET", "/admin/connections", "");
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                assert_eq!(f.len(), 6, "connection line {l:?}");
                let val = |i: usize, k: &str| {
                    f[i].strip_prefix(k)
                        .unwrap_or_else(|| panic!("{l:?}"))
                        .to_string()
                };
                SimConnection {
                    id: f[0].parse().unwrap(),
                    peer: f[1].parse().unwrap(),
                    tls: val(2, "tls=") == "yes",
                    ntlm: list(&val(3, "ntlm=")),
                    forms: list(&val(4, "forms=")),
                    tickets: list(&val(5, "tickets=")),
                }
            })
            .collect()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- cwa-sim log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
