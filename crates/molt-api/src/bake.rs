//! `POST /v1/bake` (a build context as a tar body) and `GET /v1/images/diff`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use molt_control::{BakeRequest, SourceInfo};
use serde::Deserialize;

use crate::{ok, rand_suffix, receive_to_file, ApiError, ApiResult, ApiState};

#[derive(Deserialize)]
pub(crate) struct BakeQuery {
    /// `git rev-parse HEAD` of the app folder.
    commit: Option<String>,
    /// Whether the app folder had uncommitted changes.
    #[serde(default)]
    dirty: bool,
    /// The client's `SOURCE_DATE_EPOCH`.
    #[serde(default)]
    source_date_epoch: u64,
    /// Tag the image.
    tag: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    a: String,
    b: String,
}

pub(crate) async fn bake(
    State(s): State<ApiState>,
    Query(q): Query<BakeQuery>,
    body: Body,
) -> ApiResult {
    if let Some(commit) = &q.commit {
        if commit.is_empty() || commit.len() > 64 || !commit.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "commit must be a hex git object id".into(),
            ));
        }
    }
    let path = s.upload_dir.join(format!("context-{}.tar", rand_suffix()));
    let mut received = false;
    let result = async {
        receive_to_file(body, &path).await?;
        received = true;
        let request = BakeRequest {
            context_tar: path.clone(),
            source: SourceInfo {
                commit: q.commit,
                dirty: q.dirty,
            },
            source_date_epoch: q.source_date_epoch,
            tag: q.tag,
        };
        Ok::<_, ApiError>(s.controller.bake(request).await?)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    match result {
        Ok(report) => Ok((StatusCode::CREATED, Json(report)).into_response()),
        // The rest of the upload was not read: the connection cannot be reused.
        Err(e) if !received => {
            let mut response = e.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn diff(State(s): State<ApiState>, Query(q): Query<DiffQuery>) -> ApiResult {
    ok(s.controller.image_diff(q.a, q.b).await?)
}
