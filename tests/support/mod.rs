//! Shared helpers for the integration tests; each test binary declares
//! `mod support;` and uses what it needs.

pub mod certs;
pub mod collabd;
pub mod cutting_proxy;
pub mod device_peer;
pub mod dispatch;
pub mod evil_http;
pub mod pg;
pub mod sim;
pub mod tls;
pub mod tmp;
pub mod wire_peer;
