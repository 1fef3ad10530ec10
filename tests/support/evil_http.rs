//! "Evil" HTTP servers for the CWA client's tests: a raw `TcpStream` peer
//! on 127.0.0.1 port 0, one thread per connection, that parses requests
//! just enough (request line, headers, `Content-Length` body) and lets the
//! test decide what bytes go back: a well-formed answer, garbage, a
//! response that stalls half-way, or a dropped connection. A real socket
//! peer, not a mock of the client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection (0, 1, ...) carried it.
    pub connection: usize,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the server does with a request.
pub enum Reply {
    /// Write these bytes and keep the connection for the next request.
    Send(Vec<u8>),
    /// Write these bytes, then wait this long before closing (a response
    /// that stalls half-way when the bytes are incomplete).
    SendThenStall(Vec<u8>, Duration),
    /// Close the connection without answering.
    Close,
}

/// A running evil server. It stops accepting when dropped.
pub struct EvilServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Every request seen, in arrival order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl EvilServer {
    /// Starts a server answering every request with `handler`.
    pub fn start<F>(handler: F) -> EvilServer
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        {
            let stop = stop.clone();
            let requests = requests.clone();
            let connections = connections.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = connections.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let requests = requests.clone();
                    thread::spawn(move || serve(stream, id, &*handler, &requests));
                }
            });
        }
        EvilServer {
            addr,
            stop,
            requests,
            connections,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A copy of the requests seen so far.
    pub fn seen(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for EvilServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept().
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    mut stream: TcpStream,
    id: usize,
    handler: &(dyn Fn(&Request) -> Reply + Send + Sync),
    requests: &Mutex<Vec<Request>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buffered: Vec<u8> = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffered, id) else {
            return;
        };
        requests.lock().unwrap().push(request.clone());
        match handler(&request) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendThenStall(bytes, stall) => {
                let _ = stream.write_all(&bytes);
                let _ = stream.flush();
                thread::sleep(stall);
                return;
            }
            Reply::Close => return,
        }
    }
}

fn read_request(stream: &mut TcpStream, buffered: &mut Vec<u8>, id: usize) -> Option<Request> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buffered.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    buffered.drain(..head_end + 4);
    while buffered.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buffered.drain(..length).collect();
    Some(Request {
        method,
        target,
        headers,
        body,
        connection: id,
    })
}

/// A complete HTTP/1.1 response with `Content-Length`.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `Reply::Send(response(...))`.
pub fn send(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    Reply::Send(response(status, headers, body.as_bytes()))
}
