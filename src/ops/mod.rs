//! Operational helpers that are not the service itself: today a throwaway
//! PostgreSQL cluster for tests and the demo; later systemd notification,
//! signals and logging set-up.

pub mod scratch_pg;
