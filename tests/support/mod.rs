//! Helpers shared by the integration tests.
pub mod cwa_sim;
pub mod evil_http;
