//! Gateway secrets: made here, shown once, stored only as a hash.
//!
//! A secret is 32 bytes from a cryptographic generator, written as 64 hex digits so it
//! survives shells, files and MQTT password fields unquoted. Nobody chooses it, so it
//! cannot be guessed, and a plain SHA-256 of it is as good as a slow password hash while
//! costing microseconds: a broker authenticating a thousand gateways that reconnect at
//! once stays responsive.

use std::fmt;

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const SECRET_BYTES: usize = 32;
const HASH_PREFIX: &str = "sha256:";

/// A newly made secret. Its `Debug` hides it; [`Secret::expose`] is the one way out.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// The secret's text, to print once or to write into the gateway's password file.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// The key the gateway's agent seals frames with, derived from this secret as the
    /// agent derives it from its password file.
    pub fn frame_key(&self) -> protocol::FrameKey {
        protocol::FrameKey::derive(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What the registry stores: `sha256:` and the hex digest of the secret's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(format!(
            "{HASH_PREFIX}{}",
            hex::encode(Sha256::digest(secret.as_bytes()))
        ))
    }

    /// A stored hash, as the registry returns it (the table's CHECK holds its form).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the secret this hashes, in time independent of where the
    /// two differ.
    pub fn matches(&self, presented: &str) -> bool {
        Self::of(presented)
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_its_own_hash_only() {
        let secret = Secret::generate();
        let other = Secret::generate();
        assert_ne!(secret, other);
        assert_eq!(secret.expose().len(), 64);
        assert!(secret.hash().matches(secret.expose()));
        assert!(!secret.hash().matches(other.expose()));
        assert!(!secret.hash().matches(""));
        assert!(!secret.hash().matches(&secret.expose()[..63]));
    }

    #[test]
    fn a_hash_has_the_form_the_table_checks() {
        let hash = SecretHash::of("x");
        let digits = hash.as_str().strip_prefix("sha256:").unwrap();
        assert_eq!(digits.len(), 64);
        assert!(digits
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = Secret::generate();
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }
}
