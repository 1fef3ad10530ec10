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
//! - [`dispatcher`]: collab-dispatcher, routing device connections to live
//!   collabd instances and relaying their bytes without decrypting them.
//! - [`wire`]: the device protocol (frames, handshake and AES-GCM channel,
//!   status codes, XML messages), specified in collab-protocol(7).
pub mod dispatcher;
pub mod wire;
pub mod xml;
