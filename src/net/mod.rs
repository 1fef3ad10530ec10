//! A TCP connection, plain or TLS over TCP, as collabd's device listener
//! and cwa-sim accept it and as the dispatcher opens it to collabd: one enum
//! with `Read` and `Write`, so the code that reads requests or frames is
//! written once for both transports. Over a [`SharedSocket`] it also has
//! what collabd's device link needs: timeouts, close, and the split into a
//! reading and a writing half for two threads ([`halves`]).
//!
//! It imports no other module of the crate (std, native-tls and libc only).
//!
//! The socket under a [`Stream`] is a `TcpStream` or a [`SharedSocket`]:
//! one descriptor shared (by reference count) by every handle that needs
//! it (a reading half, a writing half, a shutdown handle), where `try_clone`
//! would spend a descriptor on each.

mod halves;

pub(crate) use halves::poll_fd;
pub use halves::{nothing_to_read, readable_within, ReadHalf, WriteHalf};

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// What a [`Stream`] runs over: a byte stream with a TCP socket beneath.
pub trait TcpSocket: Read + Write {
    /// The TCP socket (for timeouts, addresses and shutdown).
    fn tcp(&self) -> &TcpStream;
}

impl TcpSocket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// One TCP socket shared by several handles without duplicating its
/// descriptor: reads and writes go to the same socket (`&TcpStream` is
/// `Read` and `Write`), and the descriptor is closed when the last handle
/// goes. A handle kept only to call `shutdown(2)` therefore also keeps the
/// descriptor number from being reused under it.
#[derive(Clone, Debug)]
pub struct SharedSocket(Arc<TcpStream>);

impl SharedSocket {
    /// Share `tcp`.
    pub fn new(tcp: TcpStream) -> SharedSocket {
        SharedSocket(Arc::new(tcp))
    }
}

impl From<Arc<TcpStream>> for SharedSocket {
    /// Another handle on a socket already shared through an `Arc` (the CWA
    /// transport's, whose HTTP client keeps a weak one to shut it down).
    fn from(tcp: Arc<TcpStream>) -> SharedSocket {
        SharedSocket(tcp)
    }
}

impl std::ops::Deref for SharedSocket {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl TcpSocket for SharedSocket {
    fn tcp(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for SharedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// A connection: plain TCP, or TLS over TCP (boxed: a TLS stream is large
/// and most connections in tests and on internal networks are plain).
#[derive(Debug)]
pub enum Stream<S = TcpStream> {
    /// Plain TCP.
    Plain(S),
    /// TLS over TCP.
    Tls(Box<native_tls::TlsStream<S>>),
}

impl<S: TcpSocket> Stream<S> {
    /// The TCP socket underneath (for timeouts, addresses and shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s.tcp(),
            Stream::Tls(s) => s.get_ref().tcp(),
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Set the timeout of every read (never `None`: every read is bounded;
    /// zero is refused by the system).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))
    }

    /// Set the timeout of every write.
    pub fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_write_timeout(Some(timeout))
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }
}

impl<S: Read + Write> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl<S: Read + Write> Write for Stream<S> {
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

/// The address to connect to on this machine for a listener bound to
/// `bound`: the same, with loopback for "every address" (`0.0.0.0`, `::`).
pub fn local_connect_addr(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addresses() {
        assert_eq!(
            local_connect_addr("0.0.0.0:3101".parse().unwrap()),
            "127.0.0.1:3101".parse().unwrap()
        );
        assert_eq!(
            local_connect_addr("[::]:3101".parse().unwrap()),
            "[::1]:3101".parse().unwrap()
        );
        assert_eq!(
            local_connect_addr("10.1.2.3:3101".parse().unwrap()),
            "10.1.2.3:3101".parse().unwrap()
        );
    }
}
