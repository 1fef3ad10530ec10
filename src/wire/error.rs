//! The one error type of the device protocol: every way a frame, a
//! handshake or a message can fail, with a `Display` that says precisely
//! what was wrong and never includes key material or message contents.

use std::fmt;
use std::io;

use super::status::Status;

/// Why a device-protocol operation failed.
///
/// Every variant except [`WireError::Timeout`] leaves the connection unusable:
/// the reader or writer that returned it refuses further work, and the caller
/// closes the stream.
#[derive(Debug)]
pub enum WireError {
    /// The underlying stream failed (not a timeout, not a clean close).
    Io(io::Error),
    /// A read timed out. At a frame boundary, or inside a frame read through
    /// a [`FrameReader`](super::frame::FrameReader), which keeps the partial
    /// bytes, the read can simply be retried.
    Timeout,
    /// The peer closed the stream cleanly between two frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated,
    /// A frame's length field (or a message) is above the hard limit.
    TooLarge {
        /// The length that was announced or produced.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// A frame that is not well formed: bad version, type, flags, length,
    /// body size or sequence field for its type, or the wrong PIN.
    BadFrame(String),
    /// Key confirmation failed during the handshake: the peer does not hold
    /// the device's transport key.
    Auth,
    /// An encrypted frame failed authentication (tampered, truncated body,
    /// or not made with this connection's key).
    Decrypt,
    /// An encrypted frame carried the wrong sequence number (replayed,
    /// reordered or dropped frames).
    Replay {
        /// The sequence number the receiver required.
        expected: u64,
        /// The sequence number the frame carried.
        got: u64,
    },
    /// The decrypted payload is not a valid raw deflate stream, has trailing
    /// bytes, or inflates past the message limit.
    Decompress(String),
    /// The payload is not a valid message (malformed XML, unknown element,
    /// missing or bad attribute) or arrived when it was not expected.
    Protocol(String),
    /// The connection was refused with a status: by the peer (a clear
    /// `Refused` frame was received) or, on the service side, by us (the
    /// `Refused` frame has been sent).
    Refused(Status, String),
    /// The cryptographic library failed (random source, cipher setup).
    Crypto(String),
}

impl WireError {
    /// The status to report to a device for this failure.
    pub fn status(&self) -> Status {
        match self {
            WireError::Refused(status, _) => *status,
            WireError::Io(_) | WireError::Timeout | WireError::Closed => Status::SessionEnded,
            WireError::Crypto(_) => Status::Failed,
            _ => Status::ProtocolError,
        }
    }

    /// True when the peer broke the protocol (as opposed to the network
    /// failing, a timeout, a clean close or a refusal).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            WireError::Truncated
                | WireError::TooLarge { .. }
                | WireError::BadFrame(_)
                | WireError::Auth
                | WireError::Decrypt
                | WireError::Replay { .. }
                | WireError::Decompress(_)
                | WireError::Protocol(_)
        )
    }

    /// Maps an I/O error from a read, turning the platform's timeout kinds
    /// into [`WireError::Timeout`].
    pub(crate) fn from_read(e: io::Error) -> WireError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
            io::ErrorKind::UnexpectedEof => WireError::Truncated,
            _ => WireError::Io(e),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "device link I/O error: {e}"),
            WireError::Timeout => write!(f, "device link read timed out"),
            WireError::Closed => write!(f, "device link closed by the peer"),
            WireError::Truncated => write!(f, "device link ended inside a frame"),
            WireError::TooLarge { len, limit } => {
                write!(f, "frame or message of {len} bytes exceeds the limit of {limit}")
            }
            WireError::BadFrame(why) => write!(f, "bad frame: {why}"),
            WireError::Auth => write!(
                f,
                "handshake key confirmation failed (the peer does not hold this device's transport key)"
            ),
            WireError::Decrypt => write!(f, "encrypted frame failed authentication"),
            WireError::Replay { expected, got } => write!(
                f,
                "frame out of sequence (expected {expected}, got {got}): replayed, reordered or dropped"
            ),
            WireError::Decompress(why) => write!(f, "bad compressed payload: {why}"),
            WireError::Protocol(why) => write!(f, "protocol error: {why}"),
            WireError::Refused(status, text) => {
                write!(f, "refused with {} {}", status.code(), status.name())?;
                if !text.is_empty() {
                    write!(f, ": {text}")?;
                }
                Ok(())
            }
            WireError::Crypto(why) => write!(f, "cryptographic library failure: {why}"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<openssl::error::ErrorStack> for WireError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        WireError::Crypto(e.to_string())
    }
}
