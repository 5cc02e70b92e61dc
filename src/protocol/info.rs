//! The upstream's INFO line and its rewrite for the client.

use super::RawObject;

/// A problem with the upstream's INFO line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("upstream's first line is not INFO")]
    NotInfo,
    #[error("upstream INFO is not a JSON object: {0}")]
    BadJson(String),
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
    info.to_info_line()
}

/// natsgate's own INFO for a client it answers itself (`upstream.dial = after_connect`): the
/// latest upstream INFO with every field that shapes client behaviour kept as nats-server sent
/// it (`auth_required`, `headers`, `max_payload`, `proto`, ...), but without the `nonce` (it
/// belongs to another connection, and a client that would sign one is never served this way)
/// and with this client's own `client_id` and `client_ip`.
pub fn own_info(latest: &Info, client_id: u64, client_ip: std::net::IpAddr) -> Info {
    let mut info = latest.clone();
    info.remove("nonce");
    info.set("client_id", &serde_json::Value::from(client_id));
    info.set(
        "client_ip",
        &serde_json::Value::from(client_ip.to_canonical().to_string()),
    );
    info
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
