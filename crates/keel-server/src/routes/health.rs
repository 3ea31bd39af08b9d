//! The endpoints that need no token: `/healthz` (the process answers), `/readyz` (storage can
//! take writes) and `/v1/openapi.json`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::ApiError;

pub(crate) async fn openapi() -> Json<Value> {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(crate::openapi::document).clone())
}

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(crate) async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(2), st.store.check_ready()).await {
        Ok(Ok(())) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::StorageUnavailable(e.to_string())),
        Err(_) => Err(ApiError::StorageUnavailable(
            "storage did not answer within 2 s".into(),
        )),
    }
}
