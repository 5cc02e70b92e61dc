//! `[websocket]`: NATS over WebSocket, held to the same authorization window as TCP clients,
//! relayed to the same `[upstream]` as plain NATS.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value;

/// `[websocket]`: a second client listener whose clients speak NATS inside WebSocket frames
/// (browsers and mobile apps: `nats.ws`, `@nats-io/nats-core`'s `wsconnect`). nats-server needs
/// no `websocket {}` block: natsgate unwraps the frames and speaks plain NATS upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Where WebSocket clients connect.
    #[serde(deserialize_with = "value::socket_addr")]
    pub bind: SocketAddr,
    /// With `key_file`: serve `wss://` with this certificate chain (PEM, re-read when it
    /// changes). Absent: `ws://`, for a listener behind a TLS-terminating ingress.
    #[serde(
        default,
        deserialize_with = "value::optional_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(
        default,
        deserialize_with = "value::optional_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub key_file: Option<PathBuf>,
    /// As nats-server's `websocket.allowed_origins`: when not empty, a request whose `Origin`
    /// header is not one of these (scheme, host and port) is refused with 403. A request
    /// without `Origin` (not a browser) is always accepted, as nats-server does.
    #[serde(default)]
    pub allowed_origins: Vec<AllowedOrigin>,
    /// As nats-server's `websocket.compression` (permessage-deflate). Not supported: the
    /// WebSocket crate natsgate uses (tungstenite) has no server-side deflate, so `true` is a
    /// configuration error rather than a setting that silently does nothing.
    #[serde(default, deserialize_with = "no_compression")]
    pub compression: bool,
}

impl WebSocketConfig {
    /// Whether this listener serves `wss://`.
    pub fn is_tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// The cross-field rule: a certificate needs its key and the other way round.
    pub(super) fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err((
                "websocket.key_file",
                "cert_file and key_file must be given together (neither: ws://)",
            ));
        }
        Ok(())
    }
}

fn no_compression<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    if bool::deserialize(d)? {
        return Err(D::Error::custom(
            "permessage-deflate is not supported: the WebSocket library natsgate uses \
             (tungstenite) has no server-side compression; set `compression = false` \
             (clients then negotiate no extension)",
        ));
    }
    Ok(false)
}

/// One entry of `allowed_origins`: a URL such as `"https://app.example.com"`, reduced as
/// nats-server reduces it to scheme, lower-case host and port (443 for `https`, else 80 when
/// the URL names none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    /// As written, for `--check-config`.
    text: String,
    pub(crate) origin: Origin,
}

/// An origin as nats-server compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) scheme: String,
    pub(crate) host: String,
    pub(crate) port: String,
}

impl Origin {
    /// Parses an absolute URL (`scheme://host[:port][/...]`); `None` for anything else
    /// (nats-server's `url.ParseRequestURI` fails on those, and the origin is refused).
    pub(crate) fn parse(s: &str) -> Option<Origin> {
        let uri: http::Uri = s.parse().ok()?;
        let scheme = uri.scheme_str()?.to_string();
        let authority = uri.authority()?;
        let host = authority.host().to_ascii_lowercase();
        // nats-server keeps IPv6 hosts without their brackets (net.SplitHostPort).
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_string)
            .unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        let port = match authority.port_u16() {
            Some(p) => p.to_string(),
            None if scheme == "https" => "443".into(),
            None => "80".into(),
        };
        Some(Origin { scheme, host, port })
    }
}

impl<'de> Deserialize<'de> for AllowedOrigin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match Origin::parse(&text) {
            Some(origin) => Ok(AllowedOrigin { text, origin }),
            None => Err(D::Error::custom(format!(
                "`{text}` is not an origin URL such as \"https://app.example.com\""
            ))),
        }
    }
}

impl Serialize for AllowedOrigin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_reduced_as_nats_server_does() {
        let o = Origin::parse("https://App.Example.com").unwrap();
        assert_eq!(
            (o.scheme.as_str(), o.host.as_str()),
            ("https", "app.example.com")
        );
        assert_eq!(o.port, "443");
        assert_eq!(Origin::parse("http://a.b").unwrap().port, "80");
        assert_eq!(Origin::parse("http://a.b:8080/x").unwrap().port, "8080");
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().host, "::1");
        for bad in ["null", "", "app.example.com", "/path"] {
            assert_eq!(Origin::parse(bad), None, "{bad}");
        }
    }
}
