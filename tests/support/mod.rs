//! Helpers shared by the integration tests. Each test file does
//! `mod support;`; each submodule owns one kind of helper.

pub mod dispatch;
pub mod pg;
pub mod wire_peer;
