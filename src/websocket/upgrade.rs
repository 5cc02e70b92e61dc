//! The HTTP upgrade (RFC 6455 §4.2), checked in the order nats-server's `wsUpgrade` checks it
//! and refused with the status it gives, so a client sees the same answer from natsgate as
//! from nats-server's own websocket port:
//!
//! | request | status |
//! |---|---|
//! | not an HTTP request, or more bytes after it (sent before the 101) | 400 |
//! | method other than `GET` | 405 |
//! | no `Host`; `Upgrade` without `websocket`; `Connection` without `Upgrade`; no `Sec-WebSocket-Key`; `Sec-WebSocket-Version` without `13` | 400 |
//! | `Origin` not in `allowed_origins` (when the list is not empty) | 403 |
//! | request head over [`MAX_HEAD`] | 431 |
//!
//! The head is parsed here (httparse) rather than by tungstenite's handshake, which answers
//! none of these with a status: it only fails.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::{AllowedOrigin, Origin};

/// The longest request head accepted; browsers send cookies, so a few KiB is common.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Headers in one request, at most.
const MAX_HEADERS: usize = 64;

/// A refused upgrade: the status sent back, and why (for the log; no header values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

const fn refused(status: u16, reason: &'static str) -> Refused {
    Refused { status, reason }
}

/// How reading the request head ended.
pub(crate) enum Head {
    /// The whole head, and whether more bytes followed it.
    Complete {
        head: Vec<u8>,
        extra: bool,
    },
    /// The client closed before the end of the head.
    Closed,
    TooLarge,
}

/// Reads the request head, in small steps (a silent client costs only its first buffer).
pub(crate) async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Head> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut searched = 0usize;
    loop {
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(MAX_HEAD - buf.len()));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(Head::Closed);
        }
        let from = searched.saturating_sub(3);
        if let Some(at) = memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
            let end = from + at + 4;
            let extra = buf.len() > end;
            buf.truncate(end);
            return Ok(Head::Complete { head: buf, extra });
        }
        searched = buf.len();
    }
}

/// Checks a complete request head; `Ok` holds the `Sec-WebSocket-Accept` value to answer with.
pub(crate) fn check(head: &[u8], allowed: &[AllowedOrigin]) -> Result<String, Refused> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err(refused(400, "not an HTTP request")),
    }
    let first = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .unwrap_or_default()
    };
    // Every value of the header, split at commas, holds `token` (case-insensitive).
    let contains = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if req.method != Some("GET") {
        return Err(refused(405, "request method must be GET"));
    }
    if first("Host").is_empty() {
        return Err(refused(400, "'Host' missing in request"));
    }
    if !contains("Upgrade", "websocket") {
        return Err(refused(400, "invalid value for header 'Upgrade'"));
    }
    if !contains("Connection", "Upgrade") {
        return Err(refused(400, "invalid value for header 'Connection'"));
    }
    let key = first("Sec-WebSocket-Key");
    if key.is_empty() {
        return Err(refused(400, "key missing"));
    }
    if !contains("Sec-WebSocket-Version", "13") {
        return Err(refused(400, "invalid version"));
    }
    let mut origin = first("Origin");
    if origin.is_empty() {
        origin = first("Sec-WebSocket-Origin");
    }
    if !origin_allowed(&origin, allowed) {
        return Err(refused(403, "origin not allowed"));
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// nats-server's `checkOrigin` without `same_origin`: any origin when the list is empty or the
/// request has none (not a browser); else scheme, host and port must match the list's entry
/// for that host (the last one, as nats-server keeps them in a map by host).
fn origin_allowed(origin: &str, allowed: &[AllowedOrigin]) -> bool {
    if allowed.is_empty() || origin.is_empty() {
        return true;
    }
    let Some(o) = Origin::parse(origin) else {
        return false;
    };
    match allowed.iter().rev().find(|a| a.origin.host == o.host) {
        Some(a) => a.origin.scheme == o.scheme && a.origin.port == o.port,
        None => false,
    }
}

/// The 101 response (no extension: compression is not offered, no-masking is not honoured).
pub(crate) fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// An error response as nats-server's (Go's `http.Error`) looks, closing the connection.
pub(crate) fn error_response(status: u16) -> Vec<u8> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Sec-Websocket-Version: 13\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        text.len() + 1
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "GET / HTTP/1.1\r\nHost: gate:8443\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n";

    fn req(extra: &str) -> Vec<u8> {
        format!("{OK}{extra}\r\n").into_bytes()
    }

    fn origins(list: &[&str]) -> Vec<AllowedOrigin> {
        list.iter()
            .map(|o| toml::Value::String(o.to_string()).try_into().unwrap())
            .collect()
    }

    #[test]
    fn a_good_request_gets_the_rfc_accept_key() {
        assert_eq!(
            check(&req(""), &[]).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn statuses_follow_nats_server() {
        let status = |r: &str| check(r.as_bytes(), &[]).unwrap_err().status;
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(status("hello\r\n\r\n"), 400);
        assert_eq!(status(&OK.replace("Host: gate:8443\r\n", "")), 400);
        assert_eq!(
            status(&format!("{}\r\n", OK.replace("websocket", "h2c"))),
            400
        );
        assert_eq!(
            status(&format!(
                "{}\r\n",
                OK.replace("keep-alive, Upgrade", "close")
            )),
            400
        );
        assert_eq!(
            status(&format!("{}\r\n", OK.replace("Version: 13", "Version: 8"))),
            400
        );
        let no_key = OK.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(status(&format!("{no_key}\r\n")), 400);
    }

    #[test]
    fn origins_are_checked_only_when_listed() {
        let list = origins(&["https://app.example.com", "http://localhost:3000"]);
        assert!(check(&req("Origin: https://evil.example.com\r\n"), &[]).is_ok());
        assert!(check(&req(""), &list).is_ok(), "no Origin: not a browser");
        for good in [
            "https://app.example.com",
            "https://APP.example.com:443",
            "http://localhost:3000",
        ] {
            assert!(
                check(&req(&format!("Origin: {good}\r\n")), &list).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "https://evil.example.com",
            "http://app.example.com",
            "http://localhost:3001",
            "null",
        ] {
            let e = check(&req(&format!("Origin: {bad}\r\n")), &list).unwrap_err();
            assert_eq!(e.status, 403, "{bad}");
        }
    }

    #[tokio::test]
    async fn the_head_is_read_to_its_end() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nxx";
        match read_head(&mut r).await.unwrap() {
            Head::Complete { head, extra } => {
                assert!(head.ends_with(b"\r\n\r\n") && extra);
            }
            _ => panic!("complete"),
        }
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost:";
        assert!(matches!(read_head(&mut r).await.unwrap(), Head::Closed));
        let big = vec![b'a'; MAX_HEAD + 10];
        let mut r: &[u8] = &big;
        assert!(matches!(read_head(&mut r).await.unwrap(), Head::TooLarge));
    }
}
