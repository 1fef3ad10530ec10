//! collabd and collab-dispatcher end to end (real processes, a real Config
//! DB, the simulator): sessions, admission, memory, routing and relaying, access levels,
//! watchers and presence upkeep;
//! each file a module of this one test binary.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod dispatcher;
mod dispatcher_collabd;
mod presence_upkeep;
mod service;
mod service_admission;
mod service_memory;
