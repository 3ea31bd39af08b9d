//! Scoped listing filters with SQLite's `GLOB` and PostgreSQL's `LIKE`; scoped commands check
//! `keel_core::access::glob_match`.
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

/// The same agreement for PostgreSQL's `LIKE` (via `glob_to_like`), on thousands of random
/// pairs checked in one query against the server in `KEEL_TEST_DATABASE_URL`.
#[tokio::test]
async fn postgres_like_and_glob_match_agree() {
    let Ok(url) = std::env::var(keel_store::testing::TEST_DATABASE_ENV) else {
        eprintln!(
            "skipped: KEEL_TEST_DATABASE_URL is not set, so this PostgreSQL test did not run"
        );
        return;
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let alphabet: Vec<char> = "ab.*_:-%".chars().collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    let (mut names, mut patterns) = (vec![], vec![]);
    while names.len() < 5_000 {
        let pattern: String = (0..1 + next(6))
            .map(|_| alphabet[next(alphabet.len())])
            .collect();
        if check_pattern(&pattern).is_err() {
            continue;
        }
        let name: String = (0..1 + next(8))
            .map(|_| alphabet[next(alphabet.len() - 1)])
            .filter(|c| *c != '*')
            .collect();
        names.push(name);
        patterns.push(pattern);
    }
    let likes: Vec<String> = patterns
        .iter()
        .map(|p| keel_store::postgres::glob_to_like(p))
        .collect();
    let rows = client
        .query(
            "SELECT u.n LIKE u.p FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(n, p, i) ORDER BY u.i",
            &[&names, &likes],
        )
        .await
        .unwrap();
    for ((name, pattern), row) in names.iter().zip(&patterns).zip(&rows) {
        let like: bool = row.get(0);
        assert_eq!(
            like,
            glob_match(pattern, name),
            "pattern {pattern:?} name {name:?}"
        );
    }
}
