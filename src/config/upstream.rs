//! `[upstream]` and `[upstream.tls]`: the nats-servers behind natsgate and how to reach them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::value;

/// nats-server's client port, used when a server URL has none.
const DEFAULT_PORT: u16 = 4222;

/// `[upstream]`: where established connections go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// One server or a whole cluster; tried in order from a rotating start, so load spreads.
    #[serde(deserialize_with = "value::non_empty")]
    pub servers: Vec<UpstreamServer>,
    /// Time to connect to one server and receive its INFO before trying the next.
    #[serde(with = "value::positive_seconds", default = "value::secs::<2>")]
    pub connect_timeout: Duration,
    /// The PROXY protocol header sent first, so nats-server sees the real client address.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Remove `connect_urls` from INFO so clients do not learn addresses that bypass natsgate.
    #[serde(default = "value::yes")]
    pub strip_connect_urls: bool,
    /// ADR-55 trusted proxy: an nkey seed file; natsgate signs each nonce and adds `proxy_sig`.
    #[serde(default, deserialize_with = "value::optional_file")]
    pub trusted_proxy_seed_file: Option<PathBuf>,
    /// TLS towards the servers; absent means plaintext (a server whose INFO requires TLS is
    /// refused). Without `ca_file` the platform trust store is used.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// When a client's upstream connection is made: at accept, or only once its CONNECT has
    /// arrived (so clients that never authenticate never cost nats-server a connection).
    #[serde(default)]
    pub dial: DialMode,
}

/// One upstream nats-server, written `nats://host:port`, `tls://host:port` or `host:port`
/// (the port defaults to 4222).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UpstreamServer {
    /// As written in the file (used as the `server` metric label; never a client address).
    pub url: String,
    /// The host name or address, resolved at dial time so DNS changes (Kubernetes Services)
    /// are followed.
    pub host: String,
    /// The server's client port.
    pub port: u16,
}

impl FromStr for UpstreamServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("nats://")
            .or_else(|| s.strip_prefix("tls://"))
            .unwrap_or(s);
        if rest.contains('@') {
            return Err(format!(
                "`{s}`: credentials in the server URL are not supported (clients bring their own)"
            ));
        }
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains("://") {
            return Err(format!(
                "`{s}` is not a server URL such as \"nats://127.0.0.1:4222\""
            ));
        }
        let port = |p: &str| p.parse().map_err(|_| format!("`{s}`: `{p}` is not a port"));
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{s}`: unclosed `[` in an IPv6 address"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, port(p)?),
                None if after.is_empty() => (h, DEFAULT_PORT),
                None => return Err(format!("`{s}` is not a server URL")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (rest, DEFAULT_PORT),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("`{s}` needs a host and a non-zero port"));
        }
        Ok(UpstreamServer {
            url: s.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

impl TryFrom<String> for UpstreamServer {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Serialize for UpstreamServer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.url)
    }
}

impl fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The PROXY protocol header natsgate sends to upstream (nats-server 2.12.2+ reads it with
/// `proxy_protocol: true`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// No header: nats-server sees natsgate's address.
    #[default]
    #[serde(alias = "")]
    Off,
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// `upstream.dial`: when natsgate dials nats-server for a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DialMode {
    /// `after_connect` while the latest upstream INFO has no `nonce`, `on_accept` while it has
    /// one (nkey and JWT clients sign it, so their INFO must come from nats-server) or before
    /// any upstream INFO has been seen; decided per connection.
    #[default]
    Auto,
    /// Dial at accept and relay nats-server's own INFO (and nonce).
    OnAccept,
    /// Answer with natsgate's own INFO (built from the latest upstream INFO, no nonce) and
    /// dial only once a well-formed CONNECT has arrived.
    AfterConnect,
}

/// `[upstream.tls]`: TLS towards the servers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The servers' CA; absent: the platform's trust store.
    #[serde(default, deserialize_with = "value::optional_file")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for servers with `verify: true` (with `key_file`).
    #[serde(default, deserialize_with = "value::optional_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (with `cert_file`).
    #[serde(default, deserialize_with = "value::optional_file")]
    pub key_file: Option<PathBuf>,
    /// The name to verify; absent: the host in `servers`.
    #[serde(default, deserialize_with = "value::optional_string")]
    pub server_name: Option<String>,
    /// The servers run `handshake_first`: start TLS before reading INFO.
    #[serde(default)]
    pub handshake_first: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let p = |s: &str| s.parse::<UpstreamServer>();
        let s = p("nats://10.0.0.1:4223").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 4223));
        let s = p("nats.default.svc").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("nats.default.svc", 4222));
        let s = p("[::1]:5000").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 5000));
        let s = p("tls://[::1]").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 4222));
        assert!(p("nats://u:p@host:4222").is_err());
        assert!(p("http://x/y").is_err());
        assert!(p("host:0").is_err());
        assert!(p("host:http").is_err());
        assert!(p("[::1").is_err());
    }
}
