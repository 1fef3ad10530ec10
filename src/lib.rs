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
//! - [`configdb`]: the Config DB in PostgreSQL (migrations, instances,
//!   users, devices, session registry, heartbeats, audit) and `collabctl`.
//! - [`dispatcher`]: collab-dispatcher, routing device connections to live
//!   collabd instances and relaying their bytes without decrypting them.
//! - [`ops`]: operational helpers (a throwaway PostgreSQL for tests and the
//!   demo).
//! - [`wire`]: the device protocol (frames, handshake and AES-GCM channel,
//!   status codes, XML messages), specified in collab-protocol(7).
pub mod configdb;
pub mod dispatcher;
pub mod ops;
pub mod wire;
pub mod xml;
