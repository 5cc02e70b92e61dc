//! `[authorization] timeout`: the authorization window, by the rules of the NATS
//! documentation. A number of seconds, fractions allowed; `0` or absent means
//! `tls.timeout + 1`; anything else (`"10s"`, `-1`, `true`) is *not* a configuration error:
//! nats-server uses 1 second and says so, and natsgate does the same with a loud warning.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::value::show_secs;

/// What an invalid `authorization.timeout` falls back to, as nats-server does.
pub(crate) const INVALID_AUTH_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest window accepted as valid (a day); larger numbers are treated as invalid.
const MAX_AUTH_TIMEOUT_SECS: f64 = 86_400.0;

/// `[authorization]`: the window from accept to the end of the CONNECT line.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    /// As written, of any type: the NATS rules give invalid values a meaning (1 s and a
    /// warning), so a wrong type must not fail the file. [`Config::auth_timeout`](super::Config::auth_timeout) is the window.
    #[serde(default)]
    pub timeout: Option<toml::Value>,
}

/// The effective window and how it was arrived at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    /// The window itself.
    pub(crate) timeout: Duration,
    /// Where it comes from, for `--check-config` and the start-up log.
    pub(crate) origin: String,
    /// Set when the written value was invalid: names the key and the value.
    pub(crate) warning: Option<String>,
}

/// Applies the NATS rules to the written value, given the effective `tls.timeout`.
pub(crate) fn resolve(value: Option<&toml::Value>, tls_timeout: Duration) -> Resolved {
    let number = match value {
        None => Some(0.0),
        Some(toml::Value::Integer(i)) => Some(*i as f64),
        Some(toml::Value::Float(f)) => Some(*f),
        Some(_) => None,
    };
    match number {
        Some(0.0) => Resolved {
            timeout: tls_timeout + Duration::from_secs(1),
            origin: format!("default: tls.timeout ({}) + 1s", show_secs(tls_timeout)),
            warning: None,
        },
        Some(n) if n.is_finite() && n > 0.0 && n <= MAX_AUTH_TIMEOUT_SECS => Resolved {
            timeout: Duration::from_secs_f64(n),
            origin: "authorization.timeout".into(),
            warning: None,
        },
        _ => {
            let shown = value.map(|v| v.to_string()).unwrap_or_default();
            Resolved {
                timeout: INVALID_AUTH_TIMEOUT,
                origin: format!("invalid value {shown}, fell back to 1s"),
                warning: Some(format!(
                    "authorization.timeout = {shown} is invalid (it must be a plain number of \
                     seconds, such as 3 or 3.5); using {} as nats-server does",
                    show_secs(INVALID_AUTH_TIMEOUT)
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: Duration = Duration::from_secs(2);

    fn with(value: &str) -> Resolved {
        let v: toml::Table = toml::from_str(&format!("v = {value}")).unwrap();
        resolve(Some(&v["v"]), TLS)
    }

    #[test]
    fn integer_seconds() {
        let r = with("3");
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.warning, None);
    }

    #[test]
    fn fractional_seconds() {
        assert_eq!(with("3.5").timeout, Duration::from_millis(3500));
        assert_eq!(with("0.5").timeout, Duration::from_millis(500));
    }

    #[test]
    fn zero_and_absent_mean_tls_timeout_plus_one() {
        assert_eq!(with("0").timeout, Duration::from_secs(3));
        assert_eq!(with("0.0").timeout, Duration::from_secs(3));
        assert_eq!(resolve(None, TLS).timeout, Duration::from_secs(3));
        let r = resolve(None, Duration::from_millis(4500));
        assert_eq!(r.timeout, Duration::from_millis(5500));
        assert_eq!(r.warning, None);
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
            "inf",
        ] {
            let r = with(bad);
            assert_eq!(r.timeout, INVALID_AUTH_TIMEOUT, "value {bad}");
            let w = r.warning.unwrap_or_else(|| panic!("no warning for {bad}"));
            assert!(w.contains("authorization.timeout"), "{w}");
        }
        let w = with("\"10s\"").warning.unwrap();
        assert!(w.contains("\"10s\""), "warning names the value: {w}");
    }
}
