//! Payload schemas: one JSON Schema (2020-12) per job kind, checked at enqueue.
//!
//! Invariants:
//! - A schema is checked against the 2020-12 meta-schema and compiled before it is stored; one
//!   that fails either is `422` and is not stored. Compiling never reaches the network or the
//!   file system (jsonschema is built without resolvers), so a `$ref` to a URL is refused, not
//!   fetched, and `pattern`s use the linear-time `regex` engine, so a hostile pattern cannot stall
//!   a request.
//! - Validation happens at enqueue only: a schema change never touches jobs already stored.
//! - The compiled validators live in memory, rebuilt from storage after every schema change and
//!   before that change is acknowledged, so the next enqueue sees it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jsonschema::{PatternOptions, Validator};
use keel_core::{FieldError, Json};
use keel_store::{Store, StoreError};
use serde_json::Value;

use crate::wire::At;

/// At most this many violations are reported per payload; more are summarised in one item.
const MAX_REPORTED: usize = 50;
/// Violation messages can quote the payload; they are cut to this many characters.
const MAX_MESSAGE: usize = 300;

pub(crate) struct Schemas {
    by_kind: RwLock<HashMap<String, Arc<Validator>>>,
}

impl Schemas {
    pub(crate) async fn load(store: &dyn Store) -> Result<Schemas, StoreError> {
        let schemas = Schemas {
            by_kind: RwLock::new(HashMap::new()),
        };
        schemas.reload(store).await?;
        Ok(schemas)
    }

    pub(crate) async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut map = HashMap::new();
        for record in store.schemas().await? {
            let value: Value = serde_json::from_str(record.schema.get())
                .map_err(|e| StoreError::Internal(format!("stored schema {}: {e}", record.kind)))?;
            match compile(&value) {
                Ok(v) => {
                    map.insert(record.kind, Arc::new(v));
                }
                // It compiled when stored; if a later version of keel refuses it, enqueues of
                // that kind go unchecked rather than all failing, and an operator is told.
                Err(errors) => tracing::error!(
                    message = "A stored payload schema no longer compiles; its kind is not checked.",
                    kind = %record.kind,
                    error = %errors.first().map(|e| e.message.as_str()).unwrap_or("")
                ),
            }
        }
        if let Ok(mut by_kind) = self.by_kind.write() {
            *by_kind = map;
        }
        Ok(())
    }

    fn get(&self, kind: &str) -> Option<Arc<Validator>> {
        self.by_kind.read().ok()?.get(kind).cloned()
    }

    /// Checks `payload` against `kind`'s schema (if any); pushes one error per violation with a
    /// pointer under `at` (the job's pointer in the request body: `""` or `/jobs/3`).
    pub(crate) fn check(
        &self,
        kind: &str,
        payload: &Json,
        at: At<'_>,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(validator) = self.get(kind) else {
            return;
        };
        let Ok(value) = serde_json::from_str::<Value>(payload.get()) else {
            return; // unreachable: the payload was parsed as JSON already
        };
        let mut n = 0;
        for e in validator.iter_errors(&value) {
            n += 1;
            if n > MAX_REPORTED {
                continue;
            }
            errors.push(FieldError::new(
                format!("{at}/payload{}", e.instance_path().as_str()),
                cut(&e.to_string()),
            ));
        }
        if n > MAX_REPORTED {
            errors.push(FieldError::new(
                format!("{at}/payload"),
                format!(
                    "{} more violations of the {kind:?} schema not listed",
                    n - MAX_REPORTED
                ),
            ));
        }
    }
}

/// Checks `schema` against the 2020-12 meta-schema and compiles it. Errors point into the
/// `PUT` body (`/schema/...`).
pub(crate) fn compile(schema: &Value) -> Result<Validator, Vec<FieldError>> {
    let meta = jsonschema::draft202012::meta::validator();
    let errors: Vec<FieldError> = meta
        .iter_errors(schema)
        .take(MAX_REPORTED)
        .map(|e| {
            FieldError::new(
                format!("/schema{}", e.instance_path().as_str()),
                cut(&e.to_string()),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    jsonschema::draft202012::options()
        .with_pattern_options(PatternOptions::regex())
        // 2020-12 makes `format` an annotation; asserting it would make results depend on this
        // library's reading of "email" or "uri".
        .should_validate_formats(false)
        .build(schema)
        .map_err(|e| {
            vec![FieldError::new(
                format!("/schema{}", e.schema_path().as_str()),
                cut(&e.to_string()),
            )]
        })
}

fn cut(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut s: String = message.chars().take(MAX_MESSAGE).collect();
    s.push('…');
    s
}
