//! The device protocol spoken between the collaboration client, the
//! dispatcher and collabd, as specified in collab-protocol(7): the frame
//! codec and its clear routing header ([`frame`]), the status codes
//! ([`status`]), the handshake, key schedule and encrypted channel
//! ([`channel`], [`crypto`]), the XML messages ([`message`]) and the
//! access levels and watchers they carry ([`access`]), and how a
//! password is held in memory ([`secret`]).
//!
//! Typical use, service side:
//!
//! ```no_run
//! # fn demo(stream: std::net::TcpStream) -> Result<(), collabd::wire::WireError> {
//! use collabd::wire::{accept, Status};
//! stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok();
//! let channel = accept(stream, |pin| if pin == 0x2a00b1c3 { Ok([7u8; 32]) } else { Err(Status::UnknownDevice) })?;
//! let (mut reader, mut writer) = channel.into_split()?;
//! let payload = reader.recv()?;
//! writer.send(&payload)?;
//! # Ok(()) }
//! ```

pub mod access;
pub mod channel;
pub mod crypto;
mod error;
pub mod frame;
pub mod message;
pub mod secret;

pub mod status;

pub use access::{AccessEntry, AccessLevel, Watcher};
pub use channel::{
    accept, connect, SecureChannel, SecureReader, SecureWriter, SharedStream, MAX_MESSAGE_LEN,
    MAX_SEALED_PAYLOAD,
};
pub use error::WireError;
pub use frame::{read_frame, write_frame, Frame, FrameReader, FrameType, Header, MAX_FRAME_LEN};
pub use message::{
    Availability, Contact, ContactList, ConversationState, Coverage, DeviceCommand, DeviceEvent,
    DeviceMessage, Group, ListPart, Presence, Resume, SearchEntry, ServiceMessage,
};
pub use secret::Secret;
pub use status::Status;

/// Formats a PIN the way people and logs see it: 8 lower-case hex digits.
pub fn format_pin(pin: u32) -> String {
    format!("{pin:08x}")
}

/// Parses a PIN written as 1 to 8 hex digits, with an optional `0x`.
pub fn parse_pin(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}
