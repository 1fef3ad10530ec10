//! The CWA side: collabd's CWA client against the simulator, the simulator
//! itself, and how strictly both read what they are sent; each file a
//! module of this one test binary.

#[path = "../support/mod.rs"]
mod support;

mod cwa_client;
mod sim;
mod strictness;
