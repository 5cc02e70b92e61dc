//! The pending connection: everything inside the authorization window, one method per step of
//! DESIGN §1. [`Pending`] owns the client socket and the deadline for the whole phase, so a
//! refusal can always be answered on the socket it concerns.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::refusal::{Refusal, Step};
use crate::config::{Config, DialMode, HandshakeFirst};
use crate::protocol::{
    self, ClientIdentity, ConnectUrls, FirstOp, FirstOpLimits, Info, Rewrite, TlsAdvert,
};
use crate::shared::{ClientTls, Shared};
use crate::stream::{PeekByte, Stream};
use crate::upstream::{Dial, UpstreamConn};

/// With `[listener.proxy_protocol] required = false`, how long a trusted source's first byte
/// is awaited to tell a PROXY header from a client that waits for INFO.
const PROXY_OPTIONAL_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A TLS ClientHello starts with a handshake record: content type 22.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a successful pending phase hands to the relay, besides the client socket.
pub(crate) struct Established<U> {
    /// The upstream socket; the CONNECT and the pipelined bytes are already written to it.
    pub(crate) upstream: U,
    /// Who the client says it is, for the close log line (no secrets).
    pub(crate) identity: ClientIdentity,
    /// Bytes already forwarded upstream (CONNECT and pipeline).
    pub(crate) forwarded: usize,
    /// How INFO lines are rewritten for this client; later INFOs get the same rewrite.
    pub(crate) rewrite: Rewrite,
}

/// A client inside its authorization window.
pub(crate) struct Pending<'a, S, D> {
    shared: &'a Shared,
    /// NATS-level TLS (classic or first) for this listener; `None`: plaintext NATS.
    tls: Option<&'a ClientTls>,
    /// The configuration snapshot taken at accept.
    config: &'a Config,
    dialer: &'a D,
    /// `None` only after a failed TLS handshake consumed the socket.
    client: Option<Stream<S>>,
    /// `(source, destination)` of the client connection, for the upstream PROXY header.
    addrs: (SocketAddr, SocketAddr),
    /// The connection id: in log lines, and the `client_id` of natsgate's own INFO.
    id: u64,
    /// Accept plus `authorization.timeout`: every step ends by then.
    deadline: Instant,
    /// INFO bytes written to the client, for the close line of a refused connection too.
    info_sent: usize,
    /// The TLS handshake came before INFO (nats-server then says `tls_required`).
    tls_first: bool,
    /// Every `connect_urls` is removed, whatever `strip_connect_urls` and `advertise` say.
    strip_all_urls: bool,
    /// What the INFO the client got says: whether CONNECT must come first, and the largest
    /// payload (the first op's limit when it need not).
    auth_required: bool,
    max_payload: usize,
}

impl<'a, S: PeekByte, D: Dial> Pending<'a, S, D> {
    /// Starts the window now.
    pub(crate) fn new(
        shared: &'a Shared,
        config: &'a Config,
        dialer: &'a D,
        client: S,
        addrs: (SocketAddr, SocketAddr),
        id: u64,
    ) -> Self {
        Pending {
            shared,
            tls: shared.client_tls.as_ref(),
            config,
            dialer,
            client: Some(Stream::Plain(client)),
            addrs,
            id,
            deadline: Instant::now() + config.auth_timeout,
            info_sent: 0,
            tls_first: false,
            strip_all_urls: false,
            auth_required: true,
            max_payload: protocol::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Serves NATS-level TLS as `tls` says instead of the TCP listener's `[tls]` (a WebSocket
    /// listener's TLS is the HTTP layer's; NATS inside it is plaintext).
    pub(crate) fn with_tls(mut self, tls: Option<&'a ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Ends the window at `deadline` instead of `authorization.timeout` from now (a listener
    /// whose window started before the pending phase: the WebSocket upgrade comes first).
    pub(crate) fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = deadline;
        self
    }

    /// Removes `connect_urls` from every INFO whatever the configuration says (a WebSocket
    /// client can use neither the cluster's client URLs nor the gateway's TCP `advertise`).
    pub(crate) fn stripping_connect_urls(mut self) -> Self {
        self.strip_all_urls = true;
        self
    }

    /// The lifecycle of DESIGN §1, from accept to the forwarded CONNECT: the upstream is
    /// dialed at accept, or only once a well-formed CONNECT has arrived (`upstream.dial`).
    pub(crate) async fn establish(&mut self) -> Result<Established<D::Io>, Refusal> {
        self.tls_first().await?;
        let own_info_from = self.own_info_from();
        self.shared.metrics.dial_mode(own_info_from.is_none());
        match own_info_from {
            None => self.on_accept().await,
            Some(latest) => self.after_connect(&latest).await,
        }
    }

    /// `on_accept`: nats-server's own INFO (and nonce) is relayed, so its authorization timer
    /// runs while the client talks to natsgate.
    async fn on_accept(&mut self) -> Result<Established<D::Io>, Refusal> {
        let UpstreamConn {
            mut stream,
            info,
            nonce,
        } = self.dial(self.deadline, true).await?;
        let nonce = self.nonce_to_sign(nonce);
        self.send_info(Arc::unwrap_or_clone(info)).await?;
        self.classic_tls().await?;
        let (buf, first) = self.read_connect().await?;
        let forwarded = self.forward(&mut stream, &buf, &first, nonce).await?;
        Ok(self.established(stream, &first, forwarded))
    }

    /// `after_connect`: natsgate answers with its own INFO and dials only once the CONNECT is
    /// in: a client that never authenticates never costs nats-server a connection.
    async fn after_connect(&mut self, latest: &Arc<Info>) -> Result<Established<D::Io>, Refusal> {
        let ip = self.addrs.0.ip();
        self.learn_limits(latest);
        let info = self
            .shared
            .own_info
            .render(latest, &self.rewrite(), self.id, ip);
        self.send_info_line(info).await?;
        self.classic_tls().await?;
        let (buf, first) = self.read_connect().await?;
        // The window is over for the client; the dial gets its own limit.
        let limit = Instant::now() + self.config.upstream.connect_timeout;
        let UpstreamConn {
            mut stream,
            info,
            nonce,
        } = self.dial(limit, false).await?;
        // A nonce upstream matters only to a client that signs (nkey or JWT): it signed none.
        // A password or token client is served; natsgate's own ADR-55 signature still applies.
        let signs = match &first {
            FirstOp::Connect(line) => ["sig", "nkey", "jwt"]
                .iter()
                .any(|k| line.fields.raw(k).is_some()),
            FirstOp::Other { .. } => false,
        };
        if signs && info.raw("nonce").is_some() {
            return Err(Refusal::NonceRequired);
        }
        let nonce = self.nonce_to_sign(nonce);
        let forwarded = self.forward(&mut stream, &buf, &first, nonce).await?;
        Ok(self.established(stream, &first, forwarded))
    }

    /// The upstream INFO to build natsgate's own INFO from, when this connection dials after
    /// CONNECT; `None` dials at accept. `auto` dials at accept while the latest upstream INFO
    /// carries a nonce (nkey or JWT users sign it); every mode dials at accept before any
    /// upstream INFO has been seen (there is nothing to build an INFO from).
    fn own_info_from(&self) -> Option<Arc<Info>> {
        let latest = self.dialer.latest_info()?;
        match self.config.upstream.dial {
            DialMode::OnAccept => None,
            DialMode::AfterConnect => Some(latest),
            DialMode::Auto if latest.raw("nonce").is_some() => None,
            DialMode::Auto => Some(latest),
        }
    }

    fn established(
        &self,
        upstream: D::Io,
        first: &FirstOp,
        forwarded: usize,
    ) -> Established<D::Io> {
        Established {
            upstream,
            identity: first.client_identity(),
            forwarded,
            rewrite: self.rewrite(),
        }
    }

    /// INFO bytes the client has received so far.
    pub(crate) fn info_sent(&self) -> usize {
        self.info_sent
    }

    /// The client's address: the socket's, or the one an inbound PROXY header named.
    pub(crate) fn client_addr(&self) -> SocketAddr {
        self.addrs.0
    }

    /// Step 0: behind a load balancer (`[listener.proxy_protocol]`), the PROXY header comes
    /// first, before TLS, inside the window; nothing is dialed before it is read. A source
    /// outside `trusted` gets no header handling (its bytes are NATS or TLS). Returns the
    /// client's own address when the header named one.
    pub(crate) async fn proxy_header(&mut self) -> Result<Option<IpAddr>, Refusal> {
        let Some(pp) = self.config.listener.proxy_protocol.as_ref() else {
            return Ok(None);
        };
        if !pp.trusts(self.addrs.0.ip()) {
            return Ok(None);
        }
        if !pp.required {
            // Optional: a balancer writes its header at once; NATS clients wait for INFO.
            let limit = self.deadline.min(Instant::now() + PROXY_OPTIONAL_WAIT);
            if !matches!(
                timeout_at(limit, self.peek()).await,
                Ok(Ok(Some(b'P' | b'\r')))
            ) {
                return Ok(None);
            }
        }
        let header = self.read_proxy_header().await?;
        let addrs = header.addrs(self.addrs);
        let moved = addrs.0.ip() != self.addrs.0.ip();
        self.addrs = addrs;
        Ok(moved.then_some(addrs.0.ip()))
    }

    /// Reads exactly the header, nothing after it: byte by byte up to the v2 length field,
    /// then the rest of a v2 header in one read.
    async fn read_proxy_header(&mut self) -> Result<protocol::ProxyHeader, Refusal> {
        let deadline = self.deadline;
        let client = self.client()?;
        let mut buf = Vec::with_capacity(64);
        loop {
            match protocol::parse_proxy_header(&buf).map_err(Refusal::ProxyHeader)? {
                Some((header, _)) => return Ok(header),
                None if buf.len() >= 16 && buf[0] == b'\r' => {
                    let want = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                    let have = buf.len();
                    buf.resize(want.max(have), 0);
                    within(
                        deadline,
                        Step::ProxyHeader,
                        client.read_exact(&mut buf[have..]),
                    )
                    .await?;
                }
                None => {
                    let mut byte = [0u8; 1];
                    if within(deadline, Step::ProxyHeader, client.read(&mut byte)).await? == 0 {
                        return Err(Refusal::ClientClosed);
                    }
                    buf.push(byte[0]);
                }
            }
        }
    }

    /// The client socket, to relay on or to send a refusal's reply on.
    pub(crate) fn into_client(self) -> Option<Stream<S>> {
        self.client
    }

    /// Step 2: the TLS handshake comes first when configured, or when `auto` sees a
    /// ClientHello within its delay.
    async fn tls_first(&mut self) -> Result<(), Refusal> {
        let Some(tls) = self.tls else {
            return Ok(());
        };
        let first = match tls.mode {
            HandshakeFirst::Off => false,
            HandshakeFirst::On => true,
            HandshakeFirst::Auto(wait) => {
                let limit = self.deadline.min(Instant::now() + wait);
                match timeout_at(limit, self.peek()).await {
                    Ok(Ok(Some(b))) => b == TLS_HANDSHAKE_RECORD,
                    // Closed already (a TCP health check): never dialed.
                    Ok(Ok(None)) => return Err(Refusal::ClientClosed),
                    Ok(Err(e)) => return Err(Refusal::Io(Step::TlsHandshake, e)),
                    Err(_) => false,
                }
            }
        };
        if first {
            self.handshake(tls).await?;
            self.tls_first = true;
        }
        Ok(())
    }

    /// Step 3: an upstream connection that has sent its INFO, before `limit`. Boxed: the
    /// dial's state is large and short-lived, and a pending connection should cost only what
    /// it holds while it waits.
    /// `relayed`: the upstream INFO goes to this client.
    async fn dial(&self, limit: Instant, relayed: bool) -> Result<UpstreamConn<D::Io>, Refusal> {
        let dial = Box::pin(self.dialer.dial(limit, Some(self.addrs), relayed));
        // A dial cut short by the window is upstream's failure, not the client's: it is counted
        // against the members and as `upstream_unavailable`.
        dial.await.map_err(|e| Refusal::Upstream(e.to_string()))
    }

    /// ADR-55: only signing needs the nonce later, so a pending connection keeps nothing else.
    fn nonce_to_sign(&self, nonce: Option<String>) -> Option<String> {
        self.shared.signer.as_ref()?;
        if nonce.is_none() {
            // nats-server sends a nonce only when it trusts proxies or has nkey/JWT users.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "upstream.trusted_proxy_seed_file is set but the upstream INFO has no nonce: \
                     ADR-55 signing skipped (is natsgate's key in nats-server's proxies.trusted?)"
                )
            });
            tracing::debug!(
                conn = self.id,
                "ADR-55 signing skipped: no nonce in upstream INFO"
            );
        }
        nonce
    }

    /// What INFO tells this client about TLS: the listener's setting, except that a connection
    /// that did TLS first is told `tls_required`, as nats-server does (even when plaintext
    /// clients are accepted on the same port).
    fn advert(&self) -> TlsAdvert {
        match ClientTls::advert(self.tls) {
            TlsAdvert::Available { verify } if self.tls_first => {
                TlsAdvert::RequiredAndAvailable { verify }
            }
            advert => advert,
        }
    }

    /// How every INFO this client gets is rewritten: TLS flags, `connect_urls` (stripped, kept,
    /// or `listener.advertise`), and the client's own address as `client_ip`.
    fn rewrite(&self) -> Rewrite {
        let advertise = &self.config.listener.advertise;
        let connect_urls = match (
            advertise.is_empty(),
            self.config.upstream.strip_connect_urls,
        ) {
            _ if self.strip_all_urls => ConnectUrls::Strip,
            (false, _) => ConnectUrls::Advertise(advertise.as_slice().into()),
            (true, true) => ConnectUrls::Strip,
            (true, false) => ConnectUrls::Keep,
        };
        Rewrite {
            tls: self.advert(),
            connect_urls,
            client_ip: Some(self.addrs.0.ip()),
        }
    }

    /// Step 4: the INFO, rewritten (TLS flags, `connect_urls`), nonce unchanged.
    async fn send_info(&mut self, info: Info) -> Result<(), Refusal> {
        self.learn_limits(&info);
        let info = protocol::rewrite_info_with(info, &self.rewrite());
        self.send_info_line(info).await
    }

    /// What the INFO the client gets says about the first op: whether it must be CONNECT, and
    /// the largest payload.
    fn learn_limits(&mut self, info: &Info) {
        self.auth_required = protocol::auth_required(info);
        self.max_payload = protocol::max_payload(info);
    }

    /// Step 4's write: the INFO line as the client gets it.
    async fn send_info_line(&mut self, info: Vec<u8>) -> Result<(), Refusal> {
        let deadline = self.deadline;
        let client = self.client()?;
        within(deadline, Step::WriteInfo, write_flush(client, &info)).await?;
        self.info_sent = info.len();
        self.shared
            .metrics
            .upstream_to_client
            .increment(info.len() as u64);
        Ok(())
    }

    /// Step 5: a classic-TLS client upgrades after INFO; plaintext where TLS is required is
    /// refused before any of its bytes are read.
    async fn classic_tls(&mut self) -> Result<(), Refusal> {
        let Some(tls) = self.tls else {
            return Ok(());
        };
        if self.client()?.is_tls() {
            return Ok(());
        }
        match within(self.deadline, Step::ClassicTls, self.peek()).await? {
            Some(TLS_HANDSHAKE_RECORD) => self.handshake(tls).await,
            Some(_) if tls.required => Err(Refusal::TlsRequired),
            Some(_) => Ok(()),
            None => Err(Refusal::ClientClosed),
        }
    }

    /// Step 6: the CONNECT line, read in small steps (a silent client costs only its first
    /// small buffer), refused on the first byte that cannot start one. Returns the bytes read,
    /// which may go on past the line (pipelined traffic).
    async fn read_connect(&mut self) -> Result<(Vec<u8>, FirstOp), Refusal> {
        let max = self.config.listener.max_control_line;
        let limits = FirstOpLimits {
            max_control_line: max,
            max_payload: self.max_payload,
        };
        // With no auth upstream, nats-server accepts other ops before CONNECT: so does natsgate,
        // and the window ends with the first complete op.
        let auth_required = self.auth_required;
        let deadline = self.deadline;
        let client = self.client()?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let first = match auth_required {
                true => protocol::scan_connect(&buf, max)?.map(FirstOp::Connect),
                false => protocol::scan_first_op(&buf, limits)?,
            };
            if let Some(first) = first {
                return Ok((buf, first));
            }
            if buf.capacity() == buf.len() {
                buf.reserve(if buf.is_empty() {
                    256
                } else {
                    buf.len().min(max + 2)
                });
            }
            if within(deadline, Step::ReadConnect, client.read_buf(&mut buf)).await? == 0 {
                return Err(Refusal::ClientClosed);
            }
        }
    }

    /// Step 7: the CONNECT (signed when ADR-55 is on) and whatever the client pipelined after
    /// it. A few KiB into a fresh socket; `connect_timeout` only guards against an upstream
    /// that stopped reading, so the connection cannot sit in the pending phase forever.
    async fn forward(
        &self,
        upstream: &mut D::Io,
        buf: &[u8],
        first: &FirstOp,
        nonce: Option<String>,
    ) -> Result<usize, Refusal> {
        let sig = match (&self.shared.signer, nonce) {
            (Some(kp), Some(nonce)) => kp.sign(nonce.as_bytes()).ok(),
            _ => None,
        };
        let forward = match (sig, first) {
            (Some(sig), FirstOp::Connect(line)) => {
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
                let mut signed = protocol::connect_with_proxy_sig(buf, line, &sig);
                signed.extend_from_slice(&buf[line.line_len..]);
                signed
            }
            _ => buf.to_vec(),
        };
        let limit = self.config.upstream.connect_timeout;
        match timeout(limit, write_flush(upstream, &forward)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Refusal::Upstream(format!(
                    "upstream closed before CONNECT: {e}"
                )))
            }
            Err(_) => {
                return Err(Refusal::Upstream(
                    "upstream did not accept the CONNECT".into(),
                ))
            }
        }
        self.shared
            .metrics
            .client_to_upstream
            .increment(forward.len() as u64);
        Ok(forward.len())
    }

    /// The client TLS handshake, limited by `tls.timeout` and by the window. Boxed: a
    /// handshake's state is large and short-lived.
    async fn handshake(&mut self, tls: &ClientTls) -> Result<(), Refusal> {
        let io = match self.client.take() {
            Some(Stream::Plain(io)) => io,
            other => {
                self.client = other;
                return Ok(());
            }
        };
        let started = StdInstant::now();
        let limit = self.deadline.min(Instant::now() + tls.timeout);
        match timeout_at(limit, Box::pin(tls.acceptor.accept(io))).await {
            Ok(Ok(s)) => {
                self.shared
                    .metrics
                    .tls_handshake
                    .record(started.elapsed().as_secs_f64());
                self.client = Some(Stream::Tls(Box::new(s.into())));
                Ok(())
            }
            Ok(Err(e)) => Err(Refusal::TlsHandshake(e)),
            Err(_) if limit == self.deadline => Err(Refusal::Window(Step::TlsHandshake)),
            Err(_) => Err(Refusal::TlsHandshakeTimeout),
        }
    }

    /// The first unread byte on a plaintext client socket (`None`: closed, or already TLS).
    async fn peek(&mut self) -> std::io::Result<Option<u8>> {
        match self.client.as_mut() {
            Some(Stream::Plain(io)) => io.peek_byte().await,
            _ => Ok(None),
        }
    }

    fn client(&mut self) -> Result<&mut Stream<S>, Refusal> {
        self.client.as_mut().ok_or(Refusal::ClientClosed)
    }
}

/// Runs one step of the pending phase against the window: an I/O error is reported as
/// [`Refusal::Io`], the deadline as [`Refusal::Window`], both naming the step.
async fn within<T>(
    deadline: Instant,
    step: Step,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Refusal> {
    match timeout_at(deadline, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Refusal::Io(step, e)),
        Err(_) => Err(Refusal::Window(step)),
    }
}

pub(crate) async fn write_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}
