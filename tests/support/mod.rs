//! Helpers shared by the integration tests.
pub mod evil_http;
