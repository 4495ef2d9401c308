//! A small client of the Docker Engine API on its unix socket: JSON requests over HTTP/1.1,
//! one connection per request.
//!
//! molt needs a dozen endpoints (swarm and node info, networks, services, tasks), all JSON.
//! hyper (already the router's HTTP stack) on a `UnixStream` does that in a page; a client
//! crate such as bollard would add its own copy of the whole API's types and several
//! dependencies for the same dozen calls. A connection per request costs a connect on a local
//! socket, which is nothing next to what the engine does for each call.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use molt_provider::EngineError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

/// The API version molt speaks: Docker 20.10's, which every engine since accepts.
pub const API_VERSION: &str = "v1.41";
/// Where dockerd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The longest any one engine call may take (pulling is done by the nodes, not in a call).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A Docker Engine API client.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: PathBuf,
}

impl Docker {
    /// A client of the engine listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// How errors name this engine.
    pub fn engine(&self) -> String {
        format!("the Docker engine at {}", self.socket.display())
    }

    /// `GET path` (relative to the API version), its JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        action: &str,
    ) -> Result<T, EngineError> {
        let body = self.call(Method::GET, path, None, action).await?;
        self.parse(&body, action)
    }

    /// `POST path` with a JSON body, its JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        action: &str,
    ) -> Result<T, EngineError> {
        let json = serde_json::to_vec(body).map_err(|e| self.protocol(action, e.to_string()))?;
        let answer = self.call(Method::POST, path, Some(json), action).await?;
        self.parse(&answer, action)
    }

    /// `POST path` with a JSON body, answer ignored.
    pub async fn post_unit<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        action: &str,
    ) -> Result<(), EngineError> {
        let json = serde_json::to_vec(body).map_err(|e| self.protocol(action, e.to_string()))?;
        self.call(Method::POST, path, Some(json), action).await?;
        Ok(())
    }

    /// `DELETE path`; `Ok(false)` when the engine did not know it (404).
    pub async fn delete(&self, path: &str, action: &str) -> Result<bool, EngineError> {
        match self.call(Method::DELETE, path, None, action).await {
            Ok(_) => Ok(true),
            Err(EngineError::Refused { status: 404, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Whether the engine answers at all (`GET /_ping`).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.call(Method::GET, "/_ping", None, "answer a ping")
            .await
            .map(drop)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        action: &str,
    ) -> Result<Bytes, EngineError> {
        tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body, action))
            .await
            .map_err(|_elapsed| EngineError::Unreachable {
                engine: self.engine(),
                message: format!("no answer to {action} within {}s", CALL_TIMEOUT.as_secs()),
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        action: &str,
    ) -> Result<Bytes, EngineError> {
        let unreachable = |message: String| EngineError::Unreachable {
            engine: self.engine(),
            message,
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/{API_VERSION}{path}"))
            .header("host", "docker");
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(action, e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        driver.abort();
        if status.is_success() {
            return Ok(bytes);
        }
        Err(EngineError::Refused {
            engine: self.engine(),
            action: action.to_owned(),
            message: engine_message(status, &bytes),
            status: status.as_u16(),
        })
    }

    fn parse<T: DeserializeOwned>(&self, body: &[u8], action: &str) -> Result<T, EngineError> {
        serde_json::from_slice(body).map_err(|e| self.protocol(action, e.to_string()))
    }

    fn protocol(&self, action: &str, message: String) -> EngineError {
        EngineError::Protocol {
            engine: self.engine(),
            action: action.to_owned(),
            message,
        }
    }
}

/// The engine's own words from an error answer (`{"message": "…"}`), else the body or the
/// status.
fn engine_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => error.message.trim().to_owned(),
        Err(_) if body.is_empty() => status.to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

/// `value` percent-encoded for a query string.
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_messages_are_kept_whole() {
        assert_eq!(
            engine_message(
                StatusCode::BAD_REQUEST,
                br#"{"message":"network molt-x not found\n"}"#
            ),
            "network molt-x not found"
        );
        assert_eq!(
            engine_message(StatusCode::INTERNAL_SERVER_ERROR, b"plain words"),
            "plain words"
        );
        assert_eq!(
            engine_message(StatusCode::SERVICE_UNAVAILABLE, b""),
            "503 Service Unavailable"
        );
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape(r#"{"label":["molt.owner=a b"]}"#),
            "%7B%22label%22%3A%5B%22molt.owner%3Da%20b%22%5D%7D"
        );
    }
}
