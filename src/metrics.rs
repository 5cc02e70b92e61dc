//! The metric contract (DESIGN §3): names, labels, buckets, and the Prometheus recorder.
//!
//! Each [`Metrics`] owns its own `metrics-exporter-prometheus` recorder instead of installing a
//! process-global one, so several proxies in one test process never see each other's counts.
//! Every handle is registered once up front; the hot path only does atomic adds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub const CONNECTIONS_ACCEPTED: &str = "natsgate_connections_accepted_total";
pub const CONNECTIONS_ACTIVE: &str = "natsgate_connections_active";
pub const CONNECTIONS_REJECTED: &str = "natsgate_connections_rejected_total";
pub const CONNECT_WAIT: &str = "natsgate_connect_wait_seconds";
pub const TLS_HANDSHAKE: &str = "natsgate_tls_handshake_seconds";
pub const UPSTREAM_CONNECT: &str = "natsgate_upstream_connect_seconds";
pub const UPSTREAM_ERRORS: &str = "natsgate_upstream_errors_total";
pub const UPSTREAM_AUTH: &str = "natsgate_upstream_auth_total";
pub const TRANSFERRED_BYTES: &str = "natsgate_transferred_bytes_total";
pub const TLS_CERT_EXPIRY: &str = "natsgate_tls_cert_expiry_timestamp_seconds";
pub const CONFIG_RELOADS: &str = "natsgate_config_reloads_total";
pub const BUILD_INFO: &str = "natsgate_build_info";
pub const UPSTREAM_UP: &str = "natsgate_upstream_up";
pub const UPSTREAM_EJECTIONS: &str = "natsgate_upstream_ejections_total";
pub const UPSTREAM_DIAL_MODE: &str = "natsgate_upstream_dial_mode_total";

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric natsgate exports, with its type, unit and help text, declared once.
const CATALOGUE: [(&str, Kind, Option<Unit>, &str); 15] = [
    (
        CONNECTIONS_ACCEPTED,
        Kind::Counter,
        None,
        "Client connections accepted.",
    ),
    (
        CONNECTIONS_ACTIVE,
        Kind::Gauge,
        None,
        "Client connections open now, by phase.",
    ),
    (
        CONNECTIONS_REJECTED,
        Kind::Counter,
        None,
        "Client connections refused before they were established, by reason.",
    ),
    (
        CONNECT_WAIT,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time from accept to the end of the client's CONNECT line.",
    ),
    (
        TLS_HANDSHAKE,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Client TLS handshake duration.",
    ),
    (
        UPSTREAM_CONNECT,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time to connect to an upstream server and read its INFO.",
    ),
    (
        UPSTREAM_ERRORS,
        Kind::Counter,
        None,
        "Failed attempts to reach an upstream server.",
    ),
    (
        UPSTREAM_AUTH,
        Kind::Counter,
        None,
        "The upstream's verdict on forwarded CONNECTs.",
    ),
    (
        TRANSFERRED_BYTES,
        Kind::Counter,
        Some(Unit::Bytes),
        "Bytes relayed, by direction.",
    ),
    (
        TLS_CERT_EXPIRY,
        Kind::Gauge,
        Some(Unit::Seconds),
        "Expiry (notAfter) of each TLS certificate in use, Unix time, by `cert`: the served \
         certificate, the client CA, the upstream CA, the upstream client certificate (for a CA \
         bundle, its earliest notAfter).",
    ),
    (
        CONFIG_RELOADS,
        Kind::Counter,
        None,
        "Configuration reloads, by result.",
    ),
    (
        BUILD_INFO,
        Kind::Gauge,
        None,
        "Build information; the value is always 1.",
    ),
    (
        UPSTREAM_UP,
        Kind::Gauge,
        None,
        "1 when the upstream server answered its last probe or dial with INFO, else 0.",
    ),
    (
        UPSTREAM_EJECTIONS,
        Kind::Counter,
        None,
        "Times an upstream server was ejected (tried last) after a failed attempt.",
    ),
    (
        UPSTREAM_DIAL_MODE,
        Kind::Counter,
        None,
        "Client connections by when their upstream was dialed: on_accept or after_connect.",
    ),
];

/// One upstream server's series, registered when the server is configured.
pub(crate) struct MemberMetrics {
    pub(crate) errors: Counter,
    pub(crate) up: Gauge,
    pub(crate) ejections: Counter,
}

/// A second listener's own series of the per-connection counters.
pub(crate) struct ListenerMetrics {
    pub(crate) accepted: Counter,
    rejected: [Counter; 7],
}

impl ListenerMetrics {
    pub(crate) fn reject(&self, why: Reject) {
        let i = Reject::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].increment(1);
    }
}

/// Why a connection was refused before it was established: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    AuthTimeout,
    TlsHandshake,
    TlsRequired,
    Protocol,
    Limit,
    UpstreamUnavailable,
    Shutdown,
}

impl Reject {
    pub const ALL: [Reject; 7] = [
        Reject::AuthTimeout,
        Reject::TlsHandshake,
        Reject::TlsRequired,
        Reject::Protocol,
        Reject::Limit,
        Reject::UpstreamUnavailable,
        Reject::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::AuthTimeout => "auth_timeout",
            Reject::TlsHandshake => "tls_handshake",
            Reject::TlsRequired => "tls_required",
            Reject::Protocol => "protocol",
            Reject::Limit => "limit",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::Shutdown => "shutdown",
        }
    }
}

/// Which certificate an expiry is about: the `cert` label of
/// `natsgate_tls_cert_expiry_timestamp_seconds`. A series exists only for material in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cert {
    /// The certificate natsgate serves to clients (`[tls]`).
    Served,
    /// The CA client certificates are verified against (`tls.ca_file`).
    ClientCa,
    /// The CA upstream certificates are verified against (`upstream.tls.ca_file`).
    UpstreamCa,
    /// natsgate's client certificate towards upstream (`upstream.tls.cert_file`).
    UpstreamClient,
}

impl Cert {
    pub fn as_str(self) -> &'static str {
        match self {
            Cert::Served => "served",
            Cert::ClientCa => "client_ca",
            Cert::UpstreamCa => "upstream_ca",
            Cert::UpstreamClient => "upstream_client",
        }
    }
}

/// The upstream's verdict on a forwarded CONNECT: the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Accepted,
    Rejected,
    Unknown,
}

/// Connection phase: the `phase` label of the active gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Established,
}

/// Buckets for the connection-setup histograms: 1 ms to the longest sensible window.
const SETUP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
];

/// All of natsgate's metric handles plus the exporter that renders them.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Kept to register the series of upstream servers added by a reload.
    recorder: PrometheusRecorder,
    pub accepted: Counter,
    active_pending: Gauge,
    active_established: Gauge,
    rejected: [Counter; 7],
    pub connect_wait: Histogram,
    pub tls_handshake: Histogram,
    pub upstream_connect: Histogram,
    upstream_auth: [Counter; 3],
    pub client_to_upstream: Counter,
    pub upstream_to_client: Counter,
    reload_success: Counter,
    reload_failure: Counter,
    /// `[on_accept, after_connect]`.
    dial_mode: [Counter; 2],
    /// The standard `process_*` series, refreshed at each render.
    process: metrics_process::Collector,
}

impl Metrics {
    /// Registers every series (so dashboards see zeros, not gaps); upstream servers' series are
    /// registered by [`Metrics::member`].
    pub fn new() -> Metrics {
        let mut builder = PrometheusBuilder::new();
        let histograms = CATALOGUE.iter().filter(|m| matches!(m.1, Kind::Histogram));
        for &(name, ..) in histograms {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), SETUP_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let r = Registrar(&recorder);

        for (name, kind, unit, help) in CATALOGUE {
            r.describe(name, kind, unit, help);
        }

        r.gauge(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))])
            .set(1.0);
        let m = Metrics {
            accepted: r.counter(CONNECTIONS_ACCEPTED, &[("listener", "tcp")]),
            active_pending: r.gauge(CONNECTIONS_ACTIVE, &[("phase", "pending")]),
            active_established: r.gauge(CONNECTIONS_ACTIVE, &[("phase", "established")]),
            rejected: Reject::ALL.map(|why| {
                r.counter(
                    CONNECTIONS_REJECTED,
                    &[("reason", why.as_str()), ("listener", "tcp")],
                )
            }),
            connect_wait: r.histogram(CONNECT_WAIT),
            tls_handshake: r.histogram(TLS_HANDSHAKE),
            upstream_connect: r.histogram(UPSTREAM_CONNECT),
            upstream_auth: ["accepted", "rejected", "unknown"]
                .map(|v| r.counter(UPSTREAM_AUTH, &[("result", v)])),
            client_to_upstream: r
                .counter(TRANSFERRED_BYTES, &[("direction", "client_to_upstream")]),
            upstream_to_client: r
                .counter(TRANSFERRED_BYTES, &[("direction", "upstream_to_client")]),
            reload_success: r.counter(CONFIG_RELOADS, &[("result", "success")]),
            reload_failure: r.counter(CONFIG_RELOADS, &[("result", "failure")]),
            dial_mode: ["on_accept", "after_connect"]
                .map(|mode| r.counter(UPSTREAM_DIAL_MODE, &[("mode", mode)])),
            process: metrics_process::Collector::default(),
            handle,
            recorder,
        };
        metrics::with_local_recorder(&m.recorder, || {
            m.process.describe();
        });
        m.active_pending.set(0.0);
        m.active_established.set(0.0);
        m
    }

    /// The Prometheus text exposition, with the `process_*` series read just now.
    pub fn render(&self) -> String {
        metrics::with_local_recorder(&self.recorder, || self.process.collect());
        self.handle.render()
    }

    /// Drains histogram buffers; run periodically so memory stays flat between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn reject(&self, why: Reject) {
        let i = Reject::ALL.iter().position(|r| *r == why).unwrap_or(0);
        self.rejected[i].increment(1);
    }

    /// Counts a connection by when its upstream is dialed.
    pub(crate) fn dial_mode(&self, on_accept: bool) {
        self.dial_mode[usize::from(!on_accept)].increment(1);
    }

    /// Registers (or finds) the series of one upstream server; `server` is its configured URL,
    /// the only value the `server` label takes.
    pub(crate) fn member(&self, server: &str) -> MemberMetrics {
        let r = Registrar(&self.recorder);
        let labels = [("server", server)];
        let m = MemberMetrics {
            errors: r.counter(UPSTREAM_ERRORS, &labels),
            up: r.gauge(UPSTREAM_UP, &labels),
            ejections: r.counter(UPSTREAM_EJECTIONS, &labels),
        };
        m.errors.increment(0);
        m.ejections.increment(0);
        m
    }

    /// Registers the accepted and rejected series of a second listener (`listener` label:
    /// `websocket`); the TCP listener's are the `listener="tcp"` fields of [`Metrics`].
    pub(crate) fn listener(&self, listener: &'static str) -> ListenerMetrics {
        let r = Registrar(&self.recorder);
        let m = ListenerMetrics {
            accepted: r.counter(CONNECTIONS_ACCEPTED, &[("listener", listener)]),
            rejected: Reject::ALL.map(|why| {
                r.counter(
                    CONNECTIONS_REJECTED,
                    &[("reason", why.as_str()), ("listener", listener)],
                )
            }),
        };
        m.accepted.increment(0);
        m.rejected.iter().for_each(|c| c.increment(0));
        m
    }

    pub fn upstream_auth(&self, result: AuthResult) {
        let i = match result {
            AuthResult::Accepted => 0,
            AuthResult::Rejected => 1,
            AuthResult::Unknown => 2,
        };
        self.upstream_auth[i].increment(1);
    }

    pub fn active(&self, phase: Phase) -> &Gauge {
        match phase {
            Phase::Pending => &self.active_pending,
            Phase::Established => &self.active_established,
        }
    }

    pub fn config_reload(&self, ok: bool) {
        if ok {
            self.reload_success.increment(1);
        } else {
            self.reload_failure.increment(1);
        }
    }

    /// Sets the expiry of one certificate in use (registering its series the first time).
    pub fn set_cert_expiry(&self, cert: Cert, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        Registrar(&self.recorder)
            .gauge(TLS_CERT_EXPIRY, &[("cert", cert.as_str())])
            .set(secs);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers handles with one recorder (not the global one).
struct Registrar<'a>(&'a PrometheusRecorder);

impl Registrar<'_> {
    fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        Key::from_parts(name, labels)
    }

    fn meta() -> Metadata<'static> {
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
    }

    fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.0
            .register_counter(&Self::key(name, labels), &Self::meta())
    }

    fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.0
            .register_gauge(&Self::key(name, labels), &Self::meta())
    }

    fn histogram(&self, name: &'static str) -> Histogram {
        self.0
            .register_histogram(&Self::key(name, &[]), &Self::meta())
    }

    fn describe(&self, name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) {
        let key = KeyName::from_const_str(name);
        let help = SharedString::const_str(help);
        match kind {
            Kind::Histogram => self.0.describe_histogram(key, unit, help),
            Kind::Gauge => self.0.describe_gauge(key, unit, help),
            Kind::Counter => self.0.describe_counter(key, unit, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_buckets() {
        let m = Metrics::new();
        let _member = m.member("nats://a:4222");
        m.connect_wait.record(0.02);
        m.reject(Reject::Limit);
        let text = m.render();
        assert!(
            text.contains("natsgate_connect_wait_seconds_bucket{le=\"0.025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "natsgate_connections_rejected_total{reason=\"limit\",listener=\"tcp\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "natsgate_connections_rejected_total{reason=\"shutdown\",listener=\"tcp\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("natsgate_upstream_errors_total{server=\"nats://a:4222\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("natsgate_upstream_up{server=\"nats://a:4222\"} 0"),
            "{text}"
        );
        assert!(text.contains("natsgate_build_info{version="), "{text}");
        assert!(
            !text.contains("quantile"),
            "histograms, not summaries: {text}"
        );
    }

    /// A value from the exposition: the first sample of `series` (name plus labels, exactly as
    /// rendered).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn process_metrics_in_our_own_exposition() {
        let m = Metrics::new();
        let text = m.render();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = sample(&text, "process_start_time_seconds");
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "start {start}, now {now}"
        );
        let rss = sample(&text, "process_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 64e9, "resident {rss}");
        let open = sample(&text, "process_open_fds");
        let max = sample(&text, "process_max_fds");
        assert!(open >= 3.0 && open < max, "open {open}, max {max}");
        sample(&text, "process_cpu_seconds_total");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
    }

    #[test]
    fn certificate_expiry_by_cert_only_for_material_in_use() {
        let m = Metrics::new();
        assert!(
            !m.render().contains(TLS_CERT_EXPIRY),
            "no series without TLS"
        );
        m.set_cert_expiry(
            Cert::UpstreamCa,
            UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        );
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "natsgate_tls_cert_expiry_timestamp_seconds{cert=\"upstream_ca\"}"
            ),
            2e9
        );
        assert!(!text.contains("cert=\"served\""), "{text}");
    }
}
