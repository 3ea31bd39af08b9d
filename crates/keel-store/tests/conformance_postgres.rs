//! The conformance suite against the real PostgreSQL server named by `KEEL_TEST_DATABASE_URL`,
//! each case in a schema of its own. Without the variable every case says it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

keel_store::conformance_tests!(optional keel_store::testing::PgHarness::new());
