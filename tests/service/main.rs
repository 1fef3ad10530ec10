//! collabd and collab-dispatcher end to end (real processes, a real Config
//! DB, the simulator): sessions, admission, memory, routing and relaying;
//! each file a module of this one test binary.

#[path = "../support/mod.rs"]
mod support;

mod dispatcher;
mod dispatcher_collabd;
mod service;
mod service_admission;
mod service_memory;
