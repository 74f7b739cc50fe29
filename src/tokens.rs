//! Device tokens are stored as keyed hashes, never as entered.
//!
//! The protocol only compares a presented token with the registered one, so the server
//! keeps `h1:` + hex(HMAC-SHA256(key, token)) and compares hashes in constant time. The
//! key is 32 random bytes in `<data_dir>/token.key` (mode 0600), created at first start,
//! kept apart from the database: a copy of the database alone (a backup, a stolen disk
//! image of the file) reveals no token, and without the key none can be guessed offline.
//! A backup restored without its key loses the tokens (the app server registers them
//! again at the users' next login); README, "Backup and restore".
//!
//! Rows from before this rule hold plain tokens; [`crate::storage::admin::hash_plain_tokens`] converts them once
//! at start.

use crate::storage::StorageError;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// The key file inside the data directory.
pub const KEY_FILE: &str = "token.key";

/// The marker of a hashed token (and of this hash's version).
const PREFIX: &str = "h1:";

/// Hashes tokens with the server's key.
#[derive(Clone)]
pub struct TokenHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHasher(key redacted)")
    }
}

impl TokenHasher {
    /// Reads the key from `data_dir`, creating it (0600) on first use.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds something other than 32 bytes.
    pub fn load_or_create(data_dir: &Path) -> Result<TokenHasher, StorageError> {
        let path = data_dir.join(KEY_FILE);
        let error = |source| StorageError::Dir {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.try_into().map_err(|_| {
                    error(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a 32-byte key",
                    ))
                })?;
                Ok(TokenHasher { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ruyi_proto::crypto::random_secret()
                    .map_err(|e| error(std::io::Error::other(e.to_string())))?;
                crate::storage::write_new_private(&path, &key).map_err(error)?;
                Ok(TokenHasher { key })
            }
            Err(e) => Err(error(e)),
        }
    }

    /// What is stored for `token`.
    pub fn hash(&self, token: &str) -> String {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(token.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PREFIX.len() + 64);
        out.push_str(PREFIX);
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// True when `presented` is the token `stored` was made from (an empty `stored` means
    /// the device was logged out: nothing matches it).
    pub fn matches(&self, stored: &str, presented: &str) -> bool {
        !stored.is_empty()
            && ruyi_proto::crypto::constant_time_eq(
                stored.as_bytes(),
                self.hash(presented).as_bytes(),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_their_token_only_and_hide_it() {
        let h = TokenHasher { key: [7; 32] };
        let stored = h.hash("s3cret-token");
        assert!(stored.starts_with("h1:") && !stored.contains("s3cret"));
        assert!(h.matches(&stored, "s3cret-token"));
        assert!(!h.matches(&stored, "s3cret-tokem"));
        assert!(!h.matches("", ""), "a logged-out device matches nothing");
        let other = TokenHasher { key: [8; 32] };
        assert_ne!(other.hash("s3cret-token"), stored, "keyed");
        assert!(!format!("{h:?}").contains('7'));
    }
}
