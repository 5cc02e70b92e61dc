//! The framing adapter: a WebSocket connection seen as the NATS byte stream inside it, so the
//! pending phase ([`crate::session::Pending`]) and the relay run over it unchanged.
//!
//! The framing itself (RFC 6455: masking, fragments, control frames, the close handshake) is
//! tungstenite's. This adapter only unwraps data messages into bytes and wraps bytes into
//! binary messages, so frames may split NATS lines anywhere and one frame may carry many ops.
//! Pings are answered by tungstenite while the stream is read; a close frame from the client
//! reads as the end of the stream; shutting the writer down sends a close frame.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream as _};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::stream::PeekByte;

/// tungstenite's read buffer, allocated up front for every connection: small, because most
/// connections are idle (its 128 KiB default would cost 512 MiB for 4,096 pending clients).
const READ_BUFFER: usize = 16 * 1024;

/// The frame limits of an upgraded connection. tungstenite holds a whole message before it
/// yields one, so these bound what one connection can make natsgate hold: 16 MiB per frame
/// and per message covers nats-server's largest sensible `max_payload` (8 MiB) with room for
/// the ops batched around it. Inside the window the [`Budget`] is far tighter.
fn frame_limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// The client socket under the WebSocket framing, with a cap on the bytes read while the
/// connection is still inside its authorization window: an unauthenticated client must not
/// make natsgate buffer a 16 MiB frame before its CONNECT is even looked at.
pub(crate) struct Budget<S> {
    io: S,
    /// Bytes that may still be read; `None` once the connection is established.
    left: Option<usize>,
}

impl<S> Budget<S> {
    pub(crate) fn new(io: S, bytes: usize) -> Self {
        Budget {
            io,
            left: Some(bytes),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budget<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(left) = this.left else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more bytes inside the window than a CONNECT needs",
            )));
        }
        // Never read past the budget: what is read must fit it.
        let want = left.min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        this.left = Some(left - n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budget<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An upgraded WebSocket connection as a byte stream.
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<Budget<S>>,
    /// The unread rest of the last data message.
    rest: Bytes,
    /// The client's close frame (or the end of its stream) has been read.
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Wraps a socket whose upgrade has been answered with 101; `budget` is the byte cap for
    /// the rest of the window (see [`Budget`]).
    pub(crate) async fn new(io: S, budget: usize) -> Self {
        let ws = WebSocketStream::from_raw_socket(
            Budget::new(io, budget),
            Role::Server,
            Some(frame_limits()),
        )
        .await;
        WsIo {
            ws,
            rest: Bytes::new(),
            eof: false,
        }
    }

    /// The window is over (CONNECT forwarded): reads are bounded by the frame limits only.
    pub(crate) fn established(&mut self) {
        self.ws.get_mut().left = None;
    }

    /// Makes `rest` non-empty, or sets `eof`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.rest.is_empty() && !self.eof {
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.rest = b,
                // nats-server reads text frames as it reads binary ones.
                Some(Ok(Message::Text(t))) => self.rest = t.into(),
                // Pings are answered by tungstenite itself; a close frame is answered as well,
                // and the stream ends (None) once the reply is out.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    self.eof = true
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A tungstenite error as an I/O error. None of tungstenite's error texts carries payload.
fn ws_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_fill(cx))?;
        let n = this.rest.len().min(buf.remaining());
        buf.put_slice(&this.rest.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    /// One binary message per write: the relay writes whole chunks, so a message is at most
    /// its buffer (256 KiB), and the next waits until tungstenite has room again.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let ws = &mut self.get_mut().ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(b)))
            .map_err(ws_error)?;
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    /// Sends the close frame (after whatever was written before it).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(ws_error)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> PeekByte for WsIo<S> {
    async fn peek_byte(&mut self) -> io::Result<Option<u8>> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        Ok(self.rest.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(
        budget: usize,
    ) -> (
        WsIo<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WsIo::new(a, budget).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (server, client)
    }

    #[tokio::test]
    async fn frames_unwrap_into_one_byte_stream() {
        let (mut server, mut client) = pair(1 << 16).await;
        for part in ["CONN", "ECT {}\r\nPI", "NG\r\n"] {
            client
                .send(Message::binary(part.as_bytes().to_vec()))
                .await
                .unwrap();
        }
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        client.send(Message::text("SUB a 1\r\n")).await.unwrap();
        let mut got = vec![0u8; 27];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"CONNECT {}\r\nPING\r\nSUB a 1\r\n");
    }

    #[tokio::test]
    async fn writes_are_binary_frames_and_shutdown_is_a_close_frame() {
        let (mut server, mut client) = pair(1 << 16).await;
        server.write_all(b"PONG\r\n").await.unwrap();
        server.flush().await.unwrap();
        server.shutdown().await.unwrap();
        use futures_util::StreamExt;
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::binary(b"PONG\r\n".to_vec())
        );
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }

    #[tokio::test]
    async fn the_window_budget_caps_what_is_read() {
        let (mut server, mut client) = pair(1024).await;
        client
            .send(Message::binary(vec![b'x'; 4096]))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }
}
