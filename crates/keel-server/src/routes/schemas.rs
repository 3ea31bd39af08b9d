//! Payload schemas per kind: put (create or replace), get, list, delete.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::validate::check_name;
use keel_core::{Json as RawJson, Time};
use keel_store::{SchemaRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::AppState;
use crate::auth::{Caller, Need};
use crate::extract::Body;
use crate::problem::ApiError;
use crate::schemas::compile;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaBody {
    /// A JSON Schema (2020-12): an object or a boolean.
    schema: Value,
}

/// A kind's payload schema.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Schema)]
pub(crate) struct SchemaView {
    kind: String,
    #[schema(value_type = serde_json::Value)]
    schema: RawJson,
    #[schema(minimum = 1)]
    version: i64,
    updated_at: Time,
}

impl From<SchemaRecord> for SchemaView {
    fn from(r: SchemaRecord) -> SchemaView {
        SchemaView {
            kind: r.kind,
            schema: r.schema,
            version: r.version,
            updated_at: r.updated_at,
        }
    }
}

fn no_schema(kind: &str) -> ApiError {
    ApiError::NotFound(format!("kind {kind:?} has no payload schema"))
}

#[utoipa::path(
    put,
    path = "/v1/schemas/{kind}",
    operation_id = "putSchema",
    summary = "Set a kind's payload schema (JSON Schema 2020-12)",
    tag = "schemas",
    params(
        ("kind" = crate::openapi::Name, Path, description = "The job kind.")
    ),
    request_body = SchemaBody,
    responses(
        (status = 201, description = "Created.", body = SchemaView),
        (status = 200, description = "Replaced.", body = SchemaView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put(
    State(st): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
    Body(body): Body<SchemaBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureSchemas)?;
    if let Err(m) = check_name(&kind) {
        return Err(ApiError::field("", format!("the kind in the path {m}")));
    }
    compile(&body.schema).map_err(ApiError::Validation)?;
    let record = st
        .store
        .put_schema(
            &kind,
            RawJson::from_value(&body.schema),
            &caller.actor(),
            st.clock.now(),
        )
        .await?;
    st.schemas.reload(&*st.store).await?;
    tracing::info!(message = "Payload schema set.", kind = %kind, version = record.version, by = %caller.0.name);
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SchemaView::from(record))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/schemas/{kind}",
    operation_id = "getSchema",
    summary = "A kind's payload schema",
    tag = "schemas",
    params(
        ("kind" = crate::openapi::Name, Path, description = "The job kind.")
    ),
    responses(
        (status = 200, description = "The schema.", body = SchemaView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadSchemas)?;
    let record = st
        .store
        .schemas()
        .await?
        .into_iter()
        .find(|s| s.kind == kind)
        .ok_or_else(|| no_schema(&kind))?;
    Ok(Json(SchemaView::from(record)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/schemas",
    operation_id = "listSchemas",
    summary = "Every payload schema",
    tag = "schemas",
    responses(
        (status = 200, description = "Schemas.", body = [SchemaView])
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Need::ReadSchemas)?;
    let all: Vec<SchemaView> = st
        .store
        .schemas()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(all).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/schemas/{kind}",
    operation_id = "deleteSchema",
    summary = "Stop checking a kind's payloads",
    tag = "schemas",
    params(
        ("kind" = crate::openapi::Name, Path, description = "The job kind.")
    ),
    responses(
        (status = 204, description = "Deleted.")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(kind): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureSchemas)?;
    st.store
        .delete_schema(&kind, &caller.actor(), st.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => no_schema(&kind),
            other => other.into(),
        })?;
    st.schemas.reload(&*st.store).await?;
    tracing::info!(message = "Payload schema deleted.", kind = %kind, by = %caller.0.name);
    Ok(StatusCode::NO_CONTENT.into_response())
}
