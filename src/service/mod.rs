//! collabd, the collaboration service: its configuration ([`config`]:
//! file, flags, environment), the device listener ([`listener`]),
//! the bounded session table with its admission rule ([`table`]), one
//! device connection's login ([`login`]), the running session and its
//! event relay ([`session`]), the translation between device protocol and
//! CWA ([`translate`], and for access levels and watchers [`access`]),
//! contact lists split to fit frames ([`split`]), the in-memory password
//! proof for re-attaching
//! ([`credential`]), the state every thread shares ([`context`]), the
//! bounds that keep a flood of handshakes cheap ([`throttle`]), the
//! registry writes kept while the Config DB is away ([`spool`]), the
//! bounded pool of threads that end sessions ([`finishers`]), a session's
//! presence upkeep (auto-away, searches' presence, presence held while
//! dormant: [`upkeep`]) and the daemon's start-up and shutdown ([`run`]).
//!
//! Data flows one way: `bin -> service -> {wire, cwa, configdb}`; it may
//! also import `net`, `ops` and `xml`, and nothing imports it but
//! `src/bin/collabd.rs`. The listener and the table know nothing of the
//! CWA client or the Config DB.

pub mod access;
pub mod config;
pub mod context;
pub mod credential;
pub mod finishers;
pub mod listener;
pub mod login;
pub mod run;
pub mod session;
pub mod split;
pub mod spool;
pub mod table;
pub mod throttle;
pub mod translate;
pub mod upkeep;
