//! A request body on the direct path: streamed from the client to the upstream as it comes,
//! never buffered whole, within the body limit, and watched for an upstream that answers
//! before the body is all there.
//!
//! The head and the body bytes that arrived with it go out in one write; the rest is
//! forwarded read by read (a Content-Length body counted down, a chunked one followed by
//! [`ChunkScanner`] and passed on as it is, extensions and trailers included; its chunk data
//! counted against the limit). `Expect: 100-continue` is answered by the router, with
//! `100 Continue`, once the head has gone to an instance and only if no body byte has
//! arrived yet; the upstream does not see the expectation. A body that breaks off (the
//! client closes, or the frame checker refuses a chunk after the body began) or outgrows the
//! limit ends the exchange: the upstream socket is dropped, so the instance never sees a
//! whole request, and the client gets 400 or 413 and a closed connection.

use std::io;

use tokio::io::{AsyncReadExt, Interest};

use super::conn::write_two;
use super::request::BodyFraming;
use crate::guard::{ClientSocket, GuardedStream};
use crate::http1::{find_head_end, BODY_READ, HEAD_READ};
use crate::limits::BodyFault;
use crate::upstream::{ChunkScanner, Socket};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How much of a request body is still to come.
#[derive(Debug)]
pub(crate) enum BodyLeft {
    /// This many bytes (the limit was checked against the declared length up front).
    Length(u64),
    /// Chunks up to the last one and the trailers; `data` bytes of chunk data so far.
    Chunked {
        scanner: ChunkScanner,
        data: u64,
        limit: u64,
    },
}

/// How sending a request with a body ended, when it went well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// The whole body went upstream.
    Whole,
    /// The upstream began to answer before the body was all sent: the rest of the body is
    /// never read, so neither connection can carry another request.
    AnsweredEarly,
}

/// Why a request with a body could not be sent.
#[derive(Debug)]
pub(super) enum UploadError {
    /// The client's body broke off or outgrew the limit.
    Client(BodyFault),
    /// Writing to the upstream failed, or it closed.
    Upstream(io::Error),
}

impl BodyLeft {
    /// What is left of a body framed as `framing`, allowed `limit` bytes; `None` for no body.
    pub(crate) fn new(framing: BodyFraming, limit: u64) -> Option<Self> {
        match framing {
            BodyFraming::None => None,
            BodyFraming::Length(length) => Some(BodyLeft::Length(length)),
            BodyFraming::Chunked => Some(BodyLeft::Chunked {
                scanner: ChunkScanner::default(),
                data: 0,
                limit,
            }),
        }
    }

    /// How many of `bytes` (what the client sent next) belong to the body and can be
    /// forwarded now: a chunk-size line or trailer cut short waits for its end.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<usize, BodyFault> {
        match self {
            BodyLeft::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                Ok(take as usize)
            }
            BodyLeft::Chunked {
                scanner,
                data,
                limit,
            } => {
                let mut seen = 0;
                let taken = scanner
                    .scan_with(bytes, |piece| seen += piece.len() as u64)
                    .map_err(|_| BodyFault::Broken)?;
                *data += seen;
                if *data > *limit {
                    return Err(BodyFault::TooLarge);
                }
                Ok(taken)
            }
        }
    }

    /// Whether the whole body has been taken.
    pub(crate) fn is_done(&self) -> bool {
        match self {
            BodyLeft::Length(left) => *left == 0,
            BodyLeft::Chunked { scanner, .. } => scanner.is_done(),
        }
    }
}

/// Sends `head` and the body that follows it in `input` (the client's bytes, read on from
/// `client` as needed) to `socket`, consuming the body from `input`. Upstream bytes that
/// arrive meanwhile (an early answer) are read into `relay`.
pub(super) async fn send_request<S: ClientSocket>(
    client: &mut GuardedStream<S>,
    input: &mut Vec<u8>,
    socket: &mut Socket,
    head: &[u8],
    body: &mut BodyLeft,
    expect_continue: bool,
    relay: &mut Vec<u8>,
) -> Result<Sent, UploadError> {
    let take = body.take(input).map_err(UploadError::Client)?;
    write_two(&mut socket.stream, head, &input[..take])
        .await
        .map_err(UploadError::Upstream)?;
    input.drain(..take);
    if expect_continue && take == 0 && !body.is_done() {
        write_two(client, CONTINUE, &[])
            .await
            .map_err(|_| UploadError::Client(BodyFault::Broken))?;
    }
    while !body.is_done() {
        // Room for a whole body read (see `GuardedStream`'s reads).
        if input.capacity() - input.len() <= HEAD_READ {
            input.reserve(BODY_READ);
        }
        let read = tokio::select! {
            biased;
            read = client.read_buf(input) => read,
            ready = socket.stream.ready(Interest::READABLE) => {
                ready.map_err(UploadError::Upstream)?;
                if answered(socket, relay)? {
                    return Ok(Sent::AnsweredEarly);
                }
                continue;
            }
        };
        match read {
            // The client closed, or the frame checker refused what came next.
            Ok(0) | Err(_) => return Err(UploadError::Client(BodyFault::Broken)),
            Ok(_) => {}
        }
        let take = body.take(input).map_err(UploadError::Client)?;
        if take > 0 && forward(socket, &input[..take], relay).await? {
            return Ok(Sent::AnsweredEarly);
        }
        input.drain(..take);
    }
    Ok(Sent::Whole)
}

/// Writes `bytes` to the upstream; `true` when it began to answer first (then `bytes` may
/// be partly unsent, and the exchange is over).
async fn forward(
    socket: &Socket,
    mut bytes: &[u8],
    relay: &mut Vec<u8>,
) -> Result<bool, UploadError> {
    let stream = &socket.stream;
    while !bytes.is_empty() {
        let ready = stream
            .ready(Interest::READABLE | Interest::WRITABLE)
            .await
            .map_err(UploadError::Upstream)?;
        if ready.is_readable() && answered(socket, relay)? {
            return Ok(true);
        }
        if ready.is_writable() {
            match stream.try_write(bytes) {
                Ok(0) => return Err(UploadError::Upstream(io::ErrorKind::WriteZero.into())),
                Ok(written) => bytes = &bytes[written..],
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(UploadError::Upstream(error)),
            }
        }
    }
    Ok(false)
}

/// After the upstream socket was reported readable: whether it began its final answer (read
/// into `relay`). A stale readiness reads nothing and is cleared; an upstream that closed is
/// an error; an interim answer (a `100 Continue` some servers send unasked) is dropped and
/// the upload goes on.
fn answered(socket: &Socket, relay: &mut Vec<u8>) -> Result<bool, UploadError> {
    relay.reserve(HEAD_READ);
    match socket.stream.try_read_buf(relay) {
        Ok(0) => {
            return Err(UploadError::Upstream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before a response",
            )))
        }
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        Err(error) => return Err(UploadError::Upstream(error)),
    }
    Ok(final_answer_began(relay))
}

/// Whether `relay` holds the start of a final answer, once the whole interim (1xx, not 101)
/// heads at its start are dropped; a head cut short that may still be an interim one is
/// waited for.
fn final_answer_began(relay: &mut Vec<u8>) -> bool {
    loop {
        // `HTTP/1.1 1xx`: the status's first digit is the tenth byte.
        let interim = match relay.get(9) {
            None => return false,
            Some(b'1') => relay.get(9..12) != Some(b"101"),
            Some(_) => false,
        };
        if !interim {
            return true;
        }
        match find_head_end(relay, 0) {
            Some(end) => {
                relay.drain(..end);
            }
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_answers_do_not_end_an_upload() {
        let mut relay = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        assert!(!final_answer_began(&mut relay));
        assert!(relay.is_empty());
        let mut relay = b"HTTP/1.1 10".to_vec();
        assert!(!final_answer_began(&mut relay), "may still be interim");
        let mut relay = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too".to_vec();
        assert!(final_answer_began(&mut relay));
        assert_eq!(relay, b"HTTP/1.1 413 Too");
        let mut relay = b"HTTP/1.1 101 Switching".to_vec();
        assert!(
            final_answer_began(&mut relay),
            "a 101 is refused by the head check"
        );
        assert!(!final_answer_began(&mut Vec::new()));
    }

    #[test]
    fn a_length_body_is_taken_up_to_its_length() {
        let mut body = BodyLeft::new(BodyFraming::Length(5), 10).expect("a body");
        assert_eq!(body.take(b"abc"), Ok(3));
        assert!(!body.is_done());
        assert_eq!(body.take(b"deGET /"), Ok(2));
        assert!(body.is_done());
        assert!(BodyLeft::new(BodyFraming::None, 10).is_none());
    }

    #[test]
    fn a_chunked_body_is_taken_whole_pieces_at_a_time_within_its_limit() {
        let mut body = BodyLeft::new(BodyFraming::Chunked, 8).expect("a body");
        assert_eq!(body.take(b"5\r"), Ok(0), "a size line cut short waits");
        assert_eq!(body.take(b"5\r\nhel"), Ok(6));
        assert_eq!(body.take(b"lo\r\n0\r\nx-sum: 1\r\n\r\nNEXT"), Ok(19));
        assert!(body.is_done());

        let mut body = BodyLeft::new(BodyFraming::Chunked, 8).expect("a body");
        assert_eq!(body.take(b"5\r\nhello\r\n"), Ok(10));
        assert_eq!(body.take(b"4\r\nabcd\r\n"), Err(BodyFault::TooLarge));
        let mut body = BodyLeft::new(BodyFraming::Chunked, 8).expect("a body");
        assert_eq!(body.take(b"zz\r\n"), Err(BodyFault::Broken));
    }
}
