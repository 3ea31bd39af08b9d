//! Lease tokens are fencing tokens: only the hash of the current lease's token is stored, and
//! an outcome is accepted only when its token hashes to it. A token is never written anywhere
//! (events, logs, reads) except in the lease response that hands it out.

use sha2::{Digest, Sha256};

/// The stored form of a lease token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes())[..16])
}

/// Whether `token` is the lease whose hash is `current`, compared in constant time.
pub fn token_matches(current: &str, token: &str) -> bool {
    let presented = token_hash(token);
    presented.len() == current.len()
        && presented
            .bytes()
            .zip(current.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_token_matches() {
        let h = token_hash("abc");
        assert!(token_matches(&h, "abc"));
        assert!(!token_matches(&h, "abd"));
        assert!(!token_matches(&h, ""));
        assert_eq!(h.len(), 32);
    }
}
