//! One request served by `git http-backend` as a CGI program: the request's facts in its
//! environment, the body on its stdin, its stdout (CGI headers, then the body) streamed back as
//! it comes, so a push's `remote:` lines reach the pusher while molt deploys.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use http_body_util::BodyExt;
use molt_core::AppName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

/// Most header lines a CGI answer may have, and the longest one.
const MAX_HEADER_LINES: usize = 64;
const MAX_HEADER_LINE: usize = 8 * 1024;
/// Bytes per chunk of the streamed answer.
const CHUNK: usize = 16 * 1024;

/// What `git http-backend` is told about a request.
pub(crate) struct CgiRequest {
    root: PathBuf,
    path_info: String,
    method: String,
    query: String,
    headers: Vec<(&'static str, String)>,
    remote_user: String,
    /// A push's directory, handed to molt's hook (`MOLT_PUSH_DIR`).
    pub(crate) push_dir: Option<PathBuf>,
}

/// Why the CGI program could not answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgiError {
    /// It could not be started or read.
    #[error("git http-backend: {0}")]
    Io(#[from] io::Error),
    /// Its answer was not a CGI answer.
    #[error("git http-backend answered without valid CGI headers: {0}")]
    Headers(String),
}

impl CgiRequest {
    /// The request for repository `app` under `root`, as the handler received it.
    pub(crate) fn new(
        root: &Path,
        app: &AppName,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        principal: &str,
    ) -> CgiRequest {
        let rest = uri.path().rsplit_once(".git/").map_or("", |(_, r)| r);
        let mut passed = Vec::new();
        for (name, variable) in [
            (header::CONTENT_TYPE, "CONTENT_TYPE"),
            (header::CONTENT_LENGTH, "CONTENT_LENGTH"),
            (header::CONTENT_ENCODING, "HTTP_CONTENT_ENCODING"),
            (HeaderName::from_static("git-protocol"), "GIT_PROTOCOL"),
        ] {
            if let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) {
                passed.push((variable, value.to_string()));
            }
        }
        CgiRequest {
            root: root.to_path_buf(),
            path_info: format!("/{app}.git/{rest}"),
            method: method.as_str().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            headers: passed,
            remote_user: principal.to_string(),
            push_dir: None,
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("git");
        command
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("PATH_INFO", &self.path_info)
            .env("REQUEST_METHOD", &self.method)
            .env("QUERY_STRING", &self.query)
            .env("REMOTE_USER", &self.remote_user)
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (variable, value) in &self.headers {
            command.env(variable, value);
        }
        if let Some(dir) = &self.push_dir {
            command.env("MOLT_PUSH_DIR", dir);
        }
        command
    }
}

/// Runs the request: `body` goes to the program's stdin while its answer streams back.
/// `ended` is sent when the program has finished (a push's watcher stops waiting then).
pub(crate) async fn run(
    request: CgiRequest,
    body: Body,
    ended: Option<oneshot::Sender<()>>,
) -> Result<Response, CgiError> {
    let mut child = request.command().spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let mut body = body;
            // Bounded by the body: it ends, or the client goes away.
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    if let Some(mut stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = (&mut stderr)
                .take(64 * 1024)
                .read_to_string(&mut text)
                .await;
            if !text.trim().is_empty() {
                tracing::debug!(stderr = %text.trim(), "git http-backend");
            }
        });
    }
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CgiError::Headers("no stdout".into()))?;
    let mut reader = BufReader::new(stdout);
    let (status, headers) = read_headers(&mut reader).await?;
    let stream = futures_util::stream::unfold(
        Streaming {
            reader,
            child,
            ended,
        },
        next_chunk,
    );
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The answer being streamed, with the program that writes it.
struct Streaming {
    reader: BufReader<ChildStdout>,
    child: Child,
    ended: Option<oneshot::Sender<()>>,
}

impl Drop for Streaming {
    /// The answer is over (or the client left): whoever waits for the program stops.
    fn drop(&mut self) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(());
        }
    }
}

async fn next_chunk(mut s: Streaming) -> Option<(io::Result<Bytes>, Streaming)> {
    let mut buf = vec![0u8; CHUNK];
    match s.reader.read(&mut buf).await {
        Ok(0) => {
            let _ = s.child.wait().await;
            None
        }
        Ok(n) => {
            buf.truncate(n);
            Some((Ok(Bytes::from(buf)), s))
        }
        Err(e) => Some((Err(e), s)),
    }
}

/// Reads the CGI header block: `Status:` becomes the status, the rest response headers.
async fn read_headers(
    reader: &mut BufReader<ChildStdout>,
) -> Result<(StatusCode, HeaderMap), CgiError> {
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for _ in 0..MAX_HEADER_LINES {
        let mut line = String::new();
        let n = (&mut *reader)
            .take(MAX_HEADER_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Err(CgiError::Headers("it ended before the headers did".into()));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| CgiError::Headers(format!("not a header: {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or("");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| CgiError::Headers(format!("bad status {value:?}")))?;
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CgiError::Headers(format!("bad header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| CgiError::Headers(format!("bad value of {name}")))?;
        headers.append(name, value);
    }
    Err(CgiError::Headers("too many header lines".into()))
}
