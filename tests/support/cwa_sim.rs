//! The real `cwa-sim` binary for the CWA client's tests: started on
//! 127.0.0.1 port 0 (plain HTTP, or HTTPS with a throw-away test CA made
//! here with OpenSSL), its admin endpoint on a separate plain listener, and
//! a byte-forwarding TCP proxy that can swallow one response and cut the
//! connection (a dropped GET, for real).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Name, X509};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("collabd-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> X509Name {
    let mut n = X509Name::builder().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

/// A test CA and a server certificate for 127.0.0.1 / localhost, as PEM
/// files.
pub struct TestCa {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = scratch_dir("ca");
        let ca_key = ec_key();
        let mut ca = X509::builder().unwrap();
        ca.set_version(2).unwrap();
        ca.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        ca.set_subject_name(&name("collabd test CA")).unwrap();
        ca.set_issuer_name(&name("collabd test CA")).unwrap();
        ca.set_pubkey(&ca_key).unwrap();
        ca.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        ca.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        ca.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let ca = ca.build();

        let key = ec_key();
        let mut leaf = X509::builder().unwrap();
        leaf.set_version(2).unwrap();
        leaf.set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        leaf.set_subject_name(&name("localhost")).unwrap();
        leaf.set_issuer_name(ca.subject_name()).unwrap();
        leaf.set_pubkey(&key).unwrap();
        leaf.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        leaf.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&leaf.x509v3_context(Some(&ca), None))
            .unwrap();
        leaf.append_extension(san).unwrap();
        leaf.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let leaf = leaf.build();

        let ca_pem = dir.join("ca.pem");
        let cert_pem = dir.join("server.pem");
        let key_pem = dir.join("server.key");
        std::fs::write(&ca_pem, ca.to_pem().unwrap()).unwrap();
        let mut chain = leaf.to_pem().unwrap();
        chain.extend_from_slice(&ca.to_pem().unwrap());
        std::fs::write(&cert_pem, chain).unwrap();
        std::fs::write(&key_pem, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        TestCa {
            ca_pem,
            cert_pem,
            key_pem,
        }
    }
}

/// A running `cwa-sim`, killed on drop.
pub struct Sim {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub tls: bool,
}

impl Sim {
    /// Starts the simulator with `users` as its users file, plain HTTP.
    pub fn start(users: &str, args: &[&str]) -> Sim {
        Sim::launch(users, args, None)
    }

    /// Starts the simulator over HTTPS with `ca`'s server certificate.
    pub fn start_tls(users: &str, args: &[&str], ca: &TestCa) -> Sim {
        Sim::launch(users, args, Some(ca))
    }

    fn launch(users: &str, args: &[&str], ca: Option<&TestCa>) -> Sim {
        let dir = scratch_dir("sim");
        let users_file = dir.join("users");
        std::fs::write(&users_file, users).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cwa-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--users")
            .arg(&users_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("CWA_TEST_SIM_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        if let Some(ca) = ca {
            cmd.arg("--tls-cert")
                .arg(&ca.cert_pem)
                .arg("--tls-key")
                .arg(&ca.key_pem);
        }
        let mut child = cmd.spawn().expect("start cwa-sim");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        while addr.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("cwa-sim did not announce its listeners");
            if let Some(a) = line.strip_prefix("admin listening on ") {
                admin = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().parse().unwrap());
            }
        }
        Sim {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            tls: ca.is_some(),
        }
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A plain-HTTP admin request; returns the body.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.contains(" 200 "), "admin {path}: {head}");
        rest.to_string()
    }

    /// `POST /admin/faults` with `settings` (`key=value&...`).
    pub fn faults(&self, settings: &str) -> String {
        self.admin("POST", "/admin/faults", settings)
    }

    /// `GET /admin/connections`: one line per open connection,
    /// `ID PEER tls=.. ntlm=URIS forms=URIS tickets=URIS`.
    pub fn connections(&self) -> Vec<String> {
        self.admin("GET", "/admin/connections", "")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of `target`. When armed with
/// [`swallow_next_response`](Self::swallow_next_response), the next bytes
/// the server sends on any connection are discarded and that connection
/// is cut on both sides: the client sees its request dropped although
/// the server answered it.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    pub swallowed: Arc<AtomicUsize>,
}

impl CuttingProxy {
    pub fn start(target: SocketAddr) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        {
            let armed = armed.clone();
            let swallowed = swallowed.clone();
            thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    thread::spawn(move || pump(c2, s2, None));
                    let armed = armed.clone();
                    let swallowed = swallowed.clone();
                    thread::spawn(move || pump(server, client, Some((armed, swallowed))));
                }
            });
        }
        CuttingProxy {
            addr,
            armed,
            swallowed,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn swallow_next_response(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

type Trap = (Arc<AtomicBool>, Arc<AtomicUsize>);

fn pump(mut from: TcpStream, mut to: TcpStream, trap: Option<Trap>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((armed, swallowed)) = &trap {
            if armed.swap(false, Ordering::SeqCst) {
                swallowed.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
