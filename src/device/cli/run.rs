//! One run of collab-device: connect and sign in, then read the service
//! and standard input in turns until logout or the end of input,
//! reconnecting and resuming the session after a lost link.

use std::io::{self, BufRead};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::Duration;

use super::super::lineformat::Line;
use super::super::reconnect::{self, Backoff, Reattached};
use super::super::{DeviceClient, DeviceConfig, DeviceError, TlsConfig};
use super::error::CliError;
use super::interactive::Interactive;
use super::options::{parse_args, read_key_file, read_password_file, Options};
use super::output::{status_record, Output};
use super::script::script_line;
use crate::wire::{self, Secret, ServiceMessage, Status, WireError};

/// How often the front ends look at standard input between reads.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Bound on queued, not yet handled input lines.
const INPUT_QUEUE: usize = 256;

/// Runs `collab-device` with `args` (without the program name).
pub fn run(args: &[String]) -> Result<(), CliError> {
    let o = parse_args(args)?;
    let key = read_key_file(&o.key_file)?;
    let password = read_password_file(&o.password_file)?;
    let cfg = DeviceConfig {
        addr: o.connect.clone(),
        pin: o.pin,
        transport_key: key,
        tls: o.tls.then(|| TlsConfig {
            ca_file: o.ca.clone(),
            domain: o.tls_name.clone(),
        }),
        timeout: o.timeout,
        status_interval: o.status_interval,
    };
    let mut out = Output::new(o.script);
    out.resumes = o.reconnect_attempts > 0;
    let mut client = match DeviceClient::connect(&cfg) {
        Ok(c) => c,
        Err(e) => {
            if let DeviceError::Wire(WireError::Refused(s, t)) = &e {
                out.record(status_record("refused", *s, t));
            }
            return Err(CliError::from_device(e, false));
        }
    };
    out.record(
        Line::new("connected")
            .kv("pin", &wire::format_pin(o.pin))
            .done(),
    );
    out.human(&format!(
        "connected to {} as device {}",
        o.connect,
        wire::format_pin(o.pin)
    ));
    let accepted = match client.login(&o.user, &password, None) {
        Ok(a) => a,
        Err(e) => {
            match &e {
                DeviceError::LoginRefused(s, t) => {
                    out.record(status_record("login refused", *s, t));
                    out.human(&format!("login refused: {} ({t})", s.text()));
                }
                DeviceError::Wire(WireError::Refused(s, t)) => {
                    out.record(status_record("refused", *s, t))
                }
                _ => {}
            }
            return Err(CliError::from_device(e, false));
        }
    };
    out.record(
        Line::new("login ok")
            .opt("session", accepted.session_id.as_deref())
            .opt("sip", accepted.sip_uri.as_deref())
            .kv("text", &accepted.text)
            .done(),
    );
    out.human(&format!(
        "signed in as {} ({}); /help lists commands",
        o.user,
        accepted.sip_uri.as_deref().unwrap_or("no SIP URI")
    ));
    let input = spawn_stdin_reader();
    let mut ui = Interactive::default();
    loop {
        match session_loop(&mut client, &input, &mut out, &mut ui, o.manual_ack) {
            Ok(()) => break,
            Err(e) => match e.connection_reason().filter(|_| out.resumes) {
                Some(why) => keep_session(&mut client, &cfg, &o, &password, &mut out, why)?,
                None => return Err(e),
            },
        }
    }
    drop(password);
    // Logout requested or input ended.
    let seen = client
        .logout()
        .map_err(|e| CliError::from_device(e, true))?;
    for m in &seen {
        show(&mut out, m, &mut ui);
    }
    out.record(Line::new("closed").done());
    Ok(())
}

/// Reads standard input on its own thread into a bounded queue; the queue
/// closes at end of input.
fn spawn_stdin_reader() -> Receiver<String> {
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE);
    thread::Builder::new()
        .name("stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let stdin = io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        })
        .expect("spawning the stdin thread");
    rx
}

/// Runs until the user signs out or input ends (`Ok`), or the session
/// fails.
fn session_loop(
    client: &mut DeviceClient,
    input: &Receiver<String>,
    out: &mut Output,
    ui: &mut Interactive,
    manual_ack: bool,
) -> Result<(), CliError> {
    let mut line_no = 0u64;
    loop {
        loop {
            match client.poll(Duration::ZERO) {
                Ok(Some(m)) => handle_message(client, m, out, ui, manual_ack)?,
                Ok(None) => break,
                Err(e) => return Err(lost(e, out)),
            }
        }
        loop {
            match input.try_recv() {
                Ok(line) => {
                    line_no += 1;
                    let done = if out.script {
                        script_line(client, &line, line_no, out)
                    } else {
                        ui.line(client, &line, out)
                    };
                    match done {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(e) => return Err(write_failed(client, e, out, ui)),
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        match client.poll(POLL_SLICE) {
            Ok(Some(m)) => handle_message(client, m, out, ui, manual_ack)?,
            Ok(None) => {}
            Err(e) => return Err(lost(e, out)),
        }
    }
}

fn lost(e: DeviceError, out: &mut Output) -> CliError {
    let e = match e {
        DeviceError::Wire(w) if out.resumes && reconnect::is_lost_link(&w) => {
            // Not yet the end: [`keep_session`] reconnects, and says
            // `lost` only if it gives up.
            return CliError::connection_lost(w);
        }
        other => other,
    };
    give_up(out, CliError::from_device(e, true))
}

/// The end of a link for good: the `lost` record (collab-device(1)), the
/// human line, and the error to exit with.
fn give_up(out: &mut Output, err: CliError) -> CliError {
    let kind = match &err {
        CliError::Protocol { .. } => "protocol",
        CliError::Refused(..) | CliError::Ended(..) => "refused",
        _ => "connection",
    };
    out.record(
        Line::new("lost")
            .kv("kind", kind)
            .kv("text", &err.to_string())
            .done(),
    );
    out.human(&format!("*** {err}"));
    err
}

/// The link was lost (`why`): reconnect with [`Backoff`] and resume the
/// session, saying so in `reconnecting`, `resumed` or `resume refused`
/// records (collab-device(1)). Gives up, with `lost`, when the bounds are
/// reached or a failure is final.
fn keep_session(
    client: &mut DeviceClient,
    cfg: &DeviceConfig,
    o: &Options,
    password: &Secret,
    out: &mut Output,
    why: String,
) -> Result<(), CliError> {
    let mut backoff = Backoff::new(o.reconnect_attempts);
    let mut last = why;
    loop {
        let Some(wait) = backoff.next_wait() else {
            return Err(give_up(
                out,
                CliError::connection(format!(
                    "{last}; gave up after {} reconnect attempts",
                    backoff.tried()
                )),
            ));
        };
        out.record(
            Line::new("reconnecting")
                .kv("attempt", &backoff.tried().to_string())
                .kv("wait-ms", &wait.as_millis().to_string())
                .kv("text", &last)
                .done(),
        );
        out.human(&format!(
            "*** link lost ({last}); reconnecting in {} ms (attempt {})",
            wait.as_millis(),
            backoff.tried()
        ));
        thread::sleep(wait);
        match client.reconnect(cfg, &o.user, password) {
            Ok(Reattached::Resumed {
                session,
                acked,
                resent,
            }) => {
                let mut rec = Line::new("resumed")
                    .kv("session", &session)
                    .kv("acked", &acked.to_string());
                for id in &resent {
                    rec = rec.kv("resent", &id.to_string());
                }
                out.record(rec.done());
                out.human(&format!("*** back in session {session}"));
                return Ok(());
            }
            Ok(Reattached::NewSession {
                old,
                session,
                sip_uri,
                text,
                dropped,
            }) => {
                let mut rec = Line::new("resume refused")
                    .opt("old", old.as_deref())
                    .opt("session", session.as_deref())
                    .opt("sip", sip_uri.as_deref())
                    .kv("text", &text);
                for id in &dropped {
                    rec = rec.kv("dropped", &id.to_string());
                }
                out.record(rec.done());
                out.human(&format!(
                    "*** the session was gone; signed in afresh ({}); commands without a result: {}",
                    session.as_deref().unwrap_or("no session id"),
                    dropped.len()
                ));
                return Ok(());
            }
            Err(e) if reconnect::worth_retrying(&e) => last = e.to_string(),
            Err(e) => {
                if let DeviceError::LoginRefused(s, t) = &e {
                    out.record(status_record("login refused", *s, t));
                }
                return Err(give_up(out, CliError::from_device(e, false)));
            }
        }
    }
}

/// A write to the service failed. The service may have said its last word
/// (session ended, service stopping) and closed the link just before, so
/// read what is still queued: the user learns why the session ended rather
/// than only that the connection was lost.
fn write_failed(
    client: &mut DeviceClient,
    e: DeviceError,
    out: &mut Output,
    ui: &mut Interactive,
) -> CliError {
    // Bounded: a few queued messages, each within half a second.
    for _ in 0..16 {
        let m = match client.poll(Duration::from_millis(500)) {
            Ok(Some(m)) => m,
            _ => break,
        };
        show(out, &m, ui);
        match m {
            ServiceMessage::SessionEnded { status, reason } => {
                return CliError::Ended(status, reason)
            }
            ServiceMessage::ServiceStopping => {
                return CliError::Ended(
                    Status::ServiceStopping,
                    Status::ServiceStopping.text().into(),
                )
            }
            _ => {}
        }
    }
    lost(e, out)
}

fn handle_message(
    client: &mut DeviceClient,
    m: ServiceMessage,
    out: &mut Output,
    ui: &mut Interactive,
    manual_ack: bool,
) -> Result<(), CliError> {
    show(out, &m, ui);
    match m {
        ServiceMessage::Event { seq, .. } if !manual_ack => {
            if let Err(e) = client.ack(seq) {
                return Err(write_failed(client, e, out, ui));
            }
            out.record(Line::new("acked").kv("seq", &seq.to_string()).done());
            Ok(())
        }
        ServiceMessage::SessionEnded { status, reason } => Err(CliError::Ended(status, reason)),
        ServiceMessage::ServiceStopping => Err(CliError::Ended(
            Status::ServiceStopping,
            Status::ServiceStopping.text().into(),
        )),
        _ => Ok(()),
    }
}

/// Shows a message: its records in script mode, its lines in the
/// interactive UI otherwise.
fn show(out: &mut Output, m: &ServiceMessage, ui: &mut Interactive) {
    if out.script {
        out.script_message(m);
    } else {
        for l in ui.show(m) {
            out.put(&l);
        }
    }
}
