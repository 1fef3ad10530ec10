//! collab-dispatcher in front of two real `collabd` processes: two instance
//! rows in one scratch Config DB, both instances signing in to one
//! `cwa-sim`, devices that are real `collab-device --script` processes (or
//! the device library, where a test needs `resume`), all connecting to the
//! built `collab-dispatcher`, which records every byte it relays.
//!
//! Which instance holds a device's session is read from the Config DB's
//! `session` table; what the instances advertise from their `instance`
//! rows. Waits are generous and only bound a broken build; nothing is timed
//! (the attack test prints how long the honest sign-in took).
//!
//! Also here: collabd's refusals delivered through the dispatcher, and
//! held or trickled handshakes from many addresses that must not lock an
//! honest device out.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use collabd::configdb::InstanceSettings;
use collabd::device::{DeviceClient, DeviceConfig};
use collabd::wire::{
    self, crypto, DeviceCommand, DeviceEvent, FrameType, Resume, Secret, ServiceMessage,
};

use support::collabd::{
    field, finish, sim_line, wait_until, Collabd, Stack, TestDevice, TestUser, INSTANCE, WAIT,
};
use support::device_peer::DeviceProcess;
use support::dispatch::{contains, session_instance, Dispatcher};

/// The first instance (the stack's own row and collabd).
const ALPHA: &str = INSTANCE;
/// The second instance, a row of its own in the same Config DB.
const BETA: &str = "bcs-two";
/// collabd writes its heartbeat every 200 ms (support::collabd); the
/// dispatcher takes a row as dead after this, so a killed instance drops
/// out within seconds while a live one has twenty heartbeats of slack on a
/// busy machine.
const STALE_AFTER_MS: &str = "4000";

/// Two collabd instances behind one dispatcher, and every secret the test
/// used (passwords and message texts) for the plaintext check.
struct Cluster {
    // Dropped in this order: the dispatcher, beta, then the stack (alpha,
    // the simulator, the database and the scratch directory).
    dispatcher: Dispatcher,
    beta: Option<Collabd>,
    stack: Stack,
    devices: Vec<TestDevice>,
    secrets: Vec<String>,
}

/// A user whose password is long and unmistakable in a byte dump.
fn user(name: &str) -> TestUser {
    TestUser {
        password: format!("Correct-Horse-{name}-Battery-Staple"),
        ..TestUser::new(name)
    }
}

impl Cluster {
    /// The simulator with `names` as users (each the others' contact), the
    /// Config DB with both instance rows (`alpha_max` and `beta_max`
    /// sessions), the users and a device each, alpha's collabd and the
    /// dispatcher. Beta's collabd is started by [`Cluster::start_beta`].
    fn new(names: &[&str], alpha_max: u32, beta_max: u32) -> Cluster {
        let users: Vec<TestUser> = names.iter().map(|n| user(n)).collect();
        let mut sim_users = String::new();
        for u in &users {
            let contacts: Vec<&str> = users
                .iter()
                .filter(|o| o.sip != u.sip)
                .map(|o| o.sip.as_str())
                .collect();
            sim_users.push_str(&sim_line(u, &format!("contacts={}", contacts.join(","))));
        }
        let mut stack = Stack::new(
            &sim_users,
            InstanceSettings {
                max_sessions: Some(alpha_max),
                ..InstanceSettings::default()
            },
        );
        let beta_settings = InstanceSettings {
            cwa_url: stack.sim.base_url(),
            max_sessions: Some(beta_max),
            ..InstanceSettings::default()
        };
        stack
            .db
            .add_instance(BETA, &beta_settings)
            .expect("add the second instance");
        let mut devices = Vec::new();
        for u in &users {
            stack.add_user(u, true);
            devices.push(stack.add_device(u));
        }
        stack.start_collabd(&[]);
        let dispatcher = Dispatcher::start(
            &stack.db_url,
            &["--refresh-ms", "100", "--stale-after-ms", STALE_AFTER_MS],
        );
        let secrets = users.iter().map(|u| u.password.clone()).collect();
        Cluster {
            dispatcher,
            beta: None,
            stack,
            devices,
            secrets,
        }
    }

    /// Starts beta's collabd on 0.0.0.0 (as a deployment would): its
    /// heartbeat must advertise an address the dispatcher can reach.
    fn start_beta(&mut self) -> SocketAddr {
        let beta = Collabd::start(
            &self.stack.dir,
            &self.stack.db_url,
            &["--instance", BETA, "--listen", "0.0.0.0:0"],
        );
        let addr = beta.addr;
        self.beta = Some(beta);
        addr
    }

    /// Waits until the dispatcher has logged `live` as its set of live
    /// instances (it logs each change of the set).
    fn wait_live(&self, live: &str) {
        self.wait_live_since(0, live);
    }

    /// [`Cluster::wait_live`], looking only at the log after its first
    /// `mark` bytes.
    fn wait_live_since(&self, mark: usize, live: &str) {
        let line = format!("live instances: {live}\n");
        wait_until(&format!("the dispatcher to route to {live}"), || {
            self.dispatcher
                .log()
                .get(mark..)
                .is_some_and(|after| after.contains(&line))
        });
    }

    fn device(&self, name: &str) -> &TestDevice {
        self.devices
            .iter()
            .find(|d| d.user.login.ends_with(&format!("\\{name}")))
            .unwrap_or_else(|| panic!("no device for {name}"))
    }

    /// `collab-device --script` for `name`'s device, through the
    /// dispatcher, signed in; returns it with the instance that holds its
    /// session now.
    fn sign_in(&self, name: &str) -> (DeviceProcess, String) {
        let dev = self.device(name);
        let d = self.stack.signed_in_at(self.dispatcher.addr, dev);
        let holder = session_instance(&self.stack.db_url, dev.pin)
            .unwrap_or_else(|| panic!("{name}: no active session row"));
        (d, holder)
    }

    /// The device library, connected through the dispatcher.
    fn library_client(&self, name: &str) -> DeviceClient {
        let dev = self.device(name);
        DeviceClient::connect(&DeviceConfig {
            addr: self.dispatcher.addr.to_string(),
            pin: dev.pin,
            transport_key: dev.key,
            tls: None,
            timeout: Duration::from_secs(30),
            status_interval: None,
        })
        .expect("connect through the dispatcher")
    }

    /// A message text, remembered as a secret; returned escaped for a
    /// collab-device script line.
    fn text(&mut self, text: &str) -> String {
        self.secrets.push(text.to_string());
        text.replace(' ', "\\s")
    }

    /// `sessions_in_use` of `instance`'s heartbeat.
    fn in_use(&mut self, instance: &str) -> u32 {
        self.stack.db.instance(instance).unwrap().sessions_in_use
    }

    /// The dispatcher relayed traffic (clear headers and ciphertext), but
    /// none of the passwords or message texts, and its log has none either.
    fn assert_no_plaintext(&self) {
        let recorded = self.dispatcher.recorded();
        for dev in &self.devices {
            // Every frame carries its PIN in the clear header.
            assert!(
                contains(&recorded, &dev.pin.to_be_bytes()),
                "nothing relayed for {:08x}",
                dev.pin
            );
        }
        let log = self.dispatcher.log();
        for secret in &self.secrets {
            assert!(
                !contains(&recorded, secret.as_bytes()),
                "{secret:?} relayed in the clear"
            );
            assert!(!log.contains(secret.as_str()), "{secret:?} in the log");
        }
        assert!(!contains(&recorded, b"<login"));
        assert!(!contains(&recorded, b"sip:"));
        // Payloads are deflated before they are sealed, so the search above
        // would not see unsealed plaintext either. So also: every recorded
        // stream is whole frames, and no Data body (with or without its
        // tag) inflates to a message.
        let mut data_frames = 0;
        for entry in std::fs::read_dir(&self.dispatcher.record_dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let frame = wire::read_frame(&mut rest, wire::MAX_FRAME_LEN)
                    .expect("the dispatcher relays whole frames");
                if frame.header.frame_type != FrameType::Data {
                    continue;
                }
                data_frames += 1;
                let body = &frame.body;
                for candidate in [&body[..], &body[..body.len().saturating_sub(16)]] {
                    if let Ok(inflated) = crypto::inflate(candidate, 1 << 20) {
                        // (Random bytes rarely inflate at all, and then
                        // not to a message, which starts with '<'.)
                        assert!(
                            !inflated.starts_with(b"<"),
                            "a Data frame is deflated plaintext"
                        );
                    }
                }
            }
        }
        assert!(data_frames > 10, "only {data_frames} Data frames relayed");
    }
}

/// Sends a `start` and returns the conversation id from its result.
fn start_conversation(d: &mut DeviceProcess, to: &str, text: &str) -> String {
    d.send(&format!("start to={to} text={text}"));
    let result = d.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    field(&result, "conv").unwrap_or_else(|| panic!("no conv in {result}"))
}

/// Reads `d`'s events until a message with `text` (escaped) arrives.
fn expect_message(d: &mut DeviceProcess, text: &str) {
    loop {
        let m = d.expect("event message ");
        if field(&m, "text").as_deref() == Some(text) {
            return;
        }
    }
}

/// `from` (a signed-in script device) opens a conversation with `to_sip`,
/// whose device `to` accepts; both then exchange one more message each way.
fn converse(c: &mut Cluster, from: &mut DeviceProcess, to: &mut DeviceProcess, to_sip: &str) {
    let hello = c.text(&format!("hello {to_sip}, meet at the fountain"));
    let conv = start_conversation(from, to_sip, &hello);
    loop {
        let inv = to.expect("event invitation ");
        if field(&inv, "conv").as_deref() == Some(conv.as_str()) {
            assert_eq!(field(&inv, "text").as_deref(), Some(hello.as_str()));
            break;
        }
    }
    to.send(&format!("accept conv={conv}"));
    let r = to.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    let answer = c.text(&format!("{to_sip} says the fountain at noon"));
    to.send(&format!("send conv={conv} text={answer}"));
    let r = to.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    expect_message(from, &answer);
    let back = c.text(&format!("see you there, {to_sip}"));
    from.send(&format!("send conv={conv} text={back}"));
    let r = from.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    expect_message(to, &back);
}

fn sip(name: &str) -> String {
    format!("sip:{name}@contoso.com")
}

#[test]
fn devices_spread_across_two_collabds_and_move_to_the_survivor_when_one_is_killed() {
    const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
    let mut c = Cluster::new(&NAMES, 10, 10);
    let alpha_addr = c.stack.collabd.as_ref().unwrap().addr;
    let beta_bound = c.start_beta();
    c.wait_live(&format!("{ALPHA}, {BETA}"));

    // Each heartbeat advertises an address the dispatcher can reach: the
    // bound one, with 0.0.0.0 replaced by loopback.
    let alpha_row = c.stack.db.instance(ALPHA).unwrap();
    let beta_row = c.stack.db.instance(BETA).unwrap();
    assert_eq!(alpha_row.listen_addr, Some(alpha_addr.to_string()));
    assert_eq!(
        beta_row.listen_addr,
        Some(format!("127.0.0.1:{}", beta_bound.port()))
    );
    for row in [&alpha_row, &beta_row] {
        assert!(row.healthy, "{row:?}");
        assert_eq!(row.session_limit, Some(10), "{row:?}");
        assert!(row.heartbeat_at_ms.is_some(), "{row:?}");
    }

    // Four devices sign in one after the other: two on each instance.
    let mut signed_in: Vec<(&str, DeviceProcess, String)> = Vec::new();
    for name in &NAMES[..4] {
        let (d, holder) = c.sign_in(name);
        signed_in.push((name, d, holder));
    }
    let on = |instance: &str, s: &[(&str, DeviceProcess, String)]| -> Vec<String> {
        s.iter()
            .filter(|(_, _, h)| h == instance)
            .map(|(n, _, _)| n.to_string())
            .collect()
    };
    let on_alpha = on(ALPHA, &signed_in);
    let on_beta = on(BETA, &signed_in);
    assert_eq!(
        (on_alpha.len(), on_beta.len()),
        (2, 2),
        "{on_alpha:?} {on_beta:?}"
    );
    // Each instance's health says so.
    wait_until("both heartbeats to count two sessions", || {
        c.in_use(ALPHA) == 2 && c.in_use(BETA) == 2
    });

    // A message from a device on alpha to one on beta, and back.
    let (mut a_dev, mut b_dev) = {
        let ia = signed_in.iter().position(|s| s.0 == on_alpha[0]).unwrap();
        let a = signed_in.remove(ia);
        let ib = signed_in.iter().position(|s| s.0 == on_beta[0]).unwrap();
        let b = signed_in.remove(ib);
        (a, b)
    };
    converse(&mut c, &mut a_dev.1, &mut b_dev.1, &sip(b_dev.0));
    signed_in.push(a_dev);
    signed_in.push(b_dev);

    // Alpha dies without a word.
    let mark = c.dispatcher.log().len();
    let code = c.stack.collabd().signal_and_wait(libc::SIGKILL);
    assert_eq!(code, None, "killed by a signal");

    // Its devices' relays end; beta's devices carry on.
    let mut survivors = Vec::new();
    for (name, mut d, holder) in signed_in {
        if holder == ALPHA {
            let lost = d.expect("lost ");
            assert!(lost.starts_with("lost kind=connection"), "{name}: {lost}");
            let (code, lines) = finish(d);
            assert_eq!(code, 3, "{name}: {lines:?}");
        } else {
            survivors.push((name, d));
        }
    }
    // They come back through the dispatcher and sign in again on beta, even
    // while alpha's heartbeat may still look fresh and alpha's registry
    // rows still say "active" (nobody ended them).
    let mut back = Vec::new();
    for name in &on_alpha {
        let (d, holder) = c.sign_in(name);
        assert_eq!(holder, BETA, "{name} signed in again on the live instance");
        back.push((name.as_str(), d));
    }
    // Once alpha's heartbeat is stale the dispatcher drops it; a new login
    // goes to beta too.
    c.wait_live_since(mark, BETA);
    let (mut erin, holder) = c.sign_in("erin");
    assert_eq!(holder, BETA);
    wait_until("beta's heartbeat to count all five", || c.in_use(BETA) == 5);
    let alpha_row = c.stack.db.instance(ALPHA).unwrap();
    let beta_row = c.stack.db.instance(BETA).unwrap();
    assert!(
        beta_row.heartbeat_at_ms > alpha_row.heartbeat_at_ms,
        "alpha's heartbeat stopped: {alpha_row:?} {beta_row:?}"
    );

    // Messages flow: a device that moved talks to the newcomer, and the
    // newcomer answers a device that never moved.
    let (_, mut moved) = back.remove(0);
    converse(&mut c, &mut moved, &mut erin, &sip("erin"));
    let (stayed_name, mut stayed) = survivors.remove(0);
    converse(&mut c, &mut erin, &mut stayed, &sip(stayed_name));

    for d in [moved, erin, stayed]
        .into_iter()
        .chain(back.into_iter().map(|(_, d)| d))
        .chain(survivors.into_iter().map(|(_, d)| d))
    {
        let (code, lines) = finish(d);
        assert_eq!(code, 0, "{lines:?}");
    }
    c.assert_no_plaintext();
}

/// What a library device has received: the last event sequence and the
/// texts of its invitations and messages, in order.
#[derive(Default)]
struct Inbox {
    last_seq: u64,
    texts: Vec<String>,
}

/// Polls `client` until `done` accepts a message (and returns it), taking
/// every event on the way: in order, with no gap and no duplicate.
fn poll_until(
    client: &mut DeviceClient,
    inbox: &mut Inbox,
    done: impl Fn(&ServiceMessage, &Inbox) -> bool,
) -> ServiceMessage {
    loop {
        let m = client
            .poll(WAIT)
            .expect("poll")
            .unwrap_or_else(|| panic!("nothing within {WAIT:?}"));
        if let ServiceMessage::Event { seq, event } = &m {
            assert_eq!(*seq, inbox.last_seq + 1, "in order, no gap, no duplicate");
            inbox.last_seq = *seq;
            match event {
                DeviceEvent::Invitation { text, .. } => inbox.texts.extend(text.clone()),
                DeviceEvent::Message { text, .. } => inbox.texts.push(text.clone()),
                _ => {}
            }
        }
        if done(&m, inbox) {
            return m;
        }
    }
}

#[test]
fn a_device_whose_link_drops_resumes_on_the_instance_holding_its_session() {
    // Beta has far more room, so every fresh login prefers it: only the
    // session registry can send Alice back to alpha.
    let mut c = Cluster::new(&["alice", "bob"], 5, 50);
    c.wait_live(ALPHA);
    let alice_dev = c.device("alice").clone();
    let password = Secret::new(alice_dev.user.password.clone());
    let mut alice = c.library_client("alice");
    let accepted = alice
        .login(&alice_dev.user.login, &password, None)
        .expect("login");
    let session_id = accepted.session_id.expect("session id");
    assert_eq!(
        session_instance(&c.stack.db_url, alice_dev.pin).as_deref(),
        Some(ALPHA)
    );

    c.start_beta();
    c.wait_live(&format!("{ALPHA}, {BETA}"));
    let (mut bob, holder) = c.sign_in("bob");
    assert_eq!(holder, BETA, "a fresh login goes to the roomier instance");

    let m0 = c.text("m0 under the old oak");
    let conv = start_conversation(&mut bob, &sip("alice"), &m0);
    let mut inbox = Inbox::default();
    poll_until(&mut alice, &mut inbox, |m, _| {
        matches!(m, ServiceMessage::Event { event: DeviceEvent::Invitation { conversation, .. }, .. }
            if *conversation == conv)
    });
    // Sends fail until she has joined: wait for her accept's result.
    let accept = alice
        .send_command(DeviceCommand::Accept {
            conversation: conv.clone(),
        })
        .unwrap();
    let result = poll_until(
        &mut alice,
        &mut inbox,
        |m, _| matches!(m, ServiceMessage::CommandResult { id, .. } if *id == accept),
    );
    assert!(result.is_ok(), "{result:?}");
    let m1 = c.text("m1 under the old oak");
    bob.send(&format!("send conv={conv} text={m1}"));
    let r = bob.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    poll_until(&mut alice, &mut inbox, |_, inbox| inbox.texts.len() == 2);
    alice.ack(inbox.last_seq).unwrap();

    // Alice's link drops (no logout); Bob goes on talking meanwhile.
    drop(alice);
    wait_until("alice's session to be out of coverage", || {
        c.stack.session_coverage(alice_dev.pin).as_deref() == Some("out")
    });
    for i in 2..6 {
        let m = c.text(&format!("m{i} under the old oak"));
        bob.send(&format!("send conv={conv} text={m}"));
        let r = bob.expect("result ");
        assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    }

    // She reconnects through the dispatcher, which sends her to alpha, and
    // resumes after the last event she acknowledged.
    let mut alice = c.library_client("alice");
    let resumed = alice
        .login(
            &alice_dev.user.login,
            &password,
            Some(Resume {
                session_id: session_id.clone(),
                last_acked_seq: inbox.last_seq,
            }),
        )
        .expect("resume");
    assert_eq!(resumed.session_id.as_deref(), Some(session_id.as_str()));
    poll_until(&mut alice, &mut inbox, |_, inbox| inbox.texts.len() == 6);
    let want: Vec<String> = (0..6).map(|i| format!("m{i} under the old oak")).collect();
    assert_eq!(inbox.texts, want);
    alice.ack(inbox.last_seq).unwrap();
    assert_eq!(
        session_instance(&c.stack.db_url, alice_dev.pin).as_deref(),
        Some(ALPHA)
    );
    wait_until("alice to be in coverage again", || {
        c.stack.session_coverage(alice_dev.pin).as_deref() == Some("in")
    });
    assert!(c.stack.audited("login_resumed", alice_dev.pin, &session_id));
    // Both of Alice's connections went to alpha.
    let alice_routes = c
        .dispatcher
        .log()
        .lines()
        .filter(|l| l.contains(&format!("PIN {:08x} from", alice_dev.pin)))
        .map(|l| l.rsplit(" -> instance ").next().unwrap_or("").to_string())
        .collect::<Vec<_>>();
    assert_eq!(alice_routes.len(), 2, "{alice_routes:?}");
    assert!(
        alice_routes.iter().all(|r| r.starts_with(ALPHA)),
        "{alice_routes:?}"
    );

    // Her link drops once more, and this time she signs in afresh (no
    // resume, as collab-device does): the dispatcher still sends her to
    // alpha, where the new login replaces the old session, so she never
    // holds two.
    drop(alice);
    let (alice, holder) = c.sign_in("alice");
    assert_eq!(holder, ALPHA);
    let pin = alice_dev.pin;
    let mut alice_rows = || -> Vec<String> {
        let all = c.stack.db.list_sessions(None).unwrap();
        all.into_iter()
            .filter(|r| r.pin == pin)
            .map(|r| r.instance)
            .collect()
    };
    wait_until("the replaced session's row to end", || {
        alice_rows().len() == 1
    });
    assert_eq!(alice_rows(), [ALPHA]);
    // The finisher ends the row, then audits: wait for the audit too.
    wait_until("the replacement's audit", || {
        c.stack.audited("replaced", pin, "replaced by a new login")
    });
    for d in [alice, bob] {
        let (code, lines) = finish(d);
        assert_eq!(code, 0, "{lines:?}");
    }
    c.assert_no_plaintext();
}

/// Through the dispatcher, collabd's refusal of an oversized frame reaches
/// the device every time, although collabd closes with the rest of the
/// frame unread (a reset) while the device is still sending.
#[test]
fn every_refusal_of_an_oversized_frame_reaches_the_device() {
    const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];
    const TRIES: usize = 20;
    let c = Cluster::new(&NAMES, 10, 10);
    c.wait_live(ALPHA);
    let addr = c.dispatcher.addr;
    let outcomes: Vec<Vec<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = NAMES
            .iter()
            .map(|name| {
                let dev = c.device(name).clone();
                scope.spawn(move || {
                    (0..TRIES)
                        .map(|_| oversized_frame_outcome(addr, dev.pin, &dev.key))
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: Vec<String> = outcomes.into_iter().flatten().collect();
    let delivered = all.iter().filter(|o| o.as_str() == "refused 308").count();
    println!("refusals delivered: {delivered} of {}", all.len());
    assert_eq!(delivered, NAMES.len() * TRIES, "{all:?}");
    let log = c.dispatcher.log();
    assert!(log.contains("): refused with 308 ProtocolError"), "{log}");
}

/// Handshakes, then sends a frame whose length field is over the limit,
/// followed by far more bytes than collabd reads; returns what came back.
fn oversized_frame_outcome(addr: SocketAddr, pin: u32, key: &[u8; 32]) -> String {
    use std::io::Write;
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut channel = wire::connect(stream, pin, key).expect("handshake");
    let header = wire::Header::new(FrameType::Data, pin, 1);
    let mut bytes = ((wire::MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&header.to_bytes());
    bytes.resize(256 * 1024, 0x42);
    // The write fails once the link is closed; the refusal was sent before.
    let _ = channel.get_mut().write_all(&bytes);
    match wire::read_frame(channel.get_mut(), wire::MAX_FRAME_LEN) {
        Ok(frame) => match frame.refusal() {
            Ok((status, _)) => format!("refused {}", status.code()),
            Err(_) => format!("{:?} frame", frame.header.frame_type),
        },
        Err(e) => format!("no refusal: {e}"),
    }
}

/// 1,000 connections from 16 addresses hold a Hello for a provisioned PIN
/// or trickle one byte every 2 s; an honest device from another address
/// signs in meanwhile, and every attack connection is closed or refused.
#[test]
fn held_and_trickled_handshakes_from_16_addresses_lock_nobody_out() {
    use std::io::{Read, Write};
    const ADDRESSES: u8 = 16;
    const CONNECTIONS: usize = 1000;
    let c = Cluster::new(&["alice", "mallory"], 10, 10);
    c.wait_live(ALPHA);
    let addr = c.dispatcher.addr;
    let target = c.device("mallory").pin;
    // The PIN travels in clear; the key is what an attacker lacks.
    let hello = wire::Frame::new(
        wire::Header::new(FrameType::Hello, target, 0),
        vec![7; wire::frame::RANDOM_LEN],
    )
    .to_bytes();
    let mut held = Vec::new();
    let mut trickling = Vec::new();
    for i in 0..CONNECTIONS {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % ADDRESSES as usize) as u8);
        // Each address both holds and trickles.
        let mut s = support::dispatch::connect_from(source, addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nonblocking(false).unwrap();
        if (i / ADDRESSES as usize) % 2 == 0 {
            let _ = s.write_all(&hello);
            held.push(s);
        } else {
            let _ = s.write_all(&hello[..1]);
            trickling.push((s, 1usize));
        }
    }
    // One byte every 2 s on each trickling connection, while the honest
    // device signs in.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (stop, hello) = (&stop, &hello);
    let (trickled, elapsed) = std::thread::scope(|scope| {
        let trickler = scope.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(2));
                for (s, sent) in trickling.iter_mut() {
                    if *sent < hello.len() && s.write_all(&hello[*sent..*sent + 1]).is_ok() {
                        *sent += 1;
                    }
                }
            }
            trickling
        });
        let start = std::time::Instant::now();
        let (alice, holder) = c.sign_in("alice");
        let elapsed = start.elapsed();
        assert_eq!(holder, ALPHA);
        let (code, lines) = finish(alice);
        assert_eq!(code, 0, "{lines:?}");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (trickler.join().unwrap(), elapsed)
    });
    println!(
        "honest sign-in with {CONNECTIONS} attack connections from {ADDRESSES} addresses: {:.2} s",
        elapsed.as_secs_f64()
    );
    // Every attack connection ends: refused (301), or closed, after at
    // most a Challenge.
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for mut s in held.into_iter().chain(trickled.into_iter().map(|(s, _)| s)) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("an attack connection was neither closed nor refused: {e}"),
            }
        }
        let mut rest = &got[..];
        let mut kinds = Vec::new();
        while let Ok(frame) = wire::read_frame(&mut rest, wire::MAX_FRAME_LEN) {
            kinds.push(match frame.refusal() {
                Ok((status, _)) => format!("refused {}", status.code()),
                Err(_) => format!("{:?}", frame.header.frame_type),
            });
        }
        assert!(rest.is_empty(), "partial frame: {got:?}");
        assert!(
            kinds.is_empty() || kinds == ["Challenge"] || kinds == ["refused 301"],
            "{kinds:?}"
        );
        let key = if kinds.is_empty() {
            "closed".to_string()
        } else {
            kinds.join(", ")
        };
        *outcomes.entry(key).or_default() += 1;
    }
    println!("attack connections: {outcomes:?}");
    assert_eq!(outcomes.values().sum::<usize>(), CONNECTIONS);
    let log = c.dispatcher.log();
    assert!(log.contains("still in their handshake"), "{log}");
    assert!(log.contains("handshake failed: no Confirm"), "{log}");
}

/// Failed handshakes through the dispatcher are logged at info with the
/// peer's address and what happened, not as a normal close: a device with
/// the wrong key (it rejects collabd's confirmation and closes), and a
/// forged Confirm (collabd refuses it with 308).
#[test]
fn failed_handshakes_are_logged_with_peer_and_status() {
    use std::io::Write;
    let c = Cluster::new(&["alice"], 10, 10);
    c.wait_live(ALPHA);
    let pin = c.device("alice").pin;
    let pin_text = format!("{pin:08x}");

    let stream = std::net::TcpStream::connect(c.dispatcher.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    match wire::connect(stream, pin, &[0x11; 32]) {
        Err(wire::WireError::Auth) => {}
        Err(e) => panic!("a wrong key must fail the service's confirmation, not {e}"),
        Ok(_) => panic!("a wrong key completed the handshake"),
    }
    wait_until("the wrong-key line", || {
        c.dispatcher.log().lines().any(|l| {
            l.contains(" INFO ")
                && l.contains(&format!("PIN {pin_text} from 127.0.0.1:"))
                && l.contains("handshake failed: the device closed after the Challenge")
        })
    });

    let mut stream = std::net::TcpStream::connect(c.dispatcher.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let hello = wire::Frame::new(
        wire::Header::new(FrameType::Hello, pin, 0),
        vec![3; wire::frame::RANDOM_LEN],
    );
    stream.write_all(&hello.to_bytes()).unwrap();
    let challenge = wire::read_frame(&mut stream, wire::MAX_FRAME_LEN).unwrap();
    assert_eq!(challenge.header.frame_type, FrameType::Challenge);
    let forged = wire::Frame::new(
        wire::Header::new(FrameType::Confirm, pin, 0),
        vec![0; wire::frame::CONFIRM_LEN],
    );
    stream.write_all(&forged.to_bytes()).unwrap();
    let answer = wire::read_frame(&mut stream, wire::MAX_FRAME_LEN).unwrap();
    assert_eq!(answer.refusal().unwrap().0.code(), 308);
    wait_until("the forged-Confirm line", || {
        c.dispatcher.log().lines().any(|l| {
            l.contains(" INFO ")
                && l.contains(&format!("PIN {pin_text} ended (peer 127.0.0.1:"))
                && l.contains("refused with 308 ProtocolError")
        })
    });
}

/// The `event message` texts (escaped) in `lines`, in order.
fn message_texts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("event message "))
        .filter_map(|l| field(l, "text"))
        .collect()
}

/// Reads `d`'s lines until its `event message` texts number `n`; returns
/// them.
fn messages_until(d: &mut DeviceProcess, n: usize) -> Vec<String> {
    while message_texts(&d.transcript).len() < n {
        d.expect("event message ");
    }
    message_texts(&d.transcript)
}

#[test]
fn collab_device_resumes_by_itself_after_a_cut_link_with_nothing_lost_or_repeated() {
    let mut c = Cluster::new(&["alice", "bob"], 5, 5);
    c.wait_live(ALPHA);
    // Alice reaches the dispatcher through a link the test can cut.
    let cutter = support::cutting_proxy::LinkCutter::start(c.dispatcher.addr);
    let alice_dev = c.device("alice").clone();
    let mut alice = c.stack.device_at(
        cutter.addr,
        &alice_dev,
        &alice_dev.user,
        &alice_dev.user.password,
        &["--reconnect", "5"],
    );
    let login = alice.expect("login ");
    assert!(login.starts_with("login ok"), "{login}");
    let session = field(&login, "session").expect("session id");
    let (mut bob, _) = c.sign_in("bob");

    let m0 = c.text("m0 before the cut");
    let conv = start_conversation(&mut bob, &sip("alice"), &m0);
    let inv = alice.expect("event invitation ");
    assert_eq!(field(&inv, "conv").as_deref(), Some(conv.as_str()));
    alice.send(&format!("accept conv={conv}"));
    let r = alice.expect("result ");
    assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
    let m1 = c.text("m1 before the cut");
    bob.send(&format!("send conv={conv} text={m1}"));
    bob.expect("result ");
    let a0 = c.text("a0 before the cut");
    alice.send(&format!("send conv={conv} text={a0}"));
    alice.expect("result ");
    messages_until(&mut alice, 1);
    messages_until(&mut bob, 1);

    // The link drops mid-conversation. Alice has just typed a1 (it goes
    // into the dead link or waits for the new one); Bob goes on talking.
    cutter.cut();
    let a1 = c.text("a1 as the link dropped");
    alice.send(&format!("send conv={conv} text={a1}"));
    let mut sent_in_gap = Vec::new();
    for i in 2..4 {
        let m = c.text(&format!("m{i} while alice was away"));
        bob.send(&format!("send conv={conv} text={m}"));
        let r = bob.expect("result ");
        assert_eq!(field(&r, "status").as_deref(), Some("ok"), "{r}");
        sent_in_gap.push(m);
    }
    let reconnecting = alice.expect("reconnecting ");
    assert!(field(&reconnecting, "wait-ms").is_some(), "{reconnecting}");
    let resumed = alice.expect("resumed ");
    assert_eq!(
        field(&resumed, "session").as_deref(),
        Some(session.as_str()),
        "{resumed}"
    );

    // After the resume both ways go on; a whitespace-only text arrives as
    // sent.
    let m4 = c.text("m4 after the resume");
    bob.send(&format!("send conv={conv} text={m4}"));
    bob.expect("result ");
    bob.send(&format!("send conv={conv} text=\\s\\s"));
    bob.expect("result ");
    let a2 = c.text("a2 after the resume");
    alice.send(&format!("send conv={conv} text={a2}"));

    let want_alice = vec![
        m1.clone(),
        sent_in_gap[0].clone(),
        sent_in_gap[1].clone(),
        m4.clone(),
        "\\s\\s".to_string(),
    ];
    assert_eq!(messages_until(&mut alice, want_alice.len()), want_alice);
    assert_eq!(messages_until(&mut bob, 3), vec![a0, a1, a2]);
    // Her commands were accept (1) and three sends (2 to 4): wait for the
    // last result before signing out.
    while !alice
        .transcript
        .iter()
        .any(|l| l.starts_with("result id=4 "))
    {
        alice.expect("result ");
    }

    // Nothing more comes: no late duplicate of anything.
    alice.send("logout");
    bob.send("logout");
    let (code, alice_lines) = finish(alice);
    assert_eq!(code, 0, "{alice_lines:?}");
    assert_eq!(message_texts(&alice_lines), want_alice, "{alice_lines:?}");
    let (code, bob_lines) = finish(bob);
    assert_eq!(code, 0, "{bob_lines:?}");
    assert_eq!(message_texts(&bob_lines).len(), 3, "{bob_lines:?}");
    let results: Vec<String> = alice_lines
        .iter()
        .filter(|l| l.starts_with("result "))
        .filter_map(|l| field(l, "id"))
        .collect();
    let mut unique = results.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        results.len(),
        "one result per id: {alice_lines:?}"
    );
    // A command whose write failed with the link is not said `sent`; the
    // `resumed` record lists it as resent.
    let mut sent_ids: Vec<String> = alice_lines
        .iter()
        .filter(|l| l.starts_with("sent id="))
        .filter_map(|l| field(l, "id"))
        .chain(
            resumed
                .split(' ')
                .filter_map(|f| f.strip_prefix("resent="))
                .map(str::to_string),
        )
        .collect();
    sent_ids.sort();
    sent_ids.dedup();
    assert_eq!(unique, sent_ids, "{alice_lines:?}");
    // Event sequence numbers are shown once each, in order.
    let seqs: Vec<u64> = alice_lines
        .iter()
        .filter(|l| l.starts_with("event ") && !l.starts_with("event contact-list-"))
        .filter(|l| !l.starts_with("event search-entry"))
        // The lines that follow an access-levels or watchers event carry
        // its seq.
        .filter(|l| !l.starts_with("event access ") && !l.starts_with("event watcher "))
        .filter_map(|l| field(l, "seq")?.parse().ok())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(c.stack.audited("login_resumed", alice_dev.pin, &session));
    assert!(cutter.cuts.load(std::sync::atomic::Ordering::SeqCst) == 1);
    c.assert_no_plaintext();
}

/// Alice with 2,000 contacts, every one a user of the directory with a
/// name, behind a dispatcher: her device, stack, dispatcher and contacts.
fn alice_with_two_thousand_contacts() -> (TestUser, TestDevice, Stack, Dispatcher, Vec<String>) {
    let alice = user("alice");
    // Users of the directory, with names: the list is well over one
    // message's bound, and each contact's presence follows it.
    let contacts: Vec<String> = (0..2000)
        .map(|i| format!("sip:contact{i:04}@contoso.com"))
        .collect();
    let mut sim_users = sim_line(&alice, &format!("contacts={}", contacts.join(",")));
    for i in 0..2000 {
        sim_users.push_str(&format!(
            "CONTOSO\\c{i:04} pw-c{i:04} sip:contact{i:04}@contoso.com name=Contact_number_{i}\n"
        ));
    }
    let mut stack = Stack::new(
        &sim_users,
        InstanceSettings {
            max_sessions: Some(5),
            ..InstanceSettings::default()
        },
    );
    stack.add_user(&alice, true);
    let dev = stack.add_device(&alice);
    stack.start_collabd(&[]);
    let dispatcher = Dispatcher::start(
        &stack.db_url,
        &["--refresh-ms", "100", "--stale-after-ms", STALE_AFTER_MS],
    );
    wait_until("the dispatcher to route to alpha", || {
        dispatcher
            .log()
            .contains(&format!("live instances: {ALPHA}\n"))
    });
    (alice, dev, stack, dispatcher, contacts)
}

#[test]
fn a_two_thousand_contact_list_arrives_whole_in_parts() {
    let (alice, dev, stack, dispatcher, contacts) = alice_with_two_thousand_contacts();
    let mut d = stack.device_at(dispatcher.addr, &dev, &alice, &alice.password, &[]);
    let login = d.expect("login ");
    assert!(login.starts_with("login ok"), "{login}");
    let whole = d.expect("contact-list whole ");
    assert_eq!(
        field(&whole, "contacts").as_deref(),
        Some("2000"),
        "{whole}"
    );
    let parts: u64 = field(&whole, "parts").unwrap().parse().unwrap();
    assert!(parts >= 2, "{whole}");

    // Parts 1..=n, consecutive events; the first replaces the list.
    let heads: Vec<&String> = d
        .transcript
        .iter()
        .filter(|l| l.starts_with("event contact-list "))
        .collect();
    assert_eq!(heads.len() as u64, parts, "{heads:?}");
    let first_seq: u64 = field(heads[0], "seq").unwrap().parse().unwrap();
    for (i, h) in heads.iter().enumerate() {
        assert_eq!(field(h, "part"), Some((i + 1).to_string()), "{h}");
        assert_eq!(field(h, "parts"), Some(parts.to_string()), "{h}");
        assert_eq!(
            field(h, "complete").as_deref(),
            Some(if i == 0 { "true" } else { "false" })
        );
        assert_eq!(
            field(h, "seq"),
            Some((first_seq + i as u64).to_string()),
            "{h}"
        );
    }
    // Every contact exactly once, in the order CWA gave them.
    let got: Vec<String> = d
        .transcript
        .iter()
        .filter(|l| l.starts_with("event contact-list-contact "))
        .filter_map(|l| field(l, "uri"))
        .collect();
    assert_eq!(got, contacts);
    // Then her own presence and every contact's, each once.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < contacts.len() {
        let p = d.expect("event presence ");
        assert!(seen.insert(field(&p, "uri").unwrap()), "twice: {p}");
    }
    assert!(d
        .transcript
        .iter()
        .any(|l| l.starts_with("event self-presence ")));
    d.send("logout");
    let (code, lines) = finish(d);
    assert_eq!(code, 0, "{:?}", &lines[lines.len().saturating_sub(5)..]);
}

/// The same list's presence to a device that never acknowledges: the
/// replay buffer fills, the service waits for acknowledgements that do
/// not come, and the session ends with 310 rather than dropping events.
#[test]
fn a_device_that_never_acknowledges_overflows_the_event_buffer_with_310() {
    let (alice, dev, stack, dispatcher, _) = alice_with_two_thousand_contacts();
    let mut d = stack.device_at(
        dispatcher.addr,
        &dev,
        &alice,
        &alice.password,
        &["--manual-ack"],
    );
    let login = d.expect("login ");
    assert!(login.starts_with("login ok"), "{login}");
    let ended = d.expect("ended ");
    assert!(
        ended.starts_with("ended code=310 name=SessionEnded reason=event\\sbuffer\\soverflow"),
        "{ended}"
    );
    let (code, lines) = finish(d);
    assert_eq!(code, 5);
    // Nothing before the end was skipped: events 1, 2, 3, ... without gaps.
    let mut seqs: Vec<u64> = lines
        .iter()
        .filter(|l| l.starts_with("event "))
        .filter_map(|l| field(l, "seq")?.parse().ok())
        .collect();
    seqs.dedup();
    assert!(seqs.len() >= 1000, "{} events", seqs.len());
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
        "gaps in {seqs:?}"
    );
}

/// A device that comes back after its session ended (here an
/// administrator ended it while the device was out of coverage) is told
/// the resume was refused and goes on in a new session, whose events start
/// at 1 with the contact list.
#[test]
fn collab_device_whose_session_ended_while_away_signs_in_afresh() {
    let mut c = Cluster::new(&["alice", "bob"], 5, 5);
    c.wait_live(ALPHA);
    let cutter = support::cutting_proxy::LinkCutter::start(c.dispatcher.addr);
    let alice_dev = c.device("alice").clone();
    let mut alice = c.stack.device_at(
        cutter.addr,
        &alice_dev,
        &alice_dev.user,
        &alice_dev.user.password,
        &["--reconnect", "10"],
    );
    let login = alice.expect("login ");
    let old = field(&login, "session").expect("session id");
    alice.expect("event contact-list ");

    cutter.set_out_of_coverage(true);
    cutter.cut();
    alice.expect("reconnecting ");
    c.stack
        .db
        .request_session_end(
            collabd::configdb::SessionTarget::Pin(alice_dev.pin),
            "lost phone",
            "test",
        )
        .expect("request the end");
    wait_until("alice's session to end", || {
        c.stack.session_coverage(alice_dev.pin).is_none()
    });
    cutter.set_out_of_coverage(false);

    let refused = alice.expect("resume refused ");
    assert_eq!(field(&refused, "old"), Some(old.clone()), "{refused}");
    let new = field(&refused, "session").expect("new session id");
    assert_ne!(new, old);
    let first = alice.expect("event ");
    assert!(
        first.starts_with("event contact-list seq=1 complete=true"),
        "{first}"
    );
    // The new session works both ways.
    let (mut bob, _) = c.sign_in("bob");
    let hello = c.text("hello again");
    let conv = start_conversation(&mut bob, &sip("alice"), &hello);
    let inv = alice.expect("event invitation ");
    assert_eq!(field(&inv, "conv").as_deref(), Some(conv.as_str()));
    alice.send("logout");
    let (code, lines) = finish(alice);
    assert_eq!(code, 0, "{lines:?}");
    bob.send("logout");
    assert_eq!(finish(bob).0, 0);
}

/// Reconnecting is bounded: with no coverage at all, collab-device gives up
/// after its attempts, says `lost`, and exits with 3.
#[test]
fn collab_device_gives_up_after_its_reconnect_attempts() {
    let c = Cluster::new(&["alice"], 5, 5);
    c.wait_live(ALPHA);
    let cutter = support::cutting_proxy::LinkCutter::start(c.dispatcher.addr);
    let alice_dev = c.device("alice").clone();
    let mut alice = c.stack.device_at(
        cutter.addr,
        &alice_dev,
        &alice_dev.user,
        &alice_dev.user.password,
        &["--reconnect", "2"],
    );
    alice.expect("login ok ");
    cutter.set_out_of_coverage(true);
    cutter.cut();
    let first = alice.expect("reconnecting ");
    assert_eq!(field(&first, "attempt").as_deref(), Some("1"), "{first}");
    let second = alice.expect("reconnecting ");
    assert_eq!(field(&second, "attempt").as_deref(), Some("2"), "{second}");
    let lost = alice.expect("lost ");
    assert!(lost.starts_with("lost kind=connection"), "{lost}");
    assert!(lost.contains("gave\\sup\\safter\\s2"), "{lost}");
    let (code, lines) = finish(alice);
    assert_eq!(code, 3, "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("resumed ")),
        "{lines:?}"
    );
}
