//! Who may do what: API token roles, queue scopes, and the hashing of API tokens.
//!
//! Invariants:
//! - A scope either allows every queue or exactly the queues one of its patterns matches; `*`
//!   matches any run of name characters (including none), every other character matches itself.
//!   The same rule is used in memory (`Scope::allows`) and by storage when it filters lists, so a
//!   scoped token never sees a job its scope would refuse.
//! - An API token is stored only as its SHA-256 hash; a presented token is hashed and compared in
//!   constant time with the stored hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::validate::MAX_NAME_LEN;

/// What a token may do; the table of which route needs which role lives in the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Producer,
    Worker,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Producer, Role::Worker, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Producer => "producer",
            Role::Worker => "worker",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The queues a token may touch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    All,
    /// Glob patterns; never empty (an empty list would be a token that can do nothing).
    Patterns(Vec<String>),
}

impl Scope {
    /// Builds a scope from a token's `queues`; `None` means every queue.
    pub fn from_patterns(patterns: Option<Vec<String>>) -> Scope {
        match patterns {
            None => Scope::All,
            Some(p) => Scope::Patterns(p),
        }
    }

    pub fn patterns(&self) -> Option<&[String]> {
        match self {
            Scope::All => None,
            Scope::Patterns(p) => Some(p),
        }
    }

    pub fn allows(&self, queue: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Patterns(p) => p.iter().any(|pat| glob_match(pat, queue)),
        }
    }
}

/// Checks one queue pattern: 1–128 characters of the name alphabet plus `*`.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if pattern.len() > MAX_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_NAME_LEN} characters, got {}",
            pattern.len()
        ));
    }
    match pattern
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '*')))
    {
        Some(c) => Err(format!(
            "contains {c:?}; allowed are A-Z a-z 0-9 . _ : - and * (any run of characters)"
        )),
        None => Ok(()),
    }
}

/// `*` matches any run of characters; everything else matches itself. Linear time: on a
/// mismatch it backtracks only to the most recent `*`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The stored form of an API token: the hex SHA-256 of the whole token.
pub fn api_token_hash(token: &str) -> String {
    crate::lease::hex(&Sha256::digest(token.as_bytes()))
}

/// Whether two hashes are equal, in time that depends only on their length.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_names() {
        assert!(glob_match("billing.*", "billing.invoices"));
        assert!(glob_match("billing.*", "billing."));
        assert!(!glob_match("billing.*", "billing"));
        assert!(!glob_match("billing.*", "xbilling.invoices"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("emails", "emails"));
        assert!(!glob_match("emails", "emails2"));
        assert!(glob_match("*.dlq", "orders.dlq"));
        assert!(!glob_match("*.dlq", "orders.dlq.x"));
    }

    #[test]
    fn scopes_allow_what_a_pattern_matches() {
        assert!(Scope::All.allows("x"));
        let s = Scope::from_patterns(Some(vec!["a.*".into(), "b".into()]));
        assert!(s.allows("a.1") && s.allows("b"));
        assert!(!s.allows("c") && !s.allows("b.1"));
    }

    #[test]
    fn patterns_reject_other_characters() {
        assert!(check_pattern("billing.*").is_ok());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a/b").is_err());
        assert!(check_pattern("a?").is_err());
        assert!(check_pattern(&"a".repeat(129)).is_err());
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn hashes_compare_by_value() {
        let h = api_token_hash("keel_abc");
        assert_eq!(h.len(), 64);
        assert!(hashes_equal(&h, &api_token_hash("keel_abc")));
        assert!(!hashes_equal(&h, &api_token_hash("keel_abd")));
        assert!(!hashes_equal(&h, ""));
    }
}
