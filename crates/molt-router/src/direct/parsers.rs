//! The direct path's parsers on their own, for the fuzz targets in `fuzz/` and the property
//! tests (which run in CI without nightly).

use std::net::IpAddr;

use super::request::{write_upstream_head, RequestHead};
use super::response::{rewrite_response, Extras};
use super::upload::BodyLeft;
use crate::config::ClientScheme;
use crate::http1::MAX_HEADERS;
use crate::limits::BodyFault;
use crate::reqid::RequestIds;
use crate::upstream::{AskError, ChunkScanner};

/// The head the direct path would send upstream for the request head at the start of
/// `bytes` (client 10.0.0.7 over plain HTTP, request id `rid`); `None` when the request is
/// incomplete, invalid, or left to hyper.
pub fn upstream_head(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    if !request.parse(bytes).ok()?.is_complete() || request.version != Some(1) {
        return None;
    }
    let target = request.path.filter(|target| target.starts_with('/'))?;
    let head = RequestHead::read(request.headers)?;
    let mut out = Vec::new();
    let id = RequestIds::new().assign_inline(Some(b"rid"));
    write_upstream_head(
        &mut out,
        request.method?,
        target,
        request.headers,
        &head,
        &id,
        IpAddr::from([10, 0, 0, 7]),
        ClientScheme::Http,
    );
    Some(out)
}

/// The response head the client would get for the upstream head `bytes` (request id
/// `rid`): `Ok(None)` for an informational answer, `Err` for one the direct path refuses
/// (a 502).
pub fn client_head(bytes: &[u8], head_only: bool) -> Result<Option<Vec<u8>>, &'static str> {
    let id = RequestIds::new().assign_inline(Some(b"rid"));
    let extras = Extras {
        request_id: &id,
        sticky: None,
        head_only,
    };
    let mut out = Vec::new();
    match rewrite_response(bytes, &extras, false, &mut out) {
        Ok(Some(_)) => Ok(Some(out)),
        Ok(None) => Ok(None),
        Err(AskError::Invalid(reason)) => Err(reason),
        Err(AskError::Unreachable(_) | AskError::AtLimit(_)) => Err("unreachable"),
    }
}

/// Follows a chunked body fed in `pieces`; the length of the body once it has ended
/// (`None` while it has not), or why it is broken.
pub fn chunked_length(pieces: &[&[u8]]) -> Result<Option<usize>, &'static str> {
    let mut scanner = ChunkScanner::default();
    let mut buffered = Vec::new();
    let mut scanned_total = 0;
    for piece in pieces {
        buffered.extend_from_slice(piece);
        let scanned = scanner.scan(&buffered)?;
        scanned_total += scanned;
        buffered.drain(..scanned);
        if scanner.is_done() {
            return Ok(Some(scanned_total));
        }
    }
    Ok(None)
}

/// Follows the body of the request whose head is `head`, fed in `pieces`, as the direct path
/// forwards it, allowed `limit` bytes of chunk data: the length of the body once it has ended
/// (`Some(0)` for a bodiless request, `None` while it has not ended), or why it is refused
/// (`"too large"`, `"broken"`, or `"not direct"` for a head the direct path leaves to hyper).
pub fn request_body_length(
    head: &[u8],
    pieces: &[&[u8]],
    limit: u64,
) -> Result<Option<usize>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(head) {
        Ok(status) if status.is_complete() => {}
        _ => return Err("not direct"),
    }
    let framing = RequestHead::read(request.headers).ok_or("not direct")?.body;
    let Some(mut body) = BodyLeft::new(framing, limit) else {
        return Ok(Some(0));
    };
    let mut buffered = Vec::new();
    let mut taken = 0;
    for piece in pieces {
        buffered.extend_from_slice(piece);
        let take = body.take(&buffered).map_err(|fault| match fault {
            BodyFault::TooLarge => "too large",
            BodyFault::Broken => "broken",
        })?;
        taken += take;
        buffered.drain(..take);
        if body.is_done() {
            return Ok(Some(taken));
        }
    }
    Ok(None)
}
