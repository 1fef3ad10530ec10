//! The device protocol: frames and the secure channel, the XML messages,
//! the device client and the listener; each file a module of this one test
//! binary. (collab-protocol(7)'s own checks are `tests/protocol_doc.rs`.)

#[path = "../support/mod.rs"]
mod support;

mod device;
mod listener;
mod messages;
mod wire;
