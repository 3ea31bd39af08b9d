//! Tokens (admin only) and the audit log (admin and viewer).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::access::check_pattern;
use keel_core::validate::check_name;
use keel_core::{FieldError, Role, Time};
use keel_store::{AuditEntry, StoreError, TokenRecord};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, Need, generate_token, new_record};
use crate::extract::Body;
use crate::problem::ApiError;

const MAX_PATTERNS: usize = 64;
const DEFAULT_AUDIT_PAGE: usize = 50;
const MAX_AUDIT_PAGE: usize = 500;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenBody {
    #[schema(value_type = crate::openapi::Name)]
    name: String,
    #[schema(value_type = Role)]
    role: String,
    /// Queue names or patterns (`*` matches any run of characters); absent: every queue.
    #[schema(value_type = Option<Vec<crate::openapi::QueuePattern>>, min_items = 1, max_items = 64)]
    queues: Option<Vec<String>>,
}

/// A token as reads show it: never the secret, never the hash.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Token)]
pub(crate) struct TokenView {
    id: Uuid,
    name: String,
    role: Role,
    /// null: every queue.
    #[schema(required)]
    queues: Option<Vec<String>>,
    created_at: Time,
    /// Only in the answer to `POST /v1/tokens`, the one time the secret is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> TokenView {
        TokenView {
            id: t.id,
            name: t.name,
            role: t.role,
            queues: t.queues,
            created_at: t.created_at,
            token: None,
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/tokens",
    operation_id = "createToken",
    summary = "Create an API token (its secret is shown only here)",
    tag = "admin",
    request_body = NewTokenBody,
    responses(
        (status = 201, description = "The token, with its secret in `token`.", body = TokenView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    Body(body): Body<NewTokenBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::ManageTokens)?;
    let mut errors = vec![];
    if let Err(m) = check_name(&body.name) {
        errors.push(FieldError::new("/name", m));
    }
    let role = Role::parse(&body.role);
    if role.is_none() {
        errors.push(FieldError::new(
            "/role",
            "must be one of admin, producer, worker, viewer",
        ));
    }
    if let Some(patterns) = &body.queues {
        if role == Some(Role::Admin) {
            errors.push(FieldError::new(
                "/queues",
                "admin tokens are not scoped (an admin can create any token); leave queues out",
            ));
        }
        if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
            errors.push(FieldError::new(
                "/queues",
                format!("must hold 1 to {MAX_PATTERNS} patterns; leave it out for every queue"),
            ));
        }
        for (i, p) in patterns.iter().enumerate() {
            if let Err(m) = check_pattern(p) {
                errors.push(FieldError::new(format!("/queues/{i}"), m));
            }
        }
    }
    let Some(role) = role.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let secret = generate_token()?;
    let now = st.clock.now();
    let record = new_record(body.name, role, body.queues, &secret, now);
    st.store
        .create_token(record.clone(), &caller.actor(), now)
        .await?;
    st.auth.reload(&*st.store).await?;
    tracing::info!(message = "Token created.", token_id = %record.id, role = role.as_str(), by = %caller.0.name);
    let mut view = TokenView::from(record);
    view.token = Some(secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/tokens",
    operation_id = "listTokens",
    summary = "Every token, without secrets",
    tag = "admin",
    responses(
        (status = 200, description = "Tokens.", body = [TokenView])
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_tokens(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Need::ManageTokens)?;
    let tokens: Vec<TokenView> = st
        .store
        .tokens()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(tokens).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    operation_id = "deleteToken",
    summary = "Revoke a token at once",
    tag = "admin",
    params(
        ("id" = String, Path, description = "The token's id.")
    ),
    responses(
        (status = 204, description = "Revoked.")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_token(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ManageTokens)?;
    let no_token = || ApiError::NotFound(format!("no token has id {id:?}"));
    let token_id = Uuid::parse_str(&id).map_err(|_| no_token())?;
    st.store
        .delete_token(token_id, &caller.actor(), st.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => no_token(),
            other => other.into(),
        })?;
    st.auth.reload(&*st.store).await?;
    tracing::info!(message = "Token deleted.", token_id = %token_id, by = %caller.0.name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AuditPage)]
pub(crate) struct AuditView {
    entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; null on the last.
    #[schema(required)]
    next_cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
struct AuditEntryView {
    seq: i64,
    at: Time,
    actor: ActorView,
    action: String,
    target: String,
    data: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Actor)]
struct ActorView {
    /// null: the server itself or the command line.
    #[schema(required)]
    token_id: Option<Uuid>,
    name: String,
}

impl From<AuditEntry> for AuditEntryView {
    fn from(e: AuditEntry) -> AuditEntryView {
        AuditEntryView {
            seq: e.seq,
            at: e.at,
            actor: ActorView {
                token_id: e.actor.token_id,
                name: e.actor.name,
            },
            action: e.action,
            target: e.target,
            data: e.data,
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "audit",
    summary = "Admin changes, newest first",
    tag = "admin",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Default 50."),
        ("cursor" = Option<String>, Query, description = "The next_cursor of the previous page.")
    ),
    responses(
        (status = 200, description = "A page of entries.", body = AuditView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn audit(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadAudit)?;
    if caller.scope() != keel_core::Scope::All {
        return Err(ApiError::Forbidden(
            "the audit log spans every queue; only a token without queue patterns may read it"
                .into(),
        ));
    }
    let Query(params) = query.map_err(|e| ApiError::field("", format!("bad query string: {e}")))?;
    let (mut limit, mut before) = (DEFAULT_AUDIT_PAGE, None);
    let mut errors = vec![];
    for (key, value) in params {
        match key.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_AUDIT_PAGE).contains(&n) => limit = n,
                _ => errors.push(FieldError::new(
                    "/limit",
                    format!("must be an integer from 1 to {MAX_AUDIT_PAGE}"),
                )),
            },
            "cursor" => match value.parse::<i64>() {
                Ok(n) if n > 0 => before = Some(n),
                _ => errors.push(FieldError::new(
                    "/cursor",
                    "is not a cursor returned by this endpoint",
                )),
            },
            _ => errors.push(FieldError::new(
                format!("/{key}"),
                "is not a known query parameter",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut entries = st.store.audit_log(before, limit + 1).await?;
    let next_cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(AuditView {
        entries: entries.into_iter().map(Into::into).collect(),
        next_cursor,
    })
    .into_response())
}
