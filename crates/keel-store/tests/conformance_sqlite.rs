//! The conformance suite against a real SQLite file in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

keel_store::conformance_tests!(keel_store::testing::SqliteHarness::new());
