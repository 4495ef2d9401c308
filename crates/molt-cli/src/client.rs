//! A small HTTP client for molt's API (the CLI's only way to talk to `molt serve`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// An error the API answered with; `status` lets callers pick an exit code.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The server's message.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// The molt server could not be reached at all.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// A connection to the API.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: HyperClient<HttpConnector, RequestBody>,
}

/// A request body: bytes in memory, or chunks streamed from a file or a producer thread.
type RequestBody = BoxBody<Bytes, std::io::Error>;

/// Chunks of a streamed upload; an `Err` aborts it.
pub type UploadChunks = mpsc::Receiver<std::io::Result<Bytes>>;

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`) with `token`.
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// Finds the server and token: `--api`/`MOLT_API` and `MOLT_TOKEN` win; otherwise
    /// `serve.json` and `admin.token` in the data directory.
    pub fn discover(api: Option<String>, data_dir: &Path) -> Result<Client> {
        let base = match api {
            Some(a) => a,
            None => match std::fs::read_to_string(data_dir.join("serve.json")) {
                Ok(text) => {
                    let v: Value = serde_json::from_str(&text).with_context(|| {
                        format!("reading {}", data_dir.join("serve.json").display())
                    })?;
                    format!("http://{}", v["api"].as_str().unwrap_or("127.0.0.1:7070"))
                }
                Err(_) => "http://127.0.0.1:7070".to_string(),
            },
        };
        let token = match std::env::var("MOLT_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => read_token(&data_dir.join("admin.token"))?,
        };
        Ok(Client::new(&base, &token))
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(Method::GET, path, None, "application/json").await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(Method::POST, path, Some(bytes), "application/json")
            .await
    }

    /// POST raw bytes (an image tar).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        self.send(
            Method::POST,
            path,
            Some(Bytes::from(body)),
            "application/x-tar",
        )
        .await
    }

    /// DELETE a resource.
    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send(Method::DELETE, path, None, "application/json")
            .await
    }

    /// POST a tar streamed from `chunks` (never held in memory whole).
    pub async fn post_stream(&self, path: &str, chunks: UploadChunks) -> Result<Value> {
        let mut chunks = chunks;
        let stream = futures_util::stream::poll_fn(move |cx| {
            chunks
                .poll_recv(cx)
                .map(|next| next.map(|chunk| chunk.map(Frame::data)))
        });
        let body = BodyExt::boxed(StreamBody::new(stream));
        let resp = self
            .request(Method::POST, path, body, "application/x-tar")
            .await?;
        answer(resp).await
    }

    /// GET a (large) body and stream it into `out`; returns the response headers.
    ///
    /// An error answer is read as JSON and returned as `ApiError`; a body cut short (the
    /// server failed mid-way) is an error, never a silent short file.
    pub async fn get_to_file(
        &self,
        path: &str,
        out: &mut tokio::fs::File,
    ) -> Result<hyper::HeaderMap> {
        let empty = BodyExt::boxed(Full::new(Bytes::new()).map_err(|never| match never {}));
        let resp = self
            .request(Method::GET, path, empty, "application/json")
            .await?;
        if !resp.status().is_success() {
            answer(resp).await?;
            bail!("unexpected answer");
        }
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| anyhow!("the download broke off: {e}; the server log says why"))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.context("writing the download")?;
            }
        }
        out.flush().await.context("writing the download")?;
        Ok(headers)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &str,
    ) -> Result<Value> {
        let first = self
            .send_once(method.clone(), path, body.clone(), content_type)
            .await;
        // A pooled connection the server had just closed: a GET is safe to send again.
        match first {
            Err(e) if method == Method::GET && e.downcast_ref::<Unreachable>().is_some() => {
                self.send_once(method, path, body, content_type).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &str,
    ) -> Result<Value> {
        let body =
            BodyExt::boxed(Full::new(body.unwrap_or_default()).map_err(|never| match never {}));
        let resp = self.request(method, path, body, content_type).await?;
        answer(resp).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(body)
            .with_context(|| format!("bad API URL {uri}"))?;
        self.http.request(req).await.map_err(|e| {
            anyhow!(Unreachable(format!(
                "cannot reach molt at {}: {e}; is `molt serve` running? (start it with `molt serve`, \
                 or point --api / MOLT_API at it)",
                self.base
            )))
        })
    }
}

/// Reads a JSON answer; an error status becomes `ApiError` with the server's message.
async fn answer(resp: hyper::Response<hyper::body::Incoming>) -> Result<Value> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!(Unreachable(format!("reading the answer from molt: {e}"))))?
        .to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{status}: {value}"));
        Err(anyhow!(ApiError { status, message }))
    }
}

fn read_token(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            anyhow!(Unreachable(format!(
                "cannot read the API token at {}: {e}; start `molt serve` (it writes the token), \
                 or set MOLT_TOKEN / --data-dir",
                path.display()
            )))
        })
}
