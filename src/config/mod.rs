//! `proxy.toml`: the schema, its defaults and its rules, in one place.
//!
//! Each TOML table is one `#[serde(deny_unknown_fields)]` struct, in the file of its concern
//! ([`listener`](ListenerConfig), [`tls`](TlsConfig), [`upstream`](UpstreamConfig),
//! [`authorization`](AuthorizationConfig), [`admin`, `shutdown`, `log`](AdminConfig)). A field's
//! type and its `#[serde(...)]` attribute carry its default and its rules (seconds become
//! [`Duration`]s, limits are non-zero, addresses and server URLs are parsed), so a value is
//! checked where it is read and an error names its key: `serde_path_to_error` tracks the path.
//! `Config::validate` holds the few rules that span fields, and the NATS rules for the
//! authorization window live in `auth_timeout`. `--check-config` prints this same struct,
//! serialised, so the schema is written once.
//!
//! Adding a key: add the field, its doc comment and its `#[serde(default = ...)]` to the
//! struct of its table (and a line to `Config::validate` if it has a cross-field rule).

mod auth_timeout;
mod listener;
mod ops;
mod tls;
mod upstream;
mod value;
mod websocket;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_value::DeserializerError;

pub use auth_timeout::AuthorizationConfig;
pub use listener::{InboundProxyConfig, ListenerConfig};
pub use ops::{AdminConfig, LogConfig, LogFormat, ShutdownConfig};
pub use tls::{HandshakeFirst, TlsConfig};
pub use upstream::{DialMode, ProxyProtocol, UpstreamConfig, UpstreamServer, UpstreamTlsConfig};
pub(crate) use websocket::Origin;
pub use websocket::{AllowedOrigin, WebSocketConfig};

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

/// The validated configuration: `proxy.toml` table by table, plus what is derived from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listener]`: the client socket and the admission limits.
    #[serde(default = "value::all_defaults")]
    pub listener: ListenerConfig,
    /// `[authorization]` as written; the effective window is [`Config::auth_timeout`], which
    /// `--check-config` prints in its place.
    #[serde(default, skip_serializing)]
    pub authorization: AuthorizationConfig,
    /// `[tls]`: client-side TLS; absent means plaintext clients.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[upstream]`: the nats-servers behind natsgate (required).
    pub upstream: UpstreamConfig,
    /// `[websocket]`: NATS over WebSocket on a second listener; absent means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketConfig>,
    /// `[admin]`: the metrics and health endpoint.
    #[serde(default = "value::all_defaults")]
    pub admin: AdminConfig,
    /// `[shutdown]`: what SIGTERM does.
    #[serde(default = "value::all_defaults")]
    pub shutdown: ShutdownConfig,
    /// `[log]`: the log format and filter.
    #[serde(default = "value::all_defaults")]
    pub log: LogConfig,
    /// The effective authorization window (accept to end of the CONNECT line), after the
    /// NATS rules.
    #[serde(skip)]
    pub auth_timeout: Duration,
    /// How `auth_timeout` was arrived at, for `--check-config` and the start-up log.
    #[serde(skip)]
    pub auth_timeout_origin: String,
    /// The file this came from, for messages and for reloading.
    #[serde(skip)]
    pub source: PathBuf,
    /// Problems that do not stop the proxy but that an operator must hear about (logged loudly
    /// at start-up and printed by `--check-config`).
    #[serde(skip)]
    pub warnings: Vec<String>,
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
        let error = |key: String, message: String| ConfigError {
            file: file.clone(),
            key,
            message,
        };
        // TOML syntax first; then the schema, over a generic value whose errors keep their
        // structure (which key is missing or unknown) instead of only an English sentence.
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let first = e.message().lines().next().unwrap_or("invalid TOML");
            error("-".into(), first.to_string())
        })?;
        let tree = serde_value::to_value(table).map_err(|e| error("-".into(), e.to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let (key, message) = schema_error(e);
            error(key, message)
        })?;
        config
            .validate()
            .map_err(|(key, message)| error(key.into(), message.into()))?;
        config.rebase(path.parent().unwrap_or(Path::new("")));
        config.source = path.to_path_buf();
        let tls_timeout = config
            .tls
            .as_ref()
            .map_or(tls::DEFAULT_TLS_TIMEOUT, |t| t.timeout);
        let window = auth_timeout::resolve(config.authorization.timeout.as_ref(), tls_timeout);
        config.auth_timeout = window.timeout;
        config.auth_timeout_origin = window.origin;
        config.warnings.extend(window.warning);
        Ok(config)
    }

    /// The rules that involve more than one field; each field's own rules are in its type.
    fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if let Some(t) = &self.upstream.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err((
                    "upstream.tls.key_file",
                    "cert_file and key_file must be given together",
                ));
            }
        }
        if let Some(w) = &self.websocket {
            w.validate()?;
        }
        Ok(())
    }

    /// Makes every relative file name relative to the directory of the configuration file.
    fn rebase(&mut self, base: &Path) {
        let mut files: Vec<&mut PathBuf> = Vec::new();
        if let Some(t) = &mut self.tls {
            files.extend([&mut t.cert_file, &mut t.key_file]);
            files.extend(t.ca_file.as_mut());
        }
        files.extend(self.upstream.trusted_proxy_seed_file.as_mut());
        if let Some(w) = &mut self.websocket {
            files.extend([&mut w.cert_file, &mut w.key_file].into_iter().flatten());
        }
        if let Some(t) = &mut self.upstream.tls {
            files.extend(
                [&mut t.ca_file, &mut t.cert_file, &mut t.key_file]
                    .into_iter()
                    .flatten(),
            );
        }
        for f in files.into_iter().filter(|f| f.is_relative()) {
            *f = base.join(&*f);
        }
    }

    /// The note every operator needs: nats-server runs its own authorization timer from the
    /// moment it sends INFO, which is already running while the client talks to natsgate.
    pub fn upstream_timer_note(&self) -> String {
        format!(
            "note: upstream.dial = {:?}. When natsgate dials on accept (`on_accept`, or `auto` \
             while the upstream INFO carries a nonce), nats-server starts its own authorization \
             timer when it sends INFO (2s by default, tls.timeout + 1 with TLS): natsgate's window \
             ({}) must be shorter than that, or raise nats-server's `authorization {{ timeout }}`; \
             otherwise slow clients are dropped by nats-server first. With `after_connect` the two \
             timers are independent",
            self.upstream.dial,
            value::show_secs(self.auth_timeout)
        )
    }
}

/// The key and the operator's message for a schema error. The path comes from
/// `serde_path_to_error`; a missing key is reported at its table, so its name is appended.
fn schema_error(e: serde_path_to_error::Error<DeserializerError>) -> (String, String) {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let list = |names: &[&str]| {
        names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (key, message) = match e.into_inner() {
        DeserializerError::MissingField(field) if path.is_empty() => {
            (field.to_string(), "missing: this key is required".into())
        }
        DeserializerError::MissingField(field) => (
            format!("{path}.{field}"),
            "missing: this key is required".into(),
        ),
        DeserializerError::UnknownField(_, expected) => (
            path,
            format!(
                "unknown key (this is not a natsgate setting); expected one of {}",
                list(expected)
            ),
        ),
        DeserializerError::UnknownVariant(found, expected) => {
            (path, format!("`{found}` is not one of {}", list(expected)))
        }
        DeserializerError::InvalidType(found, expected) => (
            path,
            format!(
                "invalid type: {}, expected {expected}",
                found.to_unexpected()
            ),
        ),
        DeserializerError::InvalidValue(found, expected) => (
            path,
            format!(
                "invalid value: {}, expected {expected}",
                found.to_unexpected()
            ),
        ),
        other => (path, other.to_string()),
    };
    let key = if key.is_empty() { "-".into() } else { key };
    (key, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("dir/test.toml"))
    }

    const MIN: &str = "[upstream]\nservers = [\"nats://127.0.0.1:4223\"]\n";

    #[test]
    fn defaults() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.listener.bind.to_string(), "0.0.0.0:4222");
        assert_eq!(c.listener.max_connections, 65_536);
        assert_eq!(c.listener.max_pending, 4_096);
        assert_eq!(c.listener.max_pending_per_ip, None);
        assert_eq!(c.listener.pending_per_ip_cap(), 2048);
        assert_eq!(c.listener.max_control_line, 4_096);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.proxy_protocol, ProxyProtocol::Off);
        assert!(c.upstream.strip_connect_urls);
        assert!(c.upstream.trusted_proxy_seed_file.is_none());
        assert!(c.tls.is_none() && c.upstream.tls.is_none());
        assert_eq!(c.admin.bind.to_string(), "127.0.0.1:8223");
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.auth_timeout, Duration::from_secs(3));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn tls_defaults_and_relative_files() {
        let c = parse(&format!(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"/abs/k.pem\"\nca_file = \"\"\n{MIN}"
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("dir/c.pem"));
        assert_eq!(t.key_file, Path::new("/abs/k.pem"));
        assert_eq!(t.ca_file, None, "\"\" means none");
        assert_eq!(t.timeout, Duration::from_secs(2));
        assert_eq!(t.handshake_first, HandshakeFirst::Off);
        assert!(t.required);
    }

    #[test]
    fn the_window_follows_tls_timeout() {
        let tls = "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\ntimeout = 4.5\n";
        assert_eq!(
            parse(&format!("{tls}{MIN}")).unwrap().auth_timeout,
            Duration::from_millis(5500)
        );
        for bad in ["\"10s\"", "-1", "true", "[1]", "{ a = 1 }", "1979-05-27"] {
            let c = parse(&format!("[authorization]\ntimeout = {bad}\n{tls}{MIN}"))
                .unwrap_or_else(|e| panic!("an invalid window is a warning, not an error: {e}"));
            assert_eq!(c.auth_timeout, auth_timeout::INVALID_AUTH_TIMEOUT, "{bad}");
            assert_eq!(c.warnings.len(), 1, "{bad}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("[listener]\nbindd = \"0.0.0.0:1\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "listener.bindd");
        assert!(
            e.to_string()
                .starts_with("dir/test.toml: listener.bindd: unknown key"),
            "{e}"
        );
        assert!(e.message.contains("`max_pending`"), "lists the keys: {e}");
        assert_eq!(
            parse(&format!("colour = 1\n{MIN}")).unwrap_err().key,
            "colour"
        );
        let e = parse(&format!("{MIN}[upstream.tls]\nca = \"x\"\n")).unwrap_err();
        assert_eq!(e.key, "upstream.tls.ca");
    }

    #[test]
    fn wrong_type_and_value_are_named() {
        let e = parse(&format!("[listener]\nmax_pending = \"many\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "listener.max_pending");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse(&format!("[listener]\nmax_control_line = 63\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "listener.max_control_line");
        let e = parse(&format!("[tls]\ncert_file = \"\"\nkey_file = \"k\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "tls.cert_file");
        let e = parse(&format!("{MIN}connect_timeout = 0\n")).unwrap_err();
        assert_eq!(e.key, "upstream.connect_timeout");
        let e = parse(&format!("{MIN}[log]\nlevel = \"x=loud\"\n")).unwrap_err();
        assert_eq!(e.key, "log.level");
    }

    #[test]
    fn missing_keys_are_named() {
        let e = parse("[upstream]\nconnect_timeout = 1\n").unwrap_err();
        assert_eq!(e.key, "upstream.servers");
        assert_eq!(e.message, "missing: this key is required");
        assert_eq!(parse("").unwrap_err().key, "upstream");
        let e = parse(&format!("[tls]\ncert_file = \"c\"\n{MIN}")).unwrap_err();
        assert_eq!(e.key, "tls.key_file");
    }

    #[test]
    fn upstream_client_certificate_needs_both_files() {
        let e = parse(&format!("{MIN}[upstream.tls]\ncert_file = \"c.pem\"\n")).unwrap_err();
        assert_eq!(e.key, "upstream.tls.key_file");
        let c = parse(&format!(
            "{MIN}[upstream.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nserver_name = \"\"\n"
        ))
        .unwrap();
        let t = c.upstream.tls.unwrap();
        assert_eq!(t.key_file.as_deref(), Some(Path::new("dir/k.pem")));
        assert_eq!(t.server_name, None);
    }

    /// What `--check-config` prints is the effective configuration, and reads back the same.
    #[test]
    fn the_effective_config_serialises_and_reads_back() {
        let text = format!(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nhandshake_first = \"300ms\"\n\
             {MIN}connect_timeout = 1.5\nproxy_protocol = \"v2\"\n[upstream.tls]\nserver_name = \"n\"\n"
        );
        let c = parse(&text).unwrap();
        let written = toml::to_string(&c).unwrap();
        assert!(written.contains("connect_timeout = 1.5\n"), "{written}");
        assert!(
            written.contains("handshake_first = \"300ms\"\n"),
            "{written}"
        );
        assert!(written.contains("drain_timeout = 30.0\n"), "{written}");
        assert!(!written.contains("authorization"), "{written}");
        let again = parse(&written).unwrap();
        assert_eq!(toml::to_string(&again).unwrap(), written);
    }
}
