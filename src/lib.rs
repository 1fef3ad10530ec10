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
//! - [`configdb`]: the Config DB in PostgreSQL (migrations, instances,
//!   users, devices, session registry, heartbeats, audit) and `collabctl`.
//! - [`dispatcher`]: collab-dispatcher, routing device connections to live
//!   collabd instances and relaying their bytes without decrypting them.
//! - [`ops`]: running under systemd (notify, signals, logging) and a
//!   throwaway PostgreSQL for tests and the demo.
//! - [`service`]: collabd: the device listener, the session table and
//!   admission, logins, the per-session relay to CWA, and the daemon.
//! - [`wire`]: the device protocol (frames, handshake and AES-GCM channel,
//!   status codes, XML messages), specified in collab-protocol(7), and
//!   the [`wire::Secret`] password type with the wiping allocator below.
//! - [`device`]: the device-side client library behind `collab-device`.
//! - [`cwa`]: the CWA client, one per user session: sign-in (NTLMv2 / forms),
//!   the command channel, the event long-poll, typed commands and events.
//! - [`net`]: a connection, plain TCP or TLS, shared by the device
//!   listener, the simulator and the dispatcher's link to collabd.
//! - [`ntlm`]: both sides of NTLMv2 ([MS-NLMP]) for IIS-style HTTP
//!   authentication, and the base64 of its headers.
//! - [`sim`]: `cwa-sim`, the CWA 2007 + OCS simulator (HTTP server, NTLM and
//!   forms sign-in, command/event channels, faults, admin endpoint).
//! - [`demo`]: `collabctl demo`, the whole system on one machine with
//!   throwaway state, started and stopped with one command.
pub mod config;
pub mod configdb;
pub mod cwa;
pub mod demo;
pub mod device;
pub mod dispatcher;
pub mod net;
pub mod ntlm;
pub mod ops;
pub mod service;
pub mod sim;
pub mod wire;
pub mod xml;
