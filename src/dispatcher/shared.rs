//! The state every thread of one dispatcher shares: its settings, the
//! routing cache, the Config DB reader, the upstream TLS connector, the
//! recording hook and the refresher's wake-up.

use std::sync::{Condvar, Mutex};

use super::config::DispatcherConfig;
use super::directory::Directory;
use super::relay::RelayObserver;
use super::route::Router;

/// State shared by every thread of one dispatcher.
pub(crate) struct Shared {
    pub(super) config: DispatcherConfig,
    pub(super) router: Router,
    pub(super) directory: Directory,
    pub(super) tls: Option<native_tls::TlsConnector>,
    pub(super) observer: Option<Box<dyn RelayObserver>>,
    pub(super) refresh_now: (Mutex<bool>, Condvar),
}
