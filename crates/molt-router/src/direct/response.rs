//! The response head a direct-path client gets: the upstream's head, checked by the
//! exchange ([`crate::upstream`]), rewritten without hop-by-hop fields and with the request
//! id, the sticky cookie and `Connection: close` as needed.

use std::mem::MaybeUninit;

use crate::headers::is_hop_by_hop;
use crate::http1::{push_field, push_status_line, MAX_HEADERS};
use crate::reqid::InlineId;
use crate::shaping::STICKY_COOKIE;
use crate::upstream::{check_response, AskError, Checked, Framing};

/// What the response head needs besides the upstream's fields.
pub(super) struct Extras<'a> {
    pub(super) request_id: &'a InlineId,
    pub(super) sticky: Option<u32>,
    pub(super) head_only: bool,
}

/// An upstream response head, parsed and rewritten into `Conn::out`.
pub(super) struct Answer {
    pub(super) status: u16,
    /// Where the body starts in `Conn::relay`.
    pub(super) head_len: usize,
    pub(super) framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub(super) keep_alive: bool,
    /// The client connection closes after this response.
    pub(super) close: bool,
    /// The body length the response announces, for the access log.
    pub(super) length: Option<u64>,
}

/// Parses a complete response head and writes the client's version of it to `out`;
/// `None` for an informational (1xx) response.
pub(super) fn rewrite_response(
    bytes: &[u8],
    extras: &Extras<'_>,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Answer>, AskError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let Some((response, checked)) = check_response(bytes, extras.head_only, &mut fields)? else {
        return Ok(None);
    };
    let Checked {
        status,
        framing,
        keep_alive,
        listed,
    } = checked;
    let close = close || framing == Framing::UntilClose;

    out.clear();
    push_status_line(out, status, response.reason.unwrap_or(""));
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"x-request-id") || listed.has(name) {
            continue;
        }
        push_field(out, name, field.value);
    }
    if framing == Framing::Chunked {
        push_field(out, b"transfer-encoding", b"chunked");
    }
    push_field(out, b"x-request-id", extras.request_id.as_bytes());
    if let Some(bucket) = extras.sticky {
        let cookie =
            format!("{STICKY_COOKIE}={bucket}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax");
        push_field(out, b"set-cookie", cookie.as_bytes());
    }
    if close {
        push_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Answer {
        status,
        head_len: 0,
        framing,
        keep_alive,
        close,
        length: match framing {
            Framing::Length(length) => Some(length),
            Framing::None => Some(0),
            _ => None,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::RequestIds;

    fn rewrite(head: &str, head_only: bool) -> Result<(Option<Answer>, String), &'static str> {
        let id = RequestIds::new().assign_inline(Some(b"id-1"));
        let extras = Extras {
            request_id: &id,
            sticky: None,
            head_only,
        };
        let mut out = Vec::new();
        match rewrite_response(head.as_bytes(), &extras, false, &mut out) {
            Ok(answer) => Ok((answer, String::from_utf8(out).expect("ascii head"))),
            Err(AskError::Invalid(reason)) => Err(reason),
            Err(AskError::Unreachable(_) | AskError::AtLimit(_)) => Err("unreachable"),
        }
    }

    #[test]
    fn response_heads_are_rewritten_for_the_client() {
        let (answer, out) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nServer: app\r\n\r\n",
            false,
        )
        .expect("valid");
        let answer = answer.expect("final");
        assert_eq!(answer.framing, Framing::Length(5));
        assert!(answer.keep_alive && !answer.close);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: app\r\nx-request-id: id-1\r\n\r\n"
        );

        let (answer, out) = rewrite(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n"));

        let (answer, out) = rewrite("HTTP/1.0 200 OK\r\n\r\n", false).expect("valid");
        let answer = answer.expect("final");
        assert_eq!(answer.framing, Framing::UntilClose);
        assert!(!answer.keep_alive && answer.close);
        assert!(out.contains("connection: close\r\n"));

        let (answer, _) =
            rewrite("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::None);
        let (answer, _) = rewrite("HTTP/1.1 304 Not Modified\r\n\r\n", false).expect("valid");
        assert_eq!(answer.expect("final").framing, Framing::None);
        let (answer, _) =
            rewrite("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false).expect("valid");
        assert!(answer.is_none(), "1xx answers are skipped");
    }

    #[test]
    fn ambiguous_response_framing_is_refused() {
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        ] {
            assert!(rewrite(head, false).is_err(), "{head:?}");
        }
        let (answer, _) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .expect("equal lengths agree");
        assert_eq!(answer.expect("final").framing, Framing::Length(5));
    }
}
