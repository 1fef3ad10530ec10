//! collabd: an open collaboration gateway between mobile collaboration
//! clients and Microsoft Office Communications Server 2007, reached through
//! Communicator Web Access (CWA 2007).
//!
//! The crate is one library with thin mains under `src/bin/`. Each module
//! owns one thing:
//!
//! - [`xml`]: small helpers over `xmltree` shared by the CWA client, the
//!   simulator and the device protocol (bounded parsing, child text,
//!   serialisation).
//! - [`config`]: collabd's daemon configuration (file, flags, environment).
//! - [`ops`]: running under systemd: notify, signals, logging.
//! - [`service`]: collabd: the device listener and the session table.
//! - [`wire`]: the device protocol (frames, handshake and AES-GCM channel,
//!   status codes, XML messages), specified in collab-protocol(7).
//! - [`device`]: the device-side client library behind `collab-device`.
pub mod config;
pub mod device;
pub mod ops;
pub mod service;
pub mod wire;
pub mod xml;
