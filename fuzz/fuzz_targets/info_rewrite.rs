//! The upstream INFO line on its way to the client: `parse_info` never panics on any bytes, and
//! for every INFO it accepts, `rewrite_info` (all TLS adverts, both `strip_connect_urls`
//! settings) never panics, yields one `INFO {json} \r\n` line that parses again, and keeps the
//! nonce and every field except the ones it is documented to change byte for byte (line breaks
//! between a value's tokens become spaces). And the INFO rendered from a template
//! (`rewrite_info_line`) is the whole rewrite, byte for byte (`fuzz_logic::check_info_line`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::{
    go_name_matches, ldm_info, parse_info, rewrite_info, rewrite_info_with, ConnectUrls, Info,
    Rewrite, TlsAdvert,
};

const CHANGED: [&str; 5] = [
    "tls_required",
    "tls_available",
    "tls_verify",
    "connect_urls",
    "ws_connect_urls",
];

/// A field's JSON text, with line breaks as the rewrite writes them (spaces: INFO is one line).
fn raw(info: &Info, key: &str) -> Option<String> {
    info.raw(key).map(|v| v.get().replace(['\r', '\n'], " "))
}

fuzz_target!(|data: &[u8]| {
    natsgate::protocol::fuzz_logic::check_info_line(data);
    let Ok(info) = parse_info(data) else {
        return;
    };
    let fields = info.to_map();
    for (i, advert) in [
        TlsAdvert::None,
        TlsAdvert::Required { verify: false },
        TlsAdvert::Required { verify: true },
        TlsAdvert::Available { verify: false },
        TlsAdvert::Available { verify: true },
        TlsAdvert::RequiredAndAvailable { verify: false },
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
        assert_eq!(raw(&again, "nonce"), raw(&info, "nonce"), "nonce changed");
        for k in fields.keys() {
            // connect_urls are stripped in any letter case (a Go client reads them so).
            if CHANGED.iter().any(|c| c == k || (c.contains("connect_urls") && go_name_matches(k, c))) {
                continue;
            }
            assert_eq!(raw(&again, k), raw(&info, k), "field {k} changed");
        }
        let flag = |k: &str| again.bool_field(k) == Some(true);
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
            TlsAdvert::RequiredAndAvailable { verify } => {
                assert!(flag("tls_required") && flag("tls_available"));
                assert_eq!(flag("tls_verify"), verify);
            }
        }
        if strip {
            assert!(again.raw("connect_urls").is_none());
            assert!(again.raw("ws_connect_urls").is_none());
        } else {
            assert_eq!(raw(&again, "connect_urls"), raw(&info, "connect_urls"));
        }
        // Rewriting is idempotent: the client-facing INFO, rewritten again, is the same line.
        assert_eq!(rewrite_info(again, advert, strip), out);
    }
    // listener.advertise: exactly the list, in the first INFO and the lame duck one (no nonce).
    let rewrite = Rewrite {
        tls: TlsAdvert::None,
        connect_urls: ConnectUrls::Advertise(vec!["edge-a:4222".to_string()].into()),
        client_ip: Some([203, 0, 113, 7].into()),
    };
    for out in [rewrite_info_with(info.clone(), &rewrite), ldm_info(&info, &rewrite)] {
        let again = parse_info(&out).expect("rewritten INFO parses");
        assert_eq!(raw(&again, "connect_urls").as_deref(), Some(r#"["edge-a:4222"]"#));
        assert_eq!(again.str_field("client_ip").as_deref(), Some("203.0.113.7"));
        let urls = again
            .to_map()
            .keys()
            .filter(|k| go_name_matches(k, "connect_urls") || go_name_matches(k, "ws_connect_urls"))
            .count();
        assert_eq!(urls, 1, "only the advertised list");
    }
    let ldm = parse_info(&ldm_info(&info, &rewrite)).expect("parses");
    assert_eq!(ldm.bool_field("ldm"), Some(true));
    assert!(ldm.raw("nonce").is_none());
});
