//! The upstream INFO line on its way to the client: `parse_info` never panics on any bytes, and
//! for every INFO it accepts, `rewrite_info` (all TLS adverts, both `strip_connect_urls`
//! settings) never panics, yields one `INFO {json} \r\n` line that parses again, keeps the nonce
//! byte for byte and every field except the ones it is documented to change.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::{parse_info, rewrite_info, TlsAdvert};
use serde_json::Value;

const CHANGED: [&str; 5] = [
    "tls_required",
    "tls_available",
    "tls_verify",
    "connect_urls",
    "ws_connect_urls",
];

/// Equal, except that a float may come back one rounding step away: serde_json (without its
/// `float_roundtrip` feature) does not always print the closest decimal back. Recorded in
/// docs/robustness-findings.md; nats-server's INFO carries integers only, which are exact.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-15,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(info) = parse_info(data) else {
        return;
    };
    for (i, advert) in [
        TlsAdvert::None,
        TlsAdvert::Required { verify: false },
        TlsAdvert::Required { verify: true },
        TlsAdvert::Available { verify: false },
        TlsAdvert::Available { verify: true },
    ]
    .into_iter()
    .enumerate()
    {
        let strip = i % 2 == 0;
        let out = rewrite_info(info.clone(), advert, strip);
        assert!(out.starts_with(b"INFO {"));
        assert!(out.ends_with(b"} \r\n"));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let again = parse_info(&out).expect("rewritten INFO parses");
        assert_eq!(again.get("nonce"), info.get("nonce"), "nonce changed");
        for (k, v) in &info {
            if CHANGED.contains(&k.as_str()) {
                continue;
            }
            assert!(
                again.get(k).is_some_and(|a| same(a, v)),
                "field {k} changed: {v} -> {:?}",
                again.get(k)
            );
        }
        let flag = |k: &str| again.get(k) == Some(&Value::Bool(true));
        match advert {
            TlsAdvert::None => assert!(!flag("tls_required") && !flag("tls_available")),
            TlsAdvert::Required { verify } => {
                assert!(flag("tls_required") && !flag("tls_available"));
                assert_eq!(flag("tls_verify"), verify);
            }
            TlsAdvert::Available { verify } => {
                assert!(!flag("tls_required") && flag("tls_available"));
                assert_eq!(flag("tls_verify"), verify);
            }
        }
        if strip {
            assert!(!again.contains_key("connect_urls"));
            assert!(!again.contains_key("ws_connect_urls"));
        } else {
            match (again.get("connect_urls"), info.get("connect_urls")) {
                (Some(a), Some(b)) => assert!(same(a, b)),
                (a, b) => assert_eq!(a, b),
            }
        }
        // Rewriting is idempotent (up to the float rounding above): the client-facing INFO,
        // rewritten again, parses to the same fields.
        let twice = parse_info(&rewrite_info(again.clone(), advert, strip)).expect("parses");
        assert!(same(&Value::Object(twice), &Value::Object(again)));
    }
});
