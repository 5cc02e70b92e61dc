//! The server-op follower: the upstream-to-client stream after CONNECT, read op by op.

use std::ops::Range;

use super::{rewrite_info_line, Rewrite, TlsAdvert};

/// The upstream's answer to the forwarded CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `+OK` or `PONG` (or any traffic an authenticated client gets).
    Accepted,
    /// `-ERR`.
    Rejected,
}

/// The longest server control line followed (an INFO with a large cluster's `connect_urls`).
/// A longer INFO line is dropped; after any other longer line the follower has lost sync.
pub const MAX_SERVER_LINE: usize = 256 * 1024;

/// Why the follower lost sync (see [`ServerStream::lost_sync`]).
pub const LOST_UNKNOWN_OP: &str = "an op the follower does not know";
/// Why the follower lost sync.
pub const LOST_BAD_MSG_SIZE: &str = "a MSG or HMSG without a valid size";
/// Why the follower lost sync.
pub const LOST_LONG_LINE: &str = "a control line over 256 KiB";
/// An INFO line over [`MAX_SERVER_LINE`] was dropped, not forwarded.
pub const DROPPED_LONG_INFO: &str = "an INFO line over 256 KiB was dropped";
/// An INFO line that does not parse was dropped, not forwarded.
pub const DROPPED_BAD_INFO: &str = "an INFO line that does not parse was dropped";

const NOTICES: [&str; 5] = [
    LOST_UNKNOWN_OP,
    LOST_BAD_MSG_SIZE,
    LOST_LONG_LINE,
    DROPPED_LONG_INFO,
    DROPPED_BAD_INFO,
];

/// Where the follower is in the upstream's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a control line (at its start when `ServerStream::line` is empty). `held`: the part
    /// from earlier reads looks like an INFO and has not been forwarded yet.
    Line { held: bool },
    /// In a MSG/HMSG payload: this many bytes (its CRLF included) still pass through.
    Payload { left: usize },
    /// The rest of the current line, up to its `\n`, passes uninterpreted (or is dropped).
    Rest { drop: bool },
}

/// What a complete control line means.
enum Op {
    /// A line that starts with `INFO` (any case): forwarded rewritten, or dropped if it does
    /// not parse.
    Info,
    /// MSG/HMSG with its payload size.
    Msg(usize),
    /// PING, PONG, +OK.
    Plain,
    /// -ERR.
    Err,
    /// Anything else: the follower loses sync.
    Unknown { accepted: bool, why: &'static str },
}

/// Follows the upstream-to-client stream after CONNECT, op by op, so that:
/// - every INFO nats-server sends later (after CONNECT, and whenever the cluster changes) gets
///   the same rewrite as the first one ([`Rewrite`]), so stripped `connect_urls` never leak
///   past natsgate and advertised ones are always the ones the client sees;
/// - the first op that is not INFO gives the upstream's verdict on CONNECT.
///
/// Message payloads are skipped by their declared size, never scanned. Only an INFO line is
/// ever held back (until its `\n`); everything else is forwarded as it arrives.
///
/// It fails closed. On anything it cannot follow (an unknown op, a MSG without a valid size, a
/// control line over [`MAX_SERVER_LINE`]) it loses sync ([`ServerStream::lost_sync`]): from
/// then on it no longer knows where payloads are, so it treats every line start (after any
/// `\n`) as a possible op, and every line that starts with `INFO` is still held and rewritten,
/// even one inside a payload; everything else passes untouched. An INFO line it cannot rewrite
/// (over [`MAX_SERVER_LINE`], or not parsing) is dropped, never forwarded. So the connection
/// never needs closing for the follower's sake; [`ServerStream::take_notice`] reports each of
/// these events once, for a log line.
#[derive(Debug)]
pub struct ServerStream {
    rewrite: Rewrite,
    state: State,
    /// The current control line, when it spans reads.
    line: Vec<u8>,
    verdict: Option<Verdict>,
    /// Why sync was lost, if it was.
    lost: Option<&'static str>,
    /// Bit i: `NOTICES[i]` happened; `reported`: it was taken.
    happened: u8,
    reported: u8,
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
    /// TLS flags, and `connect_urls` stripped or kept: [`ServerStream::with_rewrite`] with
    /// [`Rewrite::new`].
    pub fn new(tls: TlsAdvert, strip_connect_urls: bool) -> ServerStream {
        ServerStream::with_rewrite(Rewrite::new(tls, strip_connect_urls))
    }

    /// Every INFO the client receives from here on is rewritten as `rewrite` says.
    pub fn with_rewrite(rewrite: Rewrite) -> ServerStream {
        ServerStream {
            rewrite,
            state: State::Line { held: false },
            line: Vec::new(),
            verdict: None,
            lost: None,
            happened: 0,
            reported: 0,
        }
    }

    /// The rewrite applied to every INFO (for the lame duck INFO, [`super::ldm_info`]).
    pub fn rewrite(&self) -> &Rewrite {
        &self.rewrite
    }

    /// The verdict on CONNECT, once the first non-INFO op has been seen.
    /// Between two server ops, in sync: an asynchronous INFO written now splits nothing.
    pub fn at_op_boundary(&self) -> bool {
        self.lost.is_none()
            && matches!(self.state, State::Line { held: false })
            && self.line.is_empty()
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Why the follower lost sync with the upstream's ops, once it has (it stays lost).
    pub fn lost_sync(&self) -> Option<&'static str> {
        self.lost
    }

    /// The next event worth a log line that has not been taken yet: losing sync (with its
    /// reason), or dropping an INFO line. Each kind is reported once per connection; call it
    /// after `feed` until it returns `None`.
    pub fn take_notice(&mut self) -> Option<&'static str> {
        let fresh = self.happened & !self.reported;
        if fresh == 0 {
            return None;
        }
        let i = fresh.trailing_zeros() as usize;
        self.reported |= 1 << i;
        Some(NOTICES[i])
    }

    fn notice(&mut self, what: &'static str) {
        if let Some(i) = NOTICES.iter().position(|n| *n == what) {
            self.happened |= 1 << i;
        }
    }

    fn lose(&mut self, why: &'static str) {
        if self.lost.is_none() {
            self.lost = Some(why);
            self.notice(why);
        }
    }

    /// Processes the next bytes from upstream. `None`: forward `chunk` as it is (the common
    /// case); `Some(bytes)`: forward these instead (an INFO was rewritten or is being held).
    pub fn feed(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let mut out = Out { chunk, copy: None };
        let mut pos = 0;
        while pos < chunk.len() {
            pos = match self.state {
                State::Rest { drop } => self.rest(&mut out, pos, drop),
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

    /// Passes (or drops) the rest of a line uninterpreted; returns where it (or the chunk) ends.
    fn rest(&mut self, out: &mut Out<'_>, pos: usize, drop: bool) -> usize {
        let nl = memchr::memchr(b'\n', &out.chunk[pos..]).map(|i| pos + i);
        let end = nl.map_or(out.chunk.len(), |i| i + 1);
        if drop {
            out.hold(pos);
        } else {
            out.keep(pos..end);
        }
        if nl.is_some() {
            self.state = State::Line { held: false };
        }
        end
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
        let rest = |drop| match nl {
            Some(_) => State::Line { held: false },
            None => State::Rest { drop },
        };
        if too_long {
            if like_info {
                // Too long to rewrite: never forwarded.
                out.hold(pos);
                self.notice(DROPPED_LONG_INFO);
            } else {
                self.release(out, pos..end, held);
                self.lose(LOST_LONG_LINE);
            }
            self.line = Vec::new();
            self.state = rest(like_info);
            return end;
        }
        if like_info {
            out.hold(pos);
            self.state = State::Line { held: true };
        } else {
            self.release(out, pos..end, held);
            if self.lost.is_some() && nl.is_none() {
                // Lost: only INFO lines are interpreted, so this one need not be kept.
                self.line.clear();
                self.state = State::Rest { drop: false };
                return end;
            }
            self.state = State::Line { held: false };
        }
        if nl.is_some() {
            self.end_line(out, spans, pos..end);
        }
        end
    }

    /// Forwards this read's `piece` of a line that is not an INFO, and the part held from
    /// earlier reads (it looked like one).
    fn release(&mut self, out: &mut Out<'_>, piece: Range<usize>, held: bool) {
        if held {
            // `self.line` holds the whole line so far, this read's piece included.
            let earlier = &self.line[..self.line.len() - piece.len()];
            out.hold(piece.start).extend_from_slice(earlier);
        }
        out.keep(piece);
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
        let held = self.state == (State::Line { held: true });
        self.state = State::Line { held: false };
        if held {
            // A line that starts with INFO, held from its start.
            match rewrite_info_line(text, &self.rewrite) {
                Ok(rewritten) => {
                    out.hold(piece.start).extend_from_slice(&rewritten);
                }
                Err(_) => {
                    out.hold(piece.start);
                    self.notice(DROPPED_BAD_INFO);
                }
            }
        } else if self.lost.is_none() {
            let verdict = match classify(text) {
                Op::Msg(size) => {
                    self.state = State::Payload {
                        left: size.saturating_add(2),
                    };
                    Some(Verdict::Accepted)
                }
                Op::Plain => Some(Verdict::Accepted),
                Op::Err => Some(Verdict::Rejected),
                // Not held: it does not start with INFO (leading blanks, say).
                Op::Info => {
                    self.lose(LOST_UNKNOWN_OP);
                    None
                }
                Op::Unknown { accepted, why } => {
                    self.lose(why);
                    accepted.then_some(Verdict::Accepted)
                }
            };
            self.verdict = self.verdict.or(verdict);
        }
        self.recycle(line);
    }

    /// Keeps the line buffer's allocation for the next line that spans reads, unless it grew big.
    fn recycle(&mut self, mut line: Vec<u8>) {
        if line.capacity() > 4096 {
            return;
        }
        line.clear();
        self.line = line;
    }
}

/// The op of a complete control line that is not held as an INFO.
fn classify(line: &[u8]) -> Op {
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let op = words.next().unwrap_or_default().to_ascii_uppercase();
    let args: Vec<&[u8]> = words.collect();
    let size = |w: &[u8]| -> Option<usize> {
        if w.is_empty() || !w.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(w).ok()?.parse().ok()
    };
    let bad_msg = Op::Unknown {
        accepted: true,
        why: LOST_BAD_MSG_SIZE,
    };
    match op.as_slice() {
        b"INFO" => Op::Info,
        // MSG <subject> <sid> [reply] <size>
        b"MSG" if (3..=4).contains(&args.len()) => {
            args.last().and_then(|w| size(w)).map_or(bad_msg, Op::Msg)
        }
        // HMSG <subject> <sid> [reply] <header size> <total size>
        b"HMSG" if (4..=5).contains(&args.len()) => {
            let n = args.len();
            match (size(args[n - 2]), size(args[n - 1])) {
                (Some(h), Some(t)) if h <= t => Op::Msg(t),
                _ => bad_msg,
            }
        }
        b"MSG" | b"HMSG" => bad_msg,
        b"PING" | b"PONG" | b"+OK" => Op::Plain,
        b"-ERR" => Op::Err,
        _ => Op::Unknown {
            accepted: false,
            why: LOST_UNKNOWN_OP,
        },
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

    fn follow_with(chunks: &[&[u8]]) -> (String, ServerStream) {
        let mut s = ServerStream::new(TlsAdvert::None, true);
        let mut out = Vec::new();
        for c in chunks {
            match s.feed(c) {
                Some(v) => out.extend_from_slice(&v),
                None => out.extend_from_slice(c),
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), s)
    }

    /// Fail closed: after an op it does not know, the follower no longer knows where payloads
    /// are, but every line that starts with INFO is still rewritten (before, every later
    /// `connect_urls` reached the client).
    #[test]
    fn after_an_unknown_op_info_lines_are_still_rewritten() {
        let stream = b"HELLO\r\nINFO {\"connect_urls\":[\"x\"]} \r\nMSG a 1 5\r\nINFO {\"connect_urls\":[\"y\"]}\r\n";
        let want = "HELLO\r\nINFO {} \r\nMSG a 1 5\r\nINFO {} \r\n";
        for cut in 0..stream.len() {
            let (out, s) = follow_with(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(out, want, "cut at {cut}");
            assert_eq!(s.lost_sync(), Some(LOST_UNKNOWN_OP));
            assert_eq!(s.verdict(), None);
        }
        let (out, mut s) = follow_with(&stream.chunks(1).collect::<Vec<_>>());
        assert_eq!(out, want);
        assert_eq!(s.take_notice(), Some(LOST_UNKNOWN_OP));
        assert_eq!(s.take_notice(), None, "reported once");
    }

    #[test]
    fn after_a_bad_msg_size_info_lines_are_still_rewritten() {
        for bad in [
            &b"MSG a 1 x\r\n"[..],
            b"MSG a 1 +5\r\n",
            b"MSG a\r\n",
            b"HMSG a 1 9 5\r\n",
        ] {
            let stream = [bad, b"INFO {\"connect_urls\":[\"x\"]} \r\n"].concat();
            let (out, s) = follow_with(&[&stream]);
            assert_eq!(out.as_bytes(), [bad, b"INFO {} \r\n"].concat(), "{bad:?}");
            assert_eq!(s.lost_sync(), Some(LOST_BAD_MSG_SIZE));
            assert_eq!(s.verdict(), Some(Verdict::Accepted));
        }
    }

    /// An INFO line that cannot be rewritten is never forwarded: one that only begins like
    /// INFO (`INFOX`, `INFO{`, a Go client would read the latter) or does not parse, and one
    /// over 256 KiB. The follower stays in sync: the line's end is known.
    #[test]
    fn info_lines_that_cannot_be_rewritten_are_dropped() {
        let stream = b"INFOX {\"connect_urls\":[\"x\"]}\r\nINFO{\"connect_urls\":[\"x\"]}\r\nINFO {\"connect_urls\":[\"x\"]} \r\nPONG\r\n";
        for n in [1, 3, stream.len()] {
            let (out, mut s) = follow_with(&stream.chunks(n).collect::<Vec<_>>());
            assert_eq!(out, "INFO {} \r\nPONG\r\n");
            assert_eq!(s.lost_sync(), None);
            assert_eq!(s.verdict(), Some(Verdict::Accepted));
            assert_eq!(s.take_notice(), Some(DROPPED_BAD_INFO));
            assert_eq!(s.take_notice(), None);
        }

        let mut stream = b"INFO {\"connect_urls\":[\"10.0.0.9:4222\"],\"x\":\"".to_vec();
        stream.resize(MAX_SERVER_LINE + 10, b'a');
        stream.extend_from_slice(b"\"}\r\nINFO {\"connect_urls\":[\"x\"]} \r\nPONG\r\n");
        let (out, mut s) = follow_with(&stream.chunks(4096).collect::<Vec<_>>());
        assert_eq!(out, "INFO {} \r\nPONG\r\n");
        assert_eq!(s.lost_sync(), None);
        assert_eq!(s.take_notice(), Some(DROPPED_LONG_INFO));
    }

    /// Any other line over 256 KiB is forwarded, and the follower loses sync (a MSG line that
    /// long would hide its size), still rewriting INFO lines after it.
    #[test]
    fn an_overlong_line_is_forwarded_and_info_still_rewritten() {
        let mut stream = b"MSG a 1 ".to_vec();
        stream.resize(MAX_SERVER_LINE + 10, b'a');
        stream.extend_from_slice(b"\r\nINFO {\"connect_urls\":[\"x\"]} \r\n");
        let (out, mut s) = follow_with(&stream.chunks(4096).collect::<Vec<_>>());
        assert_eq!(
            out.as_bytes(),
            [&stream[..MAX_SERVER_LINE + 12], b"INFO {} \r\n"].concat()
        );
        assert_eq!(s.lost_sync(), Some(LOST_LONG_LINE));
        assert_eq!(s.take_notice(), Some(LOST_LONG_LINE));
        assert_eq!(s.verdict(), None);
    }

    /// `listener.advertise` reaches later INFO lines too.
    #[test]
    fn later_info_carries_the_advertised_urls() {
        let rewrite = Rewrite {
            tls: TlsAdvert::None,
            connect_urls: super::super::ConnectUrls::Advertise(vec!["edge-a:4222".into()].into()),
            client_ip: Some("203.0.113.7".parse().unwrap()),
        };
        let mut s = ServerStream::with_rewrite(rewrite.clone());
        assert_eq!(s.rewrite(), &rewrite);
        let out = s
            .feed(b"PONG\r\nINFO {\"connect_urls\":[\"10.0.0.2:4222\"],\"client_ip\":\"10.0.0.5\"} \r\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PONG\r\nINFO {\"connect_urls\":[\"edge-a:4222\"],\"client_ip\":\"203.0.113.7\"} \r\n"
        );
    }
}
