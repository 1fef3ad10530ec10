//! The listener and the session table together over real sockets, with a
//! line protocol standing in for the device protocol (which lives in
//! `src/wire`, joined by the integrator): `LOGIN <pin> <login>` answers a
//! status code (0, 300, 301, 308), `STATUS active|dormant` records a status
//! message, `LOGOUT` ends the session, EOF leaves it out of coverage.
//!
//! The session's slot is held by a separate session thread (standing in for
//! the CWA long-poll thread), so a session outlives its device connection,
//! exactly as in collabd: it ends only when the table ends it (eviction,
//! logout, inactivity) and wakes it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use collabd::service::listener::{Handler, Incoming, Listener, ListenerLimits, Server};
use collabd::service::table::{Coverage, EndReason, Limits, SessionKey, SessionTable};

const PATIENCE: Duration = Duration::from_secs(30);

/// Read one line of at most 128 bytes; `None` at EOF, error, or overlong.
fn read_line(stream: &mut impl Read) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) if line.len() < 128 => line.push(byte[0]),
            _ => return None,
        }
    }
}

fn handler(table: SessionTable, ended: Sender<(u32, EndReason)>) -> Handler {
    let ended = Mutex::new(ended);
    Arc::new(move |incoming: Incoming| {
        let Incoming {
            mut stream, permit, ..
        } = incoming;
        let Some(line) = read_line(&mut stream) else {
            return; // silent, stalled or cut: never reached admission
        };
        let mut words = line.split(' ');
        let (Some("LOGIN"), Some(pin), Some(login), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            let _ = stream.write_all(b"308\n");
            return;
        };
        let Ok(pin) = pin.parse::<u32>() else {
            let _ = stream.write_all(b"308\n");
            return;
        };
        let key = SessionKey {
            pin,
            login: login.to_string(),
        };
        // As collabd does: a place before the credentials are checked (a
        // pause stands in for the CWA sign-in), the session only after.
        let admission = match table.reserve(key, Instant::now()) {
            Ok(reservation) => {
                std::thread::sleep(Duration::from_millis(2));
                reservation.commit(Instant::now())
            }
            Err(refusal) => Err(refusal),
        };
        let admission = match admission {
            Ok(a) => a,
            Err(refusal) => {
                let _ = writeln!(stream, "{}", refusal.status_code().code());
                return;
            }
        };
        for e in &admission.ended {
            let _ = ended
                .lock()
                .unwrap()
                .send((e.handle.key().pin, e.reason.clone()));
        }
        // The session thread owns the slot and lives until the table ends
        // the session; the waker wakes it and cuts the device connection.
        let (wake_tx, wake_rx) = mpsc::channel::<()>();
        let device = stream.try_clone_tcp().unwrap();
        admission.handle.set_waker(move || {
            let _ = device.shutdown(std::net::Shutdown::Both);
            let _ = wake_tx.send(());
        });
        let guard = admission.guard;
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = wake_rx.recv();
                drop(guard);
            })
            .unwrap();
        permit.release();
        let id = admission.handle.id();
        let _ = writeln!(stream, "0 {id}");
        while let Some(line) = read_line(&mut stream) {
            match line.as_str() {
                "STATUS active" => table.note_status(id, Coverage::In, Instant::now()),
                "STATUS dormant" => table.note_status(id, Coverage::Dormant, Instant::now()),
                "LOGOUT" => {
                    table.end(id, EndReason::Logout);
                    return;
                }
                _ => table.note_activity(id, Instant::now()),
            };
        }
        table.mark_out_of_coverage(id);
    })
}

struct Service {
    table: SessionTable,
    server: Server,
    ended: Receiver<(u32, EndReason)>,
}

impl Service {
    fn start(limits: Limits, max_unauthenticated: usize, handshake: Duration) -> Service {
        let table = SessionTable::new(limits);
        let (tx, ended) = mpsc::channel();
        let listener = Listener::bind(
            "127.0.0.1:0",
            None,
            ListenerLimits {
                max_unauthenticated,
                handshake_timeout: handshake,
                read_timeout: Duration::from_secs(60),
                thread_stack_size: 128 * 1024,
            },
        )
        .unwrap();
        let server = listener.serve(handler(table.clone(), tx)).unwrap();
        Service {
            table,
            server,
            ended,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// A device that logged in: its connection and the answer.
fn login(addr: SocketAddr, pin: u32) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    writeln!(s, "LOGIN {pin} CORP\\user{pin}").unwrap();
    let answer = read_line(&mut s).expect("an answer");
    (s, answer)
}

fn code(answer: &str) -> &str {
    answer.split(' ').next().unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn limits(max: Option<u32>, idle_ms: Option<u64>, http_max: u32) -> Limits {
    Limits {
        max_sessions: max,
        idle_timeout: idle_ms.map(Duration::from_millis),
        inactivity_timeout: None,
        http_max_connections: http_max,
    }
}

#[test]
fn login_n_plus_1_gets_server_busy() {
    const N: u32 = 3;
    let svc = Service::start(limits(Some(N), None, 100), 16, PATIENCE);
    let devices: Vec<_> = (1..=N)
        .map(|pin| {
            let (s, answer) = login(svc.addr(), pin);
            assert_eq!(code(&answer), "0", "login {pin}");
            s
        })
        .collect();
    let (_s, answer) = login(svc.addr(), N + 1);
    assert_eq!(answer, "301");
    assert_eq!(svc.table.len(), N as usize);
    drop(devices);
}

#[test]
fn at_the_limit_a_new_login_evicts_the_session_out_of_coverage() {
    let svc = Service::start(limits(Some(2), Some(600_000), 100), 16, PATIENCE);
    let (first, a) = login(svc.addr(), 1);
    let (mut second, b) = login(svc.addr(), 2);
    assert_eq!((code(&a), code(&b)), ("0", "0"));
    writeln!(second, "STATUS dormant").unwrap();
    // Device 1 goes away without logging out: out of coverage.
    first.shutdown(std::net::Shutdown::Both).unwrap();
    wait_until("device 1 out of coverage", || {
        svc.table
            .snapshot()
            .sessions
            .iter()
            .any(|s| s.key.pin == 1 && s.coverage == Coverage::Out)
    });
    assert_eq!(svc.table.len(), 2, "the session outlives its connection");

    let (_third, c) = login(svc.addr(), 3);
    assert_eq!(code(&c), "0");
    let (pin, reason) = svc.ended.recv_timeout(PATIENCE).unwrap();
    assert_eq!(pin, 1);
    assert!(matches!(reason, EndReason::Evicted(_)), "{reason:?}");
    assert_eq!(svc.table.len(), 2);
    // Device 2 is dormant but in coverage and recent: nobody else can go.
    let (_fourth, d) = login(svc.addr(), 4);
    assert_eq!(d, "301");
    // A logout frees a slot.
    writeln!(second, "LOGOUT").unwrap();
    wait_until("logout", || svc.table.len() == 1);
    let (_fifth, e) = login(svc.addr(), 5);
    assert_eq!(code(&e), "0");
}

#[test]
fn max_unset_login_m_plus_1_gets_failed() {
    const M: u32 = 4;
    let svc = Service::start(limits(None, Some(1), M), 16, PATIENCE);
    let devices: Vec<_> = (1..=M)
        .map(|pin| {
            let (s, answer) = login(svc.addr(), pin);
            assert_eq!(code(&answer), "0");
            s
        })
        .collect();
    let (_s, answer) = login(svc.addr(), M + 1);
    assert_eq!(answer, "300");
    drop(devices);
}

#[test]
fn a_storm_of_4n_concurrent_logins_admits_exactly_n() {
    const N: usize = 10;
    let svc = Service::start(limits(Some(N as u32), Some(600_000), 1000), 8 * N, PATIENCE);
    let addr = svc.addr();
    let barrier = Arc::new(Barrier::new(4 * N));
    let clients: Vec<_> = (0..4 * N)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(PATIENCE)).unwrap();
                barrier.wait();
                writeln!(s, "LOGIN {} CORP\\storm{i}", 1000 + i).unwrap();
                let answer = read_line(&mut s).expect("an answer");
                (s, answer)
            })
        })
        .collect();
    let results: Vec<(TcpStream, String)> =
        clients.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = results.iter().filter(|(_, a)| code(a) == "0").count();
    let busy = results.iter().filter(|(_, a)| a == "301").count();
    assert_eq!(admitted, N);
    assert_eq!(busy, 3 * N);
    assert_eq!(svc.table.len(), N);
    assert!(
        svc.ended.try_recv().is_err(),
        "no eviction: everyone was fresh"
    );
}

#[test]
fn silent_garbage_and_stalled_clients_never_hold_a_slot() {
    let svc = Service::start(limits(Some(1), None, 100), 16, Duration::from_millis(300));
    let addr = svc.addr();

    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.set_read_timeout(Some(PATIENCE)).unwrap();
    garbage.write_all(b"\x16\x03\x01 not a login\n").unwrap();
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    stalled.write_all(b"LOGIN 7 CORP\\hal").unwrap(); // no end of line

    assert_eq!(read_line(&mut garbage).as_deref(), Some("308"));
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent.read(&mut buf), Ok(0) | Err(_)),
        "silent dropped"
    );
    assert!(
        matches!(stalled.read(&mut buf), Ok(0) | Err(_)),
        "stalled dropped"
    );
    wait_until("all dropped", || svc.server.pending() == 0);
    assert!(svc.table.is_empty());
    // The one slot is free for a real login.
    let (_device, answer) = login(addr, 9);
    assert_eq!(code(&answer), "0");
}

#[test]
fn the_inactivity_timeout_ends_a_session_whatever_the_count() {
    let svc = Service::start(
        Limits {
            max_sessions: Some(100),
            idle_timeout: None,
            inactivity_timeout: Some(Duration::from_millis(200)),
            http_max_connections: 100,
        },
        16,
        PATIENCE,
    );
    let (mut device, answer) = login(svc.addr(), 1);
    assert_eq!(code(&answer), "0");
    wait_until("inactive session reaped", || {
        !svc.table.expire_inactive(Instant::now()).is_empty()
    });
    assert!(svc.table.is_empty());
    // The waker cut the device's connection.
    let mut buf = [0u8; 16];
    assert!(matches!(device.read(&mut buf), Ok(0) | Err(_)));
}
