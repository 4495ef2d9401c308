//! A small HTTP client for molt's API (the CLI's only way to talk to `molt serve`).
//!
//! Every answer comes back as an [`Answer`]: the JSON as the server sent it (what `--json`
//! prints, untouched) and [`Answer::read`] into the API's records (`molt-wire`), which fails
//! naming the request and the field when the answer lacks one the record requires or holds it
//! with another type: the CLI never acts on a guessed default.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::credentials::{self, Credentials};
use crate::tls::{Connector, Trust};
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

/// An answer the CLI cannot read into the record it expects: the server is of another version,
/// or not molt.
#[derive(Debug)]
pub struct BadAnswer {
    /// The request answered, e.g. `POST /v1/images`.
    pub request: String,
    /// Where in the answer, e.g. `journal[2].state` (empty for the answer itself).
    pub at: String,
    /// What is wrong there, e.g. ``missing field `digest` ``.
    pub why: String,
}

impl std::fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "molt serve's answer to {} is not what this molt expects: ",
            self.request
        )?;
        if !self.at.is_empty() {
            write!(f, "at {}: ", self.at)?;
        }
        write!(
            f,
            "{}; is molt serve the same version as this molt?",
            self.why
        )
    }
}

impl std::error::Error for BadAnswer {}

/// One answer of the API: its JSON as sent, and the request it answers.
#[derive(Debug, Clone)]
pub struct Answer {
    request: String,
    json: Value,
}

impl Answer {
    /// The answer as the server sent it (what `--json` prints).
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// The request answered, e.g. `POST /v1/images`.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// The answer as the server sent it, owned.
    pub fn into_json(self) -> Value {
        self.json
    }

    /// The answer read as the API's record `T`. A field `T` requires that is absent, or of
    /// another type, is a [`BadAnswer`] naming the request and the field.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, BadAnswer> {
        serde_path_to_error::deserialize(&self.json).map_err(|e| {
            let at = e.path().to_string();
            BadAnswer {
                request: self.request.clone(),
                at: if at == "." { String::new() } else { at },
                why: e.into_inner().to_string(),
            }
        })
    }
}

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
    http: HyperClient<Connector, RequestBody>,
}

/// A request body: bytes in memory, or chunks streamed from a file or a producer thread.
type RequestBody = BoxBody<Bytes, std::io::Error>;

/// Chunks of a streamed upload; an `Err` aborts it.
pub type UploadChunks = mpsc::Receiver<std::io::Result<Bytes>>;

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`) with `token`.
    pub fn new(base: &str, token: &str) -> Client {
        Client::with_connector(base, token, Connector::plain())
    }

    /// A client for `base`, `https://` too, accepting the server certificate `trust` allows.
    pub fn with_trust(base: &str, token: &str, trust: Trust) -> Client {
        Client::with_connector(base, token, Connector::with_trust(trust))
    }

    fn with_connector(base: &str, token: &str, connector: Connector) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Finds the server and token: `--api`/`MOLT_API` and `MOLT_TOKEN` win; an `https://`
    /// API takes its pinned certificate (and token) from `molt login`'s credentials;
    /// otherwise `serve.json` and `admin.token` in the data directory, and without a local
    /// server the newest login.
    pub fn discover(api: Option<String>, data_dir: &Path) -> Result<Client> {
        let env_token = std::env::var("MOLT_TOKEN").ok().filter(|t| !t.is_empty());
        let local = data_dir.join("serve.json");
        let api = match api {
            Some(api) => Some(api),
            None if !local.exists() => Credentials::load()?.current,
            None => None,
        };
        if let Some(api) = api.as_deref().filter(|api| api.starts_with("https://")) {
            let api = credentials::normalize(api);
            let login = Credentials::load()?.servers.remove(&api).ok_or_else(|| {
                anyhow!(Unreachable(format!(
                    "no login for {api}: run `molt login {api}` first (it pins the server's \
                     certificate and keeps the token)"
                )))
            })?;
            let token = env_token.unwrap_or(login.token);
            return Ok(Client::with_trust(
                &api,
                &token,
                Trust::Pinned(login.fingerprint),
            ));
        }
        let base = match api {
            Some(a) => a,
            None => match std::fs::read_to_string(&local) {
                Ok(text) => {
                    let v: Value = serde_json::from_str(&text)
                        .with_context(|| format!("reading {}", local.display()))?;
                    format!("http://{}", v["api"].as_str().unwrap_or("127.0.0.1:7070"))
                }
                Err(_) => "http://127.0.0.1:7070".to_string(),
            },
        };
        let token = match env_token {
            Some(t) => t,
            None => read_token(&data_dir.join("admin.token"))?,
        };
        Ok(Client::new(&base, &token))
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.get_answer(path).await?.into_json())
    }

    /// GET an answer.
    pub async fn get_answer(&self, path: &str) -> Result<Answer> {
        self.send(Method::GET, path, None, "application/json").await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.post_answer(path, body).await?.into_json())
    }

    /// POST a JSON body; the answer.
    pub async fn post_answer(&self, path: &str, body: &Value) -> Result<Answer> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(Method::POST, path, Some(bytes), "application/json")
            .await
    }

    /// POST raw bytes (an image tar).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        Ok(self.post_bytes_answer(path, body).await?.into_json())
    }

    /// POST raw bytes (an image tar or a build context); the answer.
    pub async fn post_bytes_answer(&self, path: &str, body: Vec<u8>) -> Result<Answer> {
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
        Ok(self.delete_answer(path).await?.into_json())
    }

    /// DELETE a resource; the answer.
    pub async fn delete_answer(&self, path: &str) -> Result<Answer> {
        self.send(Method::DELETE, path, None, "application/json")
            .await
    }

    /// POST a tar streamed from `chunks` (never held in memory whole); the answer.
    pub async fn post_stream_answer(&self, path: &str, chunks: UploadChunks) -> Result<Answer> {
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
        answer(request_name(&Method::POST, path), resp).await
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
            answer(request_name(&Method::GET, path), resp).await?;
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
    ) -> Result<Answer> {
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
    ) -> Result<Answer> {
        let body =
            BodyExt::boxed(Full::new(body.unwrap_or_default()).map_err(|never| match never {}));
        let request = request_name(&method, path);
        let resp = self.request(method, path, body, content_type).await?;
        answer(request, resp).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: RequestBody,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method).uri(&uri);
        // No token, no header (the server then says a token is missing, not malformed).
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let req = req
            .header("content-type", content_type)
            .body(body)
            .with_context(|| format!("bad API URL {uri}"))?;
        self.http.request(req).await.map_err(|e| {
            // hyper's error says only "client error (Connect)": the reason is in its sources
            // (a refused connection, a certificate that is not the pinned one).
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            anyhow!(Unreachable(format!(
                "cannot reach molt at {}: {why}; is `molt serve` running? (start it with `molt \
                 serve`, or point --api / MOLT_API at it)",
                self.base
            )))
        })
    }
}

/// `GET /v1/status`: how errors name a request (without its query).
fn request_name(method: &Method, path: &str) -> String {
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    format!("{method} {path}")
}

/// Reads a JSON answer; an error status becomes `ApiError` with the server's message.
async fn answer(request: String, resp: hyper::Response<hyper::body::Incoming>) -> Result<Answer> {
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
        Ok(Answer {
            request,
            json: value,
        })
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

#[cfg(test)]
mod tests {
    use molt_wire::{DeploymentJournal, ImportOutcome};
    use serde_json::json;

    use super::*;

    fn answer(request: &str, json: Value) -> Answer {
        Answer {
            request: request.into(),
            json,
        }
    }

    #[test]
    fn a_missing_field_is_named_with_the_request() {
        let import = answer(
            "POST /v1/images",
            json!({ "size": 10, "created_ms": 1, "tags": [], "format": "tree", "files": 1,
                    "moved_from": null, "signatures": 0 }),
        );
        let e = import.read::<ImportOutcome>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "molt serve's answer to POST /v1/images is not what this molt expects: missing field \
             `digest`; is molt serve the same version as this molt?"
        );
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_its_path() {
        let deployment = json!({ "id": 7, "app": "shop", "release": 2, "env": null,
            "prev_env": null, "state": "healthy", "created_ms": 1, "updated_ms": 2,
            "error": null, "figures": null });
        let journal = answer(
            "GET /v1/deployments/7",
            json!({ "deployment": deployment,
                    "journal": [{ "at_ms": 1, "state": "pending", "detail": "" },
                                { "at_ms": "soon", "state": "healthy", "detail": "" }] }),
        );
        let e = journal.read::<DeploymentJournal>().unwrap_err();
        assert_eq!(e.at, "journal[1].at_ms");
        assert!(e.why.starts_with("invalid type: string \"soon\""), "{e}");
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let deployment = answer(
            "POST /v1/apps/shop/deployments",
            json!({ "id": 7, "app": "shop", "release": 2, "state": "pending",
                    "created_ms": 1, "updated_ms": 2 }),
        );
        let d = deployment.read::<molt_wire::DeploymentRecord>().unwrap();
        assert_eq!((d.id, d.env, d.figures), (7, None, None));
    }

    #[test]
    fn requests_are_named_without_their_query() {
        assert_eq!(
            request_name(&Method::GET, "/v1/status?app=shop"),
            "GET /v1/status"
        );
    }
}
