//! The endpoints that need no token: `/healthz` (the process answers), `/readyz` (storage can
//! take writes) and `/v1/openapi.json`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AppState;
use crate::problem::ApiError;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    #[schema(pattern = "^(ok|ready)$")]
    status: &'static str,
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    summary = "This document",
    tag = "operations",
    responses(
        (status = 200, description = "OpenAPI 3.1.", body = Object)
    ),
    security(())
)]
pub(crate) async fn openapi(State(st): State<AppState>) -> impl IntoResponse {
    let doc = st.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], doc)
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    summary = "The process answers",
    tag = "operations",
    responses(
        (status = 200, description = "Alive.", body = Health)
    ),
    security(())
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    summary = "Storage takes writes",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Health),
        (status = 503, description = "Storage unavailable; see Retry-After.", body = crate::problem::Problem, content_type = "application/problem+json")
    ),
    security(())
)]
pub(crate) async fn readyz(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), st.store.check_ready()).await {
        Ok(Ok(())) => Ok(Json(Health { status: "ready" })),
        Ok(Err(e)) => Err(ApiError::StorageUnavailable(e.to_string())),
        Err(_) => Err(ApiError::StorageUnavailable(
            "storage did not answer within 2 s".into(),
        )),
    }
}
