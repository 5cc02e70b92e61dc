//! `[admin]`, `[shutdown]` and `[log]`: how the process itself is operated.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::value;

/// `[admin]`: the HTTP endpoint for `/metrics`, `/healthz`, `/livez` and `/readyz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin endpoint listens; loopback by default, so metrics are not exposed by
    /// accident.
    #[serde(
        default = "default_admin_bind",
        deserialize_with = "value::socket_addr"
    )]
    pub bind: SocketAddr,
}

fn default_admin_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8223))
}

/// `[shutdown]`: what SIGTERM does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds established connections get after SIGTERM before they are closed.
    #[serde(with = "value::seconds", default = "value::secs::<30>")]
    pub drain_timeout: Duration,
}

/// `[log]`: the start-up log format and filter (`NATSGATE_LOG` overrides the filter).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Human-readable lines or one JSON object per event.
    #[serde(default)]
    pub format: LogFormat,
    /// A level (`error` .. `trace`) or a tracing `EnvFilter` directive.
    #[serde(default = "default_level", deserialize_with = "log_filter")]
    pub level: String,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

fn default_level() -> String {
    "info".into()
}

/// A filter that tracing accepts, so a typo is a configuration error, not a silent default.
fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let level = String::deserialize(d)?;
    match tracing_subscriber::EnvFilter::try_new(&level) {
        Ok(_) => Ok(level),
        Err(_) => Err(D::Error::custom(format!(
            "`{level}` is not a level (error, warn, info, debug, trace)"
        ))),
    }
}
