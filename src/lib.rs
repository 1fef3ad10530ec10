//! collabd: an open collaboration gateway between mobile collaboration
//! clients and Microsoft Office Communications Server 2007, reached through
//! Communicator Web Access (CWA 2007).
//!
//! The crate is one library with thin mains under `src/bin/`. The map, from
//! the programs down to what everything stands on (a module imports only
//! modules below it; `import_cycles` checks this and that no two modules or
//! files import each other):
//!
//! - [`admin`]: the operator's command lines: `collabctl` and its demo (the
//!   whole system on one machine with throwaway state).
//! - [`service`]: collabd: its configuration, the device listener, the
//!   session table and admission, logins, the per-session relay to CWA, and
//!   the daemon.
//! - [`dispatcher`]: collab-dispatcher, routing device connections to live
//!   collabd instances and relaying their bytes without decrypting them.
//! - [`sim`]: `cwa-sim`, the CWA 2007 + OCS simulator (HTTP server, NTLM and
//!   forms sign-in, command/event channels, faults, admin endpoint).
//! - [`device`]: the device-side client library behind `collab-device`.
//! - [`cwa`]: the CWA client, one per user session: sign-in (NTLMv2 / forms),
//!   the command channel, the event long-poll, typed commands and events.
//! - [`configdb`]: the Config DB in PostgreSQL (migrations, instances,
//!   users, devices, session registry, heartbeats, audit). Storage: it
//!   imports nothing above it (only [`hex`]).
//! - [`ntlm`]: both sides of NTLMv2 ([MS-NLMP]) for IIS-style HTTP
//!   authentication, and the base64 of its headers.
//! - [`wire`]: the device protocol (frames, handshake and AES-GCM channel,
//!   status codes, XML messages), specified in collab-protocol(7), and
//!   the [`wire::Secret`] password type with the wiping allocator below.
//!   It imports only [`xml`] and [`hex`].
//! - [`ops`]: running under systemd (notify, signals, logging) and a
//!   throwaway PostgreSQL for tests and the demo.
//! - [`net`]: a connection, plain TCP or TLS, shared by the device
//!   listener, the simulator and the dispatcher's link to collabd.
//! - [`xml`]: small helpers over `xmltree` shared by the CWA client, the
//!   simulator and the device protocol (bounded parsing, child text,
//!   serialisation).
//! - [`hex`]: the written form of bytes, transport keys and device PINs.
pub mod admin;
pub mod configdb;
pub mod cwa;
pub mod device;
pub mod dispatcher;
pub mod hex;
pub mod net;
pub mod ntlm;
pub mod ops;
pub mod service;
pub mod sim;
pub mod wire;
pub mod xml;

#[cfg(test)]
mod import_cycles;
