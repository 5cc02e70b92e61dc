//! PROXY protocol headers from arbitrary address pairs (any family mix, any port): never a
//! panic, and always well-formed: v1 is one `PROXY TCP4|TCP6 src dst sport dport\r\n` line of at
//! most 107 bytes that parses back to the same addresses; v2 has the signature, a length field
//! that matches the bytes that follow, the right family byte, and the addresses and ports back.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::{proxy_header_v1, proxy_header_v2, PROXY_V2_SIGNATURE};

fn addr(family: u8, bytes: &[u8], port: u16) -> SocketAddr {
    let ip = if family & 1 == 0 {
        let mut o = [0u8; 4];
        o.copy_from_slice(&bytes[..4]);
        IpAddr::V4(Ipv4Addr::from(o))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&bytes[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    SocketAddr::new(ip, port)
}

/// What the header should carry: both addresses in one family (v4-mapped v6 when mixed).
fn expected(src: SocketAddr, dst: SocketAddr) -> (IpAddr, IpAddr, bool) {
    let v6 = |ip: IpAddr| match ip {
        IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
        a => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src.ip(), dst.ip(), src.is_ipv4())
    } else {
        (v6(src.ip()), v6(dst.ip()), false)
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + 16 + 16 + 4 {
        return;
    }
    let fam = data[0];
    let sport = u16::from_be_bytes([data[33], data[34]]);
    let dport = u16::from_be_bytes([data[35], data[36]]);
    let src = addr(fam, &data[1..17], sport);
    let dst = addr(fam >> 1, &data[17..33], dport);
    let (esrc, edst, v4) = expected(src, dst);

    let v1 = proxy_header_v1(src, dst);
    assert!(
        v1.len() <= 107,
        "v1 header over the spec's 107 bytes: {}",
        v1.len()
    );
    let text = std::str::from_utf8(&v1).expect("v1 is ASCII");
    let line = text.strip_suffix("\r\n").expect("v1 ends in CRLF");
    assert!(!line.contains(['\r', '\n']));
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 6, "{line}");
    assert_eq!(parts[0], "PROXY");
    assert_eq!(parts[1], if v4 { "TCP4" } else { "TCP6" });
    assert_eq!(parts[2].parse::<IpAddr>().ok(), Some(esrc));
    assert_eq!(parts[3].parse::<IpAddr>().ok(), Some(edst));
    assert_eq!(parts[4].parse::<u16>().ok(), Some(sport));
    assert_eq!(parts[5].parse::<u16>().ok(), Some(dport));
    // The spec forbids leading zeros in ports (except "0" itself).
    for p in &parts[4..] {
        assert!(*p == "0" || !p.starts_with('0'));
    }

    let v2 = proxy_header_v2(Some((src, dst)));
    assert_eq!(&v2[..12], &PROXY_V2_SIGNATURE);
    assert_eq!(v2[12], 0x21, "version 2, PROXY");
    let len = u16::from_be_bytes([v2[14], v2[15]]) as usize;
    assert_eq!(v2.len(), 16 + len, "length field matches the address block");
    let body = &v2[16..];
    if v4 {
        assert_eq!(v2[13], 0x11);
        assert_eq!(len, 12);
        assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&body[..4]).unwrap()), esrc);
        assert_eq!(
            IpAddr::from(<[u8; 4]>::try_from(&body[4..8]).unwrap()),
            edst
        );
        assert_eq!(&body[8..10], &sport.to_be_bytes());
        assert_eq!(&body[10..12], &dport.to_be_bytes());
    } else {
        assert_eq!(v2[13], 0x21);
        assert_eq!(len, 36);
        assert_eq!(
            IpAddr::from(<[u8; 16]>::try_from(&body[..16]).unwrap()),
            esrc
        );
        assert_eq!(
            IpAddr::from(<[u8; 16]>::try_from(&body[16..32]).unwrap()),
            edst
        );
        assert_eq!(&body[32..34], &sport.to_be_bytes());
        assert_eq!(&body[34..36], &dport.to_be_bytes());
    }

    let local = proxy_header_v2(None);
    assert_eq!(local.len(), 16);
    assert_eq!(&local[12..], &[0x20, 0x00, 0x00, 0x00]);
});
