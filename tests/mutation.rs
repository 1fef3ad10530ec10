//! A deterministic mutation run over every decoder of untrusted input:
//! frames, both sides of the handshake and the encrypted channel, device
//! XML messages, inflated payloads, CWA responses and events, and NTLM
//! messages and headers.
//!
//! Each decoder starts from valid inputs made by the real encoders and
//! gets mutated copies (bit flips, byte edits, inserts, deletes,
//! truncation, length-field edits, splices with another seed, repeated
//! chunks, inserted dictionary tokens) from a seeded PRNG, so every run
//! sees the same inputs and a failure names the input that caused it.
//! Every input runs under `catch_unwind` (a panic is counted and reported
//! with the seed and index that reproduce it), under a watchdog that ends
//! the run when one input takes too long (a hang), and under a counting
//! allocator that checks the decoder's peak allocation stays within a
//! fixed bound of the input's size.
//!
//! `cargo test --release --test mutation` runs 20,000 inputs per decoder
//! (2,000 in a debug build; a quarter of that for the two handshake
//! decoders). The long mode sets the inputs per decoder:
//! `FUZZ_INPUTS=2000000 cargo test --release --test mutation` runs 11
//! million (README.md, Tests, has the command and its figures).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use collabd::wire::channel::{accept_with_random, connect_with_random};
use collabd::wire::{
    crypto, read_frame, DeviceMessage, FrameReader, ServiceMessage, Status, MAX_FRAME_LEN,
    MAX_MESSAGE_LEN,
};
use collabd::{cwa, ntlm, service::translate};
use support::wire_peer::{sample_device_messages, sample_service_messages, Duplex};

// ---------------------------------------------------------------------------
// Allocation accounting, per thread (tests run in parallel threads).

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc(size: usize) {
    // `try_with`: allocations during thread teardown have no counters.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(size);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now)
            }
        });
    });
}

fn note_free(size: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(size)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting only
// touches thread-locals that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: our caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc(layout.size());
        // SAFETY: our caller's contract is System's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: our caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        note_free(layout.size());
        // SAFETY: our caller's contract is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated on this thread at the peak while `f` ran, above what was
/// live when it started.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get).saturating_sub(base)
}

/// The most a decoder may allocate for one input: a fixed allowance (the
/// 1 MiB message cap, inflated and parsed) plus 1 KiB per input byte. An
/// allocation driven by a length field (up to 4 GiB) breaks it.
fn alloc_bound(input_len: usize) -> usize {
    32 * 1024 * 1024 + 1024 * input_len
}

// ---------------------------------------------------------------------------
// The PRNG and the mutator.

/// splitmix64: seeds, and every random choice of the mutator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that break length and count fields.
const INTERESTING: [u32; 12] = [
    0,
    1,
    2,
    15,
    16,
    17,
    0x7f,
    0xff,
    0xffff,
    65_536,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One mutation of `data` (in place). `seeds` are for splicing, `dict` are
/// tokens worth inserting for this decoder.
fn mutate_once(rng: &mut SplitMix, data: &mut Vec<u8>, seeds: &[Vec<u8>], dict: &[&[u8]]) {
    let len = data.len();
    match rng.below(11) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        // Set a byte to a random or boundary value.
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => 0x80,
                _ => rng.next() as u8,
            };
        }
        // Insert random bytes.
        2 => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        // Delete a range.
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        // Truncate.
        4 if len > 0 => data.truncate(rng.below(len)),
        // Write a boundary value into a 2- or 4-byte field, either byte
        // order, or nudge an existing 4-byte big-endian length by a little.
        5 if len >= 4 => {
            let at = rng.below(len - 3);
            let v = INTERESTING[rng.below(INTERESTING.len())];
            match rng.below(5) {
                0 => data[at..at + 4].copy_from_slice(&v.to_be_bytes()),
                1 => data[at..at + 4].copy_from_slice(&v.to_le_bytes()),
                2 => data[at..at + 2].copy_from_slice(&(v as u16).to_be_bytes()),
                3 => data[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes()),
                _ => {
                    let old =
                        u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                    let delta = rng.below(33) as i64 - 16;
                    let new = (old as i64 + delta).clamp(0, u32::MAX as i64) as u32;
                    data[at..at + 4].copy_from_slice(&new.to_be_bytes());
                }
            }
        }
        // The frame length prefix specifically (offset 0 of a stream).
        6 if len >= 4 => {
            let v = INTERESTING[rng.below(INTERESTING.len())];
            data[..4].copy_from_slice(&v.to_be_bytes());
        }
        // Splice: our head, another seed's tail.
        7 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        // Repeat a chunk several times.
        8 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(32));
            let chunk = data[at..at + n].to_vec();
            let times = 1 + rng.below(64);
            let mut rep = Vec::with_capacity(n * times);
            for _ in 0..times {
                rep.extend_from_slice(&chunk);
            }
            data.splice(at..at, rep);
        }
        // Insert a dictionary token.
        9 | 10 if !dict.is_empty() => {
            let token = dict[rng.below(dict.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, token.iter().copied());
        }
        _ => {
            if len > 0 {
                let i = rng.below(len);
                data[i] = data[i].wrapping_add(1);
            }
        }
    }
}

/// Input number `index` of a decoder's run: a seed with 1 to 4 mutations
/// (one input in 64 is a seed unchanged, so valid inputs keep being run).
fn input(run_seed: u64, index: u64, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut rng = SplitMix(run_seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut data = seeds[rng.below(seeds.len())].clone();
    if index % 64 == 0 {
        return data;
    }
    for _ in 0..1 + rng.below(4) {
        mutate_once(&mut rng, &mut data, seeds, dict);
    }
    // Bounded so that repeats of repeats stay small.
    data.truncate(256 * 1024);
    data
}

// ---------------------------------------------------------------------------
// The run.

/// What one decoder's run found.
struct Report {
    name: &'static str,
    inputs: u64,
    panics: u64,
    over_alloc: u64,
    /// Inputs the decoder accepted (the unchanged seeds at least).
    accepted: u64,
    /// Unchanged seeds the decoder did not accept (a broken harness).
    seeds_refused: u64,
    slowest: Duration,
    most_alloc: usize,
    elapsed: Duration,
}

/// Inputs per decoder: `FUZZ_INPUTS`, or 20,000 in an optimised build and
/// 2,000 in a debug build (where the XML parser is ten times slower), a
/// few seconds either way.
fn inputs_per_decoder() -> u64 {
    let default = if cfg!(debug_assertions) {
        2_000
    } else {
        20_000
    };
    std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The handshake decoders derive keys and open AES-GCM frames for every
/// input, about ten times the cost of the others: they get a quarter of
/// the inputs.
const HANDSHAKE_SHARE: u64 = 4;

/// One input taking longer than this is a hang: the watchdog prints what
/// reproduces it and aborts the test binary.
const HANG_LIMIT: Duration = Duration::from_secs(20);

fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

fn run(
    name: &'static str,
    share: u64,
    seeds: Vec<Vec<u8>>,
    dict: &[&[u8]],
    decode: impl Fn(&[u8]) -> bool,
) -> Report {
    quiet_panics();
    let inputs = inputs_per_decoder() / share;
    // The run's seed: from the decoder's name, so runs differ per decoder
    // and never between runs.
    let run_seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let current = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let watchdog = {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                let since = epoch.elapsed().as_millis() as u64 - started.load(Ordering::SeqCst);
                if since > HANG_LIMIT.as_millis() as u64 && !done.load(Ordering::SeqCst) {
                    eprintln!(
                        "HANG: {name} input {} (run seed {run_seed:#x}) ran over {} s",
                        current.load(Ordering::SeqCst),
                        HANG_LIMIT.as_secs()
                    );
                    std::process::abort();
                }
            }
        })
    };
    let t0 = Instant::now();
    let mut report = Report {
        name,
        inputs,
        panics: 0,
        over_alloc: 0,
        accepted: 0,
        seeds_refused: 0,
        slowest: Duration::ZERO,
        most_alloc: 0,
        elapsed: Duration::ZERO,
    };
    for index in 0..inputs {
        let data = input(run_seed, index, &seeds, dict);
        current.store(index, Ordering::SeqCst);
        started.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        let t = Instant::now();
        let mut outcome = Ok(false);
        let peak = peak_during(|| outcome = catch_unwind(AssertUnwindSafe(|| decode(&data))));
        report.slowest = report.slowest.max(t.elapsed());
        report.most_alloc = report.most_alloc.max(peak);
        if index % 64 == 0 && !matches!(outcome, Ok(true)) {
            report.seeds_refused += 1;
            if report.seeds_refused <= 3 {
                eprintln!("SEED REFUSED: {name} input {index}: {}", hex(&data));
            }
        }
        if let Ok(true) = outcome {
            report.accepted += 1;
        }
        if let Err(payload) = outcome {
            report.panics += 1;
            if report.panics <= 3 {
                let message = collabd::ops::panics::message(payload.as_ref());
                eprintln!(
                    "PANIC: {name} input {index} (run seed {run_seed:#x}): {message}\n  input: {}",
                    hex(&data)
                );
            }
        }
        if peak > alloc_bound(data.len()) {
            report.over_alloc += 1;
            if report.over_alloc <= 3 {
                eprintln!(
                    "ALLOC: {name} input {index} allocated {peak} bytes for {} input bytes",
                    data.len()
                );
            }
        }
    }
    report.elapsed = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    println!(
        "FIGURE mutation {}: {} inputs ({} accepted) in {:.1} s, {} panics, {} over the allocation bound, slowest input {} ms, most allocated {} KiB",
        report.name,
        report.inputs,
        report.accepted,
        report.elapsed.as_secs_f64(),
        report.panics,
        report.over_alloc,
        report.slowest.as_millis(),
        report.most_alloc / 1024
    );
    report
}

fn check(report: Report) {
    assert_eq!(
        report.seeds_refused, 0,
        "{}: valid seeds refused",
        report.name
    );
    assert_eq!(report.panics, 0, "{}: decoders panicked", report.name);
    assert_eq!(
        report.over_alloc, 0,
        "{}: allocation over the bound",
        report.name
    );
}

fn hex(data: &[u8]) -> String {
    let shown = &data[..data.len().min(4096)];
    collabd::hex::encode(shown)
}

// ---------------------------------------------------------------------------
// Seeds from the real encoders.

const PIN: u32 = 0x2a00_b1c3;
const KEY: [u8; 32] = [0x42; 32];
const DEVICE_RANDOM: [u8; 32] = [0x40; 32];
const SERVICE_RANDOM: [u8; 32] = [0x80; 32];

fn lookup(pin: u32) -> Result<[u8; 32], Status> {
    if pin == PIN {
        Ok(KEY)
    } else {
        Err(Status::UnknownDevice)
    }
}

/// What the device sends (Hello, Confirm, Data frames of `messages`) and
/// what the service answers (Challenge, Data frames of `replies`), with
/// the fixed randoms, so the service side can replay the device's stream.
fn conversation(messages: &[DeviceMessage], replies: &[ServiceMessage]) -> (Vec<u8>, Vec<u8>) {
    // The service's Challenge for our Hello: run the service on the Hello
    // alone (it then fails to read the Confirm, which is fine here).
    let hello = {
        let mut d = Duplex::new(Vec::new());
        let _ = connect_with_random(&mut d, PIN, &KEY, DEVICE_RANDOM);
        d.output
    };
    let challenge = {
        let mut s = Duplex::new(hello.clone());
        let _ = accept_with_random(&mut s, lookup, SERVICE_RANDOM);
        s.output
    };
    let mut device = connect_with_random(Duplex::new(challenge), PIN, &KEY, DEVICE_RANDOM)
        .expect("device handshake");
    for m in messages {
        device.send_device(m).expect("device send");
    }
    let from_device = std::mem::take(&mut device.get_mut().output);
    let mut service = accept_with_random(Duplex::new(from_device.clone()), lookup, SERVICE_RANDOM)
        .expect("service handshake");
    for m in messages {
        assert_eq!(&service.recv_device().expect("service receives"), m);
    }
    for r in replies {
        service.send_service(r).expect("service send");
    }
    let from_service = std::mem::take(&mut service.get_mut().output);
    (from_device, from_service)
}

fn device_streams() -> Vec<Vec<u8>> {
    let messages = sample_device_messages("t<&>\"é");
    let mut seeds = Vec::new();
    for chunk in messages.chunks(3) {
        seeds.push(conversation(chunk, &[]).0);
    }
    seeds
}

fn service_streams() -> Vec<Vec<u8>> {
    let replies = sample_service_messages("t<&>\"é");
    let mut seeds = Vec::new();
    for chunk in replies.chunks(3) {
        seeds.push(conversation(&[], chunk).1);
    }
    seeds
}

const MESSAGE_TOKENS: [&[u8]; 16] = [
    b"<",
    b">",
    b"/>",
    b"</",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"<![CDATA[",
    b"]]>",
    b"<!DOCTYPE a [<!ENTITY e \"x\">]>",
    b"<?xml version=\"1.0\"?>",
    b"<a><a><a><a><a><a><a><a>",
    b"<ack seq=\"1\"/>",
    b" seq=\"18446744073709551616\"",
    b"\xff\xfe",
    b"xmlns=\"urn:x\"",
];

// ---------------------------------------------------------------------------
// The decoders.

#[test]
fn frames() {
    let mut seeds = device_streams();
    seeds.extend(service_streams());
    seeds.push(collabd::wire::Frame::refused(PIN, Status::ProtocolError, "bad").to_bytes());
    check(run("frames", 1, seeds, &[], |data| {
        let mut src = data;
        let mut reader = FrameReader::new(MAX_FRAME_LEN);
        let mut frames = 0;
        for _ in 0..64 {
            match reader.read(&mut src) {
                Ok(frame) => {
                    let _ = frame.refusal();
                    assert!(frame.body.len() + 16 <= MAX_FRAME_LEN);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        let _ = read_frame(&mut &data[..], 64);
        frames > 0 && src.is_empty()
    }));
}

#[test]
fn handshake_and_channel_service_side() {
    check(run(
        "service handshake and channel",
        HANDSHAKE_SHARE,
        device_streams(),
        &[],
        |data| {
            let stream = Duplex::new(data.to_vec());
            let Ok(mut channel) = accept_with_random(stream, lookup, SERVICE_RANDOM) else {
                return false;
            };
            for _ in 0..64 {
                match channel.recv_device() {
                    Ok(_) => {}
                    Err(e) => return matches!(e, collabd::wire::WireError::Closed),
                }
            }
            true
        },
    ));
}

#[test]
fn handshake_and_channel_device_side() {
    check(run(
        "device handshake and channel",
        HANDSHAKE_SHARE,
        service_streams(),
        &[],
        |data| {
            let stream = Duplex::new(data.to_vec());
            let Ok(mut channel) = connect_with_random(stream, PIN, &KEY, DEVICE_RANDOM) else {
                return false;
            };
            for _ in 0..64 {
                match channel.recv_service() {
                    Ok(_) => {}
                    Err(e) => return matches!(e, collabd::wire::WireError::Closed),
                }
            }
            true
        },
    ));
}

#[test]
fn device_xml_messages() {
    let mut seeds: Vec<Vec<u8>> = sample_device_messages("t<&>\"é")
        .iter()
        .map(DeviceMessage::encode)
        .collect();
    seeds.extend(
        sample_service_messages("t<&>\"é")
            .iter()
            .map(ServiceMessage::encode),
    );
    check(run(
        "device XML messages",
        1,
        seeds,
        &MESSAGE_TOKENS,
        |data| {
            let device = DeviceMessage::decode(data);
            if let Ok(m) = &device {
                // What decodes re-encodes and decodes to the same message.
                assert_eq!(&DeviceMessage::decode(&m.encode()).unwrap(), m);
            }
            let service = ServiceMessage::decode(data);
            if let Ok(m) = &service {
                assert_eq!(&ServiceMessage::decode(&m.encode()).unwrap(), m);
            }
            device.is_ok() || service.is_ok()
        },
    ));
}

#[test]
fn inflated_payloads() {
    // A device that holds its key (lost, cloned) can send any deflate
    // stream: mutate the compressed bytes, then inflate and decode.
    let mut seeds: Vec<Vec<u8>> = sample_device_messages("t<&>\"é")
        .iter()
        .map(|m| crypto::deflate(&m.encode()))
        .collect();
    seeds.push(crypto::deflate(&vec![b'a'; 200_000]));
    check(run("inflated payloads", 1, seeds, &[], |data| {
        let Ok(plain) = crypto::inflate(data, MAX_MESSAGE_LEN) else {
            return false;
        };
        assert!(plain.len() <= MAX_MESSAGE_LEN);
        let _ = DeviceMessage::decode(&plain);
        true
    }));
}

const CWA_SEEDS: [&str; 10] = [
    r#"<cwaEvents sid="2" pollWaitTime="3000" ackId="11"><userPresence eid="11"><user uri="sip:k@x" sourceNetwork="sameEnterprise"><cwaCategory name="contactCard" instance="0"><contactCard xmlns="http://schemas.microsoft.com/2006/09/sip/contactcard"><identity><name><displayName>K</displayName></name></identity></contactCard></cwaCategory><cwaCategory name="note"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal">out</body></note></cwaCategory><cwaCategory name="state" instance="1"><state xsi:type="aggregateState" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="http://schemas.microsoft.com/2006/09/sip/state"><availability>3500</availability></state></cwaCategory></user></userPresence></cwaEvents>"#,
    r#"<cwaEvents ackId="23" pollWaitTime="1000" sessionTimeout="594"><conference eid="18" confId="4"><imSessionReceived><inviter uri="sip:bob@x" name="Bob"/><subject>s</subject><message><format>text/plain</format><content>hi &amp; bye</content></message></imSessionReceived></conference><conference eid="19" confId="4"><messageReceived sender="sip:bob@x"><message><format>text/plain</format><content>second</content></message></messageReceived></conference><conference eid="20" confId="4"><composingState>composing</composingState></conference><conference eid="21" confId="4"><imSessionState>connected</imSessionState></conference><conference eid="22" confId="4"><participant uri="sip:bob@x" name="Bob" role="attendee"/></conference><conference eid="22" confId="4"><inviteFailed uri="sip:carol@x"/></conference><conference eid="22" confId="4"><participantRemoved>sip:bob@x</participantRemoved></conference><requestFailed eid="23" rid="9"><error code="18201" reason="Operation failed"><sipResponse code="480" reason="Temporarily Unavailable"/></error></requestFailed><holographicCall eid="23"/></cwaEvents>"#,
    r#"<cwaEvents ackId="5"><contactGroup eid="1" fullList="true" deltaNum="1"><group id="~" name="Other Contacts"/><group id="2" name="Team"/><contact uri="sip:bob@x" name="Bob" subscribed="true" tag="false" groups="~ 2"/></contactGroup><configuration eid="2"><imComposingTimers refreshInterval="3" timeout="60"/><userNotice>be nice</userNotice></configuration><subscribers eid="3"><subscriber uri="sip:eve@x" displayName="Eve" acknowledged="false"/></subscribers><searchResult eid="4" rid="6" moreAvailable="false"><user uri="sip:bob@x" displayName="Bob" title="Eng" company="X" emailAlias="bob"/></searchResult><selfPresence eid="5"><cwaCategory name="note"><note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal">lunch</body></note></cwaCategory></selfPresence><requestSucceeded eid="6" rid="7"/></cwaEvents>"#,
    r#"<cwaResponses requestProcessed="1"><initiateSessionAccepted rid="1" sid="42" pollWaitTime="1000"/></cwaResponses>"#,
    r#"<cwaResponses xmlns="http://schemas.microsoft.com/2006/09/rtc/cwa"><requestAccepted rid="1"><sid>7</sid><uri>sip:alice@x</uri><pollWaitTime>3000</pollWaitTime></requestAccepted></cwaResponses>"#,
    r#"<cwaResponses><requestAccepted rid="4"/><initiateImSessionAccepted rid="5" confId="77"/></cwaResponses>"#,
    r#"<cwaResponses><requestInvalid rid="1"><error code="18001"/></requestInvalid><requestFailed rid="1"><error code="18101"/></requestFailed><error code="18100"/></cwaResponses>"#,
    r#"<cwaResponses><initiateImSessionAccepted rid="1" confId="9"/><cwaEvents ackId="3"><conference eid="3" confId="9"><imSessionState>connecting</imSessionState></conference></cwaEvents></cwaResponses>"#,
    r#"<cwaResponses><requestSucceeded rid="1"><uri>sip:alice@x</uri><signInData>PHA+</signInData></requestSucceeded></cwaResponses>"#,
    r#"<cwaEvents ackId="9"><containers eid="7"><container id="100"><member type="federated"/><member type="publicCloud"/></container><container id="200"><member type="sameEnterprise"/></container><container id="32000"><member type="uri" value="sip:eve@x"/><member type="domain" value="x.com"/></container></containers><subscribers eid="8"><subscriber uri="sip:bob@x" displayName="Bob" sourceNetwork="sameEnterprise" acknowledged="true"/></subscribers><requestSucceeded eid="9" rid="4.1"/></cwaEvents>"#,
];

const CWA_TOKENS: [&[u8]; 14] = [
    b"<",
    b"/>",
    b"</",
    b"&lt;",
    b"&#0;",
    b"<![CDATA[x]]>",
    b"<!DOCTYPE a [<!ENTITY e \"xxxxxxxx\">]>",
    b"&e;",
    b" eid=\"18446744073709551616\"",
    b" ackId=\"-1\"",
    b" rid=\"1\"",
    b"<conference eid=\"1\" confId=\"1\">",
    b"<cwaCategory name=\"state\">",
    b"\xc3\x28",
];

#[test]
fn cwa_responses_and_events() {
    let seeds = CWA_SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect();
    check(run(
        "CWA responses and events",
        1,
        seeds,
        &CWA_TOKENS,
        |data| {
            let Ok(events) = cwa::decode_untrusted(data) else {
                return false;
            };
            // And on to the device, as the session would.
            for e in events {
                if let translate::Translated::Events(evs) = translate::event(e) {
                    for (seq, event) in (1..).zip(evs) {
                        let m = ServiceMessage::Event { seq, event };
                        let bytes = m.encode();
                        assert_eq!(ServiceMessage::decode(&bytes).unwrap(), m);
                    }
                }
            }
            true
        },
    ));
}

#[test]
fn ntlm_messages() {
    let info = ntlm::target_info("CONTOSO", "CWA01");
    let challenge = ntlm::challenge_message([7; 8], "CONTOSO", &info);
    let parsed = ntlm::parse_challenge(&challenge).unwrap();
    let authenticate =
        ntlm::authenticate_message(&parsed, "CONTOSO", "alice", "s3cret", "WS", [9; 8], 1).unwrap();
    let negotiate = ntlm::negotiate_message();
    let mut seeds = vec![challenge, authenticate, negotiate];
    for m in seeds.clone() {
        seeds.push(ntlm::header_value(&m).into_bytes());
    }
    check(run(
        "NTLM messages",
        1,
        seeds,
        &[b"NTLM ", b"=", b"NTLMSSP\0"],
        |data| {
            let mut accepted = false;
            if let Ok(ch) = ntlm::parse_challenge(data) {
                let _ = ntlm::authenticate_message(&ch, "D", "u", "p", "w", [1; 8], 0).unwrap();
                accepted = true;
            }
            if let Ok(auth) = ntlm::parse_authenticate(data) {
                let _ = ntlm::verify_ntlmv2(&auth, [7; 8], "s3cret").unwrap();
                accepted = true;
            }
            if data.starts_with(b"NTLMSSP\0") && data.get(8) == Some(&1) {
                // The negotiate message has no parser of its own.
                accepted = true;
            }
            if let Ok(text) = std::str::from_utf8(data) {
                if let Ok(msg) = ntlm::parse_header_value(text) {
                    let _ = ntlm::parse_challenge(&msg);
                    let _ = ntlm::parse_authenticate(&msg);
                    accepted = true;
                }
                let _ = ntlm::base64_decode(text);
            }
            accepted
        },
    ));
}

/// The harness itself: a panic, an allocation over the bound and a refused
/// seed are each counted (so the zeros above mean something).
#[test]
fn the_harness_counts_panics_and_allocations() {
    let seeds = vec![vec![0u8; 8], vec![1u8; 8]];
    let share = (inputs_per_decoder() / 2_000).max(1);
    let report = run("harness self-check", share, seeds, &[], |data| {
        if data.first() == Some(&0) && data.len() == 8 {
            panic!("planted panic");
        }
        if data.first() == Some(&1) && data.len() == 8 {
            let big = vec![1u8; 40 * 1024 * 1024];
            assert_eq!(big.len(), 40 * 1024 * 1024);
        }
        true
    });
    assert!(report.panics > 0, "planted panics not counted");
    assert!(report.over_alloc > 0, "planted allocations not counted");
    assert!(report.seeds_refused > 0, "a panicking seed is not accepted");
}
