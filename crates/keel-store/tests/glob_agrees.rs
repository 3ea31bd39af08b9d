//! Scoped listing filters with SQLite's `GLOB`; scoped commands check `keel_core::access::glob_match`.
//! The two must agree on every pattern a token may hold, or a scoped token could list jobs it
//! cannot touch (or the reverse).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_core::access::{check_pattern, glob_match};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]
    #[test]
    fn sqlite_glob_and_glob_match_agree(
        pattern in "[ab.*_:-]{1,8}",
        name in "[ab._:-]{1,10}",
    ) {
        prop_assume!(check_pattern(&pattern).is_ok());
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let sqlite: bool = conn
            .query_row("SELECT ?1 GLOB ?2", [&name, &pattern], |r| r.get(0))
            .unwrap();
        prop_assert_eq!(sqlite, glob_match(&pattern, &name), "pattern {:?} name {:?}", pattern, name);
    }
}
