//! A byte-forwarding TCP proxy for the CWA client's tests that can swallow
//! one response and cut its connection: a GET dropped for real, after the
//! server answered it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

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

/// A TCP proxy in front of `target` whose [`cut`](Self::cut) drops every
/// connection open through it at that moment, on both sides, as a lost
/// radio link would; later connections go through as before.
pub struct LinkCutter {
    pub addr: SocketAddr,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
    pub cuts: Arc<AtomicUsize>,
    /// While set, new connections are closed at once (no coverage).
    out_of_coverage: Arc<AtomicBool>,
}

impl LinkCutter {
    pub fn start(target: SocketAddr) -> LinkCutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let out_of_coverage: Arc<AtomicBool> = Arc::default();
        {
            let open = open.clone();
            let out_of_coverage = out_of_coverage.clone();
            thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    if out_of_coverage.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    {
                        let mut o = open.lock().unwrap();
                        o.push(client.try_clone().unwrap());
                        o.push(server.try_clone().unwrap());
                    }
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    thread::spawn(move || pump(c2, s2, None));
                    thread::spawn(move || pump(server, client, None));
                }
            });
        }
        LinkCutter {
            addr,
            open,
            cuts: Arc::default(),
            out_of_coverage,
        }
    }

    /// While `out` is true, every new connection is closed at once.
    pub fn set_out_of_coverage(&self, out: bool) {
        self.out_of_coverage.store(out, Ordering::SeqCst);
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections made through the proxy so far that are still listed
    /// (cut ones are not).
    pub fn open_connections(&self) -> usize {
        self.open.lock().unwrap().len() / 2
    }
}
