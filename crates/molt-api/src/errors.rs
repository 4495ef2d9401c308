//! Every error the API answers has the one documented body, `{"error": "...", "kind": "..."}`
//! (molt-wire's `ErrorBody`): the handlers' own errors already do; this turns the rest — what
//! axum's extractors refuse (a body that is not JSON, a path or query parameter of the wrong
//! type, a method the route does not have) and the fleet's endpoints' plain-text refusals —
//! into it, keeping the status and the words. A JSON body of the wrong shape is a `400` like
//! any other bad input (axum says `422`).

use axum::body::to_bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use molt_wire::ErrorBody;

use crate::error_kind;

/// The most of a refusal's text kept as its error message.
const MAX_MESSAGE: usize = 4096;

/// Rewrites an error response that is not JSON into the error body.
pub(crate) async fn as_error_body(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let status = match status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let (mut parts, body) = response.into_parts();
    let text = match to_bytes(body, MAX_MESSAGE).await {
        Ok(bytes) if !bytes.trim_ascii().is_empty() => {
            String::from_utf8_lossy(bytes.trim_ascii()).into_owned()
        }
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_lowercase(),
    };
    let body = ErrorBody {
        error: text,
        kind: error_kind(status).into(),
    };
    let mut answer = (status, Json(body)).into_response();
    // Keep what the refusal said besides its body (`Allow` of a 405, `Connection: close`).
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.drain().filter_map(|(n, v)| Some((n?, v))) {
        answer.headers_mut().insert(name, value);
    }
    answer
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}
