//! API key secrets. A secret is 256 bits from the thread's CSPRNG (ChaCha, seeded by the
//! OS), so a fast hash is enough to store it: nobody can search a space that large, and
//! a slow password hash would only cost every call time. The store holds the SHA-256
//! of each secret, never the secret.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every secret starts with, so that a leaked one is recognisable (secret scanners,
/// logs) and cannot be mistaken for another credential.
pub const PREFIX: &str = "dhw_";

/// The shortest secret an operator may choose for the bootstrap admin key.
pub const MIN_OPERATOR_SECRET: usize = 24;

/// The SHA-256 of a secret: how the store and the key ring know it.
pub type SecretHash = [u8; 32];

/// A fresh secret: `dhw_` and 43 base64url characters.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn to_hex(hash: &SecretHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(hex: &str) -> Option<SecretHash> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_distinct_and_hash_round_trips() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        let h = hash(&a);
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(from_hex("zz"), None);
    }
}
