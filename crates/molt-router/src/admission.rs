//! What a parsed request must satisfy before it is routed: one valid Host that agrees with
//! an absolute-form target, a declared length within the body limit, no HTTP/1 `CONNECT`.
//!
//! The raw framing (`Content-Length`/`Transfer-Encoding`) of HTTP/1 requests was already
//! checked by [`crate::framing`] before hyper parsed them.

use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::{Method, Request, StatusCode, Version};

use crate::host::lookup_key;

/// A request the router answers itself instead of routing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: &'static str,
}

/// Checks `request` against the rules above; `max_body` is the body limit in bytes.
pub(crate) fn admit<B>(request: &Request<B>, max_body: u64) -> Result<(), Refusal> {
    let refuse = |status, message| Err(Refusal { status, message });
    let http1 = request.version() <= Version::HTTP_11;
    if http1 && request.method() == Method::CONNECT {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "molt: CONNECT is not supported\n",
        );
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return refuse(StatusCode::BAD_REQUEST, "molt: more than one Host header\n");
    }
    if let Some(host) = host {
        let key = host
            .to_str()
            .ok()
            .filter(|host| !host.trim().is_empty())
            .map(|host| lookup_key(host.trim()));
        match key {
            Some(Ok(key)) => {
                if let Some(authority) = request.uri().authority() {
                    let agrees = !authority.as_str().contains('@')
                        && lookup_key(authority.as_str()).is_ok_and(|target| target == key);
                    if !agrees {
                        return refuse(
                            StatusCode::BAD_REQUEST,
                            "molt: the request target names another host than Host\n",
                        );
                    }
                }
            }
            Some(Err(_)) => {
                return refuse(StatusCode::BAD_REQUEST, "molt: invalid Host header\n");
            }
            None => {}
        }
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok())
        .and_then(|length| length.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "molt: the request body is larger than this server accepts\n",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("test request")
    }

    #[test]
    fn refusals() {
        let status = |target, headers: &[(&str, &str)]| {
            admit(&request(target, headers), 10).map_err(|refusal| refusal.status.as_u16())
        };
        assert_eq!(status("/", &[("host", "app.test")]), Ok(()));
        assert_eq!(status("/", &[]), Ok(()), "missing Host is the router's 400");
        assert_eq!(
            status("http://APP.test:80/x", &[("host", "app.test")]),
            Ok(())
        );
        assert_eq!(
            status("http://other.test/", &[("host", "app.test")]),
            Err(400)
        );
        assert_eq!(
            status("http://u@app.test/", &[("host", "app.test")]),
            Err(400)
        );
        assert_eq!(status("/", &[("host", "a"), ("host", "a")]), Err(400));
        assert_eq!(status("/", &[("host", "a b")]), Err(400));
        let big = [("host", "a"), ("content-length", "11")];
        assert_eq!(status("/", &big), Err(413));
        let fits = [("host", "a"), ("content-length", "10")];
        assert_eq!(status("/", &fits), Ok(()));
    }
}
