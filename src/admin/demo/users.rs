//! The demo's cast: three users, each with a simulator account, a Config DB
//! user and one device, and where their secrets live in the state directory.

use std::path::{Path, PathBuf};

/// A demo user: the sim's account, the Config DB user and its device.
pub(super) struct DemoUser {
    /// Short name, also the file-name stem of its key and password files.
    pub(super) name: &'static str,
    pub(super) display_name: &'static str,
    pub(super) pin: u32,
}

const DOMAIN: &str = "CONTOSO";
const SIP_DOMAIN: &str = "contoso.com";

pub(super) const USERS: [DemoUser; 3] = [
    DemoUser {
        name: "alice",
        display_name: "Alice Smith",
        pin: 0x2100_000a,
    },
    DemoUser {
        name: "bob",
        display_name: "Bob Jones",
        pin: 0x2100_000b,
    },
    DemoUser {
        name: "carol",
        display_name: "Carol Diaz",
        pin: 0x2100_000c,
    },
];

impl DemoUser {
    pub(super) fn login(&self) -> String {
        format!("{DOMAIN}\\{}", self.name)
    }

    pub(super) fn sip_uri(&self) -> String {
        format!("sip:{}@{SIP_DOMAIN}", self.name)
    }

    /// The file holding the device's transport key, in hex.
    pub(super) fn key_file(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{}.key", self.name))
    }

    /// The file holding the user's password.
    pub(super) fn password_file(&self, state_dir: &Path) -> PathBuf {
        state_dir.join(format!("{}.password", self.name))
    }
}
