//! The device protocol spoken between the collaboration client, the
//! dispatcher and collabd, as specified in collab-protocol(7): the frame
//! codec and its clear routing header ([`frame`]), the status codes
//! ([`status`]), the handshake, key schedule and encrypted channel
//! ([`channel`], [`crypto`]), the XML messages ([`message`]) and the
//! access levels and watchers they carry ([`access`]), and how a
//! password is held in memory ([`secret`]).
//!
//! The wire format imports only `xml` and the PIN spelling of `hex`.
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
#[cfg(test)]
mod access_tests;
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

/// The device PIN's written form (8 hex digits), shared with the Config DB.
pub use crate::hex::{format_pin, parse_pin};
