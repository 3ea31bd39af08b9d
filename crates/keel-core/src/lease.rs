//! Lease tokens are fencing tokens: only the hash of the current lease's token is stored, and
//! an outcome is accepted only when its token hashes to it. A token is never written anywhere
//! (events, logs, reads) except in the lease response that hands it out.

use sha2::{Digest, Sha256};

/// New lease tokens: 128 bits from the operating system's random source, written as 32 hex
/// digits (the simple form of a v4 UUID, as tokens always were). The bits are drawn for many
/// tokens at once: a drain leases thousands of jobs a second, and one `getrandom` system call
/// per token was ~2.5% of the SQLite writer's time (docs/performance.md). Each drawn byte goes into
/// one token only, and is cleared from the buffer when it is used.
pub struct Tokens {
    buf: Vec<u8>,
    used: usize,
}

impl Tokens {
    /// A source that draws randomness for `batch` tokens at a time (at least one).
    pub fn new(batch: usize) -> Tokens {
        let len = batch.max(1) * 16;
        Tokens {
            buf: vec![0; len],
            used: len,
        }
    }

    /// The next token.
    pub fn next_token(&mut self) -> Result<String, getrandom::Error> {
        Ok(self.next_uuid()?.simple().to_string())
    }

    /// The next token as a v4 UUID (request ids use it too).
    pub fn next_uuid(&mut self) -> Result<uuid::Uuid, getrandom::Error> {
        if self.used + 16 > self.buf.len() {
            getrandom::fill(&mut self.buf)?;
            self.used = 0;
        }
        let mut bytes = [0u8; 16];
        let drawn = &mut self.buf[self.used..self.used + 16];
        bytes.copy_from_slice(drawn);
        drawn.fill(0);
        self.used += 16;
        Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }
}

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

    /// Tokens never repeat, across many refills of the buffer and between sources, and keep
    /// the shape clients have always seen.
    #[test]
    fn tokens_are_fresh_across_refills() {
        let mut seen = std::collections::HashSet::new();
        for batch in [1, 3, 256] {
            let mut tokens = Tokens::new(batch);
            for _ in 0..1_000 {
                let t = tokens.next_token().unwrap();
                assert_eq!(t.len(), 32);
                assert!(
                    t.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
                assert_eq!(uuid::Uuid::parse_str(&t).unwrap().get_version_num(), 4);
                assert!(seen.insert(t), "a token repeated (batch {batch})");
            }
        }
    }
}
