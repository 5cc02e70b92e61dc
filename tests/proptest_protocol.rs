//! Property tests for the pure framing in `natsgate::protocol`, run with the ordinary suite
//! (the fuzz targets in `fuzz/` explore the same properties with arbitrary bytes):
//!
//! - however a client splits a valid CONNECT stream into reads, the session's read loop (call
//!   `scan_connect` on the bytes so far after every read) finds the same line as the whole
//!   buffer does, and reports "need more" on every shorter prefix;
//! - the same holds for refused streams: the streamed verdict equals the whole-buffer verdict;
//! - `rewrite_info` never changes `nonce` (or any field it is not documented to change) and
//!   always yields one valid `INFO {json} \r\n` line;
//! - the server-op follower: any split of an upstream stream gives the same output as the whole,
//!   and that output is the stream with every INFO op rewritten (payloads that look like INFO
//!   untouched), so no `connect_urls` reach the client when they are stripped;
//! - an INFO line rendered from the template of an earlier one that differs only in
//!   `client_id` and `client_ip` is the whole rewrite of it, byte for byte, whatever else the
//!   line holds (nested objects with the same keys, duplicates, escapes, blanks);
//! - the identity natsgate logs from CONNECT is what nats-server reads (Go's `encoding/json`:
//!   the last duplicate wins, names match case-insensitively), checked against a reference
//!   decoder, and `Debug` of the CONNECT does not depend on its secrets.
//!
//! The follower and identity properties live in `natsgate::protocol::fuzz_logic`, shared with
//! the fuzz targets `server_ops` and `connect_identity`.

use natsgate::protocol::fuzz_logic::{
    check_connect_identity, check_first_op, check_info_line, check_proxy_header,
    check_proxy_writers, check_server_stream, follow, go_fold_reference, reference_identity,
    ADVERTS,
};
use natsgate::protocol::{parse_info, rewrite_info, scan_connect, ConnectLine, TlsAdvert, Verdict};
use proptest::prelude::*;
use serde_json::{Map, Value};

type Scan = Result<Option<ConnectLine>, natsgate::protocol::ConnectError>;

/// What the session's read loop decides when the bytes arrive in reads of the given sizes:
/// the first answer that is not "need more", or "need more" once everything has arrived.
fn streamed(stream: &[u8], reads: &[usize], max: usize) -> (Scan, usize) {
    let mut end = 0;
    let mut sizes = reads.iter().copied();
    loop {
        end = match sizes.next() {
            Some(n) => (end + n.max(1)).min(stream.len()),
            None => stream.len(),
        };
        match scan_connect(&stream[..end], max) {
            Ok(None) if end < stream.len() => continue,
            other => return (other, end),
        }
    }
}

/// JSON strings a client might put in CONNECT, escapes and non-ASCII included.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 _.-]{0,24}",
        "\\PC{0,12}",
        Just("quote\" back\\slash / tab\t nl\n".to_string()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        json_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A CONNECT argument like the client libraries send, plus arbitrary extra fields.
fn connect_object() -> impl Strategy<Value = Map<String, Value>> {
    (
        any::<bool>(),
        json_text(),
        json_text(),
        prop::collection::vec(("[a-z_]{1,12}", json_value()), 0..6),
    )
        .prop_map(|(verbose, user, pass, extra)| {
            let mut m = Map::new();
            m.insert("verbose".into(), Value::Bool(verbose));
            m.insert("pedantic".into(), Value::Bool(false));
            m.insert("user".into(), Value::String(user));
            m.insert("pass".into(), Value::String(pass));
            m.insert("lang".into(), Value::String("rust".into()));
            m.insert("protocol".into(), Value::from(1));
            for (k, v) in extra {
                m.insert(k, v);
            }
            m
        })
}

/// A valid CONNECT line in any of the spellings nats-server accepts: op case, the separator,
/// padding around the argument, `\r\n` or a bare `\n`.
fn connect_stream() -> impl Strategy<Value = (Vec<u8>, Map<String, Value>, Vec<u8>)> {
    (
        connect_object(),
        prop::sample::select(vec!["CONNECT", "connect", "Connect", "cOnNeCt"]),
        prop::sample::select(vec![" ", "\t", "  ", " \t "]),
        prop::sample::select(vec!["", " ", "\t", "  "]),
        any::<bool>(),
        prop::sample::select(vec![
            &b""[..],
            b"PING\r\n",
            b"SUB a 1\r\nPUB a 5\r\nhello\r\nPING\r\n",
            b"\x00\xff garbage the server will judge",
        ]),
    )
        .prop_map(|(obj, op, sep, pad, crlf, pipelined)| {
            let mut line = Vec::new();
            line.extend_from_slice(op.as_bytes());
            line.extend_from_slice(sep.as_bytes());
            line.extend_from_slice(&serde_json::to_vec(&obj).unwrap());
            line.extend_from_slice(pad.as_bytes());
            line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            (line, obj, pipelined.to_vec())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_a_valid_connect_stream_parses_to_the_same_line(
        (line, obj, pipelined) in connect_stream(),
        reads in prop::collection::vec(1usize..64, 0..40),
    ) {
        let mut stream = line.clone();
        stream.extend_from_slice(&pipelined);
        let max = 4096;
        let whole = scan_connect(&stream, max).expect("valid").expect("complete");
        prop_assert_eq!(whole.line_len, line.len());
        prop_assert_eq!(&whole.fields.to_map(), &obj);
        prop_assert_eq!(&stream[whole.line_len..], &pipelined[..]);

        let (got, at) = streamed(&stream, &reads, max);
        prop_assert_eq!(got, Ok(Some(whole.clone())));
        // Found as soon as the newline arrived, not before.
        prop_assert!(at >= line.len());
        for cut in 0..line.len() {
            prop_assert_eq!(scan_connect(&stream[..cut], max), Ok(None), "prefix {}", cut);
        }
    }

    #[test]
    fn any_split_of_any_stream_gives_the_whole_buffers_verdict(
        stream in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            // Near misses: a CONNECT op followed by arbitrary bytes.
            (prop::sample::select(vec!["CONNECT ", "connect\t", "CONNECT", "CONNEC", "CONNECTX"]),
             prop::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(op, rest)| [op.as_bytes(), &rest[..]].concat()),
        ],
        reads in prop::collection::vec(1usize..32, 0..40),
        max in 64usize..256,
    ) {
        let whole = scan_connect(&stream, max);
        let (got, _) = streamed(&stream, &reads, max);
        prop_assert_eq!(got, whole.clone());
        if let Err(e) = whole {
            let bytes = e.client_error();
            prop_assert!(bytes.starts_with(b"-ERR '") && bytes.ends_with(b"'\r\n"));
            prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        }
    }

    #[test]
    fn rewrite_info_keeps_the_nonce_and_yields_valid_json(
        nonce in prop_oneof![
            "[A-Za-z0-9_-]{11,22}",
            "\\PC{0,16}",
            Just("quote\" slash\\ nl\n cr\r nul\u{0}".to_string()),
        ],
        extra in prop::collection::vec(("[a-z_]{1,12}", json_value()), 0..8),
        connect_urls in prop::option::of(prop::collection::vec("[0-9.]{7,15}:[0-9]{4}", 0..4)),
        upstream_tls in any::<bool>(),
        advert in prop::sample::select(ADVERTS.to_vec()),
        strip in any::<bool>(),
        sep in prop::sample::select(vec!["INFO ", "INFO\t", "info "]),
        tail in prop::sample::select(vec![" \r\n", "\r\n", "\n", "", "  \r\n"]),
    ) {
        let mut m = Map::new();
        m.insert("server_id".into(), Value::String("NSERVER".into()));
        for (k, v) in extra {
            m.insert(k, v);
        }
        // The nonce, last, so an extra "nonce" key cannot replace it.
        m.insert("nonce".into(), Value::String(nonce.clone()));
        if upstream_tls {
            m.insert("tls_required".into(), Value::Bool(true));
        }
        if let Some(urls) = &connect_urls {
            m.insert("connect_urls".into(), Value::from(urls.clone()));
        }
        let line = [sep.as_bytes(), &serde_json::to_vec(&m).unwrap(), tail.as_bytes()].concat();
        let parsed = parse_info(&line).expect("upstream INFO parses");
        prop_assert_eq!(&parsed.to_map(), &m);

        let out = rewrite_info(parsed.clone(), advert, strip);
        let framed = out.starts_with(b"INFO {") && out.ends_with(b"} \r\n");
        prop_assert!(framed);
        prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let json: Value = serde_json::from_slice(&out[5..out.len() - 3]).expect("valid JSON");
        let obj = json.as_object().expect("an object");
        prop_assert_eq!(obj.get("nonce"), Some(&Value::String(nonce)));
        for (k, v) in &m {
            if ["tls_required", "tls_available", "tls_verify", "connect_urls", "ws_connect_urls"]
                .contains(&k.as_str())
            {
                continue;
            }
            prop_assert_eq!(obj.get(k), Some(v), "field {} changed", k);
        }
        let flag = |k: &str| obj.get(k) == Some(&Value::Bool(true));
        let (req, avail) = match advert {
            TlsAdvert::None => (false, false),
            TlsAdvert::Required { .. } => (true, false),
            TlsAdvert::Available { .. } => (false, true),
            TlsAdvert::RequiredAndAvailable { .. } => (true, true),
        };
        prop_assert_eq!(flag("tls_required"), req);
        prop_assert_eq!(flag("tls_available"), avail);
        prop_assert_eq!(obj.contains_key("connect_urls"), connect_urls.is_some() && !strip);
        // The client-facing line is itself a valid upstream INFO line.
        prop_assert_eq!(parse_info(&out).map(|p| p.len()), Ok(obj.len()));
        // And every field it keeps is the upstream's JSON text, byte for byte.
        let again = parse_info(&out).expect("parses");
        for k in m.keys() {
            if obj.contains_key(k) && !k.starts_with("tls_") {
                prop_assert_eq!(again.raw(k).map(|v| v.get()), parsed.raw(k).map(|v| v.get()));
            }
        }
    }
}

/// One op of the upstream's stream after CONNECT.
#[derive(Debug, Clone)]
enum ServerOp {
    Info(Map<String, Value>),
    Msg {
        hmsg: bool,
        reply: bool,
        payload: Vec<u8>,
    },
    Plain(&'static str),
    Err(String),
}

impl ServerOp {
    fn bytes(&self) -> Vec<u8> {
        match self {
            ServerOp::Info(m) => [b"INFO ", &serde_json::to_vec(m).unwrap()[..], b" \r\n"].concat(),
            ServerOp::Msg {
                hmsg,
                reply,
                payload,
            } => {
                let reply = if *reply { " _INBOX.r" } else { "" };
                let head = if *hmsg {
                    // The payload's first bytes count as its header block.
                    let h = payload.len() / 2;
                    format!("HMSG sub.j 7{reply} {h} {}\r\n", payload.len())
                } else {
                    format!("MSG sub.j 7{reply} {}\r\n", payload.len())
                };
                [head.as_bytes(), payload, b"\r\n"].concat()
            }
            ServerOp::Plain(op) => format!("{op}\r\n").into_bytes(),
            ServerOp::Err(e) => format!("-ERR '{e}'\r\n").into_bytes(),
        }
    }

    /// What the client should receive for this op.
    fn expected(&self, tls: TlsAdvert, strip: bool) -> Vec<u8> {
        match self {
            ServerOp::Info(_) => rewrite_info(parse_info(&self.bytes()).unwrap(), tls, strip),
            _ => self.bytes(),
        }
    }
}

fn upstream_info() -> impl Strategy<Value = Map<String, Value>> {
    (
        "[A-Za-z0-9]{8,22}",
        prop::option::of(prop::collection::vec("[0-9.]{7,15}:[0-9]{4}", 0..4)),
        prop::option::of(prop::collection::vec("ws://[a-z]{3,8}:8080", 0..2)),
        any::<bool>(),
        prop::collection::vec(("[a-z_]{1,10}", json_value()), 0..4),
    )
        .prop_map(|(nonce, urls, ws_urls, tls, extra)| {
            let mut m = Map::new();
            m.insert("server_id".into(), Value::String("NSERVER".into()));
            for (k, v) in extra {
                m.insert(k, v);
            }
            m.insert("nonce".into(), Value::String(nonce));
            if tls {
                m.insert("tls_required".into(), Value::Bool(true));
            }
            if let Some(u) = urls {
                m.insert("connect_urls".into(), Value::from(u));
            }
            if let Some(u) = ws_urls {
                m.insert("ws_connect_urls".into(), Value::from(u));
            }
            m
        })
}

/// Payloads, including ones that look like protocol lines (an INFO with `connect_urls`,
/// CRLFs, a bare `-ERR`), which must pass untouched.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        Just(b"INFO {\"connect_urls\":[\"10.9.9.9:4222\"]} \r\n".to_vec()),
        Just(b"\r\n-ERR 'x'\r\nINFO {}\r\n".to_vec()),
        Just(Vec::new()),
    ]
}

fn server_op() -> impl Strategy<Value = ServerOp> {
    prop_oneof![
        upstream_info().prop_map(ServerOp::Info),
        (any::<bool>(), any::<bool>(), payload()).prop_map(|(hmsg, reply, payload)| {
            ServerOp::Msg {
                hmsg,
                reply,
                payload,
            }
        }),
        prop::sample::select(vec!["PING", "PONG", "+OK", "ping", "pong"]).prop_map(ServerOp::Plain),
        "[A-Za-z ]{0,24}".prop_map(ServerOp::Err),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_the_upstream_stream_gives_the_rewritten_whole(
        ops in prop::collection::vec(server_op(), 0..12),
        reads in prop::collection::vec(1usize..80, 0..40),
        advert in prop::sample::select(ADVERTS.to_vec()),
        strip in any::<bool>(),
    ) {
        let stream: Vec<u8> = ops.iter().flat_map(|op| op.bytes()).collect();
        let expected: Vec<u8> = ops.iter().flat_map(|op| op.expected(advert, strip)).collect();
        let verdict = ops.iter().find_map(|op| match op {
            ServerOp::Info(_) => None,
            ServerOp::Err(_) => Some(Verdict::Rejected),
            _ => Some(Verdict::Accepted),
        });
        check_server_stream(&stream, &reads, advert, strip);
        let (out, got) = follow(&stream, reads.iter().copied(), advert, strip);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected));
        prop_assert_eq!(got, verdict);
        if strip {
            // No INFO line the client gets names a URL that bypasses natsgate.
            for op in &ops {
                if let ServerOp::Info(_) = op {
                    let line = op.expected(advert, strip);
                    prop_assert!(!String::from_utf8_lossy(&line).contains("connect_urls"));
                }
            }
        }
    }

    #[test]
    fn any_split_of_arbitrary_upstream_bytes_gives_the_same_output(
        stream in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..400),
            prop::collection::vec(
                prop::sample::select(vec![
                    &b"INFO "[..], b"{\"connect_urls\":[\"a\"]}", b" ", b"\r\n", b"\n", b"MSG a 1 ",
                    b"3", b"HMSG a 1 2 ", b"PING", b"-ERR", b"INFOX", b"info", b"I", b"abc",
                    b"INFO {\"connect_urls\":[\"a\"],\"x\":1} \r\n", b"HELLO\r\n",
                    b"MSG a 1 x\r\n", b"MSG a 1 3\r\n", b"INFO{\"Connect_Urls\":[\"b\"]}\n",
                ]),
                0..40,
            ).prop_map(|parts| parts.concat()),
        ],
        reads in prop::collection::vec(1usize..32, 0..40),
        advert in prop::sample::select(ADVERTS.to_vec()),
        strip in any::<bool>(),
    ) {
        check_server_stream(&stream, &reads, advert, strip);
    }
}

/// CONNECT member names as a client might spell them: nats-server's names in any case, with
/// the non-ASCII characters Go's folding maps onto ASCII letters, ones it does not, and near
/// misses.
fn member_name() -> impl Strategy<Value = String> {
    let base = prop::sample::select(vec![
        "user",
        "name",
        "lang",
        "version",
        "pass",
        "auth_token",
        "jwt",
        "sig",
        "proxy_sig",
        "usr",
        "users",
        "verbose",
    ]);
    (base, prop::collection::vec(0u8..8, 12)).prop_map(|(name, how)| {
        name.chars()
            .zip(how.iter().cycle())
            .map(|(c, h)| match (c, h) {
                (c, 0 | 1) => c.to_ascii_uppercase(),
                ('s', 2) => '\u{17F}',  // LONG S: folds to S
                ('k', 2) => '\u{212A}', // KELVIN SIGN: folds to K
                ('i', 2) => '\u{131}',  // DOTLESS I: Go keeps it apart
                ('i', 3) => '\u{130}',  // I WITH DOT ABOVE: Go keeps it apart
                ('e', 3) => '\u{c9}',   // E WITH ACUTE: no match
                (c, _) => c,
            })
            .collect()
    })
}

fn member_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => json_text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(serde_json::json!({"user": "nested"})),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_logged_identity_is_what_nats_server_reads(
        members in prop::collection::vec((member_name(), member_value()), 0..10),
    ) {
        // Built by hand: a JSON map cannot hold duplicate keys.
        let body = members
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
            .collect::<Vec<_>>()
            .join(",");
        let line = format!("CONNECT {{{body}}}\r\n");
        check_connect_identity(line.as_bytes(), 1 << 20);
    }
}

#[test]
fn the_reference_decoder_reads_as_go_does() {
    // Guards the reference itself, with the cases checked against nats-server in
    // tests/audit_user.rs.
    for arg in [
        r#"{"user":"alice","user":"bob"}"#,
        r#"{"user":"alice","USER":"bob"}"#,
        r#"{"USER":"bob"}"#,
        r#"{"u\u017fer":"bob"}"#,
        r#"{"user":"bob","User":null}"#,
    ] {
        let id = reference_identity(arg.as_bytes()).unwrap();
        assert_eq!(id.user.as_deref(), Some("bob"), "{arg}");
    }
    // Go folds the Turkish dotted and dotless I only to themselves (nats-server agrees).
    let id = reference_identity(br#"{"version":"1","vers\u0130on":"2","vers\u0131on":"3"}"#);
    assert_eq!(id.unwrap().version.as_deref(), Some("1"));
    assert_eq!(go_fold_reference("\u{212A}\u{17F}\u{131}"), "KS\u{131}");
}

#[test]
fn the_split_helper_can_fail() {
    // Guards the helper itself: a stream refused at its first byte is refused on the first read.
    let (got, at) = streamed(b"PING\r\n", &[1, 1, 1], 4096);
    assert_eq!(got, Err(natsgate::protocol::ConnectError::NotConnect));
    assert_eq!(at, 1);
    let (got, at) = streamed(b"CONNECT {}\r\n", &[3, 3], 4096);
    assert!(matches!(got, Ok(Some(_))));
    assert_eq!(at, 12);
}

/// Any socket address, IPv4, IPv6 or IPv4-mapped IPv6 (what a dual-stack socket reports).
fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    (
        0u8..3,
        any::<[u8; 16]>(),
        prop_oneof![Just(0u16), Just(65535u16), any::<u16>()],
    )
        .prop_map(|(kind, b, port)| {
            let v4 = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let ip = match kind {
                0 => IpAddr::V4(v4),
                1 => IpAddr::V6(v4.to_ipv6_mapped()),
                _ => IpAddr::V6(Ipv6Addr::from(b)),
            };
            SocketAddr::new(ip, port)
        })
}

/// Streams a load balancer (or anyone else) might open a connection with: written headers with
/// the client's traffic after them, the same with one byte changed, cut short, or followed by
/// TLVs, the two prefixes followed by arbitrary bytes, and arbitrary bytes.
fn proxy_stream() -> impl Strategy<Value = Vec<u8>> {
    use natsgate::protocol::{proxy_header_v1, proxy_header_v2, PROXY_V2_SIGNATURE};
    let written = || {
        (socket_addr(), socket_addr(), 0u8..3).prop_map(|(s, d, how)| match how {
            0 => proxy_header_v1(s, d),
            1 => proxy_header_v2(Some((s, d))),
            _ => proxy_header_v2(None),
        })
    };
    let tail = prop::sample::select(vec![
        &b""[..],
        b"CONNECT {}\r\n",
        b"\x16\x03\x01\x00",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ]);
    prop_oneof![
        (written(), tail).prop_map(|(h, t)| [&h[..], t].concat()),
        (written(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut h, i, b)| {
            let at = i.index(h.len());
            h[at] = b;
            h
        }),
        (written(), any::<prop::sample::Index>()).prop_map(|(h, i)| h[..i.index(h.len())].to_vec()),
        // v2 with TLVs (or garbage) after the addresses, the length field covering them.
        (
            socket_addr(),
            socket_addr(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(s, d, tlv)| {
                let mut h = proxy_header_v2(Some((s, d)));
                h.extend_from_slice(&tlv);
                let len = (h.len() - 16) as u16;
                h[14..16].copy_from_slice(&len.to_be_bytes());
                h
            }),
        (
            prop::sample::select(vec![
                &b"PROXY "[..],
                b"PROXY TCP4 ",
                b"PROXY TCP6 ",
                b"PROXY UNKNOWN",
                &PROXY_V2_SIGNATURE[..],
            ]),
            prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(b"0123456789.: \r\nabcdefABCDEF".to_vec())
                ],
                0..120
            ),
        )
            .prop_map(|(p, rest)| [p, &rest[..]].concat()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The property is fuzz_logic's, shared with the `proxy_parse` fuzz target.
    #[test]
    fn any_split_of_a_proxy_header_stream_gives_the_whole_streams_answer(
        stream in proxy_stream(),
        reads in prop::collection::vec(1usize..16, 0..20),
    ) {
        check_proxy_header(&stream, &reads);
    }

    /// The property is fuzz_logic's, shared with the `proxy_header` fuzz target.
    #[test]
    fn written_proxy_headers_read_back_unmapped(src in socket_addr(), dst in socket_addr()) {
        check_proxy_writers(src, dst);
    }
}

/// Client streams that begin with any op, well-formed or nearly so.
fn first_op_stream() -> impl Strategy<Value = Vec<u8>> {
    let part = prop::sample::select(vec![
        &b"PING"[..],
        b"pong",
        b"+OK",
        b"INFO {}",
        b"SUB a 1",
        b"UNSUB 1",
        b"PUB a 5",
        b"pub a r 0",
        b"PUB a 5\r\nhello\r\n",
        b"pub\ta\tr\t0\r\n\r\n",
        b"PUB a 2\r\nhi\r\n",
        b"SUB a 1\r\n",
        b"PUB a x",
        b"HPUB a 2 5",
        b"CONNECT {}",
        b"connect{\"verbose\":true}",
        b"MSG a 1 2",
        b"-ERR 'x'",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b"hello",
        b"12345",
        b"{",
    ]);
    prop_oneof![
        prop::collection::vec(part, 0..12).prop_map(|p| p.concat()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// The property is fuzz_logic's, shared with the `connect_scan` fuzz target.
    #[test]
    fn any_split_of_a_first_op_stream_gives_the_whole_streams_answer(
        stream in first_op_stream(),
        reads in prop::collection::vec(1usize..16, 0..20),
        max_control_line in 4usize..32,
        max_payload in 0usize..8,
    ) {
        let limits = natsgate::protocol::FirstOpLimits { max_control_line, max_payload };
        check_first_op(&stream, &reads, limits);
    }
}

#[test]
fn the_leak_check_can_fail() {
    // Guards the reference reader: a client reads this INFO's connect_urls.
    let leaked = natsgate::protocol::fuzz_logic::leaked_connect_urls(
        b"abc\r\nMSG a 1 3\r\nINFO{\"CONNECT_URLS\":[\"a\"]}\r\n",
    );
    assert!(leaked.is_some());
    // Inside a payload followed by size, it is the client's data, not an INFO.
    let payload = b"MSG a 1 31\r\nINFO {\"connect_urls\":[\"a\"]}\r\n\r\n";
    assert_eq!(
        natsgate::protocol::fuzz_logic::leaked_connect_urls(payload),
        None
    );
    // And the follower, having lost sync after an unknown op, still strips.
    check_server_stream(
        b"abc\r\nINFO {\"connect_urls\":[\"a\"]}\r\n",
        &[],
        TlsAdvert::None,
        true,
    );
}

/// One field of an INFO object as text: nats-server's own, the per-connection ones in other
/// spellings, and arbitrary ones (nested `client_id`s among them).
fn info_field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,6}".prop_map(|n| format!("\"client_id\":{n}")),
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}"
            .prop_map(|ip| format!("\"client_ip\":\"{ip}\"")),
        "[0-9]{1,6}".prop_map(|n| format!("\"client_id\" : {n}")),
        "[0-9]{1,6}".prop_map(|n| format!("\"client\\u005fid\":{n}")),
        Just("\"client_ip\":null".to_string()),
        Just("\"client_ip\":\"a\\\"b\"".to_string()),
        "[0-9]{1,6}".prop_map(|n| format!("\"x\":{{\"client_id\":{n},\"client_ip\":\"1.2.3.4\"}}")),
        Just("\"connect_urls\":[\"10.0.0.1:4222\",\"10.0.0.2:4222\"]".to_string()),
        Just("\"tls_required\":true".to_string()),
        "[A-Za-z0-9_-]{0,12}".prop_map(|n| format!("\"nonce\":\"{n}\"")),
        ("[a-z_]{1,10}", json_value()).prop_map(|(k, v)| format!("\"{k}\":{v}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn an_info_rendered_from_a_template_is_the_whole_rewrite(
        fields in prop::collection::vec(info_field(), 0..10),
        sep in prop::sample::select(vec![",", ", ", " ,"]),
        pad in prop::sample::select(vec!["", " ", "  "]),
    ) {
        let line = format!("INFO {pad}{{{}}} \r\n", fields.join(sep));
        check_info_line(line.as_bytes());
    }
}

/// What nats-server 2.15 sends every client after its CONNECT: one line per client, the same
/// but for `client_id` and `client_ip`.
#[test]
fn nats_servers_info_after_connect_is_rendered_from_its_template() {
    let line = br#"INFO {"server_id":"NA3Z","server_name":"n1","version":"2.15.1","proto":1,"git_commit":"b2fd3ef","go":"go1.27.2","host":"0.0.0.0","port":4222,"headers":true,"auth_required":true,"max_payload":1048576,"client_id":5,"client_ip":"127.0.0.1","connect_info":true,"remote_account":"$G","api_lvl":5,"xkey":"XCVS"} "#;
    check_info_line(&[&line[..], b"\r\n"].concat());
}
