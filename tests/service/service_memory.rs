//! A password does not stay in collabd's memory after its sign-in when
//! the instance does not cache passwords: the anonymous mappings of the
//! running `collabd` (heap, thread stacks, arenas; listed in
//! `/proc/PID/maps`) are read through `/proc/PID/mem` and searched for the
//! password, as UTF-8 and as UTF-16LE (the NT hash's input), after forms
//! and NTLM sign-ins, over plain links and over TLS and HTTPS. The same scan
//! with password caching on must find it, which shows the scan sees what
//! it looks for. Reading another process's memory needs ptrace rights
//! over it (collabd is our child; as root that is always so).

use crate::support;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

use collabd::configdb::AuthMode;
use collabd::configdb::InstanceSettings;

use support::collabd::{field, finish, sim_line, Stack, TestUser};
use support::tls::TestCa;

/// Every readable anonymous mapping of `pid`: start, end, description.
fn anonymous_mappings(pid: u32) -> Vec<(u64, u64, String)> {
    let maps = File::open(format!("/proc/{pid}/maps")).expect("maps");
    BufReader::new(maps)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?;
            let path = parts.nth(3).unwrap_or("");
            let anonymous = path.is_empty() || path == "[heap]" || path == "[stack]";
            if !perms.starts_with('r') || !anonymous {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                line.clone(),
            ))
        })
        .collect()
}

/// Where `needle` occurs in the anonymous memory of `pid`.
fn find_in_memory(pid: u32, needle: &[u8]) -> Vec<String> {
    let mut mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut found = Vec::new();
    let mut scanned = 0u64;
    for (start, end, what) in anonymous_mappings(pid) {
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue; // a guard page or a mapping gone meanwhile
        }
        scanned += buf.len() as u64;
        for (i, w) in buf.windows(needle.len()).enumerate() {
            if w == needle {
                found.push(format!("{what} +{i:#x}"));
            }
        }
    }
    assert!(scanned > 0, "nothing of collabd's memory could be read");
    found
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Signs `user` in with the instance's `auth_mode` and `caching` (over
/// TLS to the device and HTTPS to CWA if `tls`), works the session a
/// little, and returns where the password is found in collabd's memory
/// (UTF-8 and UTF-16LE), with the session still live.
fn password_sightings(auth_mode: AuthMode, caching: bool, tls: bool) -> Vec<String> {
    let mut random = [0u8; 12];
    openssl::rand::rand_bytes(&mut random).unwrap();
    let hex = collabd::hex::encode(&random);
    let mut user = TestUser::new("mallory");
    user.password = format!("Pw-{hex}-x");
    let settings = InstanceSettings {
        auth_mode,
        password_caching: caching,
        ..InstanceSettings::default()
    };
    let ca = tls.then(TestCa::new);
    let mut stack = match &ca {
        Some(ca) => Stack::new_tls(&sim_line(&user, ""), settings, ca),
        None => Stack::new(&sim_line(&user, ""), settings),
    };
    stack.add_user(&user, true);
    let device = stack.add_device(&user);
    let mut collabd_flags: Vec<String> = Vec::new();
    let mut device_flags: Vec<String> = Vec::new();
    if let Some(ca) = &ca {
        let ca_path = ca.ca_path.display().to_string();
        collabd_flags.extend([
            "--tls-cert".into(),
            ca.cert_path.display().to_string(),
            "--tls-key".into(),
            ca.key_path.display().to_string(),
            "--cwa-ca-file".into(),
            ca_path.clone(),
        ]);
        device_flags.extend([
            "--tls".into(),
            "--ca".into(),
            ca_path,
            "--tls-name".into(),
            "localhost".into(),
        ]);
    }
    let flags: Vec<&str> = collabd_flags.iter().map(String::as_str).collect();
    stack.start_collabd(&flags);
    let flags: Vec<&str> = device_flags.iter().map(String::as_str).collect();
    let mut d = stack.device_as(&device, &user, &user.password, &flags);
    let line = d.expect("login ");
    assert!(line.starts_with("login ok"), "{line}");
    assert!(field(&line, "session").is_some(), "{line}");
    d.send("presence availability=away");
    let result = d.expect("result ");
    assert_eq!(field(&result, "status").as_deref(), Some("ok"), "{result}");
    let pid = stack.collabd().pid();
    let mut sightings = find_in_memory(pid, user.password.as_bytes());
    sightings.extend(
        find_in_memory(pid, &utf16le(&user.password))
            .into_iter()
            .map(|s| format!("UTF-16: {s}")),
    );
    d.send("logout");
    assert_eq!(finish(d).0, 0);
    sightings
}

#[test]
fn no_password_in_memory_after_a_forms_sign_in_without_caching() {
    let found = password_sightings(AuthMode::Forms, false, false);
    assert!(found.is_empty(), "password found at {found:#?}");
}

#[test]
fn no_password_in_memory_after_an_ntlm_sign_in_without_caching() {
    let found = password_sightings(AuthMode::Iwa, false, false);
    assert!(found.is_empty(), "password found at {found:#?}");
}

#[test]
fn no_password_in_memory_after_a_forms_sign_in_over_tls_and_https() {
    let found = password_sightings(AuthMode::Forms, false, true);
    assert!(found.is_empty(), "password found at {found:#?}");
}

#[test]
fn with_password_caching_the_scan_finds_the_cached_password() {
    let found = password_sightings(AuthMode::Forms, true, false);
    assert!(!found.is_empty(), "the scan must see the cached password");
}
