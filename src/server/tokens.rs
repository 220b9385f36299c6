//! The built-in token list, compared in constant time.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Accepted bearer tokens, kept as SHA-256 digests. A check hashes the
/// offered token and compares it with every digest in constant time
/// (`subtle`), without stopping at a match: how long a check takes says
/// nothing about which token matched, how many bytes of one matched, or
/// how long the accepted tokens are.
///
/// ```
/// let list = camp_server::server::TokenList::new(["alpha".to_string()]);
/// assert!(list.contains("alpha") && !list.contains("alph"));
/// ```
#[derive(Clone)]
pub struct TokenList {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens or their digests.
        write!(f, "TokenList({} tokens)", self.digests.len())
    }
}

impl TokenList {
    /// The list of `tokens`.
    pub fn new<I: IntoIterator<Item = String>>(tokens: I) -> TokenList {
        TokenList {
            digests: tokens
                .into_iter()
                .map(|t| Sha256::digest(t.as_bytes()).into())
                .collect(),
        }
    }

    /// Whether `token` is in the list.
    pub fn contains(&self, token: &str) -> bool {
        let offered: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = Choice::from(0);
        for digest in &self.digests {
            found |= digest.ct_eq(&offered);
        }
        found.into()
    }
}

#[cfg(test)]
mod tests {
    use super::TokenList;

    #[test]
    fn admits_exactly_the_listed_tokens() {
        let list = TokenList::new(["alpha".to_string(), "beta-2".to_string()]);
        assert!(list.contains("alpha"));
        assert!(list.contains("beta-2"));
        for other in ["", "alph", "alphaa", "ALPHA", "beta-", "beta-3"] {
            assert!(!list.contains(other), "{other}");
        }
        assert!(!TokenList::new(Vec::new()).contains(""));
        assert!(!format!("{list:?}").contains("alpha"));
    }
}
