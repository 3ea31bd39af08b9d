//! The conformance suite against a real SQLite file in a temporary directory.

keel_store::conformance_tests!(keel_store::testing::SqliteHarness::new());
