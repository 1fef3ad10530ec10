//! What a live session remembers of its user's password: an
//! HMAC-SHA256 of it under a random key made once per process, kept in
//! memory only, so that a device that re-attaches to its session after a
//! lost link can prove it still knows the password without collabd
//! keeping the password itself. The key never leaves the process and dies
//! with it, so the tag is useless anywhere else; a slow password hash
//! (which would protect a tag that leaks) buys nothing here and cost a
//! login milliseconds of CPU.
//!
//! Only when the instance has `password_caching` on is the password also
//! kept (in memory, never written anywhere, wiped when the session ends),
//! to sign in to CWA again after CWA lost the session.

use std::fmt;
use std::sync::OnceLock;

use crate::wire::crypto::hmac_sha256;
use crate::wire::Secret;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 32;

/// The in-memory proof of a session's password.
pub struct Credential {
    tag: [u8; TAG_LEN],
    cached: Option<Secret>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("cached", &self.cached.is_some())
            .finish_non_exhaustive()
    }
}

/// The MAC or the random source failed (OpenSSL error text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialError(pub String);

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "password tag: {}", self.0)
    }
}

impl std::error::Error for CredentialError {}

/// This process's MAC key, drawn on first use.
fn process_key() -> Result<&'static [u8; KEY_LEN], CredentialError> {
    static KEY: OnceLock<[u8; KEY_LEN]> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let mut key = [0u8; KEY_LEN];
    openssl::rand::rand_bytes(&mut key).map_err(|e| CredentialError(e.to_string()))?;
    // Another thread may have won the race; either key is as good.
    Ok(KEY.get_or_init(|| key))
}

fn tag_of(password: &Secret) -> Result<[u8; TAG_LEN], CredentialError> {
    hmac_sha256(process_key()?, password.expose().as_bytes())
        .map_err(|e| CredentialError(e.to_string()))
}

impl Credential {
    /// Tags `password`; keeps a copy of the password too when `cache` is
    /// set (the instance's `password_caching`).
    pub fn new(password: &Secret, cache: bool) -> Result<Credential, CredentialError> {
        Ok(Credential {
            tag: tag_of(password)?,
            cached: cache.then(|| password.clone()),
        })
    }

    /// Whether `password` is the one this credential was made from
    /// (constant-time comparison of the tags).
    pub fn verify(&self, password: &Secret) -> bool {
        match tag_of(password) {
            Ok(tag) => openssl::memcmp::eq(&tag, &self.tag),
            Err(_) => false,
        }
    }

    /// The password, if the instance caches passwords.
    pub fn cached_password(&self) -> Option<&Secret> {
        self.cached.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_the_right_password_only_and_caches_on_request() {
        let c = Credential::new(&Secret::new("s3cret"), false).unwrap();
        assert!(c.verify(&Secret::new("s3cret")));
        assert!(!c.verify(&Secret::new("s3cret ")));
        assert!(!c.verify(&Secret::new("")));
        assert!(c.cached_password().is_none());
        assert!(!format!("{c:?}").contains("s3cret"));
        let cached = Credential::new(&Secret::new("pw"), true).unwrap();
        assert_eq!(cached.cached_password().unwrap().expose(), "pw");
        // One key per process: the same password gives the same tag, and
        // the tag is not a plain hash of the password.
        let again = Credential::new(&Secret::new("s3cret"), false).unwrap();
        assert_eq!(again.tag, c.tag);
        let plain = openssl::sha::sha256(b"s3cret");
        assert_ne!(plain, c.tag);
    }
}
