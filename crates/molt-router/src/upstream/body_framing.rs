//! How an upstream response body is framed, and where a chunked one ends: what lets the
//! plain-socket paths relay a body as it comes and still know when the socket is free for
//! the next request.

/// Longest chunk-size line of a chunked upstream body.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes of a chunked upstream body.
const MAX_TRAILERS: usize = 16 * 1024;

/// How an upstream response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (no length, not chunked).
    UntilClose,
}

/// Follows a chunked body (RFC 9112 §7.1) to find where it ends, so it can be relayed as is.
#[derive(Debug, Default)]
pub(crate) struct ChunkScanner {
    state: ChunkState,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
    Done,
}

impl ChunkScanner {
    /// Scans as much of `bytes` (what follows the bytes scanned before) as forms whole
    /// pieces; returns how many bytes that was. A piece cut short is scanned again, longer,
    /// on the next call.
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        self.scan_with(bytes, |_| {})
    }

    /// [`ChunkScanner::scan`], handing every piece of chunk data (the body without its
    /// framing) to `data`.
    pub(crate) fn scan_with(
        &mut self,
        bytes: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, &'static str> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        self.state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => return Ok(at),
                    _ => return Err("invalid chunk size line"),
                },
                ChunkState::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    data(&rest[..take as usize]);
                    at += take as usize;
                    if take == left {
                        self.state = ChunkState::DataEnd;
                    } else {
                        self.state = ChunkState::Data(left - take);
                        return Ok(at);
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if self.trailer_bytes + rest.len() > MAX_TRAILERS {
                            return Err("trailers too large");
                        }
                        return Ok(at);
                    };
                    at += line + 2;
                    self.trailer_bytes += line + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(at),
            }
        }
    }

    /// Whether the body's end (the last chunk and the trailers) has been scanned.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8], step: usize) -> Result<Option<usize>, &'static str> {
        let mut scanner = ChunkScanner::default();
        let mut pending = 0;
        let mut fed = 0;
        while fed < body.len() {
            fed = (fed + step).min(body.len());
            pending += scanner.scan(&body[pending..fed])?;
            if scanner.is_done() {
                return Ok(Some(pending));
            }
        }
        Ok(None)
    }

    #[test]
    fn chunked_bodies_end_where_they_end_in_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in 1..=body.len() {
            assert_eq!(scan_all(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(scan_all(b"0\r\n\r\n", 1), Ok(Some(5)));
        assert_eq!(scan_all(b"3\r\nab", 2), Ok(None));
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        assert!(scan_all(b"zz\r\n", 4).is_err());
        assert!(scan_all(b"3\r\nabcd\r\n", 9).is_err());
        assert!(scan_all(b"ffffffffffffffffffff\r\n", 30).is_err());
        let long_line = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE + 10]].concat();
        assert!(scan_all(&long_line, long_line.len()).is_err());
    }
}
