//! PROXY protocol headers written upstream, from arbitrary address pairs (any family mix,
//! mapped or not, any port): never a panic; v1 is one line of at most 107 bytes; both read back
//! by natsgate's own parser as the unmapped addresses (v1: `UNKNOWN` when the families still
//! differ), and an IPv4 client is written as `TCP4` / `AF_INET`. The property is
//! `natsgate::protocol::fuzz_logic::check_proxy_writers`, shared with
//! tests/proptest_protocol.rs.
//!
//! Input layout: byte 0 picks each side's family (bit 0: source IPv6, bit 1: destination
//! IPv6, bit 2/3: source/destination IPv4-mapped IPv6), bytes 1..17 and 17..33 the addresses,
//! 33..37 the ports.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::fuzz_logic::check_proxy_writers;

fn addr(v6: bool, mapped: bool, bytes: &[u8], port: u16) -> SocketAddr {
    let v4 = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    let ip = if mapped {
        IpAddr::V6(v4.to_ipv6_mapped())
    } else if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&bytes[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(v4)
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + 16 + 16 + 4 {
        return;
    }
    let fam = data[0];
    let sport = u16::from_be_bytes([data[33], data[34]]);
    let dport = u16::from_be_bytes([data[35], data[36]]);
    let src = addr(fam & 1 == 1, fam & 4 == 4, &data[1..17], sport);
    let dst = addr(fam & 2 == 2, fam & 8 == 8, &data[17..33], dport);
    check_proxy_writers(src, dst);
});
