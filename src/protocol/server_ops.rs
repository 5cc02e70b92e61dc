//! The server-op follower: the upstream-to-client stream after CONNECT, read op by op.

use std::ops::Range;

use super::{parse_info, rewrite_info, TlsAdvert};

/// The upstream's answer to the forwarded CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `+OK` or `PONG` (or any traffic an authenticated client gets).
    Accepted,
    /// `-ERR`.
    Rejected,
}

/// The longest server control line followed (an INFO with a large cluster's `connect_urls`).
/// Past it the stream is no longer interpreted, only forwarded.
pub const MAX_SERVER_LINE: usize = 256 * 1024;

/// Where the follower is in the upstream's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a control line (at its start when `ServerStream::line` is empty). `held`: the part
    /// from earlier reads looks like an INFO and has not been forwarded yet.
    Line { held: bool },
    /// In a MSG/HMSG payload: this many bytes (its CRLF included) still pass through.
    Payload { left: usize },
    /// The stream is not understood: everything is forwarded as it is.
    Passthrough,
}

/// What a complete control line means.
enum Op {
    /// An INFO line: forwarded rewritten (or as it is, if it does not parse).
    Info,
    /// MSG/HMSG with its payload size.
    Msg(usize),
    /// PING, PONG, +OK.
    Plain,
    /// -ERR.
    Err,
    /// Anything else (including a MSG without a size): stop interpreting.
    Unknown { accepted: bool },
}

/// Follows the upstream-to-client stream after CONNECT, op by op, so that:
/// - every INFO nats-server sends later (after CONNECT, and whenever the cluster changes) gets
///   the same rewrite as the first one, so `connect_urls` never leak past natsgate;
/// - the first op that is not INFO gives the upstream's verdict on CONNECT.
///
/// Message payloads are skipped by their declared size, never scanned. Only an INFO line is
/// ever held back (until its `\n`); everything else is forwarded as it arrives. If the stream
/// stops looking like the NATS protocol, it is forwarded untouched from then on.
#[derive(Debug)]
pub struct ServerStream {
    tls: TlsAdvert,
    strip_connect_urls: bool,
    state: State,
    /// The current control line, when it spans reads.
    line: Vec<u8>,
    verdict: Option<Verdict>,
}

/// What one `feed` forwards: nothing is copied until the output first differs from the input.
struct Out<'a> {
    chunk: &'a [u8],
    /// `None`: everything consumed so far is forwarded as it is.
    copy: Option<Vec<u8>>,
}

impl<'a> Out<'a> {
    /// Forwards `chunk[r]` as it is.
    fn keep(&mut self, r: Range<usize>) {
        if let Some(c) = self.copy.as_mut() {
            c.extend_from_slice(&self.chunk[r]);
        }
    }

    /// Holds back `chunk[at..]` for now: from here the output is built.
    fn hold(&mut self, at: usize) -> &mut Vec<u8> {
        let chunk = self.chunk;
        self.copy.get_or_insert_with(|| chunk[..at].to_vec())
    }
}

impl ServerStream {
    pub fn new(tls: TlsAdvert, strip_connect_urls: bool) -> ServerStream {
        ServerStream {
            tls,
            strip_connect_urls,
            state: State::Line { held: false },
            line: Vec::new(),
            verdict: None,
        }
    }

    /// The verdict on CONNECT, once the first non-INFO op has been seen.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Processes the next bytes from upstream. `None`: forward `chunk` as it is (the common
    /// case); `Some(bytes)`: forward these instead (an INFO was rewritten or is being held).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let mut out = Out { chunk, copy: None };
        let mut pos = 0;
        while pos < chunk.len() {
            pos = match self.state {
                State::Passthrough => {
                    out.keep(pos..chunk.len());
                    chunk.len()
                }
                State::Payload { left } => self.payload(&mut out, pos, left),
                State::Line { held } => self.control_line(&mut out, pos, held),
            };
        }
        out.copy
    }

    /// Passes payload bytes through; returns where the payload (or the chunk) ends.
    fn payload(&mut self, out: &mut Out<'_>, pos: usize, left: usize) -> usize {
        let take = left.min(out.chunk.len() - pos);
        out.keep(pos..pos + take);
        self.state = match left - take {
            0 => State::Line { held: false },
            left => State::Payload { left },
        };
        pos + take
    }

    /// Takes control-line bytes up to the next `\n` (or the chunk's end); returns where they end.
    fn control_line(&mut self, out: &mut Out<'_>, pos: usize, held: bool) -> usize {
        let nl = memchr::memchr(b'\n', &out.chunk[pos..]).map(|i| pos + i);
        let end = nl.map_or(out.chunk.len(), |i| i + 1);
        let piece = &out.chunk[pos..end];
        // A line that ends inside the read it began in needs no copy.
        let spans = !self.line.is_empty() || nl.is_none();
        if spans {
            self.line.extend_from_slice(piece);
        }
        let so_far: &[u8] = if spans { &self.line } else { piece };
        let (too_long, like_info) = (so_far.len() > MAX_SERVER_LINE, starts_like(so_far, b"INFO"));
        if too_long {
            self.give_up(out, pos..end, held);
        } else if like_info {
            out.hold(pos);
            self.state = State::Line { held: true };
        } else {
            if held {
                // It looked like INFO but is not: release the earlier bytes.
                let earlier = &self.line[..self.line.len() - piece.len()];
                out.hold(pos).extend_from_slice(earlier);
            }
            out.keep(pos..end);
            self.state = State::Line { held: false };
        }
        if nl.is_some() && self.state != State::Passthrough {
            self.end_line(out, spans, pos..end);
        }
        end
    }

    /// A line too long to follow: release what was held and stop interpreting.
    fn give_up(&mut self, out: &mut Out<'_>, piece: Range<usize>, held: bool) {
        if held {
            // `self.line` holds the whole line so far, this read's piece included.
            out.hold(piece.start).extend_from_slice(&self.line);
        } else {
            out.keep(piece);
        }
        self.line = Vec::new();
        self.state = State::Passthrough;
    }

    /// A complete control line: act on its op and record the verdict.
    fn end_line(&mut self, out: &mut Out<'_>, spans: bool, piece: Range<usize>) {
        let line = if spans {
            std::mem::take(&mut self.line)
        } else {
            Vec::new()
        };
        let text: &[u8] = if spans {
            &line
        } else {
            &out.chunk[piece.clone()]
        };
        let op = classify(text);
        let held = self.state == (State::Line { held: true });
        self.state = State::Line { held: false };
        let verdict = match op {
            // Only a line held from its start is rewritten (not one with leading blanks).
            Op::Info if held => {
                let rewritten = match parse_info(text) {
                    Ok(info) => rewrite_info(info, self.tls, self.strip_connect_urls),
                    Err(_) => text.to_vec(),
                };
                out.hold(piece.start).extend_from_slice(&rewritten);
                None
            }
            Op::Msg(size) => {
                self.state = State::Payload {
                    left: size.saturating_add(2),
                };
                Some(Verdict::Accepted)
            }
            Op::Plain => Some(Verdict::Accepted),
            Op::Err => Some(Verdict::Rejected),
            Op::Info => {
                self.state = State::Passthrough;
                None
            }
            Op::Unknown { accepted } => {
                if held {
                    // Held because it began like INFO: forward it as it is.
                    out.hold(piece.start).extend_from_slice(text);
                }
                self.state = State::Passthrough;
                accepted.then_some(Verdict::Accepted)
            }
        };
        self.verdict = self.verdict.or(verdict);
        self.recycle(line);
    }

    /// Keeps the line buffer's allocation for the next line that spans reads, unless it grew big.
    fn recycle(&mut self, mut line: Vec<u8>) {
        if self.state == State::Passthrough || line.capacity() > 4096 {
            return;
        }
        line.clear();
        self.line = line;
    }
}

/// The op of a complete control line.
fn classify(line: &[u8]) -> Op {
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    match op.as_slice() {
        b"INFO" => Op::Info,
        b"MSG" | b"HMSG" => words
            .next_back()
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|w| w.parse::<usize>().ok())
            .map_or(Op::Unknown { accepted: true }, Op::Msg),
        b"PING" | b"PONG" | b"+OK" => Op::Plain,
        b"-ERR" => Op::Err,
        _ => Op::Unknown { accepted: false },
    }
}

/// Whether `line` starts with `op` as far as both go, ignoring ASCII case.
fn starts_like(line: &[u8], op: &[u8]) -> bool {
    let n = line.len().min(op.len());
    line[..n].eq_ignore_ascii_case(&op[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(chunks: &[&[u8]]) -> (Vec<u8>, Option<Verdict>) {
        let mut s = ServerStream::new(TlsAdvert::None, true);
        let mut out = Vec::new();
        for c in chunks {
            match s.feed(c) {
                Some(v) => out.extend_from_slice(&v),
                None => out.extend_from_slice(c),
            }
        }
        (out, s.verdict())
    }

    #[test]
    fn verdicts() {
        assert_eq!(follow(&[b"+OK\r\n"]).1, Some(Verdict::Accepted));
        assert_eq!(follow(&[b"PO", b"NG\r\n"]).1, Some(Verdict::Accepted));
        assert_eq!(
            follow(&[b"-E", b"R", b"R 'Authorization Violation'\r\n"]).1,
            Some(Verdict::Rejected)
        );
        assert_eq!(
            follow(&[b"INFO {\"a\":", b"1} \r\n-ERR 'x'\r\n"]).1,
            Some(Verdict::Rejected)
        );
        assert_eq!(
            follow(&[b"INFO {} \r\nPONG\r\n"]).1,
            Some(Verdict::Accepted)
        );
        assert_eq!(follow(&[b"INF"]).1, None);
        assert_eq!(follow(&[b"-ER"]).1, None);
    }

    #[test]
    fn later_info_is_rewritten_and_payloads_are_skipped() {
        let info =
            b"INFO {\"server_id\":\"S\",\"nonce\":\"n\",\"connect_urls\":[\"10.0.0.2:4222\"]} \r\n";
        // A payload that looks like INFO must pass untouched.
        let stream = [
            &b"PONG\r\nMSG a 1 _INBOX.x 38\r\nINFO {\"connect_urls\":[\"1.2.3.4:1\"]} \r\n\r\n"[..],
            info,
            b"HMSG b 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n",
        ]
        .concat();
        let expected = [
            &b"PONG\r\nMSG a 1 _INBOX.x 38\r\nINFO {\"connect_urls\":[\"1.2.3.4:1\"]} \r\n\r\n"[..],
            b"INFO {\"server_id\":\"S\",\"nonce\":\"n\"} \r\n",
            b"HMSG b 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n",
        ]
        .concat();
        // Every way of splitting the stream in two, and byte by byte.
        for cut in 0..stream.len() {
            let (out, v) = follow(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "cut at {cut}"
            );
            assert_eq!(v, Some(Verdict::Accepted));
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(follow(&bytes).0, expected);
    }

    #[test]
    fn unknown_protocol_is_forwarded_untouched() {
        let stream = b"HELLO\r\nINFO {\"connect_urls\":[\"x\"]} \r\n";
        assert_eq!(follow(&[stream]).0, stream.to_vec());
        // A line that only begins like INFO was held back; it is released as it is.
        let stream = b"INFOX {\"connect_urls\":[\"x\"]}\r\nINFO {\"connect_urls\":[\"x\"]} \r\n";
        assert_eq!(follow(&[stream]).0, stream.to_vec());
        let bytes: Vec<&[u8]> = stream.chunks(3).collect();
        assert_eq!(follow(&bytes).0, stream.to_vec());
    }

    #[test]
    fn an_overlong_line_is_released_and_followed_no_further() {
        let mut stream = b"INFO {\"x\":\"".to_vec();
        stream.resize(MAX_SERVER_LINE + 10, b'a');
        stream.extend_from_slice(b"\"}\r\nINFO {\"connect_urls\":[\"x\"]} \r\n");
        let (out, v) = follow(&stream.chunks(4096).collect::<Vec<_>>());
        assert_eq!(out, stream);
        assert_eq!(v, None);
    }
}
