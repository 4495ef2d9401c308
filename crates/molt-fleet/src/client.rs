//! A router's connection to the control plane: the stream of events and the POSTs back, over
//! HTTP/1.1, with TLS (trusting the certificate or CA it is given) whenever the control plane
//! is not on the router's own machine.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long connecting (and a TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control plane is and how to reach it.
#[derive(Clone)]
pub struct ControlClient {
    scheme: Scheme,
    host: String,
    port: u16,
    token: Arc<str>,
    tls: Option<TlsConnector>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// Why the control plane could not be reached or refused.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL or the trust settings are not usable.
    #[error("{0}")]
    Config(String),
    /// Connecting, the handshake or the exchange failed.
    #[error("{0}")]
    Io(String),
    /// The control plane answered with an error status.
    #[error("the control plane answered {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// What it said.
        body: String,
    },
}

/// The body of the event stream, read line by line.
pub struct EventLines {
    body: Incoming,
    buf: BytesMut,
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl ControlClient {
    /// A client of the control plane at `url` (`http://host:port` for a control plane on this
    /// machine, `https://host:port` otherwise), sending `token`; `ca` holds the PEM
    /// certificates to trust for https (the control plane's own certificate, or its CA).
    pub fn new(url: &str, token: &str, ca: Option<&[u8]>) -> Result<Self, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::Config(format!("control URL {url:?}: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => {
                return Err(ClientError::Config(format!(
                    "control URL {url:?} must start with http:// or https://"
                )))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Config(format!("control URL {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(uri.path(), "" | "/") {
            return Err(ClientError::Config(format!(
                "control URL {url:?} must not have a path"
            )));
        }
        let port = uri.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        if scheme == Scheme::Http && !is_loopback(&host) {
            return Err(ClientError::Config(format!(
                "control URL {url:?}: use https:// for a control plane that is not on this \
                 machine (the router token must not cross a network in clear)"
            )));
        }
        let tls = match scheme {
            Scheme::Http => None,
            Scheme::Https => Some(connector(ca.ok_or_else(|| {
                ClientError::Config(
                    "an https control URL needs --control-ca: the PEM certificate of the \
                     control plane (or of its CA)"
                        .to_owned(),
                )
            })?)?),
        };
        Ok(Self {
            scheme,
            host,
            port,
            token: token.into(),
            tls,
        })
    }

    /// Opens the event stream for `query` (already encoded).
    pub async fn stream(&self, query: &str) -> Result<EventLines, ClientError> {
        let response = self
            .send(Method::GET, &format!("/v1/fleet/stream?{query}"), None)
            .await?;
        Ok(EventLines {
            body: response.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// POSTs `body` as JSON to `path` (under `/v1/fleet`).
    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Config(e.to_string()))?;
        let exchange = async {
            let response = self
                .send(Method::POST, &format!("/v1/fleet{path}"), Some(json))
                .await?;
            // Read the (empty) body so the exchange ends cleanly.
            let _ = response.into_body().collect().await;
            Ok(())
        };
        tokio::time::timeout(POST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Io(format!("POST {path} timed out")))?
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| ClientError::Io(format!("connecting to {self} timed out")))??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Io(format!("{self}: {e}")))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.authority())
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Io(format!("{self}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        Err(ClientError::Status { status, body })
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ClientError::Io(format!("connecting to {self}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| ClientError::Config(format!("{}: {e}", self.host)))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Io(format!("TLS with {self}: {e}")))?;
                Ok(Box::new(tls))
            }
        }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl EventLines {
    /// The next line of the stream (without its newline); `Ok(None)` at its end.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                return Ok(Some(line.freeze()));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Io(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS connector trusting only the certificates of the PEM text `pem`.
fn connector(pem: &[u8]) -> Result<TlsConnector, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in rustls_pemfile_certs(pem)? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("the control plane's certificate: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(ClientError::Config(
            "--control-ca holds no PEM certificate".to_owned(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("reading PEM certificates: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine() {
        assert!(ControlClient::new("http://127.0.0.1:7070", "t", None).is_ok());
        assert!(ControlClient::new("http://localhost:7070", "t", None).is_ok());
        assert!(ControlClient::new("http://[::1]:7070", "t", None).is_ok());
        let remote = ControlClient::new("http://10.1.2.3:7070", "t", None)
            .err()
            .expect("refused");
        assert!(remote.to_string().contains("https://"), "{remote}");
        let no_ca = ControlClient::new("https://cp.example:7070", "t", None)
            .err()
            .expect("refused");
        assert!(no_ca.to_string().contains("--control-ca"), "{no_ca}");
        for bad in ["ftp://x", "127.0.0.1:7070", "http://127.0.0.1:7070/v1"] {
            assert!(ControlClient::new(bad, "t", None).is_err(), "{bad}");
        }
    }
}
