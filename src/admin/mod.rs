//! Administration: the command lines an operator runs against the Config DB
//! ([`collabctl`]) and the whole system on one machine ([`demo`], run as
//! `collabctl demo`). This module sits on top: it may import the Config DB,
//! `ops`, `net` and `hex` (and runs the programs as child processes, never
//! imports them); nothing imports it but `src/bin/collabctl.rs`.

pub mod collabctl;
pub mod demo;
