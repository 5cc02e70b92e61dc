//! `proxy.toml`: the schema, its defaults, validation and the authorization-timeout rules.
//!
//! Parsing happens in two layers. [`RawConfig`] mirrors the file exactly (serde, with
//! `deny_unknown_fields` on every table) so that a typo is an error, not a silently ignored key.
//! [`Config`] is the validated, resolved form the rest of the proxy uses: durations are
//! [`Duration`]s, addresses are parsed, and the authorization timeout has had the NATS rules
//! applied. Every error names the file, the key and what is wrong with it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration error, already phrased for an operator: `file: key: problem`.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The file that was read.
    pub file: String,
    /// The dotted key path (`upstream.servers`), or `-` when the file itself is the problem.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Raw schema: exactly what the file may contain.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listener: RawListener,
    #[serde(default)]
    authorization: RawAuthorization,
    tls: Option<RawTls>,
    upstream: RawUpstream,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListener {
    bind: String,
    max_connections: u64,
    max_pending: u64,
    max_pending_per_ip: u64,
    max_control_line: u64,
}

impl Default for RawListener {
    fn default() -> Self {
        RawListener {
            bind: "0.0.0.0:4222".into(),
            max_connections: 65_536,
            max_pending: 4_096,
            max_pending_per_ip: 64,
            max_control_line: 4_096,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    /// Kept as a raw TOML value: the NATS rules give *invalid* values a meaning (1 s plus a
    /// warning), so a wrong type must not be a parse error here.
    timeout: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    ca_file: Option<PathBuf>,
    #[serde(default = "default_tls_timeout")]
    timeout: f64,
    #[serde(default)]
    handshake_first: Option<toml::Value>,
    #[serde(default = "yes")]
    required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    servers: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: f64,
    #[serde(default = "default_proxy_protocol")]
    proxy_protocol: String,
    #[serde(default = "yes")]
    strip_connect_urls: bool,
    #[serde(default)]
    trusted_proxy_seed_file: String,
    tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    handshake_first: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    bind: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            bind: "127.0.0.1:8223".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    drain_timeout: f64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout: 30.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

fn default_tls_timeout() -> f64 {
    DEFAULT_TLS_TIMEOUT_SECS
}
fn default_connect_timeout() -> f64 {
    2.0
}
fn default_proxy_protocol() -> String {
    "off".into()
}
fn yes() -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Resolved configuration.
// ---------------------------------------------------------------------------------------------

/// nats-server's default TLS handshake timeout, in seconds.
pub const DEFAULT_TLS_TIMEOUT_SECS: f64 = 2.0;
/// What an invalid `authorization.timeout` falls back to, as nats-server does.
pub const INVALID_AUTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The delay `handshake_first = "auto"` waits for a ClientHello (nats-server's default).
pub const AUTO_TLS_FIRST_DELAY: Duration = Duration::from_millis(50);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages and for reloading.
    pub source: PathBuf,
    pub listener: ListenerConfig,
    /// The authorization window: accept to end of the CONNECT line.
    pub auth_timeout: Duration,
    /// How `auth_timeout` was arrived at, for `--check-config` and the start-up log.
    pub auth_timeout_origin: String,
    pub tls: Option<TlsConfig>,
    pub upstream: UpstreamConfig,
    pub admin_bind: SocketAddr,
    pub drain_timeout: Duration,
    pub log: LogConfig,
    /// Problems that do not stop the proxy but that an operator must hear about (logged loudly
    /// at start-up and printed by `--check-config`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_pending_per_ip: usize,
    pub max_control_line: usize,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub handshake_first: HandshakeFirst,
    pub required: bool,
}

/// When the client-side TLS handshake happens relative to INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFirst {
    /// Classic NATS: plaintext INFO, then the client upgrades.
    Off,
    /// TLS-first: handshake before INFO.
    On,
    /// Wait this long for a ClientHello; TLS-first if one arrives, classic otherwise.
    Auto(Duration),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub servers: Vec<UpstreamServer>,
    pub connect_timeout: Duration,
    pub proxy_protocol: ProxyProtocol,
    pub strip_connect_urls: bool,
    pub trusted_proxy_seed_file: Option<PathBuf>,
    pub tls: Option<UpstreamTlsConfig>,
}

/// One upstream nats-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// As written in the file (used as the `server` metric label; never a client address).
    pub url: String,
    /// `host:port`, resolved at dial time so DNS changes (Kubernetes Services) are followed.
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub handshake_first: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Config {
    /// Reads and validates a file. Relative paths inside it (certificates, seed) are taken
    /// relative to the file's directory, so a config works wherever the process is started.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: "-".into(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Validates configuration text as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |key: &str, message: String| ConfigError {
            file: file.clone(),
            key: key.to_string(),
            message,
        };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's messages carry a multi-line source excerpt; the first line is the point.
            let msg = inner
                .message()
                .lines()
                .next()
                .unwrap_or("invalid")
                .to_string();
            let key = if key == "." { "-".to_string() } else { key };
            let (key, msg) = refine_key(key, msg);
            err(&key, msg)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        resolve(raw, &base, &err).map(|mut c| {
            c.source = path.to_path_buf();
            c
        })
    }

    /// The effective settings, one `key = value` per line, for `--check-config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let l = &self.listener;
        let mut line = |k: &str, v: String| {
            out.push_str(&format!("{k} = {v}\n"));
        };
        line("listener.bind", l.bind.to_string());
        line("listener.max_connections", l.max_connections.to_string());
        line("listener.max_pending", l.max_pending.to_string());
        line(
            "listener.max_pending_per_ip",
            l.max_pending_per_ip.to_string(),
        );
        line("listener.max_control_line", l.max_control_line.to_string());
        line(
            "authorization.timeout",
            format!("{} ({})", secs(self.auth_timeout), self.auth_timeout_origin),
        );
        match &self.tls {
            None => line("tls", "off (plaintext client side)".into()),
            Some(t) => {
                line("tls.cert_file", t.cert_file.display().to_string());
                line("tls.key_file", t.key_file.display().to_string());
                line(
                    "tls.ca_file",
                    t.ca_file
                        .as_ref()
                        .map(|p| format!("{} (client certificates required)", p.display()))
                        .unwrap_or_else(|| "none (no client certificates)".into()),
                );
                line("tls.timeout", secs(t.timeout));
                line(
                    "tls.handshake_first",
                    match t.handshake_first {
                        HandshakeFirst::Off => "false (classic: INFO, then TLS)".into(),
                        HandshakeFirst::On => "true (TLS before INFO)".into(),
                        HandshakeFirst::Auto(d) => {
                            format!("auto, waits {} for a ClientHello", secs(d))
                        }
                    },
                );
                line("tls.required", t.required.to_string());
            }
        }
        let u = &self.upstream;
        line(
            "upstream.servers",
            format!(
                "[{}]",
                u.servers
                    .iter()
                    .map(|s| s.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        line("upstream.connect_timeout", secs(u.connect_timeout));
        line(
            "upstream.proxy_protocol",
            match u.proxy_protocol {
                ProxyProtocol::Off => "off",
                ProxyProtocol::V1 => "v1",
                ProxyProtocol::V2 => "v2",
            }
            .into(),
        );
        line(
            "upstream.strip_connect_urls",
            u.strip_connect_urls.to_string(),
        );
        line(
            "upstream.trusted_proxy_seed_file",
            u.trusted_proxy_seed_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
        );
        match &u.tls {
            None => line(
                "upstream.tls",
                "off unless the upstream INFO requires it".into(),
            ),
            Some(t) => {
                let p = |o: &Option<PathBuf>| {
                    o.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none".into())
                };
                line("upstream.tls.ca_file", p(&t.ca_file));
                line("upstream.tls.cert_file", p(&t.cert_file));
                line("upstream.tls.key_file", p(&t.key_file));
                line(
                    "upstream.tls.server_name",
                    t.server_name
                        .clone()
                        .unwrap_or_else(|| "(from the server address)".into()),
                );
                line(
                    "upstream.tls.handshake_first",
                    t.handshake_first.to_string(),
                );
            }
        }
        line("admin.bind", self.admin_bind.to_string());
        line("shutdown.drain_timeout", secs(self.drain_timeout));
        line(
            "log.format",
            match self.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        );
        line("log.level", self.log.level.clone());
        out
    }

    /// The note every operator needs: nats-server runs its own authorization timer from the
    /// moment it sends INFO, which is already running while the client talks to natsgate.
    pub fn upstream_timer_note(&self) -> String {
        format!(
            "note: nats-server starts its own authorization timer when it sends INFO (2s by default, \
             tls.timeout + 1 with TLS). natsgate's window ({}) must be shorter than that, or raise \
             nats-server's `authorization {{ timeout }}`; otherwise slow clients are dropped by \
             nats-server first",
            secs(self.auth_timeout)
        )
    }
}

/// serde reports an unknown or missing field at the parent table; name the field itself.
fn refine_key(key: String, msg: String) -> (String, String) {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.strip_prefix(marker) {
            if let Some(end) = rest.find('`') {
                let field = &rest[..end];
                let full = if key == "-" {
                    field.to_string()
                } else if key == field || key.ends_with(&format!(".{field}")) {
                    key.clone()
                } else {
                    format!("{key}.{field}")
                };
                let what = if marker.starts_with("unknown") {
                    format!(
                        "unknown key (this is not a natsgate setting){}",
                        &rest[end + 1..]
                    )
                } else {
                    "missing: this key is required".to_string()
                };
                return (full, what);
            }
        }
    }
    (key, msg)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

type ErrFn<'a> = &'a dyn Fn(&str, String) -> ConfigError;

fn resolve(raw: RawConfig, base: &Path, err: ErrFn<'_>) -> Result<Config, ConfigError> {
    let mut warnings = Vec::new();
    let rel = |p: &Path| -> PathBuf {
        if p.is_relative() {
            base.join(p)
        } else {
            p.to_path_buf()
        }
    };

    let l = raw.listener;
    let listener = ListenerConfig {
        bind: parse_addr(&l.bind).map_err(|m| err("listener.bind", m))?,
        max_connections: positive(l.max_connections, "listener.max_connections", err)?,
        max_pending: positive(l.max_pending, "listener.max_pending", err)?,
        max_pending_per_ip: positive(l.max_pending_per_ip, "listener.max_pending_per_ip", err)?,
        max_control_line: positive(l.max_control_line, "listener.max_control_line", err)?,
    };
    if listener.max_control_line < 64 {
        return Err(err(
            "listener.max_control_line",
            format!(
                "{} bytes cannot hold a CONNECT line; use at least 64",
                listener.max_control_line
            ),
        ));
    }

    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let timeout = seconds(t.timeout, "tls.timeout", err)?;
            if timeout.is_zero() {
                return Err(err("tls.timeout", "must be greater than 0".into()));
            }
            if t.cert_file.as_os_str().is_empty() {
                return Err(err("tls.cert_file", "must name a PEM file".into()));
            }
            if t.key_file.as_os_str().is_empty() {
                return Err(err("tls.key_file", "must name a PEM file".into()));
            }
            Some(TlsConfig {
                cert_file: rel(&t.cert_file),
                key_file: rel(&t.key_file),
                ca_file: t
                    .ca_file
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(|p| rel(&p)),
                timeout,
                handshake_first: handshake_first(t.handshake_first.as_ref())
                    .map_err(|m| err("tls.handshake_first", m))?,
                required: t.required,
            })
        }
    };

    let tls_timeout = tls
        .as_ref()
        .map(|t| t.timeout)
        .unwrap_or(Duration::from_secs_f64(DEFAULT_TLS_TIMEOUT_SECS));
    let (auth_timeout, auth_timeout_origin) = auth_timeout(
        raw.authorization.timeout.as_ref(),
        tls_timeout,
        &mut warnings,
    );

    let u = raw.upstream;
    if u.servers.is_empty() {
        return Err(err(
            "upstream.servers",
            "must list at least one server".into(),
        ));
    }
    let servers = u
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| parse_server(s).map_err(|m| err(&format!("upstream.servers[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    let connect_timeout = seconds(u.connect_timeout, "upstream.connect_timeout", err)?;
    if connect_timeout.is_zero() {
        return Err(err(
            "upstream.connect_timeout",
            "must be greater than 0".into(),
        ));
    }
    let proxy_protocol = match u.proxy_protocol.to_ascii_lowercase().as_str() {
        "off" | "" => ProxyProtocol::Off,
        "v1" => ProxyProtocol::V1,
        "v2" => ProxyProtocol::V2,
        other => {
            return Err(err(
                "upstream.proxy_protocol",
                format!("`{other}` is not one of \"off\", \"v1\", \"v2\""),
            ))
        }
    };
    let opt_path = |s: &str| -> Option<PathBuf> {
        if s.is_empty() {
            None
        } else {
            Some(rel(Path::new(s)))
        }
    };
    let upstream_tls = match u.tls {
        None => None,
        Some(t) => {
            if t.cert_file.is_empty() != t.key_file.is_empty() {
                return Err(err(
                    "upstream.tls.key_file",
                    "cert_file and key_file must be given together".into(),
                ));
            }
            Some(UpstreamTlsConfig {
                ca_file: opt_path(&t.ca_file),
                cert_file: opt_path(&t.cert_file),
                key_file: opt_path(&t.key_file),
                server_name: if t.server_name.is_empty() {
                    None
                } else {
                    Some(t.server_name)
                },
                handshake_first: t.handshake_first,
            })
        }
    };
    let upstream = UpstreamConfig {
        servers,
        connect_timeout,
        proxy_protocol,
        strip_connect_urls: u.strip_connect_urls,
        trusted_proxy_seed_file: opt_path(&u.trusted_proxy_seed_file),
        tls: upstream_tls,
    };

    let admin_bind = parse_addr(&raw.admin.bind).map_err(|m| err("admin.bind", m))?;
    let drain_timeout = seconds(raw.shutdown.drain_timeout, "shutdown.drain_timeout", err)?;
    let format = match raw.log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(err(
                "log.format",
                format!("`{other}` is not one of \"text\", \"json\""),
            ))
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        return Err(err(
            "log.level",
            format!(
                "`{}` is not a level (error, warn, info, debug, trace)",
                raw.log.level
            ),
        ));
    }

    Ok(Config {
        source: PathBuf::new(),
        listener,
        auth_timeout,
        auth_timeout_origin,
        tls,
        upstream,
        admin_bind,
        drain_timeout,
        log: LogConfig {
            format,
            level: raw.log.level,
        },
        warnings,
    })
}

/// The NATS rules for `authorization.timeout`: a number of seconds, fractions allowed; `0` or
/// absent means `tls.timeout + 1`; anything invalid means 1 second, with a warning.
pub fn auth_timeout(
    value: Option<&toml::Value>,
    tls_timeout: Duration,
    warnings: &mut Vec<String>,
) -> (Duration, String) {
    let default = || {
        (
            tls_timeout + Duration::from_secs(1),
            format!("default: tls.timeout ({}) + 1s", secs(tls_timeout)),
        )
    };
    let number = match value {
        None => return default(),
        Some(toml::Value::Integer(i)) => Some(*i as f64),
        Some(toml::Value::Float(f)) => Some(*f),
        Some(_) => None,
    };
    match number {
        Some(0.0) => default(),
        Some(n) if n.is_finite() && n > 0.0 && n <= 86_400.0 => {
            (Duration::from_secs_f64(n), "authorization.timeout".into())
        }
        _ => {
            let shown = value.map(|v| v.to_string()).unwrap_or_default();
            warnings.push(format!(
                "authorization.timeout = {shown} is invalid (it must be a plain number of seconds, \
                 such as 3 or 3.5); using {} as nats-server does",
                secs(INVALID_AUTH_TIMEOUT)
            ));
            (
                INVALID_AUTH_TIMEOUT,
                format!("invalid value {shown}, fell back to 1s"),
            )
        }
    }
}

fn handshake_first(value: Option<&toml::Value>) -> Result<HandshakeFirst, String> {
    match value {
        None | Some(toml::Value::Boolean(false)) => Ok(HandshakeFirst::Off),
        Some(toml::Value::Boolean(true)) => Ok(HandshakeFirst::On),
        Some(toml::Value::String(s)) if s.eq_ignore_ascii_case("auto") => {
            Ok(HandshakeFirst::Auto(AUTO_TLS_FIRST_DELAY))
        }
        Some(toml::Value::String(s)) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(10) => Ok(HandshakeFirst::Auto(d)),
            Ok(_) => Err(format!("`{s}` must be a delay between 1ms and 10s")),
            Err(e) => Err(format!(
                "`{s}` is not false, true, \"auto\" or a duration such as \"300ms\": {e}"
            )),
        },
        Some(other) => Err(format!(
            "{other} is not false, true, \"auto\" or a duration such as \"300ms\""
        )),
    }
}

fn seconds(v: f64, key: &str, err: ErrFn<'_>) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(err(
            key,
            format!("{v} is not a number of seconds between 0 and 86400"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive(v: u64, key: &str, err: ErrFn<'_>) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(err(key, "must be greater than 0".into()));
    }
    usize::try_from(v).map_err(|_| err(key, format!("{v} is too large")))
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an address such as \"0.0.0.0:4222\" or \"[::]:4222\""))
}

/// Accepts `nats://host:port`, `tls://host:port` or `host:port` (port defaults to 4222).
pub fn parse_server(s: &str) -> Result<UpstreamServer, String> {
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
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed `[` in an IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("`{s}`: `{p}` is not a port"))?,
            None if after.is_empty() => 4222,
            None => return Err(format!("`{s}` is not a server URL")),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("`{s}`: `{p}` is not a port"))?,
            ),
            None => (rest.to_string(), 4222),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!("`{s}` needs a host and a non-zero port"));
    }
    Ok(UpstreamServer {
        url: s.to_string(),
        host,
        port,
    })
}

impl fmt::Display for UpstreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    const MIN: &str = "[upstream]\nservers = [\"nats://127.0.0.1:4223\"]\n";

    fn with_auth(value: &str) -> Config {
        parse(&format!("[authorization]\ntimeout = {value}\n{MIN}")).unwrap()
    }

    #[test]
    fn integer_seconds() {
        let c = with_auth("3");
        assert_eq!(c.auth_timeout, Duration::from_secs(3));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn fractional_seconds() {
        assert_eq!(with_auth("3.5").auth_timeout, Duration::from_millis(3500));
        assert_eq!(with_auth("0.5").auth_timeout, Duration::from_millis(500));
    }

    #[test]
    fn zero_and_absent_mean_tls_timeout_plus_one() {
        assert_eq!(with_auth("0").auth_timeout, Duration::from_secs(3));
        assert_eq!(with_auth("0.0").auth_timeout, Duration::from_secs(3));
        assert_eq!(parse(MIN).unwrap().auth_timeout, Duration::from_secs(3));
        let c = parse(&format!(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\ntimeout = 1\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.auth_timeout, Duration::from_secs(2));
        let c = parse(&format!(
            "[authorization]\ntimeout = 0\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\ntimeout = 4.5\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.auth_timeout, Duration::from_millis(5500));
    }

    #[test]
    fn invalid_values_fall_back_to_one_second_with_a_warning() {
        for bad in [
            "\"10s\"",
            "-1",
            "-0.5",
            "true",
            "[1, 2]",
            "{ a = 1 }",
            "1e9",
            "nan",
        ] {
            let c = with_auth(bad);
            assert_eq!(c.auth_timeout, INVALID_AUTH_TIMEOUT, "value {bad}");
            assert_eq!(c.warnings.len(), 1, "value {bad}");
            let w = &c.warnings[0];
            assert!(w.contains("authorization.timeout"), "{w}");
        }
        let w = &with_auth("\"10s\"").warnings[0];
        assert!(w.contains("\"10s\""), "warning names the value: {w}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("[listener]\nbindd = \"0.0.0.0:1\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "listener.bindd");
        assert!(
            e.to_string()
                .starts_with("test.toml: listener.bindd: unknown key"),
            "{e}"
        );
        let e = parse(&format!("colour = 1\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "colour");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse(&format!("[listener]\nmax_pending = \"many\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "listener.max_pending");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn missing_servers_is_named() {
        let e = parse("[upstream]\nconnect_timeout = 1\n").unwrap_err();
        assert_eq!(e.key, "upstream.servers");
        let e = parse("").unwrap_err();
        assert_eq!(e.key, "upstream");
    }

    #[test]
    fn server_urls() {
        let s = parse_server("nats://10.0.0.1:4223").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 4223));
        let s = parse_server("nats.default.svc").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("nats.default.svc", 4222));
        let s = parse_server("[::1]:5000").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 5000));
        assert!(parse_server("nats://u:p@host:4222").is_err());
        assert!(parse_server("http://x/y").is_err());
        assert!(parse_server("host:0").is_err());
    }

    #[test]
    fn handshake_first_forms() {
        let hf = |v: &str| {
            handshake_first(Some(
                &toml::from_str::<toml::Table>(&format!("v = {v}")).unwrap()["v"],
            ))
        };
        assert_eq!(hf("false").unwrap(), HandshakeFirst::Off);
        assert_eq!(hf("true").unwrap(), HandshakeFirst::On);
        assert_eq!(
            hf("\"auto\"").unwrap(),
            HandshakeFirst::Auto(AUTO_TLS_FIRST_DELAY)
        );
        assert_eq!(
            hf("\"300ms\"").unwrap(),
            HandshakeFirst::Auto(Duration::from_millis(300))
        );
        assert!(hf("\"soon\"").is_err());
        assert!(hf("3").is_err());
    }
}
