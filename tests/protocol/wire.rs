//! The device protocol over real sockets and in memory: handshakes, both
//! directions of the encrypted channel, refusals, wrong keys, replayed and
//! tampered traffic, and thousands of mutated inputs that must each end in a
//! precise error, never a panic or an accepted forgery.

use crate::support;

use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use collabd::wire::channel::{accept_with_random, connect_with_random};
use collabd::wire::{accept, connect, Status, WireError};
use support::wire_peer::{split_frames, Duplex, Tap, XorShift};

const PIN: u32 = 0x2a00_b1c3;
const KEY: [u8; 32] = [0x42; 32];
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

fn lookup(pin: u32) -> Result<[u8; 32], Status> {
    if pin == PIN {
        Ok(KEY)
    } else {
        Err(Status::UnknownDevice)
    }
}

fn pair() -> (TcpListener, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(WAIT).unwrap();
    (listener, client)
}

#[test]
fn handshake_and_split_channel_over_tcp() {
    let (listener, client) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        let ch = accept(s, lookup).unwrap();
        assert_eq!(ch.pin(), PIN);
        let (mut reader, mut writer) = ch.into_split().unwrap();
        // The writer runs on its own thread while the reader echoes back.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let w = thread::spawn(move || {
            writer.send(b"welcome").unwrap();
            for p in rx {
                writer.send(&p).unwrap();
            }
        });
        loop {
            match reader.recv() {
                Ok(p) => tx.send(p).unwrap(),
                Err(WireError::Closed) => break,
                Err(e) => panic!("service: {e}"),
            }
        }
        drop(tx);
        w.join().unwrap();
    });
    let mut ch = connect(client, PIN, &KEY).unwrap();
    assert_eq!(ch.recv().unwrap(), b"welcome");
    let big: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    for payload in [b"".to_vec(), b"x".to_vec(), big] {
        ch.send(&payload).unwrap();
        assert_eq!(ch.recv().unwrap(), payload);
    }
    ch.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    service.join().unwrap();
}

#[test]
fn unknown_pin_is_refused_in_clear() {
    let (listener, client) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        accept(s, lookup).err().unwrap()
    });
    match connect(client, 0x1234_5678, &KEY) {
        Err(WireError::Refused(Status::UnknownDevice, text)) => assert_eq!(text, "Unknown device"),
        other => panic!("{:?}", other.err()),
    }
    assert!(matches!(
        service.join().unwrap(),
        WireError::Refused(Status::UnknownDevice, _)
    ));
}

#[test]
fn wrong_key_fails_at_the_handshake_on_both_sides() {
    // Device with the wrong key: it detects the service's confirmation does
    // not match and sends nothing more; the service sees the link close.
    let (listener, client) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        accept(s, lookup).err().unwrap()
    });
    let err = connect(client, PIN, &[0x43; 32]).err().unwrap();
    assert!(matches!(err, WireError::Auth), "{err}");
    assert_eq!(err.status(), Status::ProtocolError);
    drop(err);
    let service_err = service.join().unwrap();
    assert!(
        matches!(service_err, WireError::Closed | WireError::Io(_)),
        "{service_err}"
    );
}

#[test]
fn device_confirmation_with_wrong_key_is_refused_308() {
    // An impostor that skips checking the service's confirmation and sends
    // one made with the wrong key.
    use collabd::wire::crypto::derive_keys;
    use collabd::wire::frame::{read_frame, write_frame, Frame, FrameType, Header};
    let (listener, mut client) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        accept(s, lookup).err().unwrap()
    });
    let rc = [5u8; 32];
    write_frame(
        &mut client,
        &Frame::new(Header::new(FrameType::Hello, PIN, 0), rc.to_vec()),
    )
    .unwrap();
    let challenge = read_frame(&mut client, 65536).unwrap();
    let mut rs = [0u8; 32];
    rs.copy_from_slice(&challenge.body[..32]);
    let wrong = derive_keys(&[0x43; 32], PIN, &rc, &rs).unwrap();
    let confirm = Frame::new(
        Header::new(FrameType::Confirm, PIN, 0),
        wrong.device_confirmation().unwrap().to_vec(),
    );
    write_frame(&mut client, &confirm).unwrap();
    let refused = read_frame(&mut client, 65536).unwrap();
    assert_eq!(refused.refusal().unwrap().0, Status::ProtocolError);
    assert!(matches!(service.join().unwrap(), WireError::Auth));
    // And the connection is closed.
    assert!(matches!(
        read_frame(&mut client, 65536),
        Err(WireError::Closed)
    ));
}

#[test]
fn replayed_recorded_connection_is_rejected() {
    // Record everything a genuine device sends on one connection...
    let (listener, client) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        let mut ch = accept(s, lookup).unwrap();
        let got = ch.recv().unwrap();
        ch.send(b"ok").unwrap();
        got
    });
    let tap = Tap {
        inner: client,
        written: Vec::new(),
    };
    let mut ch = connect(tap, PIN, &KEY).unwrap();
    ch.send(b"<login/>").unwrap();
    assert_eq!(ch.recv().unwrap(), b"ok");
    assert_eq!(service.join().unwrap(), b"<login/>");
    let recorded = ch.get_ref().written.clone();
    assert_eq!(split_frames(&recorded).len(), 3);

    // ...and play it to the service again: its fresh random makes the old
    // confirmation worthless, so the replay fails at the handshake.
    let (listener, mut attacker) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        accept(s, lookup).err().unwrap()
    });
    use std::io::Write;
    attacker.write_all(&recorded).unwrap();
    assert!(matches!(service.join().unwrap(), WireError::Auth));
}

/// The device bytes of a genuine connection with fixed randoms, and the
/// payloads they carry: built with the device half of the library.
fn genuine_device_bytes(payloads: &[Vec<u8>]) -> Vec<u8> {
    // Run the service with a fixed random against the device once, through
    // in-memory streams: first learn the Challenge, then the rest.
    let rc = [0x11; 32];
    let rs = [0x22; 32];
    let mut probe = Duplex::new(Vec::new());
    // The service's Challenge for our Hello, computed by the service code.
    let hello = collabd::wire::Frame::new(
        collabd::wire::Header::new(collabd::wire::FrameType::Hello, PIN, 0),
        rc.to_vec(),
    )
    .to_bytes();
    probe.input = std::io::Cursor::new(hello);
    let _ = accept_with_random(&mut probe, lookup, rs);
    let challenge = probe.output.clone();
    let mut device = Duplex::new(challenge);
    let mut ch = connect_with_random(&mut device, PIN, &KEY, rc).unwrap();
    for p in payloads {
        ch.send(p).unwrap();
    }
    drop(ch);
    device.output
}

#[test]
fn thousands_of_mutated_device_streams_never_yield_a_forgery() {
    let payloads: Vec<Vec<u8>> = (0..4)
        .map(|i| format!("<send conversation=\"{i}\"><text>message {i}</text></send>").into_bytes())
        .collect();
    let genuine = genuine_device_bytes(&payloads);
    let frames = split_frames(&genuine);
    assert_eq!(frames.len(), 2 + payloads.len());

    // The unmodified stream is accepted in full.
    let (got, end) = run_service(genuine.clone());
    assert_eq!(got, payloads);
    assert!(matches!(end, Some(WireError::Closed)), "{end:?}");

    let mut rng = XorShift::new(0x5eed_c011ab);
    let mut kinds = [0usize; 8];
    for case in 0..3000 {
        let kind = rng.below(8);
        let mut f = frames.clone();
        let mutated: Vec<u8> = match kind {
            // Flip one bit anywhere.
            0 => {
                let mut b = genuine.clone();
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
                b
            }
            // Truncate anywhere.
            1 => genuine[..rng.below(genuine.len())].to_vec(),
            // Replay a data frame.
            2 => {
                let i = 2 + rng.below(payloads.len());
                let dup = f[i].clone();
                f.insert(i + 1 + rng.below(f.len() - i), dup);
                f.concat()
            }
            // Reorder two data frames.
            3 => {
                let i = 2 + rng.below(payloads.len() - 1);
                f.swap(i, i + 1);
                f.concat()
            }
            // Drop a data frame.
            4 => {
                f.remove(2 + rng.below(payloads.len() - 1));
                f.concat()
            }
            // Random garbage after a genuine prefix of frames.
            5 => {
                let keep = rng.below(f.len());
                let mut b = f[..keep].concat();
                let n = rng.below(200);
                b.extend(rng.bytes(n));
                b
            }
            // A length field over the limit or shorter than a header.
            6 => {
                let i = rng.below(f.len());
                let len = if rng.below(2) == 0 {
                    65_537 + rng.below(1 << 30) as u32
                } else {
                    rng.below(16) as u32
                };
                f[i][..4].copy_from_slice(&len.to_be_bytes());
                f.concat()
            }
            // Several random byte changes in the data frames.
            _ => {
                let i = 2 + rng.below(payloads.len());
                for _ in 0..1 + rng.below(5) {
                    let j = rng.below(f[i].len());
                    f[i][j] = rng.next() as u8;
                }
                f.concat()
            }
        };
        let (got, end) = run_service(mutated.clone());
        // Whatever was accepted is an unaltered prefix of what was sent...
        assert!(got.len() <= payloads.len(), "case {case}");
        assert_eq!(
            got[..],
            payloads[..got.len()],
            "case {case}: forged payload accepted"
        );
        // ...and the stream always ends in an error, never a panic.
        let end = end.expect("a stream always ends");
        if mutated != genuine {
            assert!(
                end.is_protocol_violation()
                    || matches!(
                        end,
                        WireError::Closed | WireError::Refused(Status::UnknownDevice, _)
                    ),
                "case {case} kind {kind}: {end}"
            );
        }
        kinds[kind] += 1;
    }
    assert!(kinds.iter().all(|&k| k > 100), "{kinds:?}");
}

/// Runs the service half on `input`; returns the payloads it accepted and
/// the error that ended the stream (an in-memory stream always ends).
fn run_service(input: Vec<u8>) -> (Vec<Vec<u8>>, Option<WireError>) {
    let mut stream = Duplex::new(input);
    let mut got = Vec::new();
    let mut ch = match accept_with_random(&mut stream, lookup, [0x22; 32]) {
        Ok(ch) => ch,
        Err(e) => return (got, Some(e)),
    };
    loop {
        match ch.recv() {
            Ok(p) => got.push(p),
            Err(e) => return (got, Some(e)),
        }
    }
}

#[test]
fn sealed_decompression_bomb_is_rejected_without_inflating_it() {
    use collabd::wire::crypto::{deflate, derive_keys, seal, Direction};
    use collabd::wire::{Frame, FrameType, Header};
    let (rc, rs) = ([0x11; 32], [0x22; 32]);
    let keys = derive_keys(&KEY, PIN, &rc, &rs).unwrap();
    // A peer holding the key packs 16 MiB of zeros into one small frame.
    let bomb = deflate(&vec![0u8; 16 << 20]);
    assert!(bomb.len() < 60_000);
    let header = Header::new(FrameType::Data, PIN, 1);
    let body = seal(
        &keys.device_to_service,
        Direction::DeviceToService,
        &header.to_bytes(),
        1,
        &bomb,
    )
    .unwrap();
    let mut input = Frame::new(Header::new(FrameType::Hello, PIN, 0), rc.to_vec()).to_bytes();
    input.extend(
        Frame::new(
            Header::new(FrameType::Confirm, PIN, 0),
            keys.device_confirmation().unwrap().to_vec(),
        )
        .to_bytes(),
    );
    input.extend(Frame::new(header, body).to_bytes());
    let (got, end) = run_service(input);
    assert!(got.is_empty());
    assert!(matches!(end, Some(WireError::Decompress(_))), "{end:?}");
}

#[test]
fn mutated_service_streams_are_rejected_by_the_device() {
    // The service's side of a genuine connection: Challenge and two Data
    // frames, then mutated copies fed to the device half.
    let rc = [0x11; 32];
    let hello = collabd::wire::Frame::new(
        collabd::wire::Header::new(collabd::wire::FrameType::Hello, PIN, 0),
        rc.to_vec(),
    )
    .to_bytes();
    let mut device_bytes = hello.clone();
    let keys = collabd::wire::crypto::derive_keys(&KEY, PIN, &rc, &[0x22; 32]).unwrap();
    device_bytes.extend(
        collabd::wire::Frame::new(
            collabd::wire::Header::new(collabd::wire::FrameType::Confirm, PIN, 0),
            keys.device_confirmation().unwrap().to_vec(),
        )
        .to_bytes(),
    );
    let mut service_side = Duplex::new(device_bytes);
    let mut ch = accept_with_random(&mut service_side, lookup, [0x22; 32]).unwrap();
    let payloads = [
        b"<event seq=\"1\"/>".to_vec(),
        b"<event seq=\"2\"/>".to_vec(),
    ];
    for p in &payloads {
        ch.send(p).unwrap();
    }
    drop(ch);
    let genuine = service_side.output.clone();
    let run_device = |input: Vec<u8>| {
        let mut s = Duplex::new(input);
        let mut got = Vec::new();
        match connect_with_random(&mut s, PIN, &KEY, rc) {
            Err(e) => (got, e),
            Ok(mut ch) => loop {
                match ch.recv() {
                    Ok(p) => got.push(p),
                    Err(e) => break (got, e),
                }
            },
        }
    };
    let (got, end) = run_device(genuine.clone());
    assert_eq!(got, payloads);
    assert!(matches!(end, WireError::Closed));
    let mut rng = XorShift::new(77);
    for case in 0..2000 {
        let mut b = genuine.clone();
        if rng.below(3) == 0 {
            b.truncate(rng.below(b.len()));
        } else {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        let (got, end) = run_device(b);
        assert_eq!(got[..], payloads[..got.len()], "case {case}");
        assert!(
            end.is_protocol_violation()
                || matches!(end, WireError::Closed | WireError::Refused(..)),
            "case {case}: {end}"
        );
    }
}

#[test]
fn malformed_xml_in_a_genuine_frame_ends_the_channel() {
    use collabd::wire::DeviceMessage;
    let payloads = [
        b"<login user=\"a\"><password>x</pass></login>".to_vec(),
        b"<logout/>".to_vec(),
    ];
    let mut stream = Duplex::new(genuine_device_bytes(&payloads));
    let mut ch = accept_with_random(&mut stream, lookup, [0x22; 32]).unwrap();
    assert!(matches!(ch.recv_device(), Err(WireError::Protocol(_))));
    // The well-formed frame behind it is not read: the channel is finished.
    assert!(matches!(ch.recv_device(), Err(WireError::Protocol(_))));
    drop(ch);
    let mut stream = Duplex::new(genuine_device_bytes(&payloads[1..]));
    let mut ch = accept_with_random(&mut stream, lookup, [0x22; 32]).unwrap();
    assert_eq!(ch.recv_device().unwrap(), DeviceMessage::Logout);
}

#[test]
fn tls_stream_split_through_shared_stream() {
    use collabd::wire::SharedStream;
    let cert = support::certs::self_signed_localhost();
    let acceptor = support::certs::acceptor(&cert);
    let (listener, client_tcp) = pair();
    let service = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(WAIT).unwrap();
        let tls = acceptor.accept(s).unwrap();
        let shared = SharedStream::new(tls);
        let ch = accept(shared.clone(), lookup).unwrap();
        // Short socket timeouts from now on, so a waiting reader releases
        // the lock often enough for the writer thread.
        shared
            .with(|s| {
                s.get_ref()
                    .set_read_timeout(Some(Duration::from_millis(20)))
            })
            .unwrap();
        let (mut reader, mut writer) = ch.split(|s| Ok((s.clone(), s))).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let w = thread::spawn(move || {
            for p in rx {
                writer.send(&p).unwrap();
            }
        });
        let mut timeouts = 0u64;
        loop {
            match reader.recv() {
                Ok(p) => tx.send(p).unwrap(),
                Err(WireError::Timeout) => timeouts += 1,
                Err(WireError::Closed) | Err(WireError::Io(_)) => break,
                Err(e) => panic!("service: {e}"),
            }
            assert!(timeouts < 100_000, "never finished");
        }
        drop(tx);
        w.join().unwrap();
    });
    let mut builder = native_tls::TlsConnector::builder();
    builder.add_root_certificate(native_tls::Certificate::from_pem(&cert.cert_pem).unwrap());
    let tls = builder
        .build()
        .unwrap()
        .connect("localhost", client_tcp)
        .unwrap();
    let mut ch = connect(tls, PIN, &KEY).unwrap();
    for i in 0..50u32 {
        let payload = format!("message {i} ").repeat(i as usize * 40).into_bytes();
        ch.send(&payload).unwrap();
        assert_eq!(ch.recv().unwrap(), payload);
    }
    ch.get_mut().shutdown().unwrap();
    drop(ch);
    service.join().unwrap();
}

/// A first frame refused after its header was read (here: a Hello of the
/// wrong version) gets a Refused 308 that echoes the PIN; one refused
/// before the PIN was read (a length out of range) carries PIN 0.
#[test]
fn a_refused_first_frame_echoes_the_pin_once_its_header_was_read() {
    use collabd::wire::frame::{read_frame, FrameType, MAX_FRAME_LEN};
    use std::io::Write;
    let refused_pin = |first: Vec<u8>| {
        let (listener, mut client) = pair();
        let service = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            s.set_read_timeout(WAIT).unwrap();
            accept(s, lookup).err().unwrap()
        });
        client.set_read_timeout(WAIT).unwrap();
        client.write_all(&first).unwrap();
        let reply = read_frame(&mut client, MAX_FRAME_LEN).unwrap();
        service.join().unwrap();
        assert_eq!(reply.header.frame_type, FrameType::Refused);
        assert_eq!(&reply.body[..2], &308u16.to_be_bytes());
        reply.header.pin
    };
    let mut hello = Vec::new();
    hello.extend_from_slice(&48u32.to_be_bytes());
    hello.extend_from_slice(&[9, 1, 0, 0]); // version 9
    hello.extend_from_slice(&PIN.to_be_bytes());
    hello.extend_from_slice(&[0; 8]);
    hello.extend_from_slice(&[0x40; 32]);
    assert_eq!(refused_pin(hello), PIN);
    let mut huge = Vec::new();
    huge.extend_from_slice(&70_000u32.to_be_bytes());
    huge.extend_from_slice(&[1, 1, 0, 0]);
    huge.extend_from_slice(&PIN.to_be_bytes());
    assert_eq!(refused_pin(huge), 0);
}
