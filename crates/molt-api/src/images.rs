//! Image routes: import (streamed to disk), inspect, tags and their history, removal, export
//! (streamed from the store) and image-only GC.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use molt_control::{ArchiveFormat, ImportFormat, ImportOptions};
use serde::Deserialize;

use crate::auth::Principal;
use crate::{ok, receive_to_file, upload_path, ApiError, ApiResult, ApiState};

#[derive(Deserialize)]
pub(crate) struct ImportQuery {
    tag: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    format: ImportFormat,
    reference: Option<String>,
}

/// `POST /v1/images`: the body (a tree tar, OCI or Docker archive) is streamed to a file in
/// the upload dir, imported, and the file removed.
pub(crate) async fn import_image(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult {
    let path = upload_path(&s);
    let mut received = false;
    let result = async {
        receive_to_file(body, &path).await?;
        received = true;
        let options = ImportOptions {
            tag: q.tag,
            force: q.force,
            actor: Some(by.name.clone()),
            format: q.format,
            reference: q.reference,
        };
        // An archive the image store refuses is the client's fault (400): the controller says
        // so by the error's kind.
        Ok::<_, ApiError>(
            s.controller
                .import_image_file(path.clone(), options)
                .await?,
        )
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    match result {
        Ok(outcome) => Ok((StatusCode::CREATED, Json(outcome)).into_response()),
        // The rest of the upload was not read: the connection cannot be reused.
        Err(e) if !received => {
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

/// `GET /v1/images/{reference}`.
pub(crate) async fn inspect_image(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
) -> ApiResult {
    ok(s.controller.inspect_image(&reference).await?)
}

/// `DELETE /v1/images/{reference}`.
pub(crate) async fn remove_image(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
) -> ApiResult {
    ok(s.controller.remove_image(&reference).await?)
}

/// `GET /v1/images/{reference}/history`: a digest's or a tag's history.
pub(crate) async fn image_history(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
) -> ApiResult {
    ok(s.controller.image_history(Some(reference)).await?)
}

/// `GET /v1/tags/history`: every tag change.
pub(crate) async fn tag_history(State(s): State<ApiState>) -> ApiResult {
    ok(s.controller.image_history(None).await?)
}

#[derive(Deserialize)]
pub(crate) struct TagBody {
    tag: String,
    #[serde(default)]
    force: bool,
}

/// `POST /v1/images/{reference}/tags`.
pub(crate) async fn tag_image(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Path(reference): Path<String>,
    Json(body): Json<TagBody>,
) -> ApiResult {
    ok(s.controller
        .tag_image(&reference, &body.tag, body.force, Some(&by.name))
        .await?)
}

#[derive(Deserialize)]
pub(crate) struct ExportQuery {
    format: Option<String>,
    name: Option<String>,
}

/// `GET /v1/images/{reference}/export?format=oci|docker&name=…`: the archive, streamed as it
/// is written. A failure after the first byte aborts the response, so a client never mistakes
/// a cut archive for a whole one.
pub(crate) async fn export_image(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
    Query(q): Query<ExportQuery>,
) -> ApiResult {
    let format: ArchiveFormat = q
        .format
        .as_deref()
        .unwrap_or("oci")
        .parse()
        .map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?;
    let export = s
        .controller
        .export_image(&reference, format, q.name)
        .await?;
    let mut chunks = export.chunks;
    let stream = futures_util::stream::poll_fn(move |cx| {
        chunks.poll_recv(cx).map(|next| {
            next.map(|chunk| chunk.map(bytes::Bytes::from).map_err(std::io::Error::other))
        })
    });
    let filename = format!("{}.{format}.tar", export.digest.short());
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(export.digest.as_str()) {
        headers.insert("x-molt-digest", v);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub(crate) struct PushBody {
    target: String,
    mount_from: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `POST /v1/images/{reference}/push`: push to a registry (credentials in the body, never
/// logged).
pub(crate) async fn push_image(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
    Json(body): Json<PushBody>,
) -> ApiResult {
    let credentials = molt_control::credentials(body.username, body.password);
    ok(s.controller
        .push_image(&reference, &body.target, credentials, body.mount_from)
        .await?)
}

/// `POST /v1/images/pull`: pull from a registry into the store.
pub(crate) async fn pull_image(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Json(mut body): Json<molt_control::PullRequest>,
) -> ApiResult {
    body.actor = Some(by.name.clone());
    let outcome = s.controller.pull_image(body).await?;
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}

#[derive(Deserialize)]
pub(crate) struct GcBody {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/images/gc`: collect images nothing keeps and sweep the image store.
pub(crate) async fn gc_images(State(s): State<ApiState>, Json(body): Json<GcBody>) -> ApiResult {
    ok(s.controller.gc_images(body.dry_run).await?)
}

/// `POST /v1/images/{reference}/signatures`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignatureBody {
    public_key: String,
    signature: String,
}

/// `POST /v1/images/{reference}/signatures`: a signature checked and kept with the image.
pub(crate) async fn sign_image(
    State(s): State<ApiState>,
    Extension(by): Extension<Principal>,
    Path(reference): Path<String>,
    Json(body): Json<SignatureBody>,
) -> ApiResult {
    let signature = s
        .controller
        .sign_image(&reference, &body.public_key, &body.signature, &by.name)
        .await?;
    Ok((StatusCode::CREATED, Json(signature)).into_response())
}

/// `GET /v1/images/{reference}/signatures`.
pub(crate) async fn image_signatures(
    State(s): State<ApiState>,
    Path(reference): Path<String>,
) -> ApiResult {
    ok(s.controller.image_signatures(&reference).await?)
}
