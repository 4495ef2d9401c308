//! HTTP/1.1 request framing, checked on the raw bytes before hyper parses them.
//!
//! hyper resolves some ambiguous framings the way RFC 9112 allows (it drops `Content-Length`
//! when `Transfer-Encoding` is present, accepts repeated equal lengths and
//! `Transfer-Encoding: identity, chunked`). A proxy that forwards such a request re-frames
//! it, but a front proxy or the application may have read it differently: that is request
//! smuggling. [`FrameChecker`] refuses these requests before hyper sees a single byte of
//! them, and bounds the head size, so a request is either unambiguous or never parsed.
//!
//! The checker follows each message's framing (length or chunks) to find the next head, so
//! body bytes are never mistaken for one. After a request that may switch protocols
//! (`Upgrade`, `CONNECT`) or one whose head it cannot parse (hyper answers those itself, 400),
//! it stops checking and passes bytes through.

use std::fmt;
use std::mem::MaybeUninit;

/// Longest chunk-size line (digits and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Limits applied while checking request heads.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Most header fields in one request head.
    pub max_headers: usize,
}

/// A request refused by the checker, and the status to answer it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// 400, or 431 for a head over the limits.
    pub status: u16,
    /// What was wrong, for the client and the logs.
    pub reason: &'static str,
    /// Whether part of the refused request was already passed on; then the only safe answer
    /// is to close the connection.
    pub after_release: bool,
}

/// Follows the framing of the requests on one connection; see the module docs.
///
/// Bytes go in with [`FrameChecker::push`] and come out, once checked, through
/// [`FrameChecker::releasable`] and [`FrameChecker::consume`].
#[derive(Debug)]
pub struct FrameChecker {
    limits: FrameLimits,
    /// Bytes received and not yet consumed.
    buf: Vec<u8>,
    /// `buf[..released]` may be handed on.
    released: usize,
    /// `buf[..checked]` has been run through the state machine.
    checked: usize,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests or inside a head; the head starts at `released`.
    Head,
    /// Inside a body of known length.
    Body {
        remaining: u64,
    },
    /// Inside a chunk-size line; `first` holds back the head until this line is valid.
    ChunkSize {
        first: bool,
        digits: u8,
        size: u64,
        after_digits: bool,
        len: usize,
        cr: bool,
    },
    ChunkData {
        remaining: u64,
    },
    /// Expecting the CRLF after chunk data; `cr` when the CR was seen.
    ChunkEnd {
        cr: bool,
    },
    /// Trailer lines after the last chunk; `line` bytes in the current line.
    Trailers {
        line: usize,
        total: usize,
        cr: bool,
    },
    /// No more checking on this connection.
    Passthrough,
    /// Refused; nothing more is released.
    Rejected,
}

/// The body framing a checked head announced.
enum Framing {
    None,
    Length(u64),
    Chunked {
        hold_head: bool,
    },
    /// Protocol may switch after this head.
    Switch,
}

impl FrameChecker {
    /// A checker for a new connection.
    pub fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            released: 0,
            checked: 0,
            state: State::Head,
        }
    }

    /// Adds bytes read from the client and checks as far as they go.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Rejection> {
        if self.state == State::Rejected {
            return Err(Rejection {
                status: 400,
                reason: "connection already refused",
                after_release: true,
            });
        }
        self.buf.extend_from_slice(bytes);
        let result = self.advance();
        if result.is_err() {
            self.state = State::Rejected;
        }
        result
    }

    /// Checked bytes not yet handed on.
    pub fn releasable(&self) -> &[u8] {
        &self.buf[..self.released]
    }

    /// Marks the first `n` releasable bytes as handed on.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.released);
        self.buf.drain(..n);
        self.released -= n;
        self.checked -= n;
    }

    /// Whether bytes of an incomplete request head are waiting (a request was started and
    /// not finished).
    pub fn has_partial_head(&self) -> bool {
        self.state == State::Head
            && self.buf[self.released..]
                .iter()
                .any(|b| !b.is_ascii_whitespace())
    }

    fn advance(&mut self) -> Result<(), Rejection> {
        loop {
            let available = self.buf.len() - self.checked;
            match self.state {
                State::Passthrough => {
                    self.checked = self.buf.len();
                    self.released = self.checked;
                    return Ok(());
                }
                State::Rejected => return Ok(()),
                State::Head => {
                    if !self.advance_head()? {
                        return Ok(());
                    }
                }
                _ if available == 0 => return Ok(()),
                State::Body { remaining } => {
                    let take = remaining.min(available as u64);
                    self.checked += take as usize;
                    self.released = self.checked;
                    self.state = if take == remaining {
                        State::Head
                    } else {
                        State::Body {
                            remaining: remaining - take,
                        }
                    };
                }
                State::ChunkData { remaining } => {
                    let take = remaining.min(available as u64);
                    self.checked += take as usize;
                    self.released = self.checked;
                    self.state = if take == remaining {
                        State::ChunkEnd { cr: false }
                    } else {
                        State::ChunkData {
                            remaining: remaining - take,
                        }
                    };
                }
                _ => {
                    let byte = self.buf[self.checked];
                    self.checked += 1;
                    self.state = self.next_byte_state(byte)?;
                    if !matches!(self.state, State::ChunkSize { first: true, .. }) {
                        self.released = self.checked;
                    }
                }
            }
        }
    }

    /// Runs the byte-at-a-time states (chunk lines and trailers).
    fn next_byte_state(&self, byte: u8) -> Result<State, Rejection> {
        let held = matches!(self.state, State::ChunkSize { first: true, .. });
        let reject = |reason| self.reject(400, reason, !held);
        Ok(match self.state {
            State::ChunkSize {
                first,
                digits,
                size,
                after_digits,
                len,
                cr,
            } => {
                if cr {
                    if byte != b'\n' {
                        return Err(reject("CR without LF in a chunk-size line"));
                    }
                    if digits == 0 {
                        return Err(reject("invalid chunk size"));
                    }
                    return Ok(if size == 0 {
                        State::Trailers {
                            line: 0,
                            total: 0,
                            cr: false,
                        }
                    } else {
                        State::ChunkData { remaining: size }
                    });
                }
                if len + 1 > MAX_CHUNK_LINE {
                    return Err(reject("chunk-size line too long"));
                }
                let (mut digits, mut size, mut after_digits) = (digits, size, after_digits);
                let mut cr = false;
                match byte {
                    b'\r' => cr = true,
                    _ if byte.is_ascii_hexdigit() && !after_digits => {
                        if digits >= 16 {
                            return Err(reject("chunk size too large"));
                        }
                        let value = (byte as char).to_digit(16).expect("a hex digit");
                        size = (size << 4) | u64::from(value);
                        digits += 1;
                    }
                    b';' | b' ' | b'\t' if digits > 0 => after_digits = true,
                    // Extension bytes: visible ASCII and whitespace only.
                    _ if after_digits && (byte == b'\t' || (0x20..0x7f).contains(&byte)) => {}
                    _ => return Err(reject("invalid chunk size")),
                }
                State::ChunkSize {
                    first,
                    digits,
                    size,
                    after_digits,
                    len: len + 1,
                    cr,
                }
            }
            State::ChunkEnd { cr: false } if byte == b'\r' => State::ChunkEnd { cr: true },
            State::ChunkEnd { cr: true } if byte == b'\n' => State::ChunkSize {
                first: false,
                digits: 0,
                size: 0,
                after_digits: false,
                len: 0,
                cr: false,
            },
            State::ChunkEnd { .. } => return Err(reject("chunk data longer than its size")),
            State::Trailers { line, total, cr } => {
                if total + 1 > self.limits.max_head_bytes {
                    return Err(self.reject(431, "trailers too large", true));
                }
                match (cr, byte) {
                    (true, b'\n') if line == 0 => State::Head,
                    (true, b'\n') => State::Trailers {
                        line: 0,
                        total: total + 1,
                        cr: false,
                    },
                    (true, _) => return Err(reject("CR without LF in trailers")),
                    (false, b'\r') => State::Trailers {
                        line,
                        total: total + 1,
                        cr: true,
                    },
                    (false, b'\n' | 0) => return Err(reject("invalid byte in trailers")),
                    (false, _) => State::Trailers {
                        line: line + 1,
                        total: total + 1,
                        cr: false,
                    },
                }
            }
            State::Head
            | State::Body { .. }
            | State::ChunkData { .. }
            | State::Passthrough
            | State::Rejected => unreachable!("not a byte-at-a-time state"),
        })
    }

    /// Looks for a complete head at `released`; checks it and moves to its body. Returns
    /// whether it made progress.
    fn advance_head(&mut self) -> Result<bool, Rejection> {
        // Empty lines before a request line are allowed (RFC 9112 §2.2); pass them on.
        while self.released < self.buf.len() && matches!(self.buf[self.released], b'\r' | b'\n') {
            self.released += 1;
        }
        self.checked = self.checked.max(self.released);
        let start = self.released;
        let Some(end) = head_end(&self.buf[start..], self.checked - start) else {
            self.checked = self.buf.len();
            if self.buf.len() - start > self.limits.max_head_bytes {
                return Err(self.reject(431, "request head too large", false));
            }
            return Ok(false);
        };
        if end > self.limits.max_head_bytes {
            return Err(self.reject(431, "request head too large", false));
        }
        let framing = self.check_head(&self.buf[start..start + end])?;
        let head_end = start + end;
        self.checked = head_end;
        self.state = match framing {
            Framing::None => State::Head,
            Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Body { remaining: n },
            Framing::Chunked { hold_head } => State::ChunkSize {
                first: hold_head,
                digits: 0,
                size: 0,
                after_digits: false,
                len: 0,
                cr: false,
            },
            Framing::Switch => State::Passthrough,
        };
        if !matches!(self.state, State::ChunkSize { first: true, .. }) {
            self.released = head_end;
        }
        Ok(true)
    }

    /// Checks one complete head; returns its body framing.
    fn check_head(&self, head: &[u8]) -> Result<Framing, Rejection> {
        // Uninitialised slots: this runs for every request, so no zeroing and, up to the
        // default limit, no allocation.
        const ON_STACK: usize = 100;
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; ON_STACK];
        let mut heap = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if self.limits.max_headers <= ON_STACK
        {
            &mut stack[..self.limits.max_headers]
        } else {
            heap.resize_with(self.limits.max_headers, MaybeUninit::uninit);
            &mut heap
        };
        let mut request = httparse::Request::new(&mut []);
        match request.parse_with_uninit_headers(head, slots) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(self.reject(431, "too many header fields", false));
            }
            // hyper parses the same bytes and answers 400 (or 505) itself.
            Ok(httparse::Status::Partial) | Err(_) => return Ok(Framing::Switch),
        }
        let http_10 = request.version == Some(0);
        let mut content_length = None;
        let mut chunked = false;
        let mut transfer_encodings = 0;
        let mut content_lengths = 0;
        let mut hosts = 0;
        let mut expect_continue = false;
        let mut upgrade = request.method == Some("CONNECT");
        for header in request.headers.iter() {
            let name = header.name;
            let value = trim(header.value);
            if name.eq_ignore_ascii_case("content-length") {
                content_lengths += 1;
                if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                    return Err(self.reject(400, "invalid Content-Length", false));
                }
                content_length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encodings += 1;
                chunked = value.eq_ignore_ascii_case(b"chunked");
                if !chunked {
                    return Err(self.reject(400, "Transfer-Encoding other than chunked", false));
                }
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("expect") {
                expect_continue = true;
            } else if name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        if content_lengths > 1 {
            return Err(self.reject(400, "more than one Content-Length", false));
        }
        if transfer_encodings > 1 {
            return Err(self.reject(400, "more than one Transfer-Encoding", false));
        }
        if chunked && content_lengths > 0 {
            return Err(self.reject(400, "both Content-Length and Transfer-Encoding", false));
        }
        if chunked && http_10 {
            return Err(self.reject(400, "Transfer-Encoding in HTTP/1.0", false));
        }
        if hosts > 1 {
            return Err(self.reject(400, "more than one Host header", false));
        }
        if upgrade {
            return Ok(Framing::Switch);
        }
        if chunked {
            return Ok(Framing::Chunked {
                hold_head: !expect_continue,
            });
        }
        match content_length {
            Some(length) => Ok(Framing::Length(length)),
            None if content_lengths > 0 => Err(self.reject(400, "invalid Content-Length", false)),
            None => Ok(Framing::None),
        }
    }

    fn reject(&self, status: u16, reason: &'static str, after_release: bool) -> Rejection {
        Rejection {
            status,
            reason,
            after_release,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.status)
    }
}

impl std::error::Error for Rejection {}

/// Length of the head at the start of `bytes` (through its empty line), searching from
/// `from` (minus the bytes a terminator may straddle). Accepts CRLF and bare LF line ends,
/// as httparse does.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let from = from.saturating_sub(3);
    let mut i = from;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\n') {
        let lf = i + offset;
        match bytes.get(lf + 1) {
            Some(b'\n') => return Some(lf + 2),
            Some(b'\r') if bytes.get(lf + 2) == Some(&b'\n') => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_head_bytes: 1024,
        max_headers: 10,
    };

    /// Pushes `input` in pieces of `step` bytes; returns what was released or the refusal.
    fn run(input: &[u8], step: usize) -> Result<Vec<u8>, Rejection> {
        let mut checker = FrameChecker::new(LIMITS);
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            checker.push(piece)?;
            out.extend_from_slice(checker.releasable());
            let n = checker.releasable().len();
            checker.consume(n);
        }
        Ok(out)
    }

    #[test]
    fn well_framed_requests_pass_whole_in_any_split() {
        let input = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /\
            POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n\
            3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n\
            GET /last HTTP/1.1\nHost: a\n\n";
        for step in [1, 2, 3, 7, 64, input.len()] {
            assert_eq!(run(input, step).as_deref(), Ok(&input[..]), "step {step}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused_before_release() {
        let cases: &[(&str, &[u8])] = &[
            ("cl+te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("te+cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            ("dup cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            ("cl list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n"),
            ("cl sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n"),
            ("te list", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n"),
            ("te twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("xchunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n"),
            ("te 1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            ("bad chunk", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            ("chunk overflow", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n"),
        ];
        for (name, input) in cases {
            for step in [1, input.len()] {
                let refused = run(input, step).expect_err(name);
                assert_eq!(
                    (refused.status, refused.after_release),
                    (400, false),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn limits_and_late_errors() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "v".repeat(2000)
        );
        assert_eq!(run(big.as_bytes(), 100).unwrap_err().status, 431);
        let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(run(many.as_bytes(), 1000).unwrap_err().status, 431);
        let late =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nzz\r\n";
        assert!(run(late, late.len()).unwrap_err().after_release);
        // Unparseable heads and protocol switches are hyper's business from then on.
        let junk = b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n\x00\x01anything";
        assert_eq!(run(junk, 5).as_deref(), Ok(&junk[..]));
        let upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        assert_eq!(run(upgrade, 3).as_deref(), Ok(&upgrade[..]));
    }
}
