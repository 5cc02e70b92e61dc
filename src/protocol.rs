//! NATS framing that natsgate needs, and nothing more: the INFO line, the client's first
//! CONNECT line, the upstream verdict, the PROXY protocol header and the client-visible errors.
//!
//! Everything here is pure (bytes in, values out, no I/O, no clocks), so it is unit-tested,
//! property-tested and fuzzed directly.

use std::net::SocketAddr;
use std::ops::Range;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Sent when the window closes before a complete CONNECT (nats-server's own text).
pub const ERR_AUTH_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
/// Sent when the first op is not CONNECT.
pub const ERR_AUTH_VIOLATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
/// Sent when the CONNECT line exceeds `listener.max_control_line`.
pub const ERR_MAX_CONTROL_LINE: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
/// Sent when a client speaks plaintext where TLS is required.
pub const ERR_TLS_REQUIRED: &[u8] = b"-ERR 'Secure Connection - TLS Required'\r\n";
/// Sent when a connection limit is reached at accept.
pub const ERR_MAX_CONNECTIONS: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";

/// Why the client's first line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("first op is not CONNECT")]
    NotConnect,
    #[error("CONNECT line longer than max_control_line")]
    TooLong,
    #[error("invalid CONNECT argument: {0}")]
    BadArgument(String),
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
        }
    }
}

/// A complete CONNECT line found at the start of the client's bytes.
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

impl ConnectLine {
    /// The fields that a log line may show. Secrets (`pass`, `auth_token`, `sig`, `jwt`,
    /// `nkey`) are deliberately not among them.
    pub fn client_identity(&self) -> ClientIdentity {
        let get = |k: &str| {
            self.fields
                .str_field(k)
                .map(|s| s.chars().take(64).collect::<String>())
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
pub fn scan_connect(
    buf: &[u8],
    max_control_line: usize,
) -> Result<Option<ConnectLine>, ConnectError> {
    // The op, case-insensitively, as far as the bytes go.
    for (i, b) in buf.iter().take(CONNECT.len()).enumerate() {
        if b.to_ascii_uppercase() != CONNECT[i] {
            return Err(ConnectError::NotConnect);
        }
    }
    if buf.len() > CONNECT.len() {
        match buf[CONNECT.len()] {
            b' ' | b'\t' => {}
            b'\r' | b'\n' => return Err(ConnectError::BadArgument("missing JSON object".into())),
            _ => return Err(ConnectError::NotConnect),
        }
    }
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        // `max_control_line` bytes of content plus a pending `\r` may still be fine.
        if buf.len() > max_control_line.saturating_add(1) {
            return Err(ConnectError::TooLong);
        }
        return Ok(None);
    };
    let content_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if content_end > max_control_line {
        return Err(ConnectError::TooLong);
    }
    let mut start = CONNECT.len();
    let mut end = content_end;
    while start < end && matches!(buf[start], b' ' | b'\t') {
        start += 1;
    }
    while end > start && matches!(buf[end - 1], b' ' | b'\t') {
        end -= 1;
    }
    if start == end {
        return Err(ConnectError::BadArgument("missing JSON object".into()));
    }
    let arg = &buf[start..end];
    if arg[0] != b'{' {
        let what = match serde_json::from_slice::<Value>(arg) {
            Ok(other) => format!("expected a JSON object, got {}", json_kind(&other)),
            Err(e) => format!("not valid JSON: {e}"),
        };
        return Err(ConnectError::BadArgument(what));
    }
    let fields = serde_json::from_slice::<RawObject>(arg)
        .map_err(|e| ConnectError::BadArgument(format!("not valid JSON: {e}")))?;
    Ok(Some(ConnectLine {
        line_len: nl + 1,
        arg: start..end,
        fields,
    }))
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

/// Builds a CONNECT line with `proxy_sig` added (ADR-55 trusted proxy). The client's JSON text
/// is kept byte for byte; the field is appended as the object's last member, so it also wins
/// over any `proxy_sig` the client sent itself (nats-server, like Go's JSON decoder, takes the
/// last of duplicate keys). `buf` and `line` come from [`scan_connect`]. `proxy_sig` is
/// base64url, which needs no JSON escaping.
pub fn connect_with_proxy_sig(buf: &[u8], line: &ConnectLine, proxy_sig: &str) -> Vec<u8> {
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

/// A problem with the upstream's INFO line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("upstream's first line is not INFO")]
    NotInfo,
    #[error("upstream INFO is not a JSON object: {0}")]
    BadJson(String),
}

/// A JSON object field by field, each value kept as its exact JSON text: the upstream's INFO
/// and the client's CONNECT. Relaying never re-encodes a value, so numbers, escapes and the
/// nonce pass byte for byte and field order is kept; and, like nats-server's own decoder, it
/// checks values' syntax without converting them (a number too large for f64 is not an error).
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    fields: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The raw JSON text of a field.
    pub fn raw(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// A field that holds a string (`nonce`, `server_id`).
    pub fn str_field(&self, key: &str) -> Option<String> {
        self.raw(key)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// A field that holds a boolean (`tls_required`).
    pub fn bool_field(&self, key: &str) -> Option<bool> {
        self.raw(key)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// The fields as JSON values, for inspection (not used on the relay path).
    pub fn to_map(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.get()).ok()?)))
            .collect()
    }

    /// nats-server omits false flags (`omitempty`); do the same so clients see familiar INFO.
    /// A flag that is set keeps its place; a new one goes last.
    fn set_flag(&mut self, key: &str, on: bool) {
        let mut seen = false;
        self.fields.retain(|(k, _)| {
            let keep = k != key || (on && !seen);
            seen |= k == key;
            keep
        });
        if on {
            let value = RawValue::from_string("true".into()).unwrap_or_default();
            match self.fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => self.fields.push((key.to_string(), value)),
            }
        }
    }

    /// Drops a field (all copies of it).
    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| k != key);
    }

    /// `INFO {json} \r\n`, with the space before CRLF that nats-server writes.
    fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            16 + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        out.extend_from_slice(b"INFO {");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Encoding a string cannot fail.
            out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
            out.push(b':');
            // A value's own whitespace is kept, except line breaks: the INFO must stay one
            // line. (They can only be whitespace between tokens: JSON strings cannot hold raw
            // control characters.)
            out.extend(
                v.get()
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
        }
        out.extend_from_slice(b"} \r\n");
        out
    }
}

/// Equal when the same fields hold the same JSON text, in the same order.
impl PartialEq for RawObject {
    fn eq(&self, other: &RawObject) -> bool {
        self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
    }
}

impl<'de> serde::Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawObject, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawObject, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The upstream's INFO object.
pub type Info = RawObject;

/// Parses `INFO {json} \r\n` (the terminator may be present or already stripped).
pub fn parse_info(line: &[u8]) -> Result<Info, InfoError> {
    if line.len() < 5
        || !line[..4].eq_ignore_ascii_case(b"INFO")
        || !matches!(line[4], b' ' | b'\t')
    {
        return Err(InfoError::NotInfo);
    }
    let json = line[5..].trim_ascii();
    serde_json::from_slice::<Info>(json).map_err(|e| InfoError::BadJson(e.to_string()))
}

/// What the client-facing INFO says about TLS: natsgate's own listener, not the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAdvert {
    /// No TLS on the client side.
    None,
    /// `tls_required: true`.
    Required { verify: bool },
    /// `tls_available: true`: plaintext and TLS clients are both served.
    Available { verify: bool },
}

/// Rewrites the upstream INFO for the client: the nonce and every other field are kept; only
/// the TLS flags (natsgate's listener decides them) and, when asked, `connect_urls` (which would
/// let clients bypass natsgate) change. Returns the complete `INFO {json} \r\n` line.
pub fn rewrite_info(mut info: Info, tls: TlsAdvert, strip_connect_urls: bool) -> Vec<u8> {
    let (required, available, verify) = match tls {
        TlsAdvert::None => (false, false, false),
        TlsAdvert::Required { verify } => (true, false, verify),
        TlsAdvert::Available { verify } => (false, true, verify),
    };
    info.set_flag("tls_required", required);
    info.set_flag("tls_available", available);
    info.set_flag("tls_verify", verify);
    if strip_connect_urls {
        info.remove("connect_urls");
        info.remove("ws_connect_urls");
    }
    info.to_line()
}

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
    /// Bytes of the current MSG/HMSG payload (plus its CRLF) still to pass through.
    payload_left: usize,
    /// The current control line, when it spans reads.
    line: Vec<u8>,
    /// A control line started in an earlier read and has not ended.
    in_line: bool,
    /// The current line is (or may be) an INFO, held back until complete.
    holding: bool,
    /// The stream is not understood: forward everything as is.
    passthrough: bool,
    verdict: Option<Verdict>,
}

impl ServerStream {
    pub fn new(tls: TlsAdvert, strip_connect_urls: bool) -> ServerStream {
        ServerStream {
            tls,
            strip_connect_urls,
            payload_left: 0,
            line: Vec::new(),
            in_line: false,
            holding: false,
            passthrough: false,
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
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        while pos < chunk.len() && !self.passthrough {
            if self.payload_left > 0 {
                let take = self.payload_left.min(chunk.len() - pos);
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&chunk[pos..pos + take]);
                }
                pos += take;
                self.payload_left -= take;
                continue;
            }
            let start = pos;
            let nl = memchr::memchr(b'\n', &chunk[pos..]).map(|i| pos + i);
            let end = nl.map_or(chunk.len(), |i| i + 1);
            let piece = &chunk[start..end];
            let continuing = self.in_line;
            // A line that ends inside this read and began in it needs no copy.
            if continuing || nl.is_none() {
                self.line.extend_from_slice(piece);
            }
            let line_so_far: &[u8] = if continuing || nl.is_none() {
                &self.line
            } else {
                piece
            };
            if !continuing {
                self.holding = false;
            }
            self.in_line = nl.is_none();
            if line_so_far.len() > MAX_SERVER_LINE {
                // Not a line natsgate can follow: release what was held and stop interpreting.
                self.passthrough = true;
                if self.holding {
                    let o = out.get_or_insert_with(|| chunk[..start].to_vec());
                    o.extend_from_slice(&self.line);
                } else if let Some(o) = out.as_mut() {
                    o.extend_from_slice(piece);
                }
                pos = end;
                break;
            }
            if starts_like(line_so_far, b"INFO") {
                self.holding = true;
                out.get_or_insert_with(|| chunk[..start].to_vec());
            } else {
                if self.holding {
                    // It looked like INFO but is not: release the earlier bytes.
                    self.holding = false;
                    let o = out.get_or_insert_with(|| chunk[..start].to_vec());
                    o.extend_from_slice(&self.line[..self.line.len() - piece.len()]);
                }
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(piece);
                }
            }
            pos = end;
            if nl.is_some() {
                let line = if continuing {
                    std::mem::take(&mut self.line)
                } else {
                    Vec::new()
                };
                let line_ref: &[u8] = if continuing { &line } else { piece };
                self.finish_line(line_ref, &mut out);
                if continuing {
                    self.line = line;
                    self.line.clear();
                    if self.line.capacity() > 4096 {
                        self.line.shrink_to(1024);
                    }
                }
            }
        }
        if pos < chunk.len() {
            if let Some(o) = out.as_mut() {
                o.extend_from_slice(&chunk[pos..]);
            }
        }
        out
    }

    fn finish_line(&mut self, line: &[u8], out: &mut Option<Vec<u8>>) {
        let mut words = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty());
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        let mut verdict = Some(Verdict::Accepted);
        match op.as_slice() {
            b"INFO" => {
                verdict = None;
                let rewritten = match parse_info(line) {
                    Ok(info) => rewrite_info(info, self.tls, self.strip_connect_urls),
                    Err(_) => line.to_vec(),
                };
                out.get_or_insert_with(Vec::new)
                    .extend_from_slice(&rewritten);
                self.holding = false;
            }
            b"MSG" | b"HMSG" => {
                let size = words
                    .next_back()
                    .and_then(|w| std::str::from_utf8(w).ok())
                    .and_then(|w| w.parse::<usize>().ok());
                match size {
                    Some(n) => self.payload_left = n.saturating_add(2),
                    None => self.passthrough = true,
                }
            }
            b"PING" | b"PONG" | b"+OK" => {}
            b"-ERR" => verdict = Some(Verdict::Rejected),
            _ => {
                self.passthrough = true;
                verdict = None;
            }
        }
        if self.verdict.is_none() {
            self.verdict = verdict;
        }
    }
}

/// Whether `line` starts with `op` as far as both go, ignoring ASCII case.
fn starts_like(line: &[u8], op: &[u8]) -> bool {
    let n = line.len().min(op.len());
    line[..n].eq_ignore_ascii_case(&op[..n])
}

/// PROXY protocol header (v1 text or v2 binary) announcing the client's address to upstream.
/// `None` for the addresses writes a v2 LOCAL header (health probes: the socket's own address
/// stands). Mixed address families are expressed as IPv6 (v4-mapped).
pub fn proxy_header_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The 12-byte signature that starts every PROXY v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// PROXY protocol v2 header; `None` writes a LOCAL command.
pub fn proxy_header_v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = PROXY_V2_SIGNATURE.to_vec();
    match addrs {
        None => {
            out.push(0x20); // version 2, LOCAL
            out.push(0x00); // UNSPEC
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        Some((src, dst)) => {
            let (src, dst) = same_family(src, dst);
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11); // TCP over IPv4
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                }
                (s, d) => {
                    out.push(0x21); // TCP over IPv6
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&v6(s.ip()).octets());
                    out.extend_from_slice(&v6(d.ip()).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        }
    }
    out
}

fn v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
        std::net::IpAddr::V6(a) => a,
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    (
        SocketAddr::new(v6(src.ip()).into(), src.port()),
        SocketAddr::new(v6(dst.ip()).into(), dst.port()),
    )
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
        line.resize(101, b'a');
        assert_eq!(scan_connect(&line, 99), Err(ConnectError::TooLong));
        assert_eq!(scan_connect(&line[..100], 99), Ok(None));
        let ok = b"CONNECT {}\r\n";
        assert!(scan_connect(ok, 10).unwrap().is_some());
        assert_eq!(scan_connect(ok, 9), Err(ConnectError::TooLong));
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

    #[test]
    fn identity_leaves_secrets_out() {
        let c = scan_connect(
            b"CONNECT {\"user\":\"u\",\"pass\":\"p\",\"name\":\"n\",\"auth_token\":\"t\"}\n",
            MAX,
        )
        .unwrap()
        .unwrap();
        let id = c.client_identity();
        assert_eq!(id.user.as_deref(), Some("u"));
        assert_eq!(id.name.as_deref(), Some("n"));
        assert!(!format!("{id:?}").contains('p') || !format!("{id:?}").contains("\"p\""));
    }

    #[test]
    fn info_rewrite_keeps_nonce_strips_urls() {
        let line = br#"INFO {"server_id":"S","nonce":"abc","connect_urls":["10.0.0.1:4222"],"tls_required":true,"headers":true,"max_payload":1048576} "#;
        let info = parse_info(line).unwrap();
        let out = rewrite_info(info, TlsAdvert::None, true);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("INFO {\"server_id\":\"S\",\"nonce\":\"abc\""),
            "{text}"
        );
        assert!(text.ends_with("} \r\n"));
        assert!(!text.contains("connect_urls"));
        assert!(!text.contains("tls_required"));
        let again = parse_info(&out).unwrap();
        assert_eq!(again.bool_field("headers"), Some(true));

        let out = rewrite_info(
            parse_info(line).unwrap(),
            TlsAdvert::Available { verify: false },
            false,
        );
        let m = parse_info(&out).unwrap();
        assert_eq!(m.bool_field("tls_available"), Some(true));
        assert!(m.raw("connect_urls").is_some());
    }

    #[test]
    fn info_values_are_relayed_byte_for_byte() {
        let line = br#"INFO {"big":2000222222222222222222222222222222222222222222222222222,"f":2.8e60,"s":"a\u00e9\/b","nonce":"n0-_","tls_required":true} "#;
        let out = rewrite_info(
            parse_info(line).unwrap(),
            TlsAdvert::Required { verify: false },
            true,
        );
        assert_eq!(
            out,
            br#"INFO {"big":2000222222222222222222222222222222222222222222222222222,"f":2.8e60,"s":"a\u00e9\/b","nonce":"n0-_","tls_required":true} "#
                .iter()
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>()
        );
    }

    #[test]
    fn info_stays_one_line() {
        let out = rewrite_info(
            parse_info(b"INFO {\"a\":{\"b\":[1,\r\n2]}}").unwrap(),
            TlsAdvert::None,
            true,
        );
        assert_eq!(out, b"INFO {\"a\":{\"b\":[1,  2]}} \r\n");
    }

    #[test]
    fn info_errors() {
        assert_eq!(parse_info(b"-ERR 'x'\r\n"), Err(InfoError::NotInfo));
        assert!(matches!(
            parse_info(b"INFO [1]\r\n"),
            Err(InfoError::BadJson(_))
        ));
        assert!(matches!(
            parse_info(b"INFO {\r\n"),
            Err(InfoError::BadJson(_))
        ));
    }

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
    }

    #[test]
    fn proxy_headers() {
        let s: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:4222".parse().unwrap();
        assert_eq!(
            proxy_header_v1(s, d),
            b"PROXY TCP4 127.0.0.9 127.0.0.1 5000 4222\r\n"
        );
        let v2 = proxy_header_v2(Some((s, d)));
        assert_eq!(&v2[..12], &PROXY_V2_SIGNATURE);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..20], &[127, 0, 0, 9]);
        assert_eq!(&v2[24..26], &5000u16.to_be_bytes());
        assert_eq!(v2.len(), 28);
        assert_eq!(&proxy_header_v2(None)[12..], &[0x20, 0, 0, 0]);
        let d6: SocketAddr = "[::1]:4222".parse().unwrap();
        let v1 = String::from_utf8(proxy_header_v1(s, d6)).unwrap();
        assert_eq!(v1, "PROXY TCP6 ::ffff:127.0.0.9 ::1 5000 4222\r\n");
        assert_eq!(proxy_header_v2(Some((s, d6))).len(), 16 + 36);
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
