//! The systemd notification helpers against a real datagram socket, with
//! `$NOTIFY_SOCKET` set for this process. One test in this binary, because
//! the environment is process-global.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use collabd::ops::notify::{notify, spawn_watchdog, NotifyState};
use collabd::ops::signals::Shutdown;

#[test]
fn notify_uses_notify_socket_and_the_watchdog_pings_only_when_healthy() {
    let mut random = [0u8; 8];
    openssl::rand::rand_bytes(&mut random).unwrap();
    let hex = collabd::hex::encode(&random);
    let dir = std::env::temp_dir().join(format!("collabd-notify-{hex}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let server = UnixDatagram::bind(&path).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };

    std::env::remove_var("NOTIFY_SOCKET");
    assert!(!notify(&[NotifyState::Ready]).unwrap(), "no socket: no-op");
    std::env::set_var("NOTIFY_SOCKET", &path);
    assert!(notify(&[NotifyState::Ready]).unwrap());
    assert_eq!(recv(), "READY=1\n");

    // Unhealthy: no ping. Then healthy: pings arrive.
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let shutdown = Shutdown::new();
    let watchdog = spawn_watchdog(Duration::from_millis(20), shutdown.clone(), move || {
        h.load(std::sync::atomic::Ordering::SeqCst)
    })
    .unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(server.recv(&mut buf).is_err(), "no ping while unhealthy");
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(recv(), "WATCHDOG=1\n");
    shutdown.request();
    watchdog.join().unwrap();
    std::env::remove_var("NOTIFY_SOCKET");
    std::fs::remove_dir_all(dir).unwrap();
}
