//! Helpers shared by the integration tests; each area adds its own module.
pub mod device_peer;
pub mod tls;
pub mod wire_peer;
