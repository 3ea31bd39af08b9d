//! Tokens, payload schemas and the audit log in SQLite. Changes run on the writer (inside its
//! group transaction, through `Request::Call`), and every admin change writes its audit row in
//! the same transaction as the change, so a change is never recorded without happening or
//! happen without being recorded.

use keel_core::{Json, Role, Time};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::rows::uuid_col;
use super::writer::{Fatal, Step, Writer};
use crate::StoreError;
use crate::types::{Actor, AuditEntry, SchemaRecord, TokenRecord};

impl Writer {
    /// Appends one audit row. Call it only once the change itself has succeeded.
    pub(super) fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        data: &serde_json::Value,
        now: Time,
    ) -> Result<(), Fatal> {
        self.conn
            .prepare_cached(
                "INSERT INTO audit (at, actor_id, actor_name, action, target, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                now.as_millis(),
                actor.token_id.map(|u| u.into_bytes()),
                actor.name,
                action,
                target,
                data.to_string()
            ])?;
        Ok(())
    }

    pub(super) fn create_token(
        &mut self,
        token: &TokenRecord,
        actor: &Actor,
        now: Time,
    ) -> Step<()> {
        let queues = match &token.queues {
            Some(q) => Some(to_json(q)?),
            None => None,
        };
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (id, name, role, queues, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                token.id.into_bytes(),
                token.name,
                token.role.as_str(),
                queues,
                token.hash,
                token.created_at.as_millis()
            ])?;
        let data =
            serde_json::json!({"name": token.name, "role": token.role, "queues": token.queues});
        self.audit(actor, "token.created", &token.id.to_string(), &data, now)?;
        Ok(Ok(()))
    }

    pub(super) fn delete_token(&mut self, id: Uuid, actor: &Actor, now: Time) -> Step<TokenRecord> {
        let Some(token) = self
            .conn
            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
            .query_row([id.into_bytes()], token_from_row)
            .optional()?
        else {
            return Ok(Err(StoreError::NotFound));
        };
        if token.role == Role::Admin {
            let admins: i64 = self
                .conn
                .prepare_cached("SELECT count(*) FROM tokens WHERE role = 'admin'")?
                .query_row([], |r| r.get(0))?;
            if admins <= 1 {
                return Ok(Err(StoreError::Conflict(
                    "this is the last admin token; create another admin token before deleting it"
                        .into(),
                )));
            }
        }
        self.conn
            .prepare_cached("DELETE FROM tokens WHERE id = ?1")?
            .execute([id.into_bytes()])?;
        let data = serde_json::json!({"name": token.name, "role": token.role});
        self.audit(actor, "token.deleted", &id.to_string(), &data, now)?;
        Ok(Ok(token))
    }

    pub(super) fn put_schema(
        &mut self,
        kind: &str,
        schema: &Json,
        actor: &Actor,
        now: Time,
    ) -> Step<SchemaRecord> {
        let version: i64 = self
            .conn
            .prepare_cached("SELECT version FROM schemas WHERE kind = ?1")?
            .query_row([kind], |r| r.get(0))
            .optional()?
            .unwrap_or(0)
            + 1;
        self.conn
            .prepare_cached(
                "INSERT INTO schemas (kind, schema, version, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind) DO UPDATE SET schema = excluded.schema, version = excluded.version, updated_at = excluded.updated_at",
            )?
            .execute(params![kind, schema.get(), version, now.as_millis()])?;
        let data = serde_json::json!({"version": version});
        self.audit(actor, "schema.put", kind, &data, now)?;
        Ok(Ok(SchemaRecord {
            kind: kind.to_owned(),
            schema: schema.clone(),
            version,
            updated_at: now,
        }))
    }

    pub(super) fn delete_schema(&mut self, kind: &str, actor: &Actor, now: Time) -> Step<()> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM schemas WHERE kind = ?1")?
            .execute([kind])?;
        if n == 0 {
            return Ok(Err(StoreError::NotFound));
        }
        self.audit(actor, "schema.deleted", kind, &serde_json::json!({}), now)?;
        Ok(Ok(()))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, Fatal> {
    serde_json::to_string(v).map_err(|e| Fatal(StoreError::Internal(e.to_string())))
}

const TOKEN_COLUMNS: &str = "id, name, role, queues, hash, created_at";

fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = r.get(2)?;
    let queues: Option<String> = r.get(3)?;
    Ok(TokenRecord {
        id: uuid_col(r, 0)?,
        name: r.get(1)?,
        role: Role::parse(&role).ok_or_else(|| bad_column(2, format!("unknown role {role:?}")))?,
        queues: match queues {
            None => None,
            Some(q) => Some(serde_json::from_str(&q).map_err(|e| bad_column(3, e.to_string()))?),
        },
        hash: r.get(4)?,
        created_at: Time::from_millis(r.get(5)?),
    })
}

fn bad_column(i: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
}

pub(super) fn read_tokens(conn: &Connection) -> rusqlite::Result<Vec<TokenRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"
    ))?
    .query_map([], token_from_row)?
    .collect()
}

pub(super) fn read_schemas(conn: &Connection) -> rusqlite::Result<Vec<SchemaRecord>> {
    conn.prepare_cached("SELECT kind, schema, version, updated_at FROM schemas ORDER BY kind")?
        .query_map([], |r| {
            let text: String = r.get(1)?;
            Ok(SchemaRecord {
                kind: r.get(0)?,
                schema: Json::from_text(text).map_err(|e| bad_column(1, e.to_string()))?,
                version: r.get(2)?,
                updated_at: Time::from_millis(r.get(3)?),
            })
        })?
        .collect()
}

/// Newest first; `before` is the previous page's last `seq`.
pub(super) fn read_audit(
    conn: &Connection,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<AuditEntry>> {
    conn.prepare_cached(
        "SELECT seq, at, actor_id, actor_name, action, target, data FROM audit \
         WHERE ?1 IS NULL OR seq < ?1 ORDER BY seq DESC LIMIT ?2",
    )?
    .query_map(params![before, limit as i64], |r| {
        let actor_id: Option<[u8; 16]> = r.get(2)?;
        let data: String = r.get(6)?;
        Ok(AuditEntry {
            seq: r.get(0)?,
            at: Time::from_millis(r.get(1)?),
            actor: Actor {
                token_id: actor_id.map(Uuid::from_bytes),
                name: r.get(3)?,
            },
            action: r.get(4)?,
            target: r.get(5)?,
            data: serde_json::from_str(&data).map_err(|e| bad_column(6, e.to_string()))?,
        })
    })?
    .collect()
}
