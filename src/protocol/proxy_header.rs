//! The PROXY protocol header (v1 text or v2 binary) announcing the client's address upstream.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// PROXY protocol v1 header. Mixed address families are expressed as IPv6 (v4-mapped).
pub fn proxy_header_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
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
/// the socket's own address stands). Mixed families are expressed as IPv6 (v4-mapped).
pub fn proxy_header_v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = PROXY_V2_SIGNATURE.to_vec();
    let Some((src, dst)) = addrs else {
        out.push(0x20); // version 2, LOCAL
        out.push(0x00); // UNSPEC
        out.extend_from_slice(&0u16.to_be_bytes());
        return out;
    };
    let (src, dst) = same_family(src, dst);
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

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    (
        SocketAddr::new(v6(src.ip()).into(), src.port()),
        SocketAddr::new(v6(dst.ip()).into(), dst.port()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers() {
        let s: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let d: SocketAddr = "127.0.0.1:4222".parse().unwrap();
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
        let d6: SocketAddr = "[::1]:4222".parse().unwrap();
        let v1 = String::from_utf8(proxy_header_v1(s, d6)).unwrap();
        assert_eq!(v1, "PROXY TCP6 ::ffff:127.0.0.9 ::1 5000 4222\r\n");
        assert_eq!(proxy_header_v2(Some((s, d6))).len(), 16 + 36);
    }
}
