//! The upstream's INFO line and its rewrite for the client.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

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
    /// `tls_required: true` and `tls_available: true`: what nats-server says on a connection
    /// that did the TLS handshake first when its listener serves plaintext too
    /// (`handshake_first` with `allow_non_tls`; natsgate: a TLS-first connection with
    /// `tls.required = false`). A TLS-first connection on a listener that requires TLS is
    /// [`TlsAdvert::Required`], as nats-server says there.
    RequiredAndAvailable { verify: bool },
}

/// What every INFO the client receives says about the servers it may reconnect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectUrls {
    /// As the upstream sent them (`upstream.strip_connect_urls = false`).
    Keep,
    /// None: `connect_urls` and `ws_connect_urls` are removed, so clients cannot bypass
    /// natsgate.
    Strip,
    /// Exactly these (`listener.advertise`): the gateway replicas, never the servers behind
    /// them. `connect_urls` is replaced (an empty list is left out, as nats-server leaves out an
    /// empty one); `ws_connect_urls` is removed (nats-server never sends it to a plain NATS
    /// client, and natsgate serves no websocket).
    Advertise(Arc<[String]>),
}

/// How natsgate rewrites every INFO the client receives: the first one, later ones
/// ([`super::ServerStream`]) and the lame duck one ([`ldm_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// What the client-facing INFO says about TLS: natsgate's listener (and, for a TLS-first
    /// connection, [`TlsAdvert::Required`] or [`TlsAdvert::RequiredAndAvailable`]).
    pub tls: TlsAdvert,
    pub connect_urls: ConnectUrls,
    /// `Some`: every INFO carries this `client_ip` (the client's own address, from its socket
    /// or its inbound PROXY header), in place of the upstream's (natsgate's own address, or
    /// absent when nats-server expects a PROXY header). IPv4-mapped addresses are written as
    /// IPv4. `None`: the upstream's field is kept.
    pub client_ip: Option<IpAddr>,
}

impl Rewrite {
    /// The rewrite of [`rewrite_info`]: TLS flags, and `connect_urls` stripped or kept.
    pub fn new(tls: TlsAdvert, strip_connect_urls: bool) -> Rewrite {
        Rewrite {
            tls,
            connect_urls: if strip_connect_urls {
                ConnectUrls::Strip
            } else {
                ConnectUrls::Keep
            },
            client_ip: None,
        }
    }

    /// This rewrite with the upstream's `client_ip` kept: what a template of it is made with
    /// (the client's address is filled in per client).
    pub fn without_client_ip(&self) -> Rewrite {
        Rewrite {
            client_ip: None,
            ..self.clone()
        }
    }

    /// The same rewrite for another client: everything but the address itself.
    pub fn same_kind(&self, other: &Rewrite) -> bool {
        self.tls == other.tls
            && self.connect_urls == other.connect_urls
            && self.client_ip.is_some() == other.client_ip.is_some()
    }
}

/// Rewrites the upstream INFO for the client: the nonce and every other field are kept; only
/// the TLS flags (natsgate's listener decides them) and, when asked, `connect_urls` (which would
/// let clients bypass natsgate) change. Returns the complete `INFO {json} \r\n` line.
/// Same as [`rewrite_info_with`] with [`Rewrite::new`].
pub fn rewrite_info(info: Info, tls: TlsAdvert, strip_connect_urls: bool) -> Vec<u8> {
    rewrite_info_with(info, &Rewrite::new(tls, strip_connect_urls))
}

/// Rewrites the upstream INFO for the client as `rewrite` says (see [`apply_rewrite`]) and
/// returns the complete `INFO {json} \r\n` line.
pub fn rewrite_info_with(mut info: Info, rewrite: &Rewrite) -> Vec<u8> {
    apply_rewrite(&mut info, rewrite);
    info.to_info_line()
}

/// The rewrite itself: the TLS flags; `connect_urls` kept, stripped or replaced (matched as a
/// client's Go decoder matches names, in any letter case); `client_ip` set. Every other field,
/// the nonce included, is kept byte for byte.
pub fn apply_rewrite(info: &mut Info, rewrite: &Rewrite) {
    let (required, available, verify) = match rewrite.tls {
        TlsAdvert::None => (false, false, false),
        TlsAdvert::Required { verify } => (true, false, verify),
        TlsAdvert::Available { verify } => (false, true, verify),
        TlsAdvert::RequiredAndAvailable { verify } => (true, true, verify),
    };
    info.set_flag("tls_required", required);
    info.set_flag("tls_available", available);
    info.set_flag("tls_verify", verify);
    match &rewrite.connect_urls {
        ConnectUrls::Keep => {}
        ConnectUrls::Strip => {
            info.remove_go("connect_urls");
            info.remove_go("ws_connect_urls");
        }
        ConnectUrls::Advertise(urls) => {
            let at = info.remove_go("connect_urls");
            info.remove_go("ws_connect_urls");
            if !urls.is_empty() {
                info.insert_at(at, "connect_urls", &Value::from(urls.to_vec()));
            }
        }
    }
    if let Some(ip) = rewrite.client_ip {
        set_client_ip(info, ip);
    }
}

/// Sets `client_ip` to the client's own address (IPv4-mapped written as IPv4), in place of
/// whatever the upstream wrote.
pub fn set_client_ip(info: &mut Info, ip: IpAddr) {
    info.set("client_ip", &Value::from(ip.to_canonical().to_string()));
}

/// Sets `client_ip` only when the INFO lacks it (nats-server omits it when it expects a PROXY
/// header); returns whether it did.
pub fn insert_client_ip(info: &mut Info, ip: IpAddr) -> bool {
    if info.raw("client_ip").is_some() {
        return false;
    }
    set_client_ip(info, ip);
    true
}

/// The lame duck INFO natsgate sends an established client when it shuts down itself:
/// `latest` (the latest upstream INFO for that connection) with `"ldm":true`, without its
/// `nonce` (nats-server's lame duck INFO has none), rewritten as every INFO is. Clients that
/// see it prefer other servers when they reconnect.
pub fn ldm_info(latest: &Info, rewrite: &Rewrite) -> Vec<u8> {
    let mut info = latest.clone();
    info.remove("nonce");
    info.set_flag("ldm", true);
    rewrite_info_with(info, rewrite)
}

/// Whether the upstream requires authentication (`auth_required` in its INFO). Without it,
/// nats-server accepts ops before CONNECT: read the first op with
/// [`super::scan_first_op`] instead of [`super::scan_connect`]. (nats-server with
/// `no_auth_user` also accepts them, but says `auth_required`, so natsgate keeps to CONNECT
/// there.)
pub fn auth_required(info: &Info) -> bool {
    info.bool_field("auth_required") == Some(true)
}

/// nats-server's default `max_payload`, when an INFO does not say.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The upstream's `max_payload` (a first PUB over it is refused as nats-server refuses it).
pub fn max_payload(info: &Info) -> usize {
    info.raw("max_payload")
        .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
        .map_or(DEFAULT_MAX_PAYLOAD, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
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

/// The fields of an upstream INFO that differ from one connection to the next:
/// [`latest_info_changed`] ignores their values.
const PER_CONNECTION: [&str; 3] = ["client_id", "client_ip", "nonce"];

/// Whether `new` says anything `latest` does not, apart from the values nats-server writes
/// per connection (`client_id`, `client_ip`, `nonce`; a nonce that appears or disappears is a
/// change). natsgate's own INFO is built from the latest one, so only a change needs storing.
pub fn latest_info_changed(latest: &Info, new: &Info) -> bool {
    !latest.same_apart_from(new, &PER_CONNECTION)
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

    fn rewritten(line: &[u8], rewrite: &Rewrite) -> String {
        String::from_utf8(rewrite_info_with(parse_info(line).unwrap(), rewrite)).unwrap()
    }

    /// `listener.advertise`: exactly the advertised list, in the upstream's `connect_urls`
    /// place, whatever the upstream sent (any letter case, duplicates); `ws_connect_urls` gone.
    #[test]
    fn advertise_replaces_connect_urls() {
        let rw = Rewrite {
            tls: TlsAdvert::None,
            connect_urls: ConnectUrls::Advertise(
                vec![
                    "edge-a.example.com:4222".into(),
                    "edge-b.example.com:4222".into(),
                ]
                .into(),
            ),
            client_ip: None,
        };
        let line = br#"INFO {"server_id":"S","connect_urls":["10.0.0.1:4222","10.0.0.2:4222"],"ws_connect_urls":["10.0.0.1:8080"],"max_payload":1048576} "#;
        assert_eq!(
            rewritten(line, &rw),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge-a.example.com:4222\",\"edge-b.example.com:4222\"],\"max_payload\":1048576} \r\n"
        );
        // None upstream (a single server): the list is added.
        assert_eq!(
            rewritten(br#"INFO {"server_id":"S"}"#, &rw),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge-a.example.com:4222\",\"edge-b.example.com:4222\"]} \r\n"
        );
        // A Go client would read CONNECT_URLS too: replaced, as are duplicates.
        let out = rewritten(
            br#"INFO {"CONNECT_URLS":["10.9.9.9:1"],"connect_urls":["10.9.9.8:1"]}"#,
            &rw,
        );
        assert!(!out.contains("10.9.9"), "{out}");
        let strip = rewritten(
            br#"INFO {"Connect_Urls":["10.9.9.9:1"],"ws_CONNECT_urls":["x"]}"#,
            &Rewrite::new(TlsAdvert::None, true),
        );
        assert_eq!(strip, "INFO {} \r\n");
        // An empty list is left out, as nats-server leaves out an empty one.
        let none = Rewrite {
            connect_urls: ConnectUrls::Advertise(Vec::new().into()),
            ..rw.clone()
        };
        assert_eq!(
            rewritten(line, &none),
            "INFO {\"server_id\":\"S\",\"max_payload\":1048576} \r\n"
        );
    }

    #[test]
    fn client_ip_is_the_clients_own() {
        let ip: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let rw = Rewrite {
            client_ip: Some(ip),
            ..Rewrite::new(TlsAdvert::None, true)
        };
        // nats-server with proxy_protocol omits it: added.
        assert_eq!(
            rewritten(br#"INFO {"server_id":"S","client_id":7}"#, &rw),
            "INFO {\"server_id\":\"S\",\"client_id\":7,\"client_ip\":\"203.0.113.7\"} \r\n"
        );
        // Without it nats-server names natsgate's address: replaced in place.
        assert_eq!(
            rewritten(br#"INFO {"client_ip":"10.0.0.5","client_id":7}"#, &rw),
            "INFO {\"client_ip\":\"203.0.113.7\",\"client_id\":7} \r\n"
        );
        let mut info = parse_info(br#"INFO {"client_ip":"10.0.0.5"}"#).unwrap();
        assert!(!insert_client_ip(&mut info, ip));
        assert_eq!(info.str_field("client_ip").as_deref(), Some("10.0.0.5"));
        let mut info = parse_info(br#"INFO {}"#).unwrap();
        assert!(insert_client_ip(&mut info, ip));
        assert_eq!(info.str_field("client_ip").as_deref(), Some("203.0.113.7"));
    }

    /// nats-server's lame duck INFO: `"ldm":true`, no nonce; natsgate's is also rewritten.
    #[test]
    fn lame_duck_info() {
        let latest = parse_info(
            br#"INFO {"server_id":"S","nonce":"abc","tls_required":true,"connect_urls":["10.0.0.1:4222"],"client_id":9} "#,
        )
        .unwrap();
        let rw = Rewrite {
            tls: TlsAdvert::Available { verify: false },
            connect_urls: ConnectUrls::Advertise(vec!["edge:4222".into()].into()),
            client_ip: Some("203.0.113.7".parse().unwrap()),
        };
        assert_eq!(
            String::from_utf8(ldm_info(&latest, &rw)).unwrap(),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge:4222\"],\"client_id\":9,\"ldm\":true,\"tls_available\":true,\"client_ip\":\"203.0.113.7\"} \r\n"
        );
    }

    /// A TLS-first connection: nats-server 2.15.1 with `handshake_first` and `allow_non_tls`
    /// says `"tls_required":true,"tls_available":true`; with TLS required, only the first.
    #[test]
    fn tls_first_connections_are_advertised_as_nats_server_does() {
        let line = br#"INFO {"server_id":"S","headers":true}"#;
        let first = Rewrite::new(TlsAdvert::RequiredAndAvailable { verify: false }, true);
        assert_eq!(
            rewritten(line, &first),
            "INFO {\"server_id\":\"S\",\"headers\":true,\"tls_required\":true,\"tls_available\":true} \r\n"
        );
        let required = Rewrite::new(TlsAdvert::Required { verify: true }, true);
        assert_eq!(
            rewritten(line, &required),
            "INFO {\"server_id\":\"S\",\"headers\":true,\"tls_required\":true,\"tls_verify\":true} \r\n"
        );
    }

    #[test]
    fn auth_and_max_payload() {
        assert!(auth_required(
            &parse_info(br#"INFO {"auth_required":true}"#).unwrap()
        ));
        assert!(!auth_required(
            &parse_info(br#"INFO {"max_payload":5}"#).unwrap()
        ));
        assert_eq!(
            max_payload(&parse_info(br#"INFO {"max_payload":5}"#).unwrap()),
            5
        );
        assert_eq!(
            max_payload(&parse_info(br#"INFO {}"#).unwrap()),
            1024 * 1024
        );
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
