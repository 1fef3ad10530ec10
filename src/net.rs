//! A TCP connection, plain or TLS over TCP, as collabd's device listener
//! and cwa-sim accept it and as the dispatcher opens it to collabd: one enum
//! with `Read` and `Write`, so the code that reads requests or frames is
//! written once for both transports. What each program needs beyond that
//! (timeouts, halves for two threads, half-close) lives with that program.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// A connection: plain TCP, or TLS over TCP (boxed: a TLS stream is large
/// and most connections in tests and on internal networks are plain).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<native_tls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (for timeouts, addresses and shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
