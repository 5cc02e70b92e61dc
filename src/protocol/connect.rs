//! The client's first line: finding a complete, well-formed CONNECT, what may be logged about
//! the client, and the ADR-55 `proxy_sig` rewrite.

use std::ops::Range;

use serde_json::Value;

use super::{
    RawObject, ERR_AUTH_VIOLATION, ERR_MAX_CONTROL_LINE, ERR_MAX_PAYLOAD, ERR_UNKNOWN_PROTOCOL_OP,
};

/// Why the client's first line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("first op is not CONNECT")]
    NotConnect,
    #[error("CONNECT line longer than max_control_line")]
    TooLong,
    /// The text is natsgate's own description (serde_json's syntax errors name a position,
    /// never the client's bytes).
    #[error("invalid CONNECT argument: {0}")]
    BadArgument(String),
    /// No-auth upstream ([`scan_first_op`]): the first op is none nats-server knows.
    #[error("unknown protocol operation")]
    UnknownOp,
    /// No-auth upstream: a first PUB larger than the upstream's `max_payload`.
    #[error("PUB over max_payload")]
    MaxPayload,
    /// No-auth upstream: an op nats-server would close the connection for, without a reply
    /// (a PUB without a valid size, HPUB before CONNECT, `-ERR` from a client). The text is
    /// natsgate's own.
    #[error("{0}")]
    BadOp(&'static str),
}

impl ConnectError {
    /// The exact bytes the client receives before it is closed.
    pub fn client_error(&self) -> Vec<u8> {
        match self {
            ConnectError::NotConnect => ERR_AUTH_VIOLATION.to_vec(),
            ConnectError::TooLong => ERR_MAX_CONTROL_LINE.to_vec(),
            ConnectError::BadArgument(why) => {
                // The text is ours (never the client's bytes), but keep the quoting intact.
                let why = why.replace(['\'', '\r', '\n'], " ");
                format!("-ERR 'Invalid CONNECT Arguments: {why}'\r\n").into_bytes()
            }
            ConnectError::UnknownOp => ERR_UNKNOWN_PROTOCOL_OP.to_vec(),
            ConnectError::MaxPayload => ERR_MAX_PAYLOAD.to_vec(),
            ConnectError::BadOp(why) => format!("-ERR 'Parser Error: {why}'\r\n").into_bytes(),
        }
    }
}

/// A complete CONNECT line found at the start of the client's bytes.
///
/// It holds the client's credentials; its `Debug` (through [`RawObject`]'s) masks them.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectLine {
    /// Length of the whole line including its `\n`; the bytes after it are the client's
    /// pipelined traffic and are forwarded untouched.
    pub line_len: usize,
    /// Where the JSON argument sits inside the buffer.
    pub arg: Range<usize>,
    /// The parsed argument (always an object).
    pub fields: RawObject,
}

/// The longest value of a [`ClientIdentity`] field, in characters.
pub const IDENTITY_MAX_CHARS: usize = 64;

impl ConnectLine {
    /// The fields that a log line may show, read as nats-server reads them (see
    /// [`RawObject::go_str_field`]: the last duplicate wins, names match case-insensitively),
    /// so the log names the user nats-server authenticated. Secrets (`pass`, `auth_token`,
    /// `sig`, `jwt`, `nkey`) are deliberately not among them.
    pub fn client_identity(&self) -> ClientIdentity {
        let get = |k: &str| {
            self.fields
                .go_str_field(k)
                .map(|s| s.chars().take(IDENTITY_MAX_CHARS).collect::<String>())
        };
        ClientIdentity {
            name: get("name"),
            lang: get("lang"),
            version: get("version"),
            user: get("user"),
        }
    }
}

/// What may be logged about a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
    pub user: Option<String>,
}

const CONNECT: &[u8] = b"CONNECT";

/// Looks for a complete, well-formed CONNECT line at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, so it can be called after every read however
/// the client splits its writes. It fails as early as the bytes allow: a first byte that cannot
/// start `CONNECT` is refused at once, and a line that has outgrown `max_control_line` is refused
/// without waiting for its end.
///
/// Read as nats-server reads it: the op is case-insensitive; the argument may follow the op
/// after blanks or directly (`CONNECT{...}`); `max_control_line` limits the argument (from its
/// first byte to the line's end, trailing blanks included, a `\r` before the `\n` not), not the
/// whole line. nats-server does not limit the blanks between the op and the argument; natsgate
/// limits them to `max_control_line` too. A glued argument that is not an object (`CONNECTX`)
/// stays an `Authorization Violation` (nats-server closes without a reply: invalid JSON).
pub fn scan_connect(
    buf: &[u8],
    max_control_line: usize,
) -> Result<Option<ConnectLine>, ConnectError> {
    check_op(buf)?;
    let Some(line) = scan_line(buf, CONNECT.len(), max_control_line)? else {
        return Ok(None);
    };
    if line.arg.is_empty() {
        return Err(ConnectError::BadArgument("missing JSON object".into()));
    }
    let arg = trim_blanks(buf, line.arg);
    let fields = parse_argument(&buf[arg.clone()])?;
    Ok(Some(ConnectLine {
        line_len: line.len,
        arg,
        fields,
    }))
}

/// The op, case-insensitively, as far as the bytes go, and the byte after it.
fn check_op(buf: &[u8]) -> Result<(), ConnectError> {
    for (i, b) in buf.iter().take(CONNECT.len()).enumerate() {
        if b.to_ascii_uppercase() != CONNECT[i] {
            return Err(ConnectError::NotConnect);
        }
    }
    match buf.get(CONNECT.len()) {
        None | Some(b' ' | b'\t' | b'{') => Ok(()),
        Some(b'\r' | b'\n') => Err(ConnectError::BadArgument("missing JSON object".into())),
        Some(_) => Err(ConnectError::NotConnect),
    }
}

/// A control line found by [`scan_line`].
struct Line {
    /// The whole line, its `\n` included.
    len: usize,
    /// The argument: from the first byte that is not a blank after the op, to the line's end
    /// (a `\r` before the `\n` excluded). Empty if there is none.
    arg: Range<usize>,
}

/// The control line whose op ends at `op_end`, as nats-server frames it: blanks, then the
/// argument up to `\n`. `max_control_line` limits the argument and (natsgate's own bound) the
/// blanks before it, checked on every prefix as on the whole line, so the answer does not
/// depend on how the bytes were split.
fn scan_line(
    buf: &[u8],
    op_end: usize,
    max_control_line: usize,
) -> Result<Option<Line>, ConnectError> {
    let nl = memchr::memchr(b'\n', buf.get(op_end..).unwrap_or_default()).map(|i| op_end + i);
    // The content so far: up to the `\n`, or all of it; a `\r` last is not (yet) content.
    let end = nl.unwrap_or(buf.len());
    let end = if end > op_end && buf[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    let content = buf.get(op_end..end).unwrap_or_default();
    let blanks = content
        .iter()
        .take_while(|&&b| matches!(b, b' ' | b'\t'))
        .count();
    if blanks > max_control_line || content.len() - blanks > max_control_line {
        return Err(ConnectError::TooLong);
    }
    Ok(nl.map(|nl| Line {
        len: nl + 1,
        arg: op_end + blanks..end,
    }))
}

fn trim_blanks(buf: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && matches!(buf[r.start], b' ' | b'\t') {
        r.start += 1;
    }
    while r.end > r.start && matches!(buf[r.end - 1], b' ' | b'\t') {
        r.end -= 1;
    }
    r
}

fn parse_argument(arg: &[u8]) -> Result<RawObject, ConnectError> {
    match arg.first() {
        None => Err(ConnectError::BadArgument("missing JSON object".into())),
        Some(b'{') => serde_json::from_slice::<RawObject>(arg)
            .map_err(|e| ConnectError::BadArgument(format!("not valid JSON: {e}"))),
        Some(_) => Err(ConnectError::BadArgument(
            match serde_json::from_slice::<Value>(arg) {
                Ok(other) => format!("expected a JSON object, got {}", json_kind(&other)),
                Err(e) => format!("not valid JSON: {e}"),
            },
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An op other than CONNECT that nats-server accepts first from a client when it requires no
/// authentication (the upstream INFO has no `auth_required`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientOp {
    Ping,
    Pong,
    /// `+OK`.
    Ok,
    /// A client may send INFO; nats-server reads and ignores it.
    Info,
    Sub,
    Unsub,
    Pub,
}

/// The client's first op, found by [`scan_first_op`].
#[derive(Debug, Clone, PartialEq)]
pub enum FirstOp {
    /// A CONNECT line, as [`scan_connect`] finds it.
    Connect(ConnectLine),
    /// Another op, complete: its control line and, for PUB, the payload and its CRLF. The
    /// window ends at `len`; the bytes up to it and any after are relayed as they are.
    Other { op: ClientOp, len: usize },
}

impl FirstOp {
    /// The length of the first op in the buffer; what follows is the client's pipelined traffic.
    #[allow(clippy::len_without_is_empty)] // an op is never empty
    pub fn len(&self) -> usize {
        match self {
            FirstOp::Connect(line) => line.line_len,
            FirstOp::Other { len, .. } => *len,
        }
    }

    /// What a log line may say about the client: only a CONNECT says anything.
    pub fn client_identity(&self) -> ClientIdentity {
        match self {
            FirstOp::Connect(line) => line.client_identity(),
            FirstOp::Other { .. } => ClientIdentity::default(),
        }
    }
}

/// The limits [`scan_first_op`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstOpLimits {
    /// `listener.max_control_line`: limits each op's argument, as for CONNECT.
    pub max_control_line: usize,
    /// The upstream INFO's `max_payload` ([`super::info::max_payload`]): a first PUB larger
    /// than this is refused as nats-server refuses it.
    pub max_payload: usize,
}

/// How the bytes after an op's name are framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// CONNECT: [`scan_connect`].
    Connect,
    /// PING, PONG, +OK: anything up to the `\n` (nats-server ignores it).
    Bare(ClientOp),
    /// INFO: like CONNECT, the argument may be glued to the op.
    Glued(ClientOp),
    /// SUB, UNSUB, PUB: a blank must follow the op.
    Spaced(ClientOp),
    /// Ops nats-server closes the connection for before CONNECT.
    Refused(&'static str),
}

const FIRST_OPS: [(&[u8], Framing); 10] = [
    (b"CONNECT", Framing::Connect),
    (b"PING", Framing::Bare(ClientOp::Ping)),
    (b"PONG", Framing::Bare(ClientOp::Pong)),
    (b"+OK", Framing::Bare(ClientOp::Ok)),
    (b"INFO", Framing::Glued(ClientOp::Info)),
    (b"SUB", Framing::Spaced(ClientOp::Sub)),
    (b"UNSUB", Framing::Spaced(ClientOp::Unsub)),
    (b"PUB", Framing::Spaced(ClientOp::Pub)),
    (b"HPUB", Framing::Refused("message headers before CONNECT")),
    (b"-ERR", Framing::Refused("-ERR from a client")),
];

/// Looks for the client's first complete op at the start of `buf`, when the upstream requires
/// no authentication (its INFO has no `auth_required`, see [`super::info::auth_required`]):
/// nats-server then accepts PING, PONG, SUB, UNSUB, PUB, ... before CONNECT (telnet and `nc`
/// checks rely on it), and the window ends at the first op. With an upstream that requires
/// authentication use [`scan_connect`]: its refusals (`Authorization Violation`) are
/// nats-server's there.
///
/// Like [`scan_connect`], call it after every read: `Ok(None)` while more bytes are needed, the
/// same answer however the bytes were split, and a refusal at the first byte that decides it.
/// Op names are case-insensitive. Refusals, with nats-server's replies:
/// - a first byte (or name) that starts no op: [`ConnectError::UnknownOp`]
///   (`-ERR 'Unknown Protocol Operation'`), also for SUB/UNSUB/PUB not followed by a blank and
///   a PUB payload not followed by CRLF;
/// - an argument over `max_control_line`: [`ConnectError::TooLong`];
/// - a PUB larger than `max_payload`: [`ConnectError::MaxPayload`]
///   (`-ERR 'Maximum Payload Violation'`);
/// - what nats-server closes without a reply for (SUB/UNSUB/PUB with only blanks after the
///   op, a PUB whose size is missing or not a number, HPUB before CONNECT, `-ERR`):
///   [`ConnectError::BadOp`], with natsgate's own text;
/// - CONNECT: as [`scan_connect`].
///
/// The arguments of SUB, UNSUB and INFO are not judged: nats-server does that.
pub fn scan_first_op(buf: &[u8], limits: FirstOpLimits) -> Result<Option<FirstOp>, ConnectError> {
    let mut matched = None;
    let mut candidates = 0;
    for (name, framing) in FIRST_OPS {
        let n = buf.len().min(name.len());
        if buf[..n].eq_ignore_ascii_case(&name[..n]) {
            candidates += 1;
            if buf.len() >= name.len() {
                matched = Some((name.len(), framing));
            }
        }
    }
    if candidates == 0 {
        return Err(ConnectError::UnknownOp);
    }
    let Some((op_end, framing)) = matched else {
        return Ok(None);
    };
    let max = limits.max_control_line;
    let (op, line) = match framing {
        Framing::Connect => {
            return match scan_connect(buf, max) {
                // `CONNECTX...`: nats-server reads `X...` as the argument, invalid JSON (there
                // is no Authorization Violation without auth).
                Err(ConnectError::NotConnect) => {
                    Err(ConnectError::BadArgument("expected a JSON object".into()))
                }
                other => Ok(other?.map(FirstOp::Connect)),
            };
        }
        Framing::Refused(why) => return Err(ConnectError::BadOp(why)),
        Framing::Bare(op) => (op, scan_line(buf, op_end, max)?),
        Framing::Glued(op) => match buf.get(op_end) {
            Some(b'\r' | b'\n') => return Err(ConnectError::BadOp("INFO without an argument")),
            _ => (op, scan_line(buf, op_end, max)?),
        },
        Framing::Spaced(op) => match buf.get(op_end) {
            None => return Ok(None),
            Some(b' ' | b'\t') => (op, scan_line(buf, op_end, max)?),
            Some(_) => return Err(ConnectError::UnknownOp),
        },
    };
    let Some(line) = line else {
        return Ok(None);
    };
    if line.arg.is_empty() && matches!(framing, Framing::Spaced(_)) {
        // `SUB \r\n`: nats-server closes without a reply.
        return Err(ConnectError::BadOp("op without arguments"));
    }
    if op != ClientOp::Pub {
        return Ok(Some(FirstOp::Other { op, len: line.len }));
    }
    let size = pub_size(&buf[line.arg])?;
    if size > limits.max_payload {
        return Err(ConnectError::MaxPayload);
    }
    // The payload, then CRLF, checked as far as the bytes go.
    let end = line.len.saturating_add(size);
    for (i, want) in [b'\r', b'\n'].into_iter().enumerate() {
        match buf.get(end.saturating_add(i)) {
            None => return Ok(None),
            Some(&b) if b != want => return Err(ConnectError::UnknownOp),
            Some(_) => {}
        }
    }
    Ok(Some(FirstOp::Other { op, len: end + 2 }))
}

/// The size of `PUB <subject> [reply] <size>`, read as nats-server reads it: two or three
/// fields, the last all digits.
fn pub_size(arg: &[u8]) -> Result<usize, ConnectError> {
    let fields: Vec<&[u8]> = arg
        .split(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .filter(|f| !f.is_empty())
        .collect();
    let [_, .., size] = fields[..] else {
        return Err(ConnectError::BadOp("PUB without a size"));
    };
    if fields.len() > 3 {
        return Err(ConnectError::BadOp("PUB with too many arguments"));
    }
    if size.is_empty() || size.len() > 9 || !size.iter().all(u8::is_ascii_digit) {
        return Err(ConnectError::BadOp("PUB size is not a number"));
    }
    Ok(size.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')))
}

/// Builds a CONNECT line with `proxy_sig` added (ADR-55 trusted proxy). The client's JSON text
/// is kept byte for byte; the field is appended as the object's last member, so it also wins
/// over any `proxy_sig` the client sent itself, in any letter case (nats-server, like Go's
/// JSON decoder, takes the last of duplicate keys). `buf` and `line` come from
/// [`scan_connect`]. `proxy_sig` is base64url, which needs no JSON escaping.
pub(crate) fn connect_with_proxy_sig(buf: &[u8], line: &ConnectLine, proxy_sig: &str) -> Vec<u8> {
    let arg = &buf[line.arg.clone()];
    // scan_connect accepted only an object, so the text ends with `}`.
    let body = arg.strip_suffix(b"}").unwrap_or(arg);
    let mut out = Vec::with_capacity(arg.len() + proxy_sig.len() + 32);
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(body);
    if !line.fields.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"\"proxy_sig\":\"");
    out.extend_from_slice(proxy_sig.as_bytes());
    out.extend_from_slice(b"\"}\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    #[test]
    fn connect_whole_and_pipelined() {
        let buf = b"CONNECT {\"verbose\":false}\r\nPING\r\n";
        let c = scan_connect(buf, MAX).unwrap().unwrap();
        assert_eq!(&buf[c.line_len..], b"PING\r\n");
        assert_eq!(&buf[c.arg.clone()], b"{\"verbose\":false}");
    }

    #[test]
    fn connect_case_and_newline_tolerant() {
        let c = scan_connect(b"connect\t{}\n", MAX).unwrap().unwrap();
        assert_eq!(c.line_len, 11);
        assert!(scan_connect(b"CoNnEcT {} \r\n", MAX).unwrap().is_some());
    }

    #[test]
    fn connect_needs_more_bytes() {
        let full = b"CONNECT {\"a\":1}\r\n";
        for i in 0..full.len() {
            assert_eq!(scan_connect(&full[..i], MAX), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn wrong_first_op_fails_at_first_byte() {
        assert_eq!(scan_connect(b"P", MAX), Err(ConnectError::NotConnect));
        assert_eq!(
            scan_connect(b"PING\r\n", MAX),
            Err(ConnectError::NotConnect)
        );
        assert_eq!(
            scan_connect(b"CONNECTX {}\r\n", MAX),
            Err(ConnectError::NotConnect)
        );
        assert_eq!(
            scan_connect(b"\x16\x03\x01", MAX),
            Err(ConnectError::NotConnect)
        );
    }

    #[test]
    fn too_long_fails_before_newline() {
        let mut line = b"CONNECT {\"name\":\"".to_vec();
        line.resize(8 + 100, b'a');
        // 100 bytes of argument so far: refused over 99 before the line ends.
        assert_eq!(scan_connect(&line, 99), Err(ConnectError::TooLong));
        assert_eq!(scan_connect(&line[..107], 99), Ok(None));
        assert_eq!(scan_connect(&line, 100), Ok(None));
        let ok = b"CONNECT {}\r\n";
        assert!(scan_connect(ok, 2).unwrap().is_some());
        assert_eq!(scan_connect(ok, 1), Err(ConnectError::TooLong));
    }

    /// nats-server counts `max_control_line` against the argument (from its first byte to the
    /// line's end, trailing blanks included, the `\r` not): with the default 4096, a CONNECT
    /// whose argument is 4,096 bytes is accepted (nats-server 2.15.1 answers `+OK`, `PONG`) and
    /// one of 4,097 refused with `-ERR 'maximum control line exceeded'`, however long
    /// `CONNECT ` and the line's end make the whole line.
    #[test]
    fn max_control_line_limits_the_argument_as_nats_server_does() {
        let arg = |n: usize| {
            let mut a = b"{\"user\":\"a\",\"pass\":\"b\",\"name\":\"".to_vec();
            a.resize(n - 2, b'x');
            a.extend_from_slice(b"\"}");
            a
        };
        for (n, pad, ok) in [
            (4089, "", true),
            (4096, "", true),
            (4094, "  ", true),
            (4097, "", false),
            (4094, "   ", false),
        ] {
            let line = [&b"CONNECT "[..], &arg(n), pad.as_bytes(), b"\r\nPING\r\n"].concat();
            let got = scan_connect(&line, 4096);
            if ok {
                let c = got.unwrap().unwrap();
                assert_eq!(&line[c.line_len..], b"PING\r\n");
            } else {
                assert_eq!(got, Err(ConnectError::TooLong), "{n}+{}", pad.len());
                assert_eq!(
                    ConnectError::TooLong.client_error(),
                    b"-ERR 'maximum control line exceeded'\r\n"
                );
            }
        }
        // Blanks before the argument are not the argument (natsgate bounds them separately).
        let line = [&b"CONNECT"[..], &[b' '; 100], &arg(4096), b"\r\n"].concat();
        assert!(scan_connect(&line, 4096).unwrap().is_some());
        let blanks = [&b"CONNECT"[..], &[b' '; 4097]].concat();
        assert_eq!(scan_connect(&blanks, 4096), Err(ConnectError::TooLong));
    }

    /// nats-server accepts the argument glued to the op (`CONNECT{...}`: `+OK`, `PONG`).
    #[test]
    fn connect_glued_to_its_argument() {
        let buf = b"CONNECT{\"verbose\":true}\r\nPING\r\n";
        let c = scan_connect(buf, MAX).unwrap().unwrap();
        assert_eq!(&buf[c.arg.clone()], b"{\"verbose\":true}");
        assert_eq!(&buf[c.line_len..], b"PING\r\n");
        assert!(scan_connect(b"connect{}\n", MAX).unwrap().is_some());
        // Glued to anything else: still refused as before.
        assert_eq!(
            scan_connect(b"CONNECTX {}\r\n", MAX),
            Err(ConnectError::NotConnect)
        );
    }

    const LIMITS: FirstOpLimits = FirstOpLimits {
        max_control_line: 4096,
        max_payload: 1024 * 1024,
    };

    fn first(buf: &[u8]) -> Result<Option<FirstOp>, ConnectError> {
        scan_first_op(buf, LIMITS)
    }

    fn other(op: ClientOp, len: usize) -> Result<Option<FirstOp>, ConnectError> {
        Ok(Some(FirstOp::Other { op, len }))
    }

    /// With no auth, nats-server 2.15.1 answers these first ops (before any CONNECT) as
    /// commented; natsgate finds each op's end so the window can end there.
    #[test]
    fn first_ops_nats_server_accepts_without_auth() {
        // PONG
        assert_eq!(first(b"PING\r\n"), other(ClientOp::Ping, 6));
        assert_eq!(first(b"ping\n"), other(ClientOp::Ping, 5));
        assert_eq!(first(b"PINGX\r\nPING\r\n"), other(ClientOp::Ping, 7));
        assert_eq!(first(b"PONG\r\nPING\r\n"), other(ClientOp::Pong, 6));
        assert_eq!(first(b"+OK\r\nPING\r\n"), other(ClientOp::Ok, 5));
        assert_eq!(first(b"INFO {}\r\nPING\r\n"), other(ClientOp::Info, 9));
        // +OK, PONG
        assert_eq!(first(b"SUB a 1\r\nPING\r\n"), other(ClientOp::Sub, 9));
        assert_eq!(first(b"UNSUB 1\r\nPING\r\n"), other(ClientOp::Unsub, 9));
        assert_eq!(
            first(b"PUB a 5\r\nhello\r\nPING\r\n"),
            other(ClientOp::Pub, 16)
        );
        assert_eq!(first(b"pub\ta\t5\r\nhello\r\n"), other(ClientOp::Pub, 16));
        assert_eq!(first(b"PUB a r 0\r\n\r\n"), other(ClientOp::Pub, 13));
        // CONNECT is still CONNECT.
        let c = first(b"CONNECT {}\r\nPING\r\n").unwrap().unwrap();
        assert!(matches!(c, FirstOp::Connect(_)));
        assert_eq!(c.len(), 12);
        // Every prefix of a complete op needs more.
        let pubs = b"PUB a 5\r\nhello\r\n";
        for i in 0..pubs.len() {
            assert_eq!(first(&pubs[..i]), Ok(None), "prefix {i}");
        }
    }

    /// nats-server 2.15.1 without auth: `MSG`, garbage, an empty line, `SUB` without a blank or
    /// an argument, a PUB payload without CRLF get `-ERR 'Unknown Protocol Operation'`;
    /// `PUB a 99999999` gets `-ERR 'Maximum Payload Violation'`; `SUB \r\n`, `PUB a x`,
    /// `PUB a b c 5`, `HPUB` before CONNECT and `-ERR` close without a reply.
    #[test]
    fn first_ops_nats_server_refuses_without_auth() {
        use ConnectError::*;
        for (buf, want) in [
            (&b"MSG a 1 2\r\n"[..], UnknownOp),
            (b"M", UnknownOp),
            (b"\r\nPING\r\n", UnknownOp),
            (b"\x16\x03\x01", UnknownOp),
            (b"GET / HTTP/1.1\r\n", UnknownOp),
            (b"SUBX", UnknownOp),
            (b"SUB\r\n", UnknownOp),
            (b"SUB \r\n", BadOp("op without arguments")),
            (b"PUB \r\n", BadOp("op without arguments")),
            (b"PUB a 5\r\nhelloX", UnknownOp),
            (b"PUB a 5\r\nhello\rX", UnknownOp),
            (b"PUB a 99999999\r\n", MaxPayload),
            (b"PUB a x\r\n", BadOp("PUB size is not a number")),
            (b"PUB a b c 5\r\n", BadOp("PUB with too many arguments")),
            (b"PUB 5\r\n", BadOp("PUB without a size")),
            (b"HPUB", BadOp("message headers before CONNECT")),
            (b"-ERR", BadOp("-ERR from a client")),
            (b"-X", UnknownOp),
            (
                b"CONNECT,[12 ]\r\n",
                BadArgument("expected a JSON object".into()),
            ),
        ] {
            assert_eq!(
                first(buf),
                Err(want.clone()),
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(
            UnknownOp.client_error(),
            b"-ERR 'Unknown Protocol Operation'\r\n"
        );
        assert_eq!(
            MaxPayload.client_error(),
            b"-ERR 'Maximum Payload Violation'\r\n"
        );
        let bad = BadOp("PUB size is not a number").client_error();
        assert_eq!(bad, b"-ERR 'Parser Error: PUB size is not a number'\r\n");
        // The argument limit applies to every op, as in nats-server.
        let mut sub = b"SUB ".to_vec();
        sub.resize(4 + 4097, b'a');
        assert_eq!(first(&sub), Err(TooLong));
        assert_eq!(first(&sub[..4 + 4096]), Ok(None));
        let small = FirstOpLimits {
            max_control_line: 4096,
            max_payload: 5,
        };
        assert_eq!(scan_first_op(b"PUB a 6\r\n", small), Err(MaxPayload));
        assert!(scan_first_op(b"PUB a 5\r\n12345\r\n", small).is_ok());
    }

    #[test]
    fn argument_must_be_a_json_object() {
        for bad in [
            &b"CONNECT [1]\r\n"[..],
            b"CONNECT nope\r\n",
            b"CONNECT\r\n",
            b"CONNECT   \r\n",
            b"CONNECT {}\rPING\r\n",
        ] {
            match scan_connect(bad, MAX) {
                Err(e @ ConnectError::BadArgument(_)) => {
                    let bytes = e.client_error();
                    assert!(bytes.starts_with(b"-ERR 'Invalid CONNECT Arguments: "));
                    assert!(bytes.ends_with(b"'\r\n"));
                    assert_eq!(bytes.iter().filter(|&&b| b == b'\'').count(), 2);
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    /// Every value that holds a secret is masked in the `Debug` of the types that hold it, while
    /// the fields a log may show stay visible.
    #[test]
    fn identity_leaves_secrets_out() {
        const SECRETS: [(&str, &str); 7] = [
            ("pass", "pw-7f3a"),
            ("auth_token", "tok-91c2"),
            ("jwt", "eyJ0-jwt-55d1"),
            ("sig", "sig-0b7e"),
            ("proxy_sig", "psig-c4d8"),
            ("Pass", "pw-mixed-2e6f"),
            ("seed", "SUAM-seed-8a1b"),
        ];
        let json = SECRETS
            .iter()
            .map(|(k, v)| format!("\"{k}\":\"{v}\""))
            .chain([
                "\"user\":\"u-visible\"".into(),
                "\"name\":\"n-visible\"".into(),
            ])
            .collect::<Vec<_>>()
            .join(",");
        let buf = format!("CONNECT {{{json}}}\r\n");
        let c = scan_connect(buf.as_bytes(), MAX).unwrap().unwrap();
        let id = c.client_identity();
        assert_eq!(id.user.as_deref(), Some("u-visible"));
        assert_eq!(id.name.as_deref(), Some("n-visible"));
        for shown in [
            format!("{c:?}"),
            format!("{:?}", c.fields),
            format!("{id:?}"),
        ] {
            for (k, secret) in SECRETS {
                assert!(!shown.contains(secret), "{k}'s value in {shown}");
            }
        }
        // The masking keeps the keys and the loggable values, so the Debug is still useful.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("u-visible") && shown.contains("\"pass\""),
            "{shown}"
        );
        let err = ConnectError::BadArgument("not valid JSON: x".into());
        assert!(!format!("{err:?}").contains("pw-7f3a"));
    }

    #[test]
    fn identity_reads_fields_as_nats_server_does() {
        let id = |json: &str| {
            let buf = format!("CONNECT {json}\r\n");
            scan_connect(buf.as_bytes(), MAX)
                .unwrap()
                .unwrap()
                .client_identity()
        };
        let dup = id(r#"{"user":"alice","user":"bob","NAME":"n","Lang":"rust","VERSION":"1"}"#);
        assert_eq!(dup.user.as_deref(), Some("bob"));
        assert_eq!(dup.name.as_deref(), Some("n"));
        assert_eq!(dup.lang.as_deref(), Some("rust"));
        assert_eq!(dup.version.as_deref(), Some("1"));
        assert_eq!(
            id(r#"{"user":"alice","USER":"bob"}"#).user.as_deref(),
            Some("bob")
        );
        assert_eq!(id(r#"{"USER":"bob"}"#).user.as_deref(), Some("bob"));
        let long = "x".repeat(100);
        let got = id(&format!("{{\"user\":\"{long}\"}}")).user.unwrap();
        assert_eq!(got.len(), IDENTITY_MAX_CHARS);
    }

    #[test]
    fn proxy_sig_is_added() {
        let buf = b"connect { \"user\":\"u\", \"n\":1e400 }\r\nPING\r\n";
        let c = scan_connect(buf, MAX).unwrap().unwrap();
        let out = connect_with_proxy_sig(buf, &c, "SIG");
        assert_eq!(
            out,
            b"CONNECT { \"user\":\"u\", \"n\":1e400 ,\"proxy_sig\":\"SIG\"}\r\n"
        );
        let buf = b"CONNECT {}\n";
        let c = scan_connect(buf, MAX).unwrap().unwrap();
        assert_eq!(
            connect_with_proxy_sig(buf, &c, "S"),
            b"CONNECT {\"proxy_sig\":\"S\"}\r\n"
        );
    }
}
