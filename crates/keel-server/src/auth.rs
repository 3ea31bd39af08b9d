//! Authentication (who is calling) and authorisation (may they do this, to this queue).
//!
//! Invariants:
//! - Every `/v1` route except the OpenAPI document runs behind `admit` (its `authenticate`), which either
//!   attaches a [`Caller`] or answers `401`; a handler cannot run without a caller, because
//!   [`Caller`] is an extractor that fails when the middleware did not attach one.
//! - Which role may do what is decided in one table, [`permits`]. Handlers state what they need
//!   (`caller.require(Need::…)`) and pass the caller's scope down to the store, which filters
//!   lists and refuses commands on jobs outside it as `NotFound`.
//! - A token is known only by the SHA-256 of its secret. The presented token is hashed, looked up
//!   by hash and compared again in constant time; the secret itself is never stored or logged.
//! - Revocation is immediate: the in-memory token table is rebuilt from storage after every token
//!   change, before the change is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_core::access::{api_token_hash, hashes_equal};
use keel_core::{Role, Scope, Time};
use keel_store::{Actor, Store, StoreError, TokenRecord};
use uuid::Uuid;

use crate::AppState;
use crate::limit::{Budget, RateLimiter, take_slot};
use crate::problem::ApiError;

/// What a route needs from its caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    Enqueue,
    ReadJobs,
    CancelJobs,
    RetryJobs,
    Work,
    ReadQueues,
    ConfigureQueues,
    ReadSchemas,
    ConfigureSchemas,
    ReadSchedules,
    ConfigureSchedules,
    ManageTokens,
    ReadAudit,
}

/// The role table of API.md: admin everything; producer enqueue, read and cancel; worker lease
/// and report, read; viewer every read except tokens.
pub(crate) fn permits(role: Role, need: Need) -> bool {
    use Need::*;
    match role {
        Role::Admin => true,
        Role::Producer => matches!(need, Enqueue | ReadJobs | CancelJobs),
        Role::Worker => matches!(need, Work | ReadJobs),
        Role::Viewer => matches!(
            need,
            ReadJobs | ReadQueues | ReadSchemas | ReadSchedules | ReadAudit
        ),
    }
}

/// The authenticated caller of a request.
#[derive(Debug)]
pub(crate) struct Principal {
    pub(crate) token_id: Option<Uuid>,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) scope: Scope,
}

#[derive(Clone, Debug)]
pub(crate) struct Caller(pub(crate) Arc<Principal>);

impl Caller {
    pub(crate) fn require(&self, need: Need) -> Result<(), ApiError> {
        if permits(self.0.role, need) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} token may not do this",
                self.0.role.as_str()
            )))
        }
    }

    /// The role check, then the queue scope check; both failures are `403`.
    pub(crate) fn require_queue(&self, need: Need, queue: &str) -> Result<(), ApiError> {
        self.require(need)?;
        if self.0.scope.allows(queue) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token may not use queue {queue:?}"
            )))
        }
    }

    pub(crate) fn sees(&self, queue: &str) -> bool {
        self.0.scope.allows(queue)
    }

    pub(crate) fn scope(&self) -> Scope {
        self.0.scope.clone()
    }

    pub(crate) fn actor(&self) -> Actor {
        Actor {
            token_id: self.0.token_id,
            name: self.0.name.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("route is not behind authentication".into()))
    }
}

/// The token table and how requests are authenticated.
pub(crate) struct Auth {
    /// `false` only with `--no-auth` (loopback): every request acts as an unscoped admin.
    enabled: bool,
    by_hash: RwLock<HashMap<String, Arc<Principal>>>,
    limiter: Option<RateLimiter>,
}

impl Auth {
    pub(crate) async fn load(
        store: &dyn Store,
        enabled: bool,
        limiter: Option<RateLimiter>,
    ) -> Result<Auth, StoreError> {
        let auth = Auth {
            enabled,
            by_hash: RwLock::new(HashMap::new()),
            limiter,
        };
        auth.reload(store).await?;
        Ok(auth)
    }

    /// Rebuilds the table from storage; called after every token change.
    pub(crate) async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let table: HashMap<String, Arc<Principal>> = store
            .tokens()
            .await?
            .into_iter()
            .map(|t| {
                let p = Principal {
                    token_id: Some(t.id),
                    name: t.name,
                    role: t.role,
                    scope: Scope::from_patterns(t.queues),
                };
                (t.hash, Arc::new(p))
            })
            .collect();
        if let Ok(mut map) = self.by_hash.write() {
            *map = table;
        }
        Ok(())
    }

    fn lookup(&self, token: &str) -> Option<Arc<Principal>> {
        let hash = api_token_hash(token);
        let map = self.by_hash.read().ok()?;
        // The map lookup is by hash, which reveals nothing about the secret; the final compare
        // is constant-time anyway, so no path depends on how much of a guess was right.
        map.get_key_value(&hash)
            .filter(|(stored, _)| hashes_equal(stored, &hash))
            .map(|(_, p)| p.clone())
    }

    fn no_auth_caller() -> Caller {
        Caller(Arc::new(Principal {
            token_id: None,
            name: "no-auth".into(),
            role: Role::Admin,
            scope: Scope::All,
        }))
    }
}

impl Auth {
    /// Whether tokens are checked at all (`false` only with `--no-auth`).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The one way in, for the API's bearer header and the UI's session cookie alike: the
    /// caller `token` belongs to (every request is an unscoped admin with `--no-auth`), or `401`
    /// for a missing, unknown or revoked token, or `429` over the token's rate limit.
    pub(crate) fn admit(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let caller = if self.enabled {
            let token = token.ok_or_else(|| {
                ApiError::Unauthorized("send Authorization: Bearer <token>".into())
            })?;
            match self.lookup(token) {
                Some(p) => Caller(p),
                None => {
                    return Err(ApiError::Unauthorized(
                        "the token is unknown or was revoked".into(),
                    ));
                }
            }
        } else {
            Auth::no_auth_caller()
        };
        if let (Some(limiter), Some(id)) = (&self.limiter, caller.0.token_id)
            && let Err(wait_ms) = limiter.check(id)
        {
            return Err(ApiError::RateLimited(wait_ms));
        }
        Ok(caller)
    }
}

/// Middleware for the job API, in one layer: takes an in-flight slot (or answers `429
/// overloaded` before any other work), then attaches the [`Caller`] or answers `401` (no or
/// unknown token) or `429` (over the token's rate limit). One layer rather than two: each route
/// layer costs every request a clone and a boxed future (docs/performance.md).
pub(crate) async fn admit(
    State((budget, st)): State<(Budget, AppState)>,
    mut req: Request,
    next: Next,
) -> Response {
    let slot = match take_slot(&budget, &mut req) {
        Ok(slot) => slot,
        Err(overloaded) => return overloaded.into_response(),
    };
    let res = match authenticate(&st, &mut req) {
        Ok(()) => next.run(req).await,
        Err(refused) => refused.into_response(),
    };
    drop(slot);
    res
}

/// Attaches the request's [`Caller`], or says why not.
fn authenticate(st: &AppState, req: &mut Request) -> Result<(), ApiError> {
    // The token is borrowed from the request's headers only while it is looked up: no copy of
    // the secret per request.
    let admitted = {
        let token = match req.headers().get(axum::http::header::AUTHORIZATION) {
            None => None,
            // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
            Some(header) => {
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
                    .filter(|t| !t.is_empty());
                if token.is_none() && st.auth.enabled {
                    return Err(ApiError::Unauthorized(
                        "the Authorization header must be \"Bearer <token>\"".into(),
                    ));
                }
                token
            }
        };
        st.auth.admit(token)
    };
    match admitted {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// A new API token: `keel_` and 64 hex digits (256 bits from the OS's CSPRNG).
pub fn generate_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Internal(format!("the OS random source failed: {e}")))?;
    let mut s = String::with_capacity(69);
    s.push_str("keel_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// Creates a token record for `secret` (which the caller shows once and never stores).
pub(crate) fn new_record(
    name: String,
    role: Role,
    queues: Option<Vec<String>>,
    secret: &str,
    now: Time,
) -> TokenRecord {
    TokenRecord {
        id: Uuid::now_v7(),
        name,
        role,
        queues,
        hash: api_token_hash(secret),
        created_at: now,
    }
}

/// On a store with no tokens at all, creates an admin token named `admin` and returns its secret
/// (to be shown once and written to `<data-dir>/admin.token`). Returns `None` when tokens exist.
pub async fn ensure_admin_token(
    store: &dyn Store,
    now: Time,
) -> Result<Option<String>, StoreError> {
    if !store.tokens().await?.is_empty() {
        return Ok(None);
    }
    let secret = generate_token()?;
    let record = new_record("admin".into(), Role::Admin, None, &secret, now);
    store
        .create_token(record, &Actor::system("bootstrap"), now)
        .await?;
    Ok(Some(secret))
}
