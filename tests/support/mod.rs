//! Helpers shared by the integration tests; each area adds its own module.
pub mod dispatch;
pub mod wire_peer;
