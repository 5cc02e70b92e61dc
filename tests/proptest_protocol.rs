//! Property tests for the pure framing in `natsgate::protocol`, run with the ordinary suite
//! (the fuzz targets in `fuzz/` explore the same properties with arbitrary bytes):
//!
//! - however a client splits a valid CONNECT stream into reads, the session's read loop (call
//!   `scan_connect` on the bytes so far after every read) finds the same line as the whole
//!   buffer does, and reports "need more" on every shorter prefix;
//! - the same holds for refused streams: the streamed verdict equals the whole-buffer verdict;
//! - `rewrite_info` never changes `nonce` (or any field it is not documented to change) and
//!   always yields one valid `INFO {json} \r\n` line.

use natsgate::protocol::{parse_info, rewrite_info, scan_connect, ConnectLine, TlsAdvert};
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
        advert in prop::sample::select(vec![
            TlsAdvert::None,
            TlsAdvert::Required { verify: false },
            TlsAdvert::Required { verify: true },
            TlsAdvert::Available { verify: false },
            TlsAdvert::Available { verify: true },
        ]),
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
