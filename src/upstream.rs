//! Reaching nats-server: server rotation across a cluster, the PROXY header, upstream TLS and
//! reading the INFO line that every connection starts with.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ProxyProtocol, UpstreamConfig, UpstreamServer};
use crate::metrics::{MemberMetrics, Metrics};
use crate::protocol::{self, Info};
use crate::stream::Stream;

/// When the member tried has not delivered INFO after this long, the next one is dialed in
/// parallel (hedging): with one hung member, a client pays this, never its window.
pub(crate) const HEDGE_DELAY: Duration = Duration::from_millis(250);

/// The longest INFO line accepted from upstream. Large clusters advertise many `connect_urls`,
/// so this is far above a client's `max_control_line`, yet it still bounds memory.
pub(crate) const MAX_INFO_LINE: usize = 256 * 1024;

/// A member that failed is tried last for this long, doubling while it keeps failing...
const EJECT_FIRST: Duration = Duration::from_secs(1);
/// ...up to this, so a recovered member is back within about this long.
const EJECT_MAX: Duration = Duration::from_secs(10);
/// How long a member's resolved addresses are used before its name is looked up again. A
/// host name (a Kubernetes Service) would otherwise cost a DNS query per client connection;
/// any failed attempt forgets them at once, so a moved pod is followed on the next attempt.
const RESOLVED_FOR: Duration = Duration::from_secs(5);
/// A member that answered is probed again after this long without a dial, so the latest INFO
/// stays fresh and a member that died while idle is noticed before a client pays for it.
const PROBE_HEALTHY_EVERY: Duration = Duration::from_secs(5);
/// How long a client's dial waits after INFO for a `-ERR` right behind it (nats-server at its
/// `max_connections` writes INFO, then the `-ERR`, a few microseconds apart) when that INFO is
/// relayed to the client (`on_accept`): it must not reach the client before this is known, its
/// nonce belongs to a member the client will not talk to. When the client already has
/// natsgate's own INFO (`after_connect`), the dial only looks at what has arrived with the INFO
/// and does not wait: a timer costs every connection a wake-up and 1–2 ms (tokio's timer wheel
/// has 1 ms slots), and a `-ERR` that comes later reaches the client as nats-server's own.
const REFUSAL_SETTLE_CLIENT: Duration = Duration::from_millis(1);
/// The background probe can afford to wait longer, and it ejects a member at its limit before
/// clients reach it.
const REFUSAL_SETTLE_PROBE: Duration = Duration::from_millis(25);

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("no upstream server answered ({0})")]
    Unavailable(String),
    #[error("no upstream server answered before the authorization window closed ({0})")]
    Deadline(String),
}

/// A connected upstream that has sent its INFO.
pub(crate) struct UpstreamConn<U = Stream> {
    pub(crate) stream: U,
    /// The INFO: this connection's own when it goes to the client (`relayed`); otherwise it
    /// may be the latest INFO, when this one said the same apart from the values nats-server
    /// writes per connection (its nonce is `nonce`).
    pub(crate) info: Arc<Info>,
    /// This connection's nonce, if its INFO has one.
    pub(crate) nonce: Option<String>,
}

/// The INFO one dial met: parsed, or the latest one it matches ([`Upstreams::meet`]).
struct Met {
    info: Arc<Info>,
    nonce: Option<String>,
    line: Vec<u8>,
}

/// How one attempt on one member runs.
#[derive(Clone, Copy)]
struct Attempt {
    /// How long to wait after INFO for a `-ERR` behind it (zero: only what arrived with it).
    settle: Duration,
    /// The INFO goes to the client: parse it whatever the latest one said.
    relayed: bool,
    /// Limited by `connect_timeout` (otherwise the dial's deadline comes first).
    own_timer: bool,
}

impl Attempt {
    /// A client's dial: see [`Upstreams::dial`].
    fn for_client(relayed: bool, own_timer: bool) -> Attempt {
        let settle = match relayed {
            true => REFUSAL_SETTLE_CLIENT,
            false => Duration::ZERO,
        };
        Attempt {
            settle,
            relayed,
            own_timer,
        }
    }
}

/// The latest INFO a member sent, and its line.
struct Latest {
    info: Arc<Info>,
    line: protocol::KnownLine,
}

/// What the pending phase needs from upstream: a connection that has already sent its INFO.
/// [`Upstreams`] dials the real cluster; unit tests dial an in-memory peer.
pub(crate) trait Dial: Sync {
    /// The upstream socket handed to the relay.
    type Io: AsyncRead + AsyncWrite + Unpin + Send;

    /// Dials before `deadline`; `client` is `(source, destination)` for the PROXY header;
    /// `relayed`: the upstream INFO goes to the client (see [`REFUSAL_SETTLE_CLIENT`]).
    fn dial(
        &self,
        deadline: tokio::time::Instant,
        client: Option<(SocketAddr, SocketAddr)>,
        relayed: bool,
    ) -> impl std::future::Future<Output = Result<UpstreamConn<Self::Io>, DialError>> + Send;

    /// The most recent INFO any upstream sent (nonce included), if one has.
    fn latest_info(&self) -> Option<Arc<Info>>;
}

impl Dial for Upstreams {
    type Io = Stream;

    fn dial(
        &self,
        deadline: tokio::time::Instant,
        client: Option<(SocketAddr, SocketAddr)>,
        relayed: bool,
    ) -> impl std::future::Future<Output = Result<UpstreamConn, DialError>> + Send {
        Upstreams::dial(self, deadline, client, relayed)
    }

    /// Only while a member is up: with every member down, natsgate must not answer clients
    /// with an INFO it cannot stand behind; they are dialed at accept and refused at once.
    fn latest_info(&self) -> Option<Arc<Info>> {
        self.any_up()
            .then(|| Upstreams::latest_info(self))
            .flatten()
    }
}

/// Upstream TLS settings, built once from `[upstream.tls]`.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: TlsConnector,
    /// Overrides the name checked against the upstream certificate.
    pub(crate) server_name: Option<String>,
    /// The upstream runs nats-server with `handshake_first`.
    pub(crate) handshake_first: bool,
}

/// One configured upstream server and its health.
pub(crate) struct Member {
    server: UpstreamServer,
    /// Consecutive failed attempts; 0 while healthy.
    failures: AtomicU32,
    /// Until when (ms since the [`Upstreams`] epoch) it is ejected: tried only after the others.
    ejected_until: AtomicU64,
    /// When it last answered with INFO (ms since the epoch; 0 = never).
    last_ok: AtomicU64,
    /// Its host name's addresses and when they were looked up (never set for an address
    /// literal: there is nothing to look up).
    resolved: std::sync::Mutex<Resolved>,
    metrics: MemberMetrics,
}

/// A member's looked-up addresses and when they were looked up.
#[derive(Default)]
struct Resolved {
    addrs: Vec<SocketAddr>,
    at: Option<Instant>,
}

impl Resolved {
    /// The addresses, if looked up less than [`RESOLVED_FOR`] before `now`.
    fn fresh(&self, now: Instant) -> Option<Vec<SocketAddr>> {
        let at = self.at?;
        (now.saturating_duration_since(at) < RESOLVED_FOR && !self.addrs.is_empty())
            .then(|| self.addrs.clone())
    }
}

impl Member {
    fn new(server: UpstreamServer, metrics: &Metrics) -> Member {
        let metrics = metrics.member(&server.url);
        metrics.up.set(0.0);
        Member {
            server,
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            resolved: std::sync::Mutex::new(Resolved::default()),
            metrics,
        }
    }

    /// Connects to this member: to its address, or to its name's addresses (looked up at most
    /// every [`RESOLVED_FOR`], and again after [`Member::failed`]).
    async fn connect(&self) -> std::io::Result<TcpStream> {
        let (host, port) = (self.server.host.as_str(), self.server.port);
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return TcpStream::connect((ip, port)).await;
        }
        let cached = self.locked_resolved().fresh(Instant::now());
        let addrs = match cached {
            Some(a) => a,
            None => {
                let a: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
                *self.locked_resolved() = Resolved {
                    addrs: a.clone(),
                    at: Some(Instant::now()),
                };
                a
            }
        };
        TcpStream::connect(&addrs[..]).await
    }

    fn locked_resolved(&self) -> std::sync::MutexGuard<'_, Resolved> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn up(&self) -> bool {
        self.last_ok.load(Ordering::Relaxed) != 0 && self.failures.load(Ordering::Relaxed) == 0
    }

    fn succeeded(&self, now_ms: u64) {
        self.last_ok.store(now_ms, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Relaxed);
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!(server = %self.server.url, "upstream server answers again");
        }
        self.metrics.up.set(1.0);
    }

    /// Records a failed, clipped or abandoned attempt and ejects the member for a backoff that
    /// doubles while it keeps failing.
    fn failed(&self, now_ms: u64, why: &str) {
        // Its name is looked up again on the next attempt: the pod behind it may have moved.
        self.locked_resolved().at = None;
        self.metrics.errors.increment(1);
        self.metrics.up.set(0.0);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let backoff = EJECT_FIRST
            .saturating_mul(1 << (failures - 1).min(8))
            .min(EJECT_MAX);
        let was = self
            .ejected_until
            .swap(now_ms + backoff.as_millis() as u64, Ordering::Relaxed);
        if was <= now_ms {
            self.metrics.ejections.increment(1);
        }
        if failures == 1 {
            tracing::warn!(server = %self.server.url, error = %why, backoff_ms = backoff.as_millis() as u64, "upstream server failed; ejected");
        } else {
            tracing::debug!(server = %self.server.url, error = %why, failures, "upstream server failed again");
        }
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }
}

/// Dialing settings fixed at start.
struct Settings {
    connect_timeout: Duration,
    hedge_delay: Duration,
    proxy_protocol: ProxyProtocol,
    tls: Option<UpstreamTls>,
}

/// The upstream cluster: its members, their health, and the dialing policy. Shared by every
/// connection.
pub(crate) struct Upstreams {
    members: ArcSwap<Vec<Arc<Member>>>,
    settings: Settings,
    /// Where the next connection starts, so load spreads over a cluster.
    next: AtomicUsize,
    /// The most recent INFO any member sent (nonce included): limit refusals and, later,
    /// natsgate's own INFO are built from it.
    latest: ArcSwapOption<Latest>,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    pub(crate) fn new(
        cfg: &UpstreamConfig,
        tls: Option<UpstreamTls>,
        metrics: Arc<Metrics>,
    ) -> Upstreams {
        let members = cfg
            .servers
            .iter()
            .map(|s| Arc::new(Member::new(s.clone(), &metrics)))
            .collect();
        Upstreams {
            members: ArcSwap::from_pointee(members),
            settings: Settings {
                connect_timeout: cfg.connect_timeout,
                hedge_delay: HEDGE_DELAY,
                proxy_protocol: cfg.proxy_protocol,
                tls,
            },
            next: AtomicUsize::new(0),
            latest: ArcSwapOption::empty(),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// Replaces the member list (SIGHUP): members that stay keep their health, new ones are
    /// probed before clients rely on them, removed ones get no new clients.
    pub(crate) fn set_servers(&self, servers: &[UpstreamServer]) {
        let old = self.members.load();
        let members = servers
            .iter()
            .map(|s| match old.iter().find(|m| m.server == *s) {
                Some(m) => m.clone(),
                None => Arc::new(Member::new(s.clone(), &self.metrics)),
            })
            .collect();
        self.members.store(Arc::new(members));
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// At least one member answered its last probe or dial: `/readyz`.
    pub(crate) fn any_up(&self) -> bool {
        self.members.load().iter().any(|m| m.up())
    }

    /// The most recent INFO an upstream sent, if any has.
    pub(crate) fn latest_info(&self) -> Option<Arc<Info>> {
        self.latest.load().as_ref().map(|l| l.info.clone())
    }

    /// Keeps `info` as the latest INFO when it says something new (not merely another
    /// connection's `client_id`, `client_ip` or nonce): what is built from the latest INFO
    /// is then rebuilt only when the upstream's configuration changed.
    fn note_info(&self, met: &Met) {
        let changed = self.latest.load().as_deref().is_none_or(|latest| {
            !Arc::ptr_eq(&latest.info, &met.info)
                && protocol::latest_info_changed(&latest.info, &met.info)
        });
        if changed {
            self.latest.store(Some(Arc::new(Latest {
                info: met.info.clone(),
                line: protocol::KnownLine::new(met.line.clone(), &met.info),
            })));
        }
    }

    /// The INFO a dial met: parsed, unless the client does not get it and it says what the
    /// latest one said apart from the per-connection values (then it is the latest one, and
    /// only its nonce is read from the line).
    fn meet(&self, line: Vec<u8>, relayed: bool) -> std::io::Result<Met> {
        if !relayed {
            if let Some(latest) = self.latest.load().as_deref() {
                if let Some(nonce) = protocol::same_info_line(&latest.line, &line) {
                    let info = latest.info.clone();
                    return Ok(Met { info, nonce, line });
                }
            }
        }
        let info = protocol::parse_info(&line).map_err(invalid)?;
        let nonce = info.str_field("nonce");
        Ok(Met {
            info: Arc::new(info),
            nonce,
            line,
        })
    }

    /// The order to try members in: round-robin start; members that failed last, until a probe
    /// (not a client) has seen them answer again.
    fn order(&self) -> Vec<Arc<Member>> {
        let members = self.members.load();
        let n = members.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let (mut up, down): (Vec<_>, Vec<_>) = (0..members.len())
            .map(|i| members[(start + i) % n].clone())
            .partition(|m| m.failures.load(Ordering::Relaxed) == 0);
        up.extend(down);
        up
    }

    /// Dials members until one delivers its INFO, never past `deadline`. If the member tried
    /// has not delivered INFO after the hedge delay, the next is dialed in parallel and the
    /// first INFO wins. Every failed, clipped or abandoned attempt counts against its member.
    /// `client` is `(source, destination)` for the PROXY header; `relayed`: the INFO goes to
    /// the client (then it is always parsed, and a `-ERR` behind it is waited for
    /// [`REFUSAL_SETTLE_CLIENT`]; otherwise only what has already arrived is looked at).
    pub(crate) async fn dial(
        &self,
        deadline: tokio::time::Instant,
        client: Option<(SocketAddr, SocketAddr)>,
        relayed: bool,
    ) -> Result<UpstreamConn, DialError> {
        let mut queue = self.order().into_iter();
        // Polled with this task's own waker (not a FuturesUnordered, whose per-future waker
        // would stay registered on the chosen upstream socket, and its node allocated, for as
        // long as the connection lives). Rarely more than one.
        let mut running = Vec::new();
        let mut in_flight: Vec<Arc<Member>> = Vec::new();
        let mut last_err = String::from("no servers configured");
        let mut hedge = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if running.is_empty() || now >= hedge {
                match queue.next() {
                    Some(m) => {
                        in_flight.push(m.clone());
                        // When the dial's deadline comes first, its timer is the only one.
                        let own_timer = now + self.settings.connect_timeout < deadline;
                        let how = Attempt::for_client(relayed, own_timer);
                        running.push(Box::pin(self.attempt(m, client, how)));
                        hedge = now + self.settings.hedge_delay;
                    }
                    None if running.is_empty() => return Err(DialError::Unavailable(last_err)),
                    None => hedge = deadline + Duration::from_secs(3600),
                }
            }
            // No hedge timer when there is no other member to hedge to (a sidecar's single
            // member): a timer shorter than the event loop's next wake-up costs it a wake-up.
            let hedging = queue.len() > 0;
            let next = std::future::poll_fn(|cx| {
                for (i, attempt) in running.iter_mut().enumerate() {
                    if let std::task::Poll::Ready(out) = attempt.as_mut().poll(cx) {
                        return std::task::Poll::Ready((i, out));
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                (i, (m, started, result)) = next => {
                    drop(running.swap_remove(i));
                    in_flight.retain(|x| !Arc::ptr_eq(x, &m));
                    match result {
                        Ok(met) => {
                            self.metrics.upstream_connect.record(started.elapsed().as_secs_f64());
                            m.succeeded(self.now_ms());
                            // Every INFO a client's dial meets keeps natsgate's own INFO fresh:
                            // a change of the upstream's configuration (nkey users added or
                            // removed) applies to the next client, not after the next probe.
                            self.note_info(&met.1);
                            for lost in &in_flight {
                                lost.failed(self.now_ms(), "no INFO before another member answered");
                            }
                            let (stream, Met { info, nonce, .. }) = met;
                            return Ok(UpstreamConn { stream, info, nonce });
                        }
                        Err(e) => {
                            m.failed(self.now_ms(), &e);
                            last_err = format!("{}: {e}", m.server);
                        }
                    }
                }
                _ = tokio::time::sleep_until(hedge), if hedging => {}
                _ = tokio::time::sleep_until(deadline) => {
                    for m in &in_flight {
                        m.failed(self.now_ms(), "no INFO before the client's window closed");
                    }
                    let who: Vec<String> = in_flight.iter().map(|m| m.server.to_string()).collect();
                    return Err(DialError::Deadline(who.join(", ")));
                }
            }
        }
    }

    /// One attempt on one member, limited by `connect_timeout` (`how.own_timer`), or by the
    /// dial's deadline alone when that comes first: the dial then fails the attempt, and
    /// counts it against the member, itself.
    async fn attempt(
        &self,
        m: Arc<Member>,
        client: Option<(SocketAddr, SocketAddr)>,
        how: Attempt,
    ) -> (Arc<Member>, Instant, Result<(Stream, Met), String>) {
        let started = Instant::now();
        let limit = self.settings.connect_timeout;
        let dial = self.dial_one(&m, client, how.settle, how.relayed);
        let outcome = if how.own_timer {
            tokio::time::timeout(limit, dial).await.ok()
        } else {
            Some(dial.await)
        };
        let result = match outcome {
            Some(Ok(met)) => Ok(met),
            Some(Err(e)) => Err(e.to_string()),
            None => Err(format!("no INFO within connect_timeout ({limit:?})")),
        };
        (m, started, result)
    }

    /// Probes every member in the background: healthy ones when no dial has reached them for a
    /// while, ejected ones when their backoff ends. A client never pays for the probing.
    pub(crate) async fn probe_forever(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.now_ms();
            let due: Vec<Arc<Member>> = self
                .members
                .load()
                .iter()
                .filter(|m| {
                    let last = m.last_ok.load(Ordering::Relaxed);
                    let stale = last == 0
                        || now.saturating_sub(last) >= PROBE_HEALTHY_EVERY.as_millis() as u64;
                    let failing = m.failures.load(Ordering::Relaxed) > 0;
                    if failing {
                        !m.ejected(now)
                    } else {
                        stale
                    }
                })
                .cloned()
                .collect();
            let probes = due.into_iter().map(|m| async move {
                let how = Attempt {
                    settle: REFUSAL_SETTLE_PROBE,
                    relayed: false,
                    own_timer: true,
                };
                let (m, _, result) = self.attempt(m, None, how).await;
                match result {
                    Ok((_, met)) => {
                        m.succeeded(self.now_ms());
                        self.note_info(&met);
                    }
                    Err(e) => m.failed(self.now_ms(), &e),
                }
            });
            futures_util::future::join_all(probes).await;
        }
    }

    async fn dial_one(
        &self,
        member: &Member,
        client: Option<(SocketAddr, SocketAddr)>,
        settle: Duration,
        relayed: bool,
    ) -> std::io::Result<(Stream, Met)> {
        let server = &member.server;
        let tcp = member.connect().await?;
        tcp.set_nodelay(true)?;
        let mut tcp = tcp;
        // nats-server sends INFO before it reads the PROXY header, so write it at once.
        match (self.settings.proxy_protocol, client) {
            (ProxyProtocol::Off, _) => {}
            (ProxyProtocol::V1, Some((src, dst))) => {
                tcp.write_all(&protocol::proxy_header_v1(src, dst)).await?
            }
            (ProxyProtocol::V1, None) => tcp.write_all(b"PROXY UNKNOWN\r\n").await?,
            (ProxyProtocol::V2, addrs) => tcp.write_all(&protocol::proxy_header_v2(addrs)).await?,
        }
        let mut stream = Stream::Plain(tcp);
        let tls = self.settings.tls.as_ref();
        if let Some(t) = tls.filter(|t| t.handshake_first) {
            stream = upgrade(stream, server, t).await?;
        }
        let line = read_info_line(&mut stream).await?;
        let met = self.meet(line, relayed)?;
        let info = &met.info;
        if let Stream::Plain(tcp) = &stream {
            refused_after_info(tcp, settle).await?;
        }
        let wants_tls = info.bool_field("tls_required").unwrap_or(false);
        if !stream.is_tls() {
            match tls {
                Some(t) => stream = upgrade(stream, server, t).await?,
                None if wants_tls => {
                    return Err(invalid(
                        "upstream requires TLS; configure [upstream.tls] with its CA",
                    ));
                }
                None => {}
            }
        }
        Ok((stream, met))
    }
}

/// A member at its own limit (or refusing for another reason) writes `-ERR` right behind its
/// INFO and closes. What arrived with the INFO was read with it ([`read_info_line`]); this
/// waits `settle` longer for a `-ERR` without consuming anything: a healthy member sends
/// nothing more until CONNECT. A zero `settle` waits for nothing (no timer, no syscall).
async fn refused_after_info(tcp: &TcpStream, settle: Duration) -> std::io::Result<()> {
    if settle.is_zero() {
        return Ok(());
    }
    let mut buf = [0u8; 128];
    let n = match tokio::time::timeout(settle, tcp.peek(&mut buf)).await {
        Err(_) => return Ok(()),
        Ok(r) => r?,
    };
    if n == 0 {
        return Err(invalid("upstream closed right after INFO"));
    }
    Err(beyond_info(&buf[..n]))
}

async fn upgrade(
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

/// Reads the INFO line. nats-server sends nothing more until it has the CONNECT (over classic
/// TLS it waits for the client's handshake, so there is nothing to swallow either), except a
/// `-ERR` when it refuses the connection: whatever follows the line in the same read is that
/// refusal, or a stream natsgate cannot follow. One read per segment, no peeking: most INFO
/// lines arrive whole, in one read.
async fn read_info_line(stream: &mut Stream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let got = &chunk[..n];
        if let Some(i) = memchr::memchr(b'\n', got) {
            line.extend_from_slice(&got[..=i]);
            return match &got[i + 1..] {
                [] => Ok(line),
                after => Err(beyond_info(after)),
            };
        }
        line.extend_from_slice(got);
        if line.len() > MAX_INFO_LINE {
            return Err(invalid("upstream INFO line is too long"));
        }
    }
}

/// What bytes behind the INFO line (before natsgate sent CONNECT) mean for the dial.
fn beyond_info(after: &[u8]) -> std::io::Error {
    let head = &after[..after.len().min(4)];
    if head.eq_ignore_ascii_case(&b"-ERR"[..head.len()]) {
        let text = String::from_utf8_lossy(after);
        let line = text.lines().next().unwrap_or("").trim();
        return invalid(format!("upstream refused after INFO: {line}"));
    }
    invalid("upstream sent more than INFO before CONNECT")
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(host: &str, port: u16) -> Member {
        let server: UpstreamServer = format!("nats://{host}:{port}").parse().unwrap();
        Member::new(server, &Metrics::new())
    }

    #[test]
    fn resolved_addresses_are_fresh_for_a_while_only() {
        let now = Instant::now();
        let addr: SocketAddr = "127.0.0.1:4222".parse().unwrap();
        let r = Resolved {
            addrs: vec![addr],
            at: Some(now),
        };
        assert_eq!(r.fresh(now), Some(vec![addr]));
        assert_eq!(
            r.fresh(now + RESOLVED_FOR - Duration::from_millis(1)),
            Some(vec![addr])
        );
        assert_eq!(r.fresh(now + RESOLVED_FOR), None);
        assert_eq!(Resolved::default().fresh(now), None);
        let empty = Resolved {
            addrs: vec![],
            at: Some(now),
        };
        assert_eq!(empty.fresh(now), None);
    }

    /// A host name is looked up once and reused; a failure forgets it; an address literal is
    /// never looked up.
    #[tokio::test]
    async fn a_member_name_is_looked_up_once_then_again_after_a_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let m = member("localhost", port);
        assert!(m.locked_resolved().at.is_none());
        let _a = m.connect().await.unwrap();
        let first = m.locked_resolved().at.expect("looked up");
        let _b = m.connect().await.unwrap();
        assert_eq!(
            m.locked_resolved().at,
            Some(first),
            "looked up again within RESOLVED_FOR"
        );
        assert!(m.locked_resolved().addrs.iter().any(|a| a.port() == port));
        m.failed(1, "test");
        assert!(
            m.locked_resolved().at.is_none(),
            "a failure keeps the stale addresses"
        );
        let _c = m.connect().await.unwrap();
        assert!(m.locked_resolved().at.is_some());

        let literal = member("127.0.0.1", port);
        let _d = literal.connect().await.unwrap();
        assert!(
            literal.locked_resolved().at.is_none(),
            "an address literal was looked up"
        );
    }

    /// The INFO line as a member writes it, and what follows it in the same read: a `-ERR`
    /// behind it is the member's refusal (the dial fails over), other bytes are not followed,
    /// and an INFO that arrives in pieces is read whole.
    #[tokio::test]
    async fn what_follows_the_info_line_decides_the_dial() {
        use tokio::io::AsyncWriteExt;
        async fn read_after(writes: &[&[u8]]) -> std::io::Result<Vec<u8>> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let writes: Vec<Vec<u8>> = writes.iter().map(|w| w.to_vec()).collect();
            let member = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                for w in writes {
                    s.write_all(&w).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let mut stream = Stream::Plain(TcpStream::connect(addr).await.unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
            let got = read_info_line(&mut stream).await;
            member.await.unwrap();
            got
        }
        let info: &[u8] = b"INFO {\"server_id\":\"A\"} \r\n";
        assert_eq!(read_after(&[info]).await.unwrap(), info);
        let (a, b) = info.split_at(9);
        assert_eq!(read_after(&[a, b]).await.unwrap(), info);

        let full = [info, b"-ERR 'maximum connections exceeded'\r\n"].concat();
        let e = read_after(&[&full]).await.unwrap_err().to_string();
        assert_eq!(
            e,
            "upstream refused after INFO: -ERR 'maximum connections exceeded'"
        );
        let e = read_after(&[&[info, b"-er"].concat()]).await.unwrap_err();
        assert!(
            e.to_string().starts_with("upstream refused after INFO"),
            "{e}"
        );
        let e = read_after(&[&[info, b"PING\r\n"].concat()])
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "upstream sent more than INFO before CONNECT");
        let e = read_after(&[b"INFO {"]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
