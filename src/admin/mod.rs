//! Administration: the command lines an operator runs against the Config DB
//! ([`collabctl`]) and the whole system on one machine ([`demo`], run as
//! `collabctl demo`). This module sits on top: it may import the Config DB,
//! the service's programs (as child processes), `ops` and the wire format's
//! PIN spelling; nothing imports it but `src/bin/collabctl.rs`.

pub mod collabctl;
pub mod demo;
