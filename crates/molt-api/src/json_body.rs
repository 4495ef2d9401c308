//! What a JSON request body must be before a handler reads it: nothing, or one object (serde
//! would also read a struct from an array, `[true]`, which no client means), read whole within
//! the body limit. Numbers that are whole but written with a fraction (`14.0`) are integers, as JSON
//! Schema counts them, so a field the document types as `integer` takes them.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Number, Value};

use crate::ApiError;

/// The largest JSON body read (axum's default body limit).
const MAX_JSON_BODY: usize = 2 << 20;

/// Checks and normalizes a JSON request body; anything else passes untouched.
pub(crate) async fn objects_only(request: Request, next: Next) -> Response {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, MAX_JSON_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a JSON body may be at most {MAX_JSON_BODY} bytes"),
            )
            .into_response()
        }
    };
    // No body at all: the handler says whether it needs one (a GET sent with the JSON
    // content type, as clients do, is fine).
    if bytes.trim_ascii().is_empty() {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            return ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
            .into_response()
        }
    };
    if !value.is_object() {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object ({\"…\": …})".into(),
        )
        .into_response();
    }
    let body = serde_json::to_vec(&whole_numbers(value)).unwrap_or_else(|_| bytes.to_vec());
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// `value` with every whole number written with a fraction made an integer.
fn whole_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => Value::Number(whole(&n).unwrap_or(n)),
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key, whole_numbers(value)))
                .collect(),
        ),
        other => other,
    }
}

/// The integer a float stands for, when it is whole and in range.
fn whole(n: &Number) -> Option<Number> {
    let f = n.as_f64().filter(|_| n.is_f64())?;
    if f.fract() != 0.0 || !f.is_finite() {
        return None;
    }
    if f >= 0.0 && f < u64::MAX as f64 {
        Some(Number::from(f as u64))
    } else if f < 0.0 && f >= i64::MIN as f64 {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_floats_become_integers_and_others_stay() {
        let value = json!({ "a": 14.0, "b": [1.5, -3.0, 7], "c": { "d": 1e300 } });
        let normalized = whole_numbers(value);
        assert_eq!(normalized["a"], json!(14));
        assert_eq!(normalized["b"], json!([1.5, -3, 7]));
        assert!(normalized["c"]["d"].is_f64());
    }
}
