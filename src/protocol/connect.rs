//! The client's first line: finding a complete, well-formed CONNECT, what may be logged about
//! the client, and the ADR-55 `proxy_sig` rewrite.

use std::ops::Range;

use serde_json::Value;

use super::{RawObject, ERR_AUTH_VIOLATION, ERR_MAX_CONTROL_LINE};

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
pub fn scan_connect(
    buf: &[u8],
    max_control_line: usize,
) -> Result<Option<ConnectLine>, ConnectError> {
    check_op(buf)?;
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
    let arg = trim_blanks(buf, CONNECT.len()..content_end);
    let fields = parse_argument(&buf[arg.clone()])?;
    Ok(Some(ConnectLine {
        line_len: nl + 1,
        arg,
        fields,
    }))
}

/// The op, case-insensitively, as far as the bytes go, and the separator after it.
fn check_op(buf: &[u8]) -> Result<(), ConnectError> {
    for (i, b) in buf.iter().take(CONNECT.len()).enumerate() {
        if b.to_ascii_uppercase() != CONNECT[i] {
            return Err(ConnectError::NotConnect);
        }
    }
    match buf.get(CONNECT.len()) {
        None | Some(b' ' | b'\t') => Ok(()),
        Some(b'\r' | b'\n') => Err(ConnectError::BadArgument("missing JSON object".into())),
        Some(_) => Err(ConnectError::NotConnect),
    }
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
