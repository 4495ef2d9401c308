//! `/v1/apps/{app}/secrets`: set, list and remove an app's secrets. A value comes in a
//! request body and never goes out: answers carry names and versions only.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;

use crate::auth::Principal;
use crate::{ok, ApiResult, ApiState};

/// `POST /v1/apps/{app}/secrets`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretBody {
    name: String,
    value: String,
}

/// `GET /v1/apps/{app}/secrets`: names, versions, who and when (secrets may be set before
/// the app's first deployment, which then gets them).
pub(crate) async fn list(State(s): State<ApiState>, Path(app): Path<String>) -> ApiResult {
    ok(s.controller.secrets(&app).await?)
}

/// `POST /v1/apps/{app}/secrets`: a new version, and a new release deployed with it.
pub(crate) async fn set(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Path(app): Path<String>,
    Json(body): Json<SecretBody>,
) -> ApiResult {
    ok(s.controller
        .set_secret(&app, &body.name, body.value.into_bytes(), &by.name)
        .await?)
}

/// `DELETE /v1/apps/{app}/secrets/{secret}`: gone from the next release (deployed now).
pub(crate) async fn remove(
    State(s): State<ApiState>,
    Path((app, secret)): Path<(String, String)>,
) -> ApiResult {
    ok(s.controller.remove_secret(&app, &secret).await?)
}
