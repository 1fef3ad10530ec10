//! The README's demo, run as a new user would: `collabctl demo` (the built
//! binary, with the other programs next to it), then two of the
//! `collab-device` commands it prints, run as printed plus `--script`:
//! both sign in through the dispatcher, alice and bob exchange messages,
//! and Ctrl-C (SIGINT) tells the device still signed in that the service
//! is stopping, stops everything and leaves nothing behind. Also:
//! every `collabctl demo` command line in the README is one the demo
//! accepts, so the two cannot drift apart.

use crate::support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use collabd::admin::demo::{DemoOptions, READY_LINE, STOPPED_LINE};
use support::collabd::field;
use support::device_peer::DeviceProcess;

/// Generous bound on the demo's start and stop (a debug build on a shared,
/// busy machine; waiting only, never a timing assertion).
const DEMO_WAIT: Duration = Duration::from_secs(300);

/// The README's one quick-start command.
const QUICK_START: &str = "cargo build --release && ./target/release/collabctl demo";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of the fenced code blocks in the README's "Quick start"
/// section, block by block.
fn quick_start_blocks(readme: &str) -> Vec<Vec<String>> {
    let section: Vec<&str> = readme
        .lines()
        .skip_while(|l| l.trim() != "## Quick start")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    assert!(
        !section.is_empty(),
        "README has no '## Quick start' section"
    );
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push(line.to_string());
        }
    }
    blocks
}

/// Splits a command line the way a POSIX shell would for the quoting the
/// demo uses (single quotes, backslash outside quotes).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn shell_words_undo_the_demos_quoting() {
    assert_eq!(
        shell_words("/x/collab-device --user 'CONTOSO\\alice'  --pin 2100000a"),
        [
            "/x/collab-device",
            "--user",
            "CONTOSO\\alice",
            "--pin",
            "2100000a"
        ]
    );
    assert_eq!(shell_words("'it'\\''s' ''"), ["it's", ""]);
    for word in ["CONTOSO\\bob", "it's", "/tmp/a b", "plain"] {
        assert_eq!(
            shell_words(&collabd::admin::demo::shell_quote(word)),
            [word]
        );
    }
}

#[test]
fn every_demo_command_in_the_readme_is_one_the_demo_accepts() {
    let readme = readme();
    let blocks = quick_start_blocks(&readme);
    let first = blocks.first().expect("a code block in Quick start");
    assert_eq!(
        first
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>(),
        [QUICK_START],
        "the first Quick start block is the one demo command"
    );
    // Every invocation anywhere in the README, e.g. the port flags.
    let mut checked = 0;
    for line in readme.lines() {
        let Some(at) = line.find("collabctl demo") else {
            continue;
        };
        let rest = &line[at + "collabctl demo".len()..];
        // Up to the end of the command: a closing backtick, a shell
        // operator or a comment.
        let end = rest.find(['`', '&', '|', ';', '#']).unwrap_or(rest.len());
        let words = shell_words(&rest[..end]);
        if let Err(e) = DemoOptions::parse(&words) {
            panic!("README line {line:?}: the demo refuses {words:?}: {e}");
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "the README shows the demo command and its flags"
    );
    // The binary it names is the one the end-to-end test below runs.
    assert!(env!("CARGO_BIN_EXE_collabctl").ends_with("/collabctl"));
}

/// The running demo; on drop (a failing test) it gets SIGINT, then SIGKILL.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    transcript: Vec<String>,
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_collabctl"))
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run collabctl demo");
        let lines = pipe_lines(child.stdout.take().unwrap());
        let stderr = pipe_lines(child.stderr.take().unwrap());
        Demo {
            child,
            lines,
            stderr,
            transcript: Vec::new(),
        }
    }

    /// Reads lines until `line`; panics (with everything seen) if the demo
    /// ends or stays silent first.
    fn read_until(&mut self, line: &str) {
        let deadline = Instant::now() + DEMO_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let done = l == line;
                    self.transcript.push(l);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "collabctl demo never printed {line:?}; stdout:\n{}\nstderr:\n{}",
                    self.transcript.join("\n"),
                    self.stderr.try_iter().collect::<Vec<_>>().join("\n")
                ),
            }
        }
    }

    /// The value after `label` on the banner line that starts with it
    /// (labels are padded to a column: at least two spaces follow).
    fn banner_value(&self, label: &str) -> String {
        self.transcript
            .iter()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(label)
                    .filter(|rest| rest.starts_with("  "))
            })
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{}", self.transcript.join("\n")))
    }

    /// The pid on the banner line of `program` (`pid N, ...`).
    fn pid(&self, program: &str) -> i32 {
        let value = self.banner_value(program);
        value
            .strip_prefix("pid ")
            .and_then(|v| v.split(',').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {program} line {value:?}"))
    }

    /// The printed collab-device command for `login`, as words.
    fn device_command(&self, login: &str) -> Vec<String> {
        self.transcript
            .iter()
            .map(|l| shell_words(l))
            .find(|words| {
                words.first().is_some_and(|w| w.ends_with("/collab-device"))
                    && words
                        .windows(2)
                        .any(|pair| pair[0] == "--user" && pair[1] == login)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no collab-device command for {login} in:\n{}",
                    self.transcript.join("\n")
                )
            })
    }

    /// Waits for the demo to exit; returns its exit code.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + DEMO_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "collabctl demo did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id() as i32, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pipe_lines(reader: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn signal(pid: i32, signo: i32) {
    // SAFETY: kill(2) with a plain pid and signal number.
    unsafe { libc::kill(pid, signo) };
}

/// Whether `pid` is a running process (a zombie waiting for a parent that
/// never reaps it counts as gone).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the ")" that closes the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[test]
fn the_readme_demo_signs_two_devices_in_through_the_dispatcher_and_they_chat() {
    // The README's command, with free ports instead of 3101/3200 so that
    // it cannot collide with anything else on the machine.
    let mut demo = Demo::start(&[
        "--listen-dispatcher",
        "127.0.0.1:0",
        "--listen-collabd",
        "127.0.0.1:0",
    ]);
    demo.read_until(READY_LINE);

    // What the README says the demo prints is what it prints (the lines of
    // its sample that hold no pid, port or random path).
    let readme = readme();
    let blocks = quick_start_blocks(&readme);
    let sample = blocks
        .iter()
        .find(|b| b.iter().any(|l| l.trim() == READY_LINE))
        .expect("the README's Quick start shows what the demo prints");
    for line in sample {
        let line = line.trim();
        if line.is_empty() || line.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        assert!(
            demo.transcript.iter().any(|l| l.trim() == line),
            "README sample line {line:?} is not in the demo's output:\n{}",
            demo.transcript.join("\n")
        );
    }

    let state_dir = PathBuf::from(demo.banner_value("state dir"));
    assert!(state_dir.is_dir(), "{}", state_dir.display());
    let pids: Vec<(&str, i32)> = ["postgresql", "cwa-sim", "collabd", "collab-dispatcher"]
        .into_iter()
        .map(|p| (p, demo.pid(p)))
        .collect();
    for (program, pid) in &pids {
        assert!(running(*pid), "{program} (pid {pid}) is not running");
    }

    // The printed commands, run as printed, in scripted mode.
    let run = |login: &str| {
        let mut words = demo.device_command(login);
        let connect = words
            .windows(2)
            .find(|p| p[0] == "--connect")
            .map(|p| p[1].clone())
            .expect("--connect in the printed command");
        let dispatcher = demo.banner_value("collab-dispatcher");
        assert!(
            dispatcher.contains(&format!(", {connect},")),
            "devices connect to the dispatcher ({dispatcher}), not {connect}"
        );
        words.push("--script".into());
        DeviceProcess::spawn(&words[0], &words[1..])
    };
    let mut alice = run("CONTOSO\\alice");
    let mut bob = run("CONTOSO\\bob");
    let ok = alice.expect("login ");
    assert!(
        ok.starts_with("login ok ") && ok.contains("sip=sip:alice@contoso.com"),
        "{ok}"
    );
    let ok = bob.expect("login ");
    assert!(
        ok.starts_with("login ok ") && ok.contains("sip=sip:bob@contoso.com"),
        "{ok}"
    );

    // Alice writes to Bob: the invitation carries her first message.
    alice.send("start to=sip:bob@contoso.com text=hello\\sbob");
    let result = alice.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    let conv = field(&result, "conv").unwrap_or_else(|| panic!("no conv in {result}"));
    let invitation = bob.expect("event invitation ");
    assert_eq!(field(&invitation, "conv").as_deref(), Some(conv.as_str()));
    assert_eq!(
        field(&invitation, "from").as_deref(),
        Some("sip:alice@contoso.com")
    );
    assert_eq!(
        field(&invitation, "text").as_deref(),
        Some("hello\\sbob"),
        "{invitation}"
    );
    bob.send(&format!("accept conv={conv}"));
    let result = bob.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");

    // Bob answers; Alice sees it. Then one more from Alice to Bob.
    bob.send(&format!("send conv={conv} text=hi\\salice"));
    let result = bob.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    let message = alice.expect("event message ");
    assert_eq!(field(&message, "text").as_deref(), Some("hi\\salice"));
    assert_eq!(
        field(&message, "from").as_deref(),
        Some("sip:bob@contoso.com")
    );
    alice.send(&format!("send conv={conv} text=how\\sare\\syou"));
    alice.expect("result ");
    let message = bob.expect("event message ");
    assert_eq!(field(&message, "text").as_deref(), Some("how\\sare\\syou"));
    assert_eq!(
        field(&message, "from").as_deref(),
        Some("sip:alice@contoso.com")
    );

    // Alice signs out; Bob stays for the Ctrl-C.
    alice.send("logout");
    let (code, lines, stderr) = alice.finish();
    assert_eq!(code, 0, "{lines:?} {stderr}");
    assert!(lines.iter().any(|l| l == "closed"), "{lines:?}");

    // Ctrl-C: Bob is told the service is stopping, everything stops and
    // the state goes away.
    signal(demo.child.id() as i32, libc::SIGINT);
    bob.expect("stopping");
    let (code, lines, stderr) = bob.finish();
    assert_eq!(
        code, 5,
        "collab-device exits 5 when the service stops: {lines:?} {stderr}"
    );
    demo.read_until(STOPPED_LINE);
    assert_eq!(demo.wait(), Some(0), "{}", demo.transcript.join("\n"));
    assert!(
        !state_dir.exists(),
        "{} is still there after the demo stopped",
        state_dir.display()
    );
    for (program, pid) in &pids {
        let deadline = Instant::now() + DEMO_WAIT;
        while running(*pid) {
            assert!(
                Instant::now() < deadline,
                "{program} (pid {pid}) still runs after the demo stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let stderr: Vec<String> = demo.stderr.try_iter().collect();
    assert!(stderr.is_empty(), "the demo complained: {stderr:?}");
}

#[test]
fn a_taken_port_is_refused_with_a_hint_and_leaves_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let tmp = support::tmp::TempDir::new("demo-port");
    let output = Command::new(env!("CARGO_BIN_EXE_collabctl"))
        .args(["demo", "--listen-collabd", "127.0.0.1:0"])
        .args(["--listen-dispatcher", &addr])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains("--listen-dispatcher"), "{stderr}");
    // Refused before anything was created.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
