//! The inbound PROXY protocol parser (`parse_proxy_header`), as the session drives it: called on
//! the bytes so far after every read from a load balancer (or from anyone, before the source is
//! known to be trusted).
//!
//! Input layout: bytes up to the first 0xFF are read sizes (0 is read as 1); the rest is the
//! stream. The properties (no panic; any split gives the whole stream's answer; a header reads
//! the same from its own bytes and is written back by `proxy_header_v1`/`v2` into one that
//! reads as the same addresses) are `natsgate::protocol::fuzz_logic::check_proxy_header`,
//! shared with tests/proptest_protocol.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::fuzz_logic::check_proxy_header;

fuzz_target!(|data: &[u8]| {
    let (reads, stream) = match data.iter().position(|&b| b == 0xFF) {
        Some(sep) => (&data[..sep], &data[sep + 1..]),
        None => (&[][..], data),
    };
    let reads: Vec<usize> = reads.iter().map(|&b| usize::from(b)).collect();
    check_proxy_header(stream, &reads);
});
