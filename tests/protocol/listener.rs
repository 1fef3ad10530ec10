//! The device-link listener with real sockets on 127.0.0.1: the cap on
//! connections not yet signed in, the sign-in deadline, handler panics,
//! shutdown, and TLS with a certificate generated at test time.

use crate::support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collabd::service::listener::{
    tls_acceptor_from_pem, Handler, Incoming, Listener, ListenerLimits, Server,
};

/// Generous bound for waiting on something that must happen; never a
/// measure of speed.
const PATIENCE: Duration = Duration::from_secs(30);

fn limits(max_unauthenticated: usize, handshake: Duration) -> ListenerLimits {
    ListenerLimits {
        max_unauthenticated,
        handshake_timeout: handshake,
        read_timeout: Duration::from_secs(60),
        thread_stack_size: 256 * 1024,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Reads until EOF or an error; returns true for a closed connection, and
/// fails the test if the read timed out (the server kept it open).
fn closed_by_server(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

/// What the test handler reports.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Entered(SocketAddr, bool),
    SignedIn,
    Ended,
}

/// A handler that plays a tiny sign-in protocol: it reports entry, then
/// reads bytes; the byte `L` is "login accepted" (it releases the permit and
/// answers `ok\n`); `P` panics; every other byte is echoed.
fn protocol_handler(events: Sender<Event>) -> Handler {
    let events = Mutex::new(events);
    Arc::new(move |incoming: Incoming| {
        let Incoming {
            mut stream,
            peer,
            permit,
        } = incoming;
        let send = |e| {
            let _ = events.lock().unwrap().send(e);
        };
        send(Event::Entered(peer, stream.is_tls()));
        let mut permit = Some(permit);
        let mut byte = [0u8; 1];
        while let Ok(1) = stream.read(&mut byte) {
            match byte[0] {
                b'L' => {
                    if let Some(p) = permit.take() {
                        p.release();
                    }
                    stream.write_all(b"ok\n").unwrap();
                    send(Event::SignedIn);
                }
                b'P' => panic!("handler fails on purpose"),
                other => {
                    let _ = stream.write_all(&[other]);
                }
            }
        }
        send(Event::Ended);
    })
}

fn start(limits: ListenerLimits) -> (Server, Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let listener = Listener::bind("127.0.0.1:0", None, limits).unwrap();
    let server = listener.serve(protocol_handler(tx)).unwrap();
    (server, rx)
}

fn expect(rx: &Receiver<Event>, pred: impl Fn(&Event) -> bool, what: &str) -> Event {
    let e = rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("no {what}"));
    assert!(pred(&e), "expected {what}, got {e:?}");
    e
}

#[test]
fn connections_beyond_the_unauthenticated_cap_are_closed_at_once() {
    let (server, rx) = start(limits(2, Duration::from_secs(600)));
    let addr = server.local_addr();
    let mut a = connect(addr);
    let _b = connect(addr);
    expect(&rx, |e| matches!(e, Event::Entered(..)), "first entry");
    expect(&rx, |e| matches!(e, Event::Entered(..)), "second entry");
    assert_eq!(server.pending(), 2);

    let mut c = connect(addr);
    assert!(
        closed_by_server(&mut c),
        "third connection closed, nothing sent"
    );
    wait_until("rejection counted", || server.rejected() == 1);

    // Signing in frees the place: a new connection is served.
    a.write_all(b"L").unwrap();
    let mut ok = [0u8; 3];
    a.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok\n");
    expect(&rx, |e| *e == Event::SignedIn, "sign-in");
    wait_until("permit released", || server.pending() == 1);
    let mut d = connect(addr);
    expect(
        &rx,
        |e| matches!(e, Event::Entered(..)),
        "entry after release",
    );
    d.write_all(b"x").unwrap();
    let mut echo = [0u8; 1];
    d.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"x");
    // The signed-in connection is not cut at any sign-in deadline and
    // still works.
    a.write_all(b"y").unwrap();
    a.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"y");
    let report = server.stop(Duration::ZERO, PATIENCE);
    assert_eq!(report.still_running, 0);
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_timeout_and_frees_its_permit() {
    // The per-read timeout (60 s) is far longer than the sign-in deadline:
    // what drops the client is the deadline.
    let (server, rx) = start(limits(1, Duration::from_millis(300)));
    let addr = server.local_addr();
    let mut silent = connect(addr);
    expect(&rx, |e| matches!(e, Event::Entered(..)), "entry");
    assert!(closed_by_server(&mut silent), "dropped at the deadline");
    expect(&rx, |e| *e == Event::Ended, "handler end");
    wait_until("permit freed", || {
        server.pending() == 0 && server.connections() == 0
    });
    // The single place is free again.
    let mut next = connect(addr);
    expect(&rx, |e| matches!(e, Event::Entered(..)), "next entry");
    next.write_all(b"L").unwrap();
    let mut ok = [0u8; 3];
    next.read_exact(&mut ok).unwrap();
    assert_eq!(server.rejected(), 0);
    server.stop(Duration::ZERO, PATIENCE);
}

#[test]
fn a_client_that_trickles_garbage_is_dropped_at_the_deadline() {
    let (server, rx) = start(limits(4, Duration::from_millis(500)));
    let mut slow = connect(server.local_addr());
    expect(&rx, |e| matches!(e, Event::Entered(..)), "entry");
    // Each byte arrives well within the per-read timeout, but the login
    // never comes.
    let mut closed = false;
    let deadline = Instant::now() + PATIENCE;
    let mut echo = [0u8; 1];
    while Instant::now() < deadline {
        if slow.write_all(b"g").is_err() {
            closed = true;
            break;
        }
        match slow.read(&mut echo) {
            Ok(1) => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the trickling client was cut");
    expect(&rx, |e| *e == Event::Ended, "handler end");
    wait_until("permit freed", || server.pending() == 0);
    server.stop(Duration::ZERO, PATIENCE);
}

#[test]
fn a_panicking_handler_closes_its_connection_and_frees_its_permit() {
    let (server, rx) = start(limits(1, Duration::from_secs(600)));
    let mut c = connect(server.local_addr());
    expect(&rx, |e| matches!(e, Event::Entered(..)), "entry");
    c.write_all(b"P").unwrap();
    assert!(closed_by_server(&mut c));
    wait_until("connection gone", || {
        server.connections() == 0 && server.pending() == 0
    });
    let _d = connect(server.local_addr());
    expect(
        &rx,
        |e| matches!(e, Event::Entered(..)),
        "served after panic",
    );
    server.stop(Duration::ZERO, PATIENCE);
}

#[test]
fn shutdown_stops_accepting_closes_connections_and_returns() {
    let (server, rx) = start(limits(8, Duration::from_secs(600)));
    let addr = server.local_addr();
    let mut signed_in = connect(addr);
    expect(&rx, |e| matches!(e, Event::Entered(..)), "entry");
    signed_in.write_all(b"L").unwrap();
    expect(&rx, |e| *e == Event::SignedIn, "sign-in");
    let _pending = connect(addr);
    expect(&rx, |e| matches!(e, Event::Entered(..)), "entry");

    // Stop accepting from another thread, as the signal thread would.
    let handle = server.shutdown_handle();
    std::thread::spawn(move || handle.stop_accepting())
        .join()
        .unwrap();
    assert!(!server.is_accepting());
    let report = server.stop(Duration::from_millis(10), PATIENCE);
    assert_eq!(report.forced, 2, "both connections were still open");
    assert_eq!(report.still_running, 0);
    assert!(closed_by_server(&mut signed_in));
    expect(&rx, |e| *e == Event::Ended, "handler end");
    expect(&rx, |e| *e == Event::Ended, "handler end");
    assert!(
        TcpStream::connect_timeout(&addr, PATIENCE).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn an_idle_server_stops_promptly_from_its_handle() {
    let (server, _rx) = start(limits(8, Duration::from_secs(600)));
    let handle = server.shutdown_handle();
    assert!(server.is_accepting());
    handle.stop_accepting();
    handle.stop_accepting(); // idempotent
    let report = server.stop(PATIENCE, PATIENCE);
    assert_eq!(report.forced, 0);
    assert_eq!(report.still_running, 0);
}

#[test]
fn tls_connections_are_served_and_plain_clients_are_refused() {
    let cert = support::certs::self_signed_localhost();
    let acceptor = tls_acceptor_from_pem(&cert.cert_pem, &cert.key_pem).unwrap();
    let (tx, rx) = mpsc::channel();
    let listener = Listener::bind(
        "127.0.0.1:0",
        Some(acceptor),
        limits(4, Duration::from_secs(600)),
    )
    .unwrap();
    let server = listener.serve(protocol_handler(tx)).unwrap();
    let addr = server.local_addr();

    let connector = support::certs::client_trusting(&cert);
    let mut tls = connector.connect("localhost", connect(addr)).unwrap();
    expect(&rx, |e| matches!(e, Event::Entered(_, true)), "TLS entry");
    tls.write_all(b"L").unwrap();
    let mut ok = [0u8; 3];
    tls.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"ok\n");
    expect(&rx, |e| *e == Event::SignedIn, "sign-in");
    tls.write_all(b"z").unwrap();
    let mut echo = [0u8; 1];
    tls.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"z");

    // A client speaking plain text fails the handshake and never reaches
    // the handler.
    let mut plain = connect(addr);
    plain
        .write_all(b"\x00\x00\x00\x10hello, not TLS\r\n\r\n")
        .unwrap();
    assert!(closed_by_server(&mut plain));
    wait_until("failed handshake cleaned up", || server.pending() == 0);
    assert!(
        rx.try_recv().is_err(),
        "handler not called for the plain client"
    );

    // A client that does not trust the certificate gives up.
    let untrusting = native_tls::TlsConnector::builder()
        .disable_built_in_roots(true)
        .build()
        .unwrap();
    assert!(untrusting.connect("localhost", connect(addr)).is_err());

    let report = server.stop(Duration::ZERO, PATIENCE);
    assert_eq!(report.still_running, 0);
}

#[test]
fn bad_limits_and_busy_addresses_are_clear_errors() {
    let taken = Listener::bind("127.0.0.1:0", None, ListenerLimits::default()).unwrap();
    let err = Listener::bind(taken.local_addr(), None, ListenerLimits::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot listen on 127.0.0.1:"),
        "{err}"
    );
    let err = Listener::bind(
        "127.0.0.1:0",
        None,
        ListenerLimits {
            max_unauthenticated: 0,
            ..ListenerLimits::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("max_unauthenticated"), "{err}");
    let Err(err) = tls_acceptor_from_pem(b"not a cert", b"not a key") else {
        panic!("garbage accepted as a TLS identity");
    };
    assert!(err.to_string().starts_with("TLS identity:"), "{err}");
}

#[test]
fn wait_readable_reports_data_without_consuming_it() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let mut stream = incoming.stream;
        let idle = stream.wait_readable(Duration::from_millis(50)).unwrap();
        let _ = tx.lock().unwrap().send(format!("idle:{idle}"));
        let ready = stream.wait_readable(PATIENCE).unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).unwrap();
        let _ = tx
            .lock()
            .unwrap()
            .send(format!("ready:{ready}:{}", byte[0] as char));
    });
    let server = Listener::bind("127.0.0.1:0", None, limits(2, PATIENCE))
        .unwrap()
        .serve(handler)
        .unwrap();
    let mut c = connect(server.local_addr());
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), "idle:false");
    c.write_all(b"q").unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), "ready:true:q");
    server.stop(Duration::ZERO, PATIENCE);
}

/// The handler splits the connection: a reader thread waits for the
/// device while this thread writes `tick\n` three times. The socket's read
/// timeout is long (60 s) and the client waits for the ticks before it
/// sends anything, so a reader that held the stream while waiting would
/// starve the writer and fail the test. Then the reader's bytes are echoed
/// through the writer.
fn halves_handler() -> Handler {
    Arc::new(|incoming: Incoming| {
        let (mut reader, writer) = incoming.stream.into_halves().unwrap();
        let writer = Arc::new(Mutex::new(writer));
        let w = Arc::clone(&writer);
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 3];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                w.lock().unwrap().write_all(&buf[..n]).unwrap();
            }
        });
        for _ in 0..3 {
            writer.lock().unwrap().write_all(b"tick\n").unwrap();
        }
        echo.join().unwrap();
    })
}

fn exercise_halves(client: &mut (impl Read + Write)) {
    let mut ticks = [0u8; 15];
    client.read_exact(&mut ticks).unwrap();
    assert_eq!(&ticks, b"tick\ntick\ntick\n");
    // More than one small read's worth, so the TLS half serves it from
    // its record buffer across several reads.
    client.write_all(b"0123456789abcdef").unwrap();
    let mut echo = [0u8; 16];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"0123456789abcdef");
}

#[test]
fn a_plain_connection_splits_into_halves_for_two_threads() {
    let server = Listener::bind("127.0.0.1:0", None, limits(2, PATIENCE))
        .unwrap()
        .serve(halves_handler())
        .unwrap();
    let mut c = connect(server.local_addr());
    exercise_halves(&mut c);
    drop(c);
    assert_eq!(server.stop(PATIENCE, PATIENCE).still_running, 0);
}

#[test]
fn a_tls_connection_splits_into_halves_for_two_threads() {
    let cert = support::certs::self_signed_localhost();
    let acceptor = tls_acceptor_from_pem(&cert.cert_pem, &cert.key_pem).unwrap();
    let server = Listener::bind("127.0.0.1:0", Some(acceptor), limits(2, PATIENCE))
        .unwrap()
        .serve(halves_handler())
        .unwrap();
    let connector = support::certs::client_trusting(&cert);
    let mut c = connector
        .connect("localhost", connect(server.local_addr()))
        .unwrap();
    exercise_halves(&mut c);
    drop(c);
    assert_eq!(server.stop(PATIENCE, PATIENCE).still_running, 0);
}

#[test]
fn a_tls_read_half_honours_the_read_timeout() {
    let cert = support::certs::self_signed_localhost();
    let acceptor = tls_acceptor_from_pem(&cert.cert_pem, &cert.key_pem).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let (mut reader, _writer) = incoming.stream.into_halves().unwrap();
        reader
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 8];
        let kind = reader.read(&mut buf).map_err(|e| e.kind());
        let _ = tx.lock().unwrap().send(kind);
    });
    let server = Listener::bind("127.0.0.1:0", Some(acceptor), limits(2, PATIENCE))
        .unwrap()
        .serve(handler)
        .unwrap();
    let connector = support::certs::client_trusting(&cert);
    let _c = connector
        .connect("localhost", connect(server.local_addr()))
        .unwrap();
    assert_eq!(
        rx.recv_timeout(PATIENCE).unwrap(),
        Err(std::io::ErrorKind::TimedOut)
    );
    server.stop(Duration::ZERO, PATIENCE);
}

/// A client-side stream that, once `hold` is set, keeps what TLS writes
/// instead of sending it, so the test can send a record piecemeal.
#[derive(Debug)]
struct Holding {
    tcp: TcpStream,
    held: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Read for Holding {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Holding {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.held.lock().unwrap().as_mut() {
            Some(held) => {
                held.extend_from_slice(buf);
                Ok(buf.len())
            }
            None => self.tcp.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// A slow device has sent only part of a TLS record: the reading half
/// waits for the rest without holding the stream, so an event written
/// meanwhile still reaches the device (the read timeout is 60 s; the
/// client gives up on the tick long before that).
#[test]
fn a_partial_tls_record_from_the_device_does_not_hold_up_writes() {
    let cert = support::certs::self_signed_localhost();
    let acceptor = tls_acceptor_from_pem(&cert.cert_pem, &cert.key_pem).unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let (got_tx, got_rx) = mpsc::channel();
    let got_tx = Mutex::new(got_tx);
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let (mut reader, mut writer) = incoming.stream.into_halves().unwrap();
        let got = got_tx.lock().unwrap().clone();
        let read = std::thread::spawn(move || {
            let mut buf = [0u8; 5];
            let r = reader.read_exact(&mut buf).map(|()| buf.to_vec());
            let _ = got.send(r.map_err(|e| e.kind()));
        });
        // The reader is inside its read, part of a record arrived.
        go_rx.lock().unwrap().recv_timeout(PATIENCE).unwrap();
        writer.write_all(b"tick\n").unwrap();
        read.join().unwrap();
    });
    let server = Listener::bind("127.0.0.1:0", Some(acceptor), limits(2, PATIENCE))
        .unwrap()
        .serve(handler)
        .unwrap();
    let tcp = connect(server.local_addr());
    let mut raw = tcp.try_clone().unwrap();
    let held = Arc::new(Mutex::new(None));
    let connector = support::certs::client_trusting(&cert);
    let mut c = connector
        .connect(
            "localhost",
            Holding {
                tcp,
                held: Arc::clone(&held),
            },
        )
        .unwrap();
    *held.lock().unwrap() = Some(Vec::new());
    c.write_all(b"hello").unwrap();
    let record = held.lock().unwrap().take().unwrap();
    assert!(record.len() > 10, "one TLS record: {} bytes", record.len());
    raw.write_all(&record[..8]).unwrap();
    // Let the reader see the partial record (poll says readable) and try it.
    std::thread::sleep(Duration::from_millis(200));
    go_tx.send(()).unwrap();
    c.get_ref()
        .tcp
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tick = [0u8; 5];
    c.read_exact(&mut tick)
        .expect("the event written while a record is half in arrives");
    assert_eq!(&tick, b"tick\n");
    raw.write_all(&record[8..]).unwrap();
    assert_eq!(
        got_rx.recv_timeout(PATIENCE).unwrap(),
        Ok(b"hello".to_vec())
    );
    drop(c);
    server.stop(Duration::ZERO, PATIENCE);
}

#[test]
fn a_handler_can_cut_one_step_of_the_sign_in_shorter() {
    // The sign-in deadline (60 s) outlasts the test's patience (30 s): only
    // the shorter cut can drop the silent client in time, and only until
    // the handler moves it back.
    let limits = limits(4, Duration::from_secs(60));
    let listener = Listener::bind("127.0.0.1:0", None, limits).unwrap();
    let (tx, rx) = mpsc::channel::<bool>();
    let tx = Mutex::new(tx);
    let handler: Handler = Arc::new(move |incoming: Incoming| {
        let Incoming {
            mut stream, permit, ..
        } = incoming;
        permit.cut_at(permit.accepted() + Duration::from_millis(200));
        let mut first = [0u8; 1];
        let proved = stream.read_exact(&mut first).is_ok() && first[0] == b'K';
        if proved {
            // The "key proof" came: the rest of the sign-in deadline.
            permit.cut_at(permit.sign_in_deadline());
            std::thread::sleep(Duration::from_millis(400));
            let _ = stream.write_all(b"alive\n");
        }
        let _ = tx.lock().unwrap().send(proved);
    });
    let server = listener.serve(handler).unwrap();
    let addr = server.local_addr();
    let mut silent = connect(addr);
    assert!(closed_by_server(&mut silent), "cut at the shorter deadline");
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(false));
    let mut prover = connect(addr);
    prover.write_all(b"K").unwrap();
    let mut line = [0u8; 6];
    prover.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"alive\n", "not cut once the deadline moved back");
    assert_eq!(rx.recv_timeout(PATIENCE), Ok(true));
    server.stop(Duration::ZERO, PATIENCE);
}
