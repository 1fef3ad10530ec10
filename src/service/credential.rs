//! What a live session remembers of its user's password: a salted
//! PBKDF2-HMAC-SHA256 hash, kept in memory only, so that a device that
//! re-attaches to its session after a lost link can prove it still knows
//! the password without collabd keeping the password itself. Only when the
//! instance has `password_caching` on is the password also kept (in
//! memory, never written anywhere), to sign in to CWA again after CWA lost
//! the session.
//!
//! The hash costs [`PBKDF2_ITERATIONS`] iterations, once at login and once
//! per resume: enough that a memory dump does not hand out passwords
//! cheaply, small enough not to slow a login storm (a few milliseconds).

use std::fmt;

use openssl::hash::MessageDigest;
use openssl::pkcs5::pbkdf2_hmac;

use crate::wire::Secret;

/// PBKDF2 iterations for the in-memory hash.
pub const PBKDF2_ITERATIONS: usize = 4096;

const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// The in-memory proof of a session's password.
pub struct Credential {
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
    cached: Option<Secret>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("cached", &self.cached.is_some())
            .finish_non_exhaustive()
    }
}

/// The hash or the random source failed (OpenSSL error text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialError(pub String);

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "password hash: {}", self.0)
    }
}

impl std::error::Error for CredentialError {}

fn derive(password: &str, salt: &[u8]) -> Result<[u8; HASH_LEN], CredentialError> {
    let mut hash = [0u8; HASH_LEN];
    pbkdf2_hmac(
        password.as_bytes(),
        salt,
        PBKDF2_ITERATIONS,
        MessageDigest::sha256(),
        &mut hash,
    )
    .map_err(|e| CredentialError(e.to_string()))?;
    Ok(hash)
}

impl Credential {
    /// Hashes `password` with a fresh random salt; keeps the password too
    /// when `cache` is set (the instance's `password_caching`).
    pub fn new(password: &Secret, cache: bool) -> Result<Credential, CredentialError> {
        let mut salt = [0u8; SALT_LEN];
        openssl::rand::rand_bytes(&mut salt).map_err(|e| CredentialError(e.to_string()))?;
        let hash = derive(password.expose(), &salt)?;
        Ok(Credential {
            salt,
            hash,
            cached: cache.then(|| password.clone()),
        })
    }

    /// Whether `password` is the one this credential was made from
    /// (constant-time comparison of the hashes).
    pub fn verify(&self, password: &Secret) -> bool {
        match derive(password.expose(), &self.salt) {
            Ok(hash) => openssl::memcmp::eq(&hash, &self.hash),
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
        // Fresh salt: the same password hashes differently each time.
        let again = Credential::new(&Secret::new("s3cret"), false).unwrap();
        assert_ne!(again.hash, c.hash);
    }
}
