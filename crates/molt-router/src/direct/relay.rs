//! Relaying an upstream's answer to a direct-path client: the rewritten head, then the body
//! as it comes — by length, by chunks (passed on as they are, scanned only to find their
//! end) or until the upstream closes — and the socket back to its pool when the exchange
//! ended cleanly.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::conn::{write_two, Conn};
use super::response::Answer;
use crate::guard::ClientSocket;
use crate::http1::{BODY_READ, HEAD_READ};
use crate::upstream::{ChunkScanner, Framing, Pool, Socket};

impl<S: ClientSocket> Conn<S> {
    /// Writes the answer's head (in `out`) and relays its body; the upstream socket goes back
    /// to the pool when the exchange ended cleanly. Whether the client connection can go on.
    pub(super) async fn relay_answer(
        &mut self,
        mut socket: Socket,
        sockets: &Pool<Socket>,
        answer: &Answer,
    ) -> bool {
        let mut reusable = answer.keep_alive;
        let body_start = answer.head_len;
        let complete = match answer.framing {
            Framing::None => {
                reusable &= self.relay.len() == body_start;
                write_two(&mut self.stream, &self.out, &[]).await.is_ok()
            }
            Framing::Length(length) => {
                let have = (self.relay.len() - body_start) as u64;
                reusable &= have <= length;
                let first = have.min(length) as usize;
                let body = &self.relay[body_start..body_start + first];
                if write_two(&mut self.stream, &self.out, body).await.is_err() {
                    return false;
                }
                let mut remaining = length - first as u64;
                let mut complete = true;
                while remaining > 0 {
                    self.relay.clear();
                    self.relay
                        .reserve((remaining as usize).clamp(HEAD_READ, BODY_READ));
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) | Err(_) => {
                            complete = false;
                            break;
                        }
                        Ok(n) => {
                            let n = (n as u64).min(remaining) as usize;
                            reusable &= n == self.relay.len();
                            remaining -= n as u64;
                            if self.stream.write_all(&self.relay[..n]).await.is_err() {
                                return false;
                            }
                        }
                    }
                }
                complete
            }
            Framing::Chunked => {
                let mut chunks = ChunkScanner::default();
                let mut pending = body_start;
                let mut head = true;
                loop {
                    let scanned = match chunks.scan(&self.relay[pending..]) {
                        Ok(scanned) => scanned,
                        Err(reason) => {
                            debug!(reason, "upstream sent a broken chunked body");
                            break false;
                        }
                    };
                    let end = pending + scanned;
                    let out: &[u8] = if head { &self.out } else { &[] };
                    if write_two(&mut self.stream, out, &self.relay[pending..end])
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    head = false;
                    if chunks.is_done() {
                        reusable &= end == self.relay.len();
                        break true;
                    }
                    self.relay.drain(..end);
                    pending = 0;
                    self.relay.reserve(BODY_READ);
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) | Err(_) => break false,
                        Ok(_) => {}
                    }
                }
            }
            Framing::UntilClose => {
                reusable = false;
                if write_two(&mut self.stream, &self.out, &self.relay[body_start..])
                    .await
                    .is_err()
                {
                    return false;
                }
                loop {
                    self.relay.clear();
                    self.relay.reserve(BODY_READ);
                    match socket.stream.read_buf(&mut self.relay).await {
                        Ok(0) => break true,
                        Err(_) => break false,
                        Ok(_) => {
                            if self.stream.write_all(&self.relay).await.is_err() {
                                return false;
                            }
                        }
                    }
                }
            }
        };
        self.relay.clear();
        if complete && reusable {
            sockets.checkin(socket);
        }
        complete
    }
}
