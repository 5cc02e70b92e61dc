//! Properties of the protocol code, defined once and checked by both the cargo-fuzz targets
//! (`fuzz/fuzz_targets/`, arbitrary bytes) and the property tests
//! (`tests/proptest_protocol.rs`, generated streams). Each `check_*` panics with a message
//! when the property does not hold. Not part of natsgate's interface.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use std::net::{IpAddr, SocketAddr};

use super::{
    latest_info_changed, parse_info, parse_proxy_header, proxy_header_v1, proxy_header_v2,
    rewrite_info_line, rewrite_info_with, same_info_line, scan_connect, scan_first_op,
    ClientIdentity, ConnectError, ConnectUrls, FirstOp, FirstOpLimits, KnownLine, ProxyHeader,
    Rewrite, ServerStream, TlsAdvert, Verdict, IDENTITY_MAX_CHARS, PROXY_V1_MAX_LEN,
    PROXY_V2_MAX_ADDR_LEN,
};

/// The TLS adverts a follower may be built with, indexed by a fuzz byte.
pub const ADVERTS: [TlsAdvert; 6] = [
    TlsAdvert::None,
    TlsAdvert::Required { verify: false },
    TlsAdvert::Required { verify: true },
    TlsAdvert::Available { verify: false },
    TlsAdvert::Available { verify: true },
    TlsAdvert::RequiredAndAvailable { verify: false },
];

/// What the client receives when the upstream sends `stream` in reads of the given sizes (0 is
/// read as 1; what is left after the last size comes in one read), and the verdict.
pub fn follow(
    stream: &[u8],
    reads: impl IntoIterator<Item = usize>,
    tls: TlsAdvert,
    strip: bool,
) -> (Vec<u8>, Option<Verdict>) {
    let mut s = ServerStream::new(tls, strip);
    let mut out = Vec::with_capacity(stream.len());
    let mut pos = 0;
    let mut feed = |chunk: &[u8]| match s.feed(chunk) {
        Some(v) => out.extend_from_slice(&v),
        None => out.extend_from_slice(chunk),
    };
    for n in reads {
        if pos >= stream.len() {
            break;
        }
        let end = (pos + n.max(1)).min(stream.len());
        feed(&stream[pos..end]);
        pos = end;
    }
    if pos < stream.len() {
        feed(&stream[pos..]);
    }
    (out, s.verdict())
}

/// The server-op follower's properties, for one upstream stream:
/// - any split of the stream into reads gives the same output and verdict as the whole;
/// - so does a byte-by-byte split (for streams up to 2 KiB);
/// - following its own output again changes nothing: every INFO the client got is already
///   rewritten, so with `strip` no INFO the follower recognises still carries `connect_urls`;
/// - a stream that cannot contain an INFO (no `I` or `i` byte) passes byte for byte;
/// - fail closed: with `strip`, no INFO line a client would read carries `connect_urls`, by a
///   reference reader of the output ([`leaked_connect_urls`]), whatever the follower made of
///   the stream (unknown ops, bad sizes, long lines included).
pub fn check_server_stream(stream: &[u8], reads: &[usize], tls: TlsAdvert, strip: bool) {
    let whole = follow(stream, [], tls, strip);
    let split = follow(stream, reads.iter().copied(), tls, strip);
    assert_eq!(
        split, whole,
        "split {reads:?} differs from the whole stream"
    );
    if stream.len() <= 2048 {
        let bytes = follow(stream, std::iter::repeat(1), tls, strip);
        assert_eq!(bytes, whole, "byte-by-byte differs from the whole stream");
    }
    let again = follow(&whole.0, [], tls, strip).0;
    assert!(
        again == whole.0,
        "the output changes when followed again:\n{:?}\n{:?}",
        String::from_utf8_lossy(&whole.0),
        String::from_utf8_lossy(&again)
    );
    if !stream.iter().any(|&b| b == b'I' || b == b'i') {
        assert_eq!(whole.0, stream, "a stream without INFO was changed");
    }
    if strip {
        if let Some(line) = leaked_connect_urls(&whole.0) {
            panic!(
                "connect_urls reached the client in {:?}\nfrom {:?}",
                line,
                String::from_utf8_lossy(stream)
            );
        }
    }
}

/// A reference reader, independent of the follower's streaming code, of what the client
/// receives: returns an INFO line a client would read that still names `connect_urls` or
/// `ws_connect_urls` (in any letter case, as Go's decoder matches them). It reads the whole
/// output as a client parser does while it can follow it: op by op, skipping MSG/HMSG payloads
/// by their declared size; at the first line it cannot follow it stops trusting sizes and reads
/// every line start as a possible op. An INFO line is any line that starts with `INFO` (any
/// case) followed by blanks and a JSON object (nats.go accepts `INFO{` too).
pub fn leaked_connect_urls(out: &[u8]) -> Option<String> {
    let mut pos = 0;
    let mut synced = true;
    while pos < out.len() {
        let end = memchr::memchr(b'\n', &out[pos..]).map_or(out.len(), |i| pos + i + 1);
        let line = &out[pos..end];
        pos = end;
        if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"INFO") {
            if json_names_urls(line[4..].trim_ascii()) {
                return Some(String::from_utf8_lossy(line).into_owned());
            }
            continue;
        }
        if !synced {
            continue;
        }
        let words: Vec<&[u8]> = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .collect();
        let num = |w: &&[u8]| -> Option<usize> {
            if !w.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(w).ok()?.parse().ok()
        };
        let op = words.first().map(|w| w.to_ascii_uppercase());
        let size = match op.as_deref() {
            Some(b"MSG") if (4..=5).contains(&words.len()) => words.last().and_then(num),
            Some(b"HMSG") if (5..=6).contains(&words.len()) => {
                let n = words.len();
                match (num(&words[n - 2]), num(&words[n - 1])) {
                    (Some(h), Some(t)) if h <= t => Some(t),
                    _ => None,
                }
            }
            Some(b"PING" | b"PONG" | b"+OK" | b"-ERR") => continue,
            _ => None,
        };
        match size {
            Some(n) => pos = pos.saturating_add(n).saturating_add(2).min(out.len()),
            None => synced = false,
        }
    }
    None
}

/// Whether an INFO object names either URL list at its top level (any letter case).
fn json_names_urls(json: &[u8]) -> bool {
    members(json).is_some_and(|m| {
        m.iter().any(|(k, _)| {
            super::go_name_matches(k, "connect_urls")
                || super::go_name_matches(k, "ws_connect_urls")
        })
    })
}

/// Go's `foldName` (`encoding/json`): each character becomes the smallest member of its
/// simple case-folding orbit (`unicode.SimpleFold`). Derived here from Rust's case mappings:
/// the orbit is the closure of the character under single-character lower and upper case.
/// Case mappings and case folding differ, as far as ASCII can be reached, only for U+0131
/// DOTLESS I: its upper case is `I`, but Unicode folds it only in Turkic locales, so Go's
/// orbit holds it alone (nats-server agrees: tests/audit_user.rs).
pub fn go_fold_reference(key: &str) -> String {
    key.chars().map(orbit_min).collect()
}

fn orbit_min(c: char) -> char {
    if c == '\u{131}' {
        return c;
    }
    let mut orbit = vec![c];
    let mut i = 0;
    while i < orbit.len() {
        let x = orbit[i];
        for mapped in [only(x.to_lowercase()), only(x.to_uppercase())] {
            if let Some(m) = mapped.filter(|m| !orbit.contains(m)) {
                orbit.push(m);
            }
        }
        i += 1;
    }
    orbit.into_iter().min().unwrap_or(c)
}

/// The mapping's character, when it maps to exactly one.
fn only(mut it: impl Iterator<Item = char>) -> Option<char> {
    match (it.next(), it.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// The object's members in stream order, duplicates kept. `None` if `arg` is not an object.
fn members(arg: &[u8]) -> Option<Vec<(String, Box<RawValue>)>> {
    struct Members(Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Members, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Members, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Members(v))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Members>(arg).ok().map(|m| m.0)
}

/// A reference decoder for what nats-server reads from a CONNECT argument: the object's
/// members in order into a map keyed by the Go-folded name, each string value overwriting the
/// one before (last wins; `null` and other types leave the field alone, as Go does).
/// `None` if `arg` is not a JSON object.
pub fn reference_identity(arg: &[u8]) -> Option<ClientIdentity> {
    let mut folded = BTreeMap::new();
    for (k, v) in members(arg)? {
        if let Ok(s) = serde_json::from_str::<String>(v.get()) {
            folded.insert(go_fold_reference(&k), s);
        }
    }
    let get = |name: &str| {
        folded
            .get(&go_fold_reference(name))
            .map(|s| s.chars().take(IDENTITY_MAX_CHARS).collect())
    };
    Some(ClientIdentity {
        name: get("name"),
        lang: get("lang"),
        version: get("version"),
        user: get("user"),
    })
}

/// The CONNECT fields nats-server treats as secrets, by their Go-folded names.
const SECRETS: [&str; 5] = ["PASS", "AUTH_TOKEN", "JWT", "SIG", "PROXY_SIG"];

/// The CONNECT line's properties, for one client stream: when `scan_connect` finds a line,
/// - the identity it logs is the reference decoder's (what nats-server reads);
/// - its fields' `Debug` does not depend on any secret's value: it is the same when every
///   member that nats-server reads as `pass`, `auth_token`, `jwt`, `sig` or `proxy_sig` holds
///   something else.
pub fn check_connect_identity(stream: &[u8], max_control_line: usize) {
    let Ok(Some(line)) = scan_connect(stream, max_control_line) else {
        return;
    };
    let arg = &stream[line.arg.clone()];
    let reference = reference_identity(arg).expect("scan_connect accepted a non-object");
    assert_eq!(line.client_identity(), reference, "for {arg:?}");

    let members = members(arg).expect("an object");
    let replaced = members
        .iter()
        .map(|(k, v)| {
            let secret = SECRETS.contains(&go_fold_reference(k).as_str());
            let key = serde_json::to_string(k).expect("a string encodes");
            format!("{key}:{}", if secret { "\"other\"" } else { v.get() })
        })
        .collect::<Vec<_>>()
        .join(",");
    let other = format!("CONNECT {{{replaced}}}\r\n");
    let other = scan_connect(other.as_bytes(), usize::MAX)
        .expect("the replaced line parses")
        .expect("complete");
    assert_eq!(
        format!("{:?}", line.fields),
        format!("{:?}", other.fields),
        "a secret's value shows in Debug"
    );
}

/// The inbound PROXY header parser's properties, for one client stream split into reads of the
/// given sizes (0 is read as 1):
/// - no panic;
/// - the streamed answer (call the parser on the bytes so far after every read, act on the
///   first answer that is not "need more") equals the whole stream's answer;
/// - every prefix answers "need more" or the whole stream's answer (for streams up to 4 KiB);
/// - a header lies inside the stream, no longer than the specification allows, and reads the
///   same from exactly its own bytes;
/// - the addresses of a header are written back by `proxy_header_v1`/`v2` into a header that
///   reads as the same addresses (v1: unless the families differ, when it is `UNKNOWN`).
pub fn check_proxy_header(stream: &[u8], reads: &[usize]) {
    let whole = parse_proxy_header(stream);
    let mut end = 0;
    let mut sizes = reads.iter().copied();
    let streamed = loop {
        end = match sizes.next() {
            Some(n) => (end + n.max(1)).min(stream.len()),
            None => stream.len(),
        };
        match parse_proxy_header(&stream[..end]) {
            Ok(None) if end < stream.len() => continue,
            other => break other,
        }
    };
    assert_eq!(
        streamed, whole,
        "split {reads:?} differs from the whole stream"
    );
    if stream.len() <= 4096 {
        for cut in 0..stream.len() {
            let part = parse_proxy_header(&stream[..cut]);
            assert!(
                part == Ok(None) || part == whole,
                "prefix {cut}: {part:?}, whole: {whole:?}"
            );
        }
    }
    let Ok(Some((header, len))) = whole else {
        return;
    };
    assert!(len <= stream.len());
    let limit = if stream[0] == b'P' {
        PROXY_V1_MAX_LEN
    } else {
        16 + PROXY_V2_MAX_ADDR_LEN
    };
    assert!(len <= limit, "header of {len} bytes");
    assert_eq!(parse_proxy_header(&stream[..len]), Ok(Some((header, len))));
    if let ProxyHeader::Proxied { src, dst } = header {
        for ip in [src.ip(), dst.ip()] {
            assert_eq!(ip, ip.to_canonical(), "a mapped address is reported");
        }
        check_proxy_writers(src, dst);
    }
}

/// The PROXY header writers' properties, for any address pair: never a panic; v1 is one line of
/// at most 107 bytes; both read back (by [`parse_proxy_header`]) as the unmapped addresses, or
/// v1 as `UNKNOWN` when the unmapped families differ; an IPv4 client (mapped or not) is always
/// written as `TCP4` / `AF_INET` when the other side is IPv4 too.
pub fn check_proxy_writers(src: SocketAddr, dst: SocketAddr) {
    let un = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (un(src), un(dst));
    let want = ProxyHeader::Proxied { src: s, dst: d };
    let same = s.is_ipv4() == d.is_ipv4();

    let v1 = proxy_header_v1(src, dst);
    assert!(v1.len() <= PROXY_V1_MAX_LEN, "v1 of {} bytes", v1.len());
    let v1_want = if same { want } else { ProxyHeader::Unknown };
    assert_eq!(parse_proxy_header(&v1), Ok(Some((v1_want, v1.len()))));
    if same {
        let fam: &[u8] = if s.is_ipv4() {
            b"PROXY TCP4 "
        } else {
            b"PROXY TCP6 "
        };
        assert!(v1.starts_with(fam));
    }

    let v2 = proxy_header_v2(Some((src, dst)));
    assert_eq!(parse_proxy_header(&v2), Ok(Some((want, v2.len()))));
    let v4 = matches!((s.ip(), d.ip()), (IpAddr::V4(_), IpAddr::V4(_)));
    assert_eq!(v2[13], if v4 { 0x11 } else { 0x21 });

    let local = proxy_header_v2(None);
    assert_eq!(
        parse_proxy_header(&local),
        Ok(Some((ProxyHeader::Local, 16)))
    );
}

/// `scan_first_op`'s properties (the first op with no auth upstream), for one client stream
/// split into reads of the given sizes (0 is read as 1):
/// - the streamed answer equals the whole stream's, and every prefix answers "need more" or
///   the whole stream's answer (for streams up to 4 KiB);
/// - a found op lies inside the stream, ends with `\n`, and reads the same from exactly its
///   own bytes; a CONNECT is what `scan_connect` finds;
/// - a refusal's client bytes are one `-ERR '...'\r\n` line.
pub fn check_first_op(stream: &[u8], reads: &[usize], limits: FirstOpLimits) {
    let whole = scan_first_op(stream, limits);
    let mut end = 0;
    let mut sizes = reads.iter().copied();
    let streamed = loop {
        end = match sizes.next() {
            Some(n) => (end + n.max(1)).min(stream.len()),
            None => stream.len(),
        };
        match scan_first_op(&stream[..end], limits) {
            Ok(None) if end < stream.len() => continue,
            other => break other,
        }
    };
    assert_eq!(
        streamed, whole,
        "split {reads:?} differs from the whole stream"
    );
    if stream.len() <= 4096 {
        for cut in 0..stream.len() {
            let part = scan_first_op(&stream[..cut], limits);
            assert!(
                part == Ok(None) || part == whole,
                "prefix {cut}: {part:?}, whole: {whole:?}"
            );
        }
    }
    match &whole {
        Ok(Some(op)) => {
            let len = op.len();
            assert!(len <= stream.len() && stream[len - 1] == b'\n');
            assert_eq!(scan_first_op(&stream[..len], limits), whole);
            if let FirstOp::Connect(line) = op {
                assert_eq!(
                    scan_connect(stream, limits.max_control_line),
                    Ok(Some(line.clone()))
                );
            }
        }
        Ok(None) => {}
        Err(e) => {
            let bytes = e.client_error();
            assert!(bytes.starts_with(b"-ERR '") && bytes.ends_with(b"'\r\n"));
            assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(bytes.iter().filter(|&&b| b == b'\'').count(), 2);
            if *e == ConnectError::NotConnect {
                panic!("scan_first_op never answers Authorization Violation");
            }
        }
    }
}

/// The rendered-once INFO rewrite ([`rewrite_info_line`]): for `line`, and for copies of it
/// with other `client_id` and `client_ip` values (the copies take the template path once the
/// first has been seen), under every kind of rewrite, the bytes (or the error) are those of
/// [`parse_info`] and [`rewrite_info_with`].
pub fn check_info_line(line: &[u8]) {
    let advertise = ConnectUrls::Advertise(vec!["edge-a:4222".to_string()].into());
    let variants = [
        line.to_vec(),
        with_values(line, b"987654", b"\"10.9.8.7\"", b"\"nonce-2_X\""),
        with_values(line, b"3", b"\"2001:db8::9\"", b"\"\""),
        line.to_vec(),
        // Other bytes than the values: never rendered from the first line's template.
        with_values(&with_tail(line), b"44", b"\"10.0.0.44\"", b"\"n44\""),
    ];
    // An INFO known by its bytes (`same_info_line`) says what the parse would say, apart from
    // the per-connection values, and its nonce is the parse's.
    if let Ok(known) = parse_info(line) {
        let kept = KnownLine::new(line.to_vec(), &known);
        for v in &variants {
            if let Some(nonce) = same_info_line(&kept, v) {
                let parsed = parse_info(v).expect("a line known by its bytes parses");
                assert!(
                    !latest_info_changed(&known, &parsed),
                    "{:?} taken for {:?}",
                    String::from_utf8_lossy(v),
                    String::from_utf8_lossy(line)
                );
                assert_eq!(nonce, parsed.str_field("nonce"));
            }
        }
    }
    for (i, tls) in ADVERTS.into_iter().enumerate() {
        for (urls, ip) in [
            (ConnectUrls::Keep, None),
            (ConnectUrls::Strip, Some(IpAddr::from([203, 0, 113, 7]))),
            (
                advertise.clone(),
                Some(IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, i as u16])),
            ),
        ] {
            let rewrite = Rewrite {
                tls,
                connect_urls: urls,
                client_ip: ip,
            };
            for v in &variants {
                let whole = parse_info(v).map(|info| rewrite_info_with(info, &rewrite));
                let got = rewrite_info_line(v, &rewrite);
                assert!(
                    got == whole,
                    "rendered once differs from the whole rewrite of {:?} ({rewrite:?}):\n{:?}\n{:?}",
                    String::from_utf8_lossy(v),
                    got.as_ref().map(|o| String::from_utf8_lossy(o).into_owned()),
                    whole.as_ref().map(|o| String::from_utf8_lossy(o).into_owned()),
                );
            }
        }
    }
}

/// `line` with one more field before its last `}`.
fn with_tail(line: &[u8]) -> Vec<u8> {
    match line.iter().rposition(|&b| b == b'}') {
        Some(i) => [&line[..i], b",\"zz\":1", &line[i..]].concat(),
        None => line.to_vec(),
    }
}

/// `line` with every value after `"client_id":` (a run of digits) and `"client_ip":` (a string
/// without escapes) replaced, wherever they are (nested ones too: the template must not be
/// fooled by them).
fn with_values(line: &[u8], id: &[u8], ip: &[u8], nonce: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 32);
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        if rest.starts_with(b"\"client_id\":") {
            out.extend_from_slice(b"\"client_id\":");
            i += 12;
            let n = line[i..].iter().take_while(|b| b.is_ascii_digit()).count();
            if n > 0 {
                out.extend_from_slice(id);
                i += n;
            }
        } else if let Some((key, value)) =
            [(&b"\"client_ip\":\""[..], ip), (b"\"nonce\":\"", nonce)]
                .into_iter()
                .find(|(key, _)| rest.starts_with(key))
        {
            out.extend_from_slice(&key[..key.len() - 1]);
            i += key.len() - 1;
            match line[i + 1..].iter().position(|&b| b == b'"' || b == b'\\') {
                Some(n) if line[i + 1 + n] == b'"' => {
                    out.extend_from_slice(value);
                    i += n + 2;
                }
                _ => {}
            }
        } else {
            out.push(line[i]);
            i += 1;
        }
    }
    out
}
