//! `/v1/tokens` and `/v1/audit`: making, listing and revoking tokens, and reading the audit
//! trail (admin only, see `roles.rs`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use molt_control::StoredToken;
use molt_wire::{TokenCreated, TokenRecord, TokenRequest};
use serde::Deserialize;

use crate::auth::{new_secret, token_hash, Principal};
use crate::{ok, ApiError, ApiResult, ApiState};

/// The longest expiry a token may get: 10 years.
const MAX_EXPIRY_SECS: u64 = 10 * 365 * 24 * 3600;

/// `POST /v1/tokens`: a new token; its secret is in this answer and nowhere else.
pub(crate) async fn create(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Json(req): Json<TokenRequest>,
) -> ApiResult {
    let expires_ms = match req.expires_in_secs {
        None => None,
        Some(secs) if (1..=MAX_EXPIRY_SECS).contains(&secs) => {
            Some(s.controller.clock_ms().saturating_add(secs * 1000))
        }
        Some(secs) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("expires_in_secs must be 1 to {MAX_EXPIRY_SECS}, not {secs}"),
            ))
        }
    };
    let secret = new_secret();
    let record = TokenRecord {
        name: req.name,
        role: req.role,
        apps: req.apps,
        expires_ms,
        created_ms: s.controller.clock_ms(),
        created_by: by.name,
        revoked_ms: None,
    };
    s.controller
        .create_token(StoredToken {
            record: record.clone(),
            hash: token_hash(&secret),
        })
        .await?;
    reload(&s).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            token: record,
            secret,
        }),
    )
        .into_response())
}

/// `GET /v1/tokens`: every token, revoked ones included; never a secret nor its hash.
pub(crate) async fn list(State(s): State<ApiState>) -> ApiResult {
    let tokens: Vec<TokenRecord> = s
        .controller
        .stored_tokens()
        .await?
        .into_iter()
        .map(|token| token.record)
        .collect();
    ok(tokens)
}

/// `DELETE /v1/tokens/{name}`: the token stops working at once.
pub(crate) async fn revoke(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Path(name): Path<String>,
) -> ApiResult {
    if by.name == name {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("token '{name}' cannot revoke itself: use another admin token"),
        ));
    }
    let record = s.controller.revoke_token(&name).await?;
    reload(&s).await?;
    ok(record)
}

async fn reload(s: &ApiState) -> Result<(), ApiError> {
    s.auth
        .reload()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// `?app=&limit=` of the audit trail.
#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    app: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/audit`: the newest mutating calls, oldest first.
pub(crate) async fn audit(State(s): State<ApiState>, Query(q): Query<AuditQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(100).min(10_000);
    ok(s.controller.audit(q.app, limit).await?)
}
