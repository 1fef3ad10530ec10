//! The administration tests: the Config DB's reads and writes, `collabctl`
//! and its demo, each file a module of this one test binary.

#[path = "../support/mod.rs"]
mod support;

mod collabctl;
mod configdb;
mod demo;
