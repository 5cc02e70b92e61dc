//! The PROXY protocol (v1 text, v2 binary): the header natsgate writes upstream to announce the
//! client's address, and the header a load balancer writes to natsgate ([`parse_proxy_header`]).
//!
//! Addresses are written as every nats-server with PROXY support reads them: an IPv4-mapped
//! IPv6 address (`::ffff:a.b.c.d`, what a dual-stack `[::]` socket reports for an IPv4 peer) is
//! unmapped first, so an IPv4 client is announced as `TCP4` / `AF_INET` (nats-server before
//! 2.12.12 / 2.14.3 refuses a v1 `TCP6` line with a mapped address). When the two addresses
//! are still of different families, v1 falls back to `PROXY UNKNOWN` as the specification
//! says (the line has room for one family only), and v2 writes both as `AF_INET6`, the IPv4 one
//! mapped, which every nats-server version reads (its v2 parser never checked the mapping).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, CRLF included (the specification's worst case, `UNKNOWN` with
/// IPv6-length fields).
pub const PROXY_V1_MAX_LEN: usize = 107;

/// The longest v2 address block (addresses, ports and TLVs) natsgate accepts. The
/// specification allows 65,535 bytes, but load balancers send the addresses and a few small
/// TLVs; a pending connection should hold little.
pub const PROXY_V2_MAX_ADDR_LEN: usize = 2048;

/// PROXY protocol v1 header. IPv4-mapped addresses are unmapped first; different families
/// after that give `PROXY UNKNOWN\r\n` (the receiver then keeps the connection's own address).
pub fn proxy_header_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = (unmapped(src), unmapped(dst));
    let fam = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => return b"PROXY UNKNOWN\r\n".to_vec(),
    };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The 12-byte signature that starts every PROXY v2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// PROXY protocol v2 header; `None` for the addresses writes a LOCAL command (health probes:
/// the socket's own address stands). IPv4-mapped addresses are unmapped first; different
/// families after that are both written as `AF_INET6`, the IPv4 one mapped.
pub fn proxy_header_v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = PROXY_V2_SIGNATURE.to_vec();
    let Some((src, dst)) = addrs else {
        out.push(0x20); // version 2, LOCAL
        out.push(0x00); // UNSPEC
        out.extend_from_slice(&0u16.to_be_bytes());
        return out;
    };
    let (src, dst) = (unmapped(src), unmapped(dst));
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // TCP over IPv4
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            out.push(0x21); // TCP over IPv6
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s.ip()).octets());
            out.extend_from_slice(&v6(d.ip()).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// The address with an IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// What an inbound PROXY header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v1 `TCP4`/`TCP6`, or v2 `PROXY` over `AF_INET`/`AF_INET6` with `STREAM`: the client's
    /// address (`src`) and the address it connected to (`dst`). IPv4-mapped addresses are
    /// unmapped, so one client has one address whatever its balancer's socket family.
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// v2 `LOCAL`: the balancer's own connection (a health check). Keep the socket's address.
    Local,
    /// v1 `UNKNOWN`, or v2 `PROXY` with a family or transport natsgate does not use
    /// (`AF_UNSPEC`, `AF_UNIX`, `DGRAM`): the specification says to fall back to the real
    /// connection's addresses. Keep the socket's address.
    Unknown,
}

impl ProxyHeader {
    /// The `(source, destination)` the connection stands for: the header's, or the socket's
    /// own for `Local` and `Unknown`.
    pub fn addrs(&self, socket: (SocketAddr, SocketAddr)) -> (SocketAddr, SocketAddr) {
        match *self {
            ProxyHeader::Proxied { src, dst } => (src, dst),
            ProxyHeader::Local | ProxyHeader::Unknown => socket,
        }
    }
}

/// Why an inbound PROXY header was refused. The texts are natsgate's own (never the client's
/// bytes), fit for a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The bytes are neither `PROXY ` nor the v2 signature: not a load balancer.
    #[error("no PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("PROXY v1 header without CRLF in its first 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("PROXY v2 address block over 2048 bytes")]
    V2TooLong,
}

/// Reads an inbound PROXY protocol header (v1 or v2) at the start of `buf`.
///
/// `Ok(None)`: every byte so far can begin a header, and more are needed. `Ok(Some((header,
/// len)))`: a complete header of `len` bytes; what follows it is the client's own traffic (a
/// TLS ClientHello or NATS). `Err`: the header is malformed, reported at the first byte that
/// cannot belong to one, so a client that is not a load balancer (it speaks first with TLS or
/// NATS, or sends garbage) is refused on its first byte. The answer does not depend on how the
/// bytes were split into reads: call it after every read on the bytes so far.
///
/// v1 is read as the specification writes it: `PROXY` and exactly one space, `TCP4` or `TCP6`
/// and four fields separated by single spaces (canonical addresses of the announced family, no
/// leading zeros, ports 0..=65535), or `UNKNOWN` and anything up to the CRLF; at most 107 bytes.
/// v2: version 2, command `LOCAL` or `PROXY`; the address block (TLVs included, and skipped) at
/// most [`PROXY_V2_MAX_ADDR_LEN`] bytes.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::NotProxy),
    }
}

const V1_PREFIX: &[u8] = b"PROXY ";

/// The v1 line's fields after `PROXY `, as far as the bytes go.
fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let mut fields = V1Fields::default();
    for (i, &b) in buf.iter().enumerate().skip(V1_PREFIX.len()) {
        // The last byte a header may have is the LF of a CRLF.
        if i >= PROXY_V1_MAX_LEN - 1 && !fields.cr {
            return Err(ProxyHeaderError::V1TooLong);
        }
        if fields.cr {
            // The CR must end the line.
            if b != b'\n' {
                return Err(V1("CR without LF"));
            }
            return fields.finish().map(|h| Some((h, i + 1)));
        }
        fields.push(b)?;
    }
    Ok(None)
}

/// The v1 fields read so far: the protocol, then up to four space-separated fields.
#[derive(Default)]
struct V1Fields {
    /// `fields[0]` is the protocol, 1..=4 the addresses and ports.
    fields: [Vec<u8>; 5],
    /// Index of the field being read.
    at: usize,
    /// A CR was read: the next byte must be LF.
    cr: bool,
}

impl V1Fields {
    fn push(&mut self, b: u8) -> Result<(), ProxyHeaderError> {
        use ProxyHeaderError::V1;
        let unknown = self.at == 0 && self.fields[0] == b"UNKNOWN";
        let proto = &self.fields[0];
        let after_unknown = proto == b"UNKNOWN" && self.at > 0;
        if b == b'\r' {
            return match self.at {
                _ if after_unknown || unknown => {
                    self.cr = true;
                    Ok(())
                }
                4 if !self.fields[4].is_empty() => {
                    self.cr = true;
                    Ok(())
                }
                _ => Err(V1("line ends early")),
            };
        }
        if after_unknown {
            // The specification: anything up to the CRLF is ignored.
            return if b == b'\n' {
                Err(V1("LF without CR"))
            } else {
                Ok(())
            };
        }
        if b == b' ' {
            if self.at == 0 && !unknown && !matches!(proto.as_slice(), b"TCP4" | b"TCP6") {
                return Err(V1("unknown protocol"));
            }
            if self.fields[self.at].is_empty() {
                return Err(V1("empty field"));
            }
            if self.at == 4 {
                return Err(V1("too many fields"));
            }
            self.check_field()?;
            self.at += 1;
            return Ok(());
        }
        let v6 = proto == b"TCP6";
        let ok = match self.at {
            0 => {
                let f = &self.fields[0];
                [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                    .iter()
                    .any(|p| p.len() > f.len() && p.starts_with(f) && p[f.len()] == b)
            }
            1 | 2 if v6 => b.is_ascii_hexdigit() || b == b':' || b == b'.',
            1 | 2 => b.is_ascii_digit() || b == b'.',
            _ => b.is_ascii_digit(),
        };
        if !ok {
            return Err(V1(match self.at {
                0 => "unknown protocol",
                1 | 2 => "invalid address",
                _ => "invalid port",
            }));
        }
        let max = match self.at {
            0 => 7,
            1 | 2 if v6 => 45,
            1 | 2 => 15,
            _ => 5,
        };
        if self.fields[self.at].len() == max {
            return Err(V1(if self.at >= 3 {
                "invalid port"
            } else {
                "field too long"
            }));
        }
        self.fields[self.at].push(b);
        // A port with a leading zero can never become valid.
        if self.at >= 3 && self.fields[self.at].len() == 2 && self.fields[self.at][0] == b'0' {
            return Err(V1("invalid port"));
        }
        Ok(())
    }

    /// A field just ended (at a space): it must be complete and valid.
    fn check_field(&self) -> Result<(), ProxyHeaderError> {
        use ProxyHeaderError::V1;
        match self.at {
            1 | 2 => self.ip(self.at).map(|_| ()),
            3 | 4 => self.port(self.at).map(|_| ()).ok_or(V1("invalid port")),
            _ => Ok(()),
        }
    }

    fn ip(&self, i: usize) -> Result<IpAddr, ProxyHeaderError> {
        use ProxyHeaderError::V1;
        let text = std::str::from_utf8(&self.fields[i]).map_err(|_| V1("invalid address"))?;
        let ip = if self.fields[0] == b"TCP4" {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        };
        ip.map_err(|_| V1("invalid address"))
    }

    fn port(&self, i: usize) -> Option<u16> {
        let f = &self.fields[i];
        if f.is_empty() || (f.len() > 1 && f[0] == b'0') {
            return None;
        }
        std::str::from_utf8(f).ok()?.parse().ok()
    }

    /// The CRLF arrived.
    fn finish(&self) -> Result<ProxyHeader, ProxyHeaderError> {
        use ProxyHeaderError::V1;
        if self.fields[0] == b"UNKNOWN" {
            return Ok(ProxyHeader::Unknown);
        }
        let src = self.ip(1)?;
        let dst = self.ip(2)?;
        let sport = self.port(3).ok_or(V1("invalid port"))?;
        let dport = self.port(4).ok_or(V1("invalid port"))?;
        Ok(ProxyHeader::Proxied {
            src: unmapped(SocketAddr::new(src, sport)),
            dst: unmapped(SocketAddr::new(dst, dport)),
        })
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    use ProxyHeaderError::V2;
    let n = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..n] != PROXY_V2_SIGNATURE[..n] {
        return Err(ProxyHeaderError::NotProxy);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(V2("unknown command")),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(None);
    };
    // LOCAL: the family is ignored. PROXY: the valid combinations of the specification.
    let (min, inet) = match fam {
        _ if local => (0, None),
        0x11 => (12, Some(false)),
        0x21 => (36, Some(true)),
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => (0, None),
        _ => return Err(V2("invalid address family or transport")),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        // The first length byte alone may already be over the limit.
        if let Some(&hi) = buf.get(14) {
            if usize::from(hi) << 8 > PROXY_V2_MAX_ADDR_LEN {
                return Err(ProxyHeaderError::V2TooLong);
            }
        }
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > PROXY_V2_MAX_ADDR_LEN {
        return Err(ProxyHeaderError::V2TooLong);
    }
    if len < min {
        return Err(V2("address block too short for its family"));
    }
    let total = 16 + len;
    let Some(block) = buf.get(16..total) else {
        return Ok(None);
    };
    let header = match inet {
        _ if local => ProxyHeader::Local,
        None => ProxyHeader::Unknown,
        Some(false) => {
            let ip =
                |at: usize| IpAddr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader::Proxied {
                src: SocketAddr::new(ip(0), port(8)),
                dst: SocketAddr::new(ip(4), port(10)),
            }
        }
        Some(true) => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&block[at..at + 16]);
                IpAddr::from(o)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader::Proxied {
                src: unmapped(SocketAddr::new(ip(0), port(32))),
                dst: unmapped(SocketAddr::new(ip(16), port(34))),
            }
        }
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn proxy_headers() {
        let s = sa("127.0.0.9:5000");
        let d = sa("127.0.0.1:4222");
        assert_eq!(
            proxy_header_v1(s, d),
            b"PROXY TCP4 127.0.0.9 127.0.0.1 5000 4222\r\n"
        );
        let v2 = proxy_header_v2(Some((s, d)));
        assert_eq!(&v2[..12], &PROXY_V2_SIGNATURE);
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..20], &[127, 0, 0, 9]);
        assert_eq!(&v2[24..26], &5000u16.to_be_bytes());
        assert_eq!(v2.len(), 28);
        assert_eq!(&proxy_header_v2(None)[12..], &[0x20, 0, 0, 0]);
        let v6 = proxy_header_v1(sa("[2001:db8::1]:5000"), sa("[::1]:4222"));
        assert_eq!(v6, b"PROXY TCP6 2001:db8::1 ::1 5000 4222\r\n");
    }

    /// A dual-stack `[::]` listener reports an IPv4 client as `::ffff:a.b.c.d`; nats-server
    /// before 2.12.12 / 2.14.3 refuses `PROXY TCP6 ::ffff:...`, so it is written as `TCP4`.
    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let s = sa("[::ffff:203.0.113.7]:5000");
        let d = sa("[::ffff:10.0.0.1]:4222");
        assert_eq!(
            proxy_header_v1(s, d),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 4222\r\n"
        );
        let v2 = proxy_header_v2(Some((s, d)));
        assert_eq!(&v2[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&v2[16..24], &[203, 0, 113, 7, 10, 0, 0, 1]);
        // One side mapped, the other plain IPv4: still TCP4.
        assert_eq!(
            proxy_header_v1(s, sa("10.0.0.1:4222")),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 4222\r\n"
        );
    }

    #[test]
    fn mixed_families_fall_back() {
        let s = sa("127.0.0.9:5000");
        let d6 = sa("[::1]:4222");
        // v1: one line, one family: the specification's UNKNOWN.
        assert_eq!(proxy_header_v1(s, d6), b"PROXY UNKNOWN\r\n");
        assert_eq!(proxy_header_v1(d6, s), b"PROXY UNKNOWN\r\n");
        // v2: AF_INET6 with the IPv4 side mapped (nats-server's v2 reader always took it).
        let v2 = proxy_header_v2(Some((s, d6)));
        assert_eq!(&v2[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &v2[16..32],
            &Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped().octets()
        );
        assert_eq!(v2.len(), 16 + 36);
    }

    fn parsed(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
        parse_proxy_header(buf)
    }

    #[test]
    fn v1_headers_parse() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 4222\r\nCONNECT {}\r\n";
        assert_eq!(
            parsed(h),
            Ok(Some((
                ProxyHeader::Proxied {
                    src: sa("203.0.113.7:5000"),
                    dst: sa("10.0.0.1:4222")
                },
                43
            )))
        );
        let h = b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n\x16\x03";
        assert_eq!(
            parsed(h),
            Ok(Some((
                ProxyHeader::Proxied {
                    src: sa("[2001:db8::7]:65535"),
                    dst: sa("[::1]:0")
                },
                36
            )))
        );
        // A mapped address in TCP6 (dual-stack balancers) reads as the IPv4 client.
        let h = b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:10.0.0.1 1 2\r\n";
        assert!(matches!(
            parsed(h),
            Ok(Some((ProxyHeader::Proxied { src, .. }, 51))) if src == sa("203.0.113.7:1")
        ));
        assert_eq!(
            parsed(b"PROXY UNKNOWN\r\n"),
            Ok(Some((ProxyHeader::Unknown, 15)))
        );
        let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(long.len(), 107);
        assert_eq!(parsed(long), Ok(Some((ProxyHeader::Unknown, 107))));
    }

    #[test]
    fn v1_needs_more_bytes_then_completes() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 4222\r\n";
        for i in 0..h.len() {
            assert_eq!(parsed(&h[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn v1_refused_at_the_first_wrong_byte() {
        use ProxyHeaderError::*;
        // Not a balancer: NATS, TLS, HTTP, refused on the first byte.
        for first in [&b"C"[..], b"\x16", b"G", b"p", b"\n"] {
            assert_eq!(parsed(first), Err(NotProxy), "{first:?}");
        }
        assert_eq!(parsed(b"PING\r\n"), Err(NotProxy));
        assert_eq!(parsed(b"PROXY\r\n"), Err(NotProxy));
        // Each refused as soon as the wrong byte arrives (the line is not complete).
        for (bad, why) in [
            (&b"PROXY TCP5"[..], "unknown protocol"),
            (b"PROXY  TCP4", "unknown protocol"),
            (b"PROXY TCP4  ", "empty field"),
            (b"PROXY TCP4 1.2.3.4:", "invalid address"),
            (b"PROXY TCP4 1.2.3.04 ", "invalid address"),
            (b"PROXY TCP4 1.2.3.256 ", "invalid address"),
            (b"PROXY TCP4 ::1 ", "invalid address"),
            (b"PROXY TCP6 1.2.3.4 ", "invalid address"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "invalid port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 ", "invalid port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "too many fields"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r", "line ends early"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "invalid port"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR without LF"),
            (b"PROXY UNKNOWN\n", "unknown protocol"),
            (b"PROXY UNKNOWN x\n", "LF without CR"),
        ] {
            assert_eq!(
                parsed(bad),
                Err(V1(why)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(106, b'a');
        assert_eq!(parsed(&long), Ok(None));
        long.push(b'a');
        assert_eq!(parsed(&long), Err(V1TooLong));
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = PROXY_V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, fam]);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    #[test]
    fn v2_headers_parse() {
        // AF_INET with a TLV after the addresses (AWS NLB sends one): skipped.
        let mut block = vec![203, 0, 113, 7, 10, 0, 0, 1, 0x13, 0x88, 0x10, 0x7e];
        block.extend_from_slice(&[0xEA, 0, 3, b'v', b'p', b'c']);
        let mut h = v2(0x21, 0x11, &block);
        h.extend_from_slice(b"CONNECT {}\r\n");
        assert_eq!(
            parsed(&h),
            Ok(Some((
                ProxyHeader::Proxied {
                    src: sa("203.0.113.7:5000"),
                    dst: sa("10.0.0.1:4222")
                },
                16 + 18
            )))
        );
        for i in 0..34 {
            assert_eq!(parsed(&h[..i]), Ok(None), "prefix {i}");
        }
        // LOCAL: the family and any address block are ignored.
        assert_eq!(
            parsed(&v2(0x20, 0x00, &[])),
            Ok(Some((ProxyHeader::Local, 16)))
        );
        assert_eq!(
            parsed(&v2(0x20, 0x11, &[0; 12])),
            Ok(Some((ProxyHeader::Local, 28)))
        );
        // PROXY over families natsgate does not use: the socket's address stands.
        for fam in [0x00, 0x12, 0x22, 0x31, 0x32] {
            let len = if fam >> 4 == 3 { 216 } else { 0 };
            assert_eq!(
                parsed(&v2(0x21, fam, &vec![0; len])),
                Ok(Some((ProxyHeader::Unknown, 16 + len)))
            );
        }
        // AF_INET6, mapped source: the IPv4 client.
        let mut block = Ipv4Addr::new(203, 0, 113, 7)
            .to_ipv6_mapped()
            .octets()
            .to_vec();
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0, 1, 0, 2]);
        assert_eq!(
            parsed(&v2(0x21, 0x21, &block)),
            Ok(Some((
                ProxyHeader::Proxied {
                    src: sa("203.0.113.7:1"),
                    dst: sa("[::1]:2")
                },
                52
            )))
        );
    }

    #[test]
    fn v2_refused_at_the_first_wrong_byte() {
        use ProxyHeaderError::*;
        assert_eq!(parsed(b"\r\n\r\n\0\r\nQUIT\r"), Err(NotProxy));
        assert_eq!(parsed(b"\r\n\r\n\x01"), Err(NotProxy));
        let sig = PROXY_V2_SIGNATURE;
        assert_eq!(
            parsed(&[&sig[..], &[0x11]].concat()),
            Err(V2("version is not 2"))
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x22]].concat()),
            Err(V2("unknown command"))
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x41]].concat()),
            Err(V2("invalid address family or transport"))
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x13]].concat()),
            Err(V2("invalid address family or transport"))
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x11, 0x09]].concat()),
            Err(V2TooLong)
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x11, 0x08, 0x01]].concat()),
            Err(V2TooLong)
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x20, 0x00, 0x08, 0x00]].concat()),
            Ok(None),
            "2048 is allowed"
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x11, 0, 11]].concat()),
            Err(V2("address block too short for its family"))
        );
        assert_eq!(
            parsed(&[&sig[..], &[0x21, 0x21, 0, 12]].concat()),
            Err(V2("address block too short for its family"))
        );
    }

    #[test]
    fn written_headers_read_back() {
        let pairs = [
            ("203.0.113.7:5000", "10.0.0.1:4222"),
            ("[2001:db8::7]:1", "[::1]:65535"),
            ("[::ffff:203.0.113.7]:5000", "[::ffff:10.0.0.1]:4222"),
            ("[::ffff:203.0.113.7]:5000", "[::1]:4222"),
        ];
        for (s, d) in pairs {
            let (s, d) = (sa(s), sa(d));
            let want = ProxyHeader::Proxied {
                src: unmapped(s),
                dst: unmapped(d),
            };
            let h2 = proxy_header_v2(Some((s, d)));
            assert_eq!(parsed(&h2), Ok(Some((want, h2.len()))));
            let h1 = proxy_header_v1(s, d);
            let want1 = if unmapped(s).is_ipv4() == unmapped(d).is_ipv4() {
                want
            } else {
                ProxyHeader::Unknown
            };
            assert_eq!(parsed(&h1), Ok(Some((want1, h1.len()))));
        }
        let local = proxy_header_v2(None);
        assert_eq!(parsed(&local), Ok(Some((ProxyHeader::Local, 16))));
    }

    #[test]
    fn local_and_unknown_keep_the_socket_address() {
        let socket = (sa("10.0.0.5:40000"), sa("10.0.0.1:4222"));
        assert_eq!(ProxyHeader::Local.addrs(socket), socket);
        assert_eq!(ProxyHeader::Unknown.addrs(socket), socket);
        let p = ProxyHeader::Proxied {
            src: sa("203.0.113.7:5000"),
            dst: sa("198.51.100.1:4222"),
        };
        assert_eq!(
            p.addrs(socket),
            (sa("203.0.113.7:5000"), sa("198.51.100.1:4222"))
        );
    }
}
