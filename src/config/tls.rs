//! `[tls]`: TLS on the client side, and when its handshake happens.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::value;

/// nats-server's default TLS handshake timeout, which `authorization.timeout` also defaults
/// from when `[tls]` is absent.
pub(crate) const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);
/// The delay `handshake_first = "auto"` waits for a ClientHello (nats-server's default).
pub(crate) const AUTO_TLS_FIRST_DELAY: Duration = Duration::from_millis(50);
/// The longest `handshake_first` delay accepted: longer ones only slow classic clients.
const MAX_TLS_FIRST_DELAY: Duration = Duration::from_secs(10);

/// `[tls]`: present means natsgate terminates TLS for clients; absent means plaintext.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM); re-read when it changes.
    #[serde(deserialize_with = "value::file")]
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "value::file")]
    pub key_file: PathBuf,
    /// When set, client certificates are required and verified against this CA (mTLS).
    #[serde(default, deserialize_with = "value::optional_file")]
    pub ca_file: Option<PathBuf>,
    /// The TLS handshake limit; also the base of the default authorization window.
    #[serde(with = "value::positive_seconds", default = "value::secs::<2>")]
    pub timeout: Duration,
    /// Whether the handshake comes before INFO (TLS-first) or after it (classic NATS).
    #[serde(default)]
    pub handshake_first: HandshakeFirst,
    /// `false` advertises `tls_available` and accepts plaintext clients too.
    #[serde(default = "value::yes")]
    pub required: bool,
}

/// When the client-side TLS handshake happens relative to INFO. Written as nats-server
/// writes it: `false`, `true`, `"auto"` or a delay such as `"300ms"` (also `"on"`, `"off"`
/// and `"auto_fallback"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HandshakeFirst {
    /// Classic NATS: plaintext INFO, then the client upgrades.
    #[default]
    Off,
    /// TLS-first: handshake before INFO.
    On,
    /// Wait this long for a ClientHello; TLS-first if one arrives, classic otherwise.
    Auto(Duration),
}

impl std::str::FromStr for HandshakeFirst {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "false" | "off" => return Ok(HandshakeFirst::Off),
            "true" | "on" => return Ok(HandshakeFirst::On),
            "auto" | "auto_fallback" => return Ok(HandshakeFirst::Auto(AUTO_TLS_FIRST_DELAY)),
            _ => {}
        }
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() && d <= MAX_TLS_FIRST_DELAY => Ok(HandshakeFirst::Auto(d)),
            Ok(_) => Err(format!("`{s}` must be a delay between 1ms and 10s")),
            Err(e) => Err(format!(
                "`{s}` is not false, true, \"auto\" or a duration such as \"300ms\": {e}"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for HandshakeFirst {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HandshakeFirst;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("false, true, \"auto\" or a duration such as \"300ms\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HandshakeFirst, E> {
                Ok(if v {
                    HandshakeFirst::On
                } else {
                    HandshakeFirst::Off
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HandshakeFirst, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for HandshakeFirst {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HandshakeFirst::Off => s.serialize_bool(false),
            HandshakeFirst::On => s.serialize_bool(true),
            HandshakeFirst::Auto(d) if *d == AUTO_TLS_FIRST_DELAY => s.serialize_str("auto"),
            HandshakeFirst::Auto(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(v: &str) -> Result<HandshakeFirst, String> {
        #[derive(Deserialize)]
        struct T {
            v: HandshakeFirst,
        }
        toml::from_str::<T>(&format!("v = {v}"))
            .map(|t| t.v)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn handshake_first_forms() {
        assert_eq!(hf("false").unwrap(), HandshakeFirst::Off);
        assert_eq!(hf("true").unwrap(), HandshakeFirst::On);
        assert_eq!(hf("\"on\"").unwrap(), HandshakeFirst::On);
        let auto = HandshakeFirst::Auto(AUTO_TLS_FIRST_DELAY);
        assert_eq!(hf("\"auto\"").unwrap(), auto);
        assert_eq!(hf("\"auto_fallback\"").unwrap(), auto);
        assert_eq!(
            hf("\"300ms\"").unwrap(),
            HandshakeFirst::Auto(Duration::from_millis(300))
        );
        assert!(hf("\"soon\"").is_err());
        assert!(hf("\"0ms\"").is_err());
        assert!(hf("\"11s\"").is_err());
        assert!(hf("3").is_err());
    }

    #[test]
    fn handshake_first_is_written_as_it_is_read() {
        for v in ["false", "true", "\"auto\"", "\"300ms\""] {
            let parsed = hf(v).unwrap();
            let written = toml::Value::try_from(parsed).unwrap().to_string();
            assert_eq!(written, v);
        }
    }
}
