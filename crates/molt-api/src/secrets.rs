//! `/v1/apps/{app}/secrets`: set, list and remove an app's secrets. A value comes in a
//! request body and never goes out: answers carry names and versions only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use molt_wire::SecretDelivery;

use crate::auth::Principal;
use crate::{ok, ApiError, ApiResult, ApiState};

/// `POST /v1/apps/{app}/secrets`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretBody {
    name: String,
    /// The value as text.
    value: Option<String>,
    /// Or as standard base64: any bytes, for a secret delivered as a file.
    value_base64: Option<String>,
    #[serde(default)]
    delivery: SecretDelivery,
}

impl SecretBody {
    /// The value's bytes; the refusals never quote it.
    fn into_value(self) -> Result<(String, Vec<u8>, SecretDelivery), ApiError> {
        let refuse = |why: &str| Err(ApiError(StatusCode::BAD_REQUEST, why.to_owned()));
        let value = match (self.value, self.value_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) if self.delivery == SecretDelivery::File => {
                // Any padding bits: a generator's `AB==` is as good as `AQ==`.
                let engine = GeneralPurpose::new(
                    &alphabet::STANDARD,
                    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
                );
                match engine.decode(encoded.as_bytes()) {
                    Ok(bytes) => bytes,
                    Err(_) => return refuse("value_base64 is not standard base64"),
                }
            }
            (None, Some(_)) => {
                return refuse(
                    "value_base64 is for a secret delivered as a file (\"delivery\": \"file\"); \
                     an environment variable takes text in \"value\"",
                )
            }
            _ => return refuse("give the secret's value in exactly one of value and value_base64"),
        };
        Ok((self.name, value, self.delivery))
    }
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
    let (name, value, delivery) = body.into_value()?;
    ok(s.controller
        .set_secret(&app, &name, value, delivery, &by.name)
        .await?)
}

/// `DELETE /v1/apps/{app}/secrets/{secret}`: gone from the next release (deployed now).
pub(crate) async fn remove(
    State(s): State<ApiState>,
    Path((app, secret)): Path<(String, String)>,
) -> ApiResult {
    ok(s.controller.remove_secret(&app, &secret).await?)
}
