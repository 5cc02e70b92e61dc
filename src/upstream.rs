//! Reaching nats-server: server rotation across a cluster, the PROXY header, upstream TLS and
//! reading the INFO line that every connection starts with.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ProxyProtocol, UpstreamConfig, UpstreamServer};
use crate::metrics::Metrics;
use crate::protocol::{self, Info};
use crate::stream::Stream;

/// The longest INFO line accepted from upstream. Large clusters advertise many `connect_urls`,
/// so this is far above a client's `max_control_line`, yet it still bounds memory.
pub const MAX_INFO_LINE: usize = 256 * 1024;

/// How long a server that failed is tried only after the others.
const DOWN_BACKOFF: Duration = Duration::from_secs(5);

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no upstream server answered ({0})")]
    Unavailable(String),
    #[error("the authorization window closed while dialing upstream")]
    Deadline,
}

/// A connected upstream that has sent its INFO.
pub struct UpstreamConn {
    pub stream: Stream,
    /// The parsed INFO, nonce included, to rewrite for the client.
    pub info: Info,
    /// Which configured server answered (index into `servers`).
    pub server: usize,
}

/// Upstream TLS settings, built once from `[upstream.tls]` (or a default trust store when the
/// upstream asks for TLS without that section being present).
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: TlsConnector,
    /// Overrides the name checked against the upstream certificate.
    pub server_name: Option<String>,
    /// The upstream runs nats-server with `handshake_first`.
    pub handshake_first: bool,
    /// Whether `[upstream.tls]` was configured (always upgrade) or not (upgrade only on request).
    pub configured: bool,
}

/// The upstream servers and the dialing policy. Shared by every connection.
pub struct Upstreams {
    servers: Vec<UpstreamServer>,
    connect_timeout: Duration,
    proxy_protocol: ProxyProtocol,
    tls: Option<UpstreamTls>,
    /// Where the next connection starts, so load spreads over a cluster.
    next: AtomicUsize,
    /// Per server: until when (ms since `epoch`) it counts as down and is tried last.
    down_until: Vec<AtomicU64>,
    /// Last time (ms since `epoch`, 0 = never) any server completed a dial; drives `/readyz`.
    last_ok: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    pub fn new(cfg: &UpstreamConfig, tls: Option<UpstreamTls>, metrics: Arc<Metrics>) -> Upstreams {
        Upstreams {
            servers: cfg.servers.clone(),
            connect_timeout: cfg.connect_timeout,
            proxy_protocol: cfg.proxy_protocol,
            tls,
            next: AtomicUsize::new(0),
            down_until: cfg.servers.iter().map(|_| AtomicU64::new(0)).collect(),
            last_ok: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Time since an upstream last answered, if one ever has.
    pub fn since_last_success(&self) -> Option<Duration> {
        match self.last_ok.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t))),
        }
    }

    /// The order to try servers in: round-robin start, servers recently seen down last.
    fn order(&self) -> Vec<usize> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = self.now_ms();
        let (mut up, down): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| self.down_until[i].load(Ordering::Relaxed) <= now);
        up.extend(down);
        up
    }

    /// Dials servers in turn until one answers with INFO within `connect_timeout`, never past
    /// `deadline`. `client` and `local` are the addresses for the PROXY header; `None` sends a
    /// v2 LOCAL header (used by health probes).
    pub async fn dial(
        &self,
        deadline: tokio::time::Instant,
        client: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<UpstreamConn, DialError> {
        let mut last_err = String::from("no servers configured");
        for i in self.order() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(DialError::Deadline);
            }
            let limit = deadline.min(now + self.connect_timeout);
            let started = Instant::now();
            let server = &self.servers[i];
            match tokio::time::timeout_at(limit, self.dial_one(server, client)).await {
                Ok(Ok((stream, info))) => {
                    self.metrics
                        .upstream_connect
                        .record(started.elapsed().as_secs_f64());
                    self.down_until[i].store(0, Ordering::Relaxed);
                    self.metrics.upstream_up(i, true);
                    self.last_ok.store(self.now_ms(), Ordering::Relaxed);
                    return Ok(UpstreamConn {
                        stream,
                        info,
                        server: i,
                    });
                }
                Ok(Err(e)) => last_err = format!("{server}: {e}"),
                Err(_) if limit == deadline => {
                    self.metrics.upstream_up(i, false);
                    return Err(DialError::Deadline);
                }
                Err(_) => last_err = format!("{server}: no INFO within {:?}", self.connect_timeout),
            }
            self.metrics.upstream_error(i);
            self.metrics.upstream_up(i, false);
            // Warn when a server goes down, not on every attempt while it stays down.
            let until = self.now_ms() + DOWN_BACKOFF.as_millis() as u64;
            if self.down_until[i].swap(until, Ordering::Relaxed) == 0 {
                tracing::warn!(server = %server, error = %last_err, "upstream dial failed");
            } else {
                tracing::debug!(server = %server, error = %last_err, "upstream dial failed again");
            }
        }
        Err(DialError::Unavailable(last_err))
    }

    async fn dial_one(
        &self,
        server: &UpstreamServer,
        client: Option<(SocketAddr, SocketAddr)>,
    ) -> std::io::Result<(Stream, Info)> {
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
        tcp.set_nodelay(true)?;
        let mut tcp = tcp;
        // nats-server sends INFO before it reads the PROXY header, so write it at once.
        match (self.proxy_protocol, client) {
            (ProxyProtocol::Off, _) => {}
            (ProxyProtocol::V1, Some((src, dst))) => {
                tcp.write_all(&protocol::proxy_header_v1(src, dst)).await?
            }
            (ProxyProtocol::V1, None) => tcp.write_all(b"PROXY UNKNOWN\r\n").await?,
            (ProxyProtocol::V2, addrs) => tcp.write_all(&protocol::proxy_header_v2(addrs)).await?,
        }
        let mut stream = Stream::Plain(tcp);
        let tls_first = self.tls.as_ref().filter(|t| t.handshake_first);
        if let Some(t) = tls_first {
            stream = self.upgrade(stream, server, t).await?;
        }
        let line = read_info_line(&mut stream).await?;
        let info = protocol::parse_info(&line).map_err(invalid)?;
        let wants_tls = info.bool_field("tls_required").unwrap_or(false);
        if !stream.is_tls() {
            match &self.tls {
                Some(t) if t.configured || wants_tls => {
                    stream = self.upgrade(stream, server, t).await?
                }
                None if wants_tls => {
                    return Err(invalid(
                        "upstream requires TLS; configure [upstream.tls] with its CA",
                    ));
                }
                _ => {}
            }
        }
        Ok((stream, info))
    }

    async fn upgrade(
        &self,
        stream: Stream,
        server: &UpstreamServer,
        tls: &UpstreamTls,
    ) -> std::io::Result<Stream> {
        let Stream::Plain(tcp) = stream else {
            return Ok(stream);
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| server.host.clone());
        let name = ServerName::try_from(name)
            .map_err(|e| invalid(format!("upstream TLS server name: {e}")))?;
        let s = tls.connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(s.into())))
    }
}

/// Reads exactly one line (up to `\n`) without consuming anything after it: nats-server sends
/// nothing more until it has the CONNECT, and a TLS upgrade may follow the INFO at once, so
/// reading ahead would swallow handshake bytes. Reads in small steps only until `\n`.
async fn read_info_line(stream: &mut Stream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        // Peek for the newline on plaintext so no byte beyond it is consumed.
        let n = match stream {
            Stream::Plain(tcp) => {
                let n = tcp.peek(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let take = memchr::memchr(b'\n', &chunk[..n])
                    .map(|i| i + 1)
                    .unwrap_or(n);
                tcp.read_exact(&mut chunk[..take]).await?;
                take
            }
            Stream::Tls(_) => {
                // Over TLS nats-server likewise sends only INFO before CONNECT.
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                n
            }
        };
        line.extend_from_slice(&chunk[..n]);
        if line.ends_with(b"\n") {
            return Ok(line);
        }
        if line.len() > MAX_INFO_LINE {
            return Err(invalid("upstream INFO line is too long"));
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}
