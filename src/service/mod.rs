//! collabd, the collaboration service: the device listener ([`listener`])
//! and the bounded session table with its admission rule ([`table`]).
//!
//! Data flows one way: `bin -> service -> {wire, cwa, configdb}`. Nothing
//! here depends on the Config DB, the device protocol or the CWA client;
//! the session flow that joins them is built over these parts.

pub mod listener;
pub mod table;
