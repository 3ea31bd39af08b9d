//! Connecting, and the schema's forward-only migrations. Migrations run in one transaction
//! under `pg_advisory_xact_lock`, so nodes starting together take turns: the first applies
//! them, the others find them applied. Running them twice is a no-op.

use std::time::Duration;

use keel_core::Time;

use super::{PgConfig, PgError};
use crate::StoreError;

/// Ordered migrations; a migration is never edited once released, only appended.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_observability.sql")),
];

/// The connection settings: the URL, with keel's schema first on the search path.
pub(super) fn connect_config(config: &PgConfig) -> Result<tokio_postgres::Config, StoreError> {
    check_schema_name(&config.schema)?;
    let mut pg: tokio_postgres::Config = config
        .url
        .parse()
        .map_err(|e| StoreError::Unavailable(format!("the database URL is not valid: {e}")))?;
    // Custom plans always: a generic plan chosen while a table was small (a seq scan of an
    // empty `jobs`) stays cached on the connection for good and turns every later write into
    // a table scan. Planning each statement costs far less than one such scan.
    pg.options(format!(
        "-c search_path={} -c plan_cache_mode=force_custom_plan",
        config.schema
    ))
    .application_name("keel")
    .connect_timeout(config.call_timeout.min(Duration::from_secs(5)))
    .keepalives(true)
    .keepalives_idle(Duration::from_secs(30));
    Ok(pg)
}

/// Schema names go into SQL text (`CREATE SCHEMA`, `search_path`), so only plain identifiers
/// are accepted; at most 58 characters, so the notification channel `keel_<schema>` stays within
/// PostgreSQL's 63-character identifiers.
fn check_schema_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 58
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "schema name {name:?} must be a lowercase identifier ([a-z_][a-z0-9_]*, at most 58 characters)"
        )))
    }
}

/// A 64-bit advisory-lock key for `purpose` in `schema` (FNV-1a), so deployments in different
/// schemas of one database never wait on each other's locks.
pub(super) fn lock_key(purpose: &str, schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "keel:"
        .bytes()
        .chain(purpose.bytes())
        .chain([b':'])
        .chain(schema.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
    now: Time,
) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("migrate", schema)],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (version bigint PRIMARY KEY, applied_at bigint NOT NULL);"
    ))
    .await?;
    let current: i64 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            &format!(
                "INSERT INTO {schema}.schema_migrations (version, applied_at) VALUES ($1, $2)"
            ),
            &[version, &now.as_millis()],
        )
        .await?;
        tracing::info!(message = "Applied a PostgreSQL migration.", version, schema);
    }
    tx.commit().await?;
    Ok(())
}

/// keel answers `2xx` only for durable writes, so it refuses a session whose commits return
/// before the WAL is flushed (`synchronous_commit = off`, set for the server, database or
/// role). `local`, `on` and the replica-waiting levels all flush locally first.
pub(super) async fn check_durable(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let level: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .get(0);
    if level == "off" {
        return Err(PgError::Store(StoreError::Unavailable(
            "PostgreSQL has synchronous_commit = off for this role or database: commits would be \
             acknowledged before they are durable. Turn it on for keel's role \
             (ALTER ROLE <role> SET synchronous_commit = on)"
                .into(),
        )));
    }
    Ok(())
}

/// Ready means this connection reaches a primary that takes writes (not a standby left behind
/// by a failover).
pub(super) async fn check_writable(client: &tokio_postgres::Client) -> Result<(), PgError> {
    let standby: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if standby {
        return Err(PgError::Store(StoreError::Unavailable(
            "PostgreSQL is a read-only standby".into(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_schema_name;

    #[test]
    fn schema_names_are_plain_identifiers_short_enough_for_the_channel() {
        for ok in ["public", "keel", "_x1", &"a".repeat(58)] {
            assert!(check_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Keel", "1abc", "a-b", "a;drop", "a b", &"a".repeat(59)] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
