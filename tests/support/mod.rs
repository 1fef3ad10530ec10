//! Helpers shared by the integration tests; each test binary does `mod support;`.
pub mod cutting_proxy;
pub mod evil_http;
pub mod sim;
pub mod tls;
pub mod tmp;
