//! The server-op follower (`ServerStream`), as the relay drives it: `feed` on every read from
//! upstream, forwarding what it returns.
//!
//! Input layout: byte 0 picks the follower's settings (bit 0: `strip_connect_urls`, the rest
//! modulo 6: the TLS advert); bytes 1.. are read sizes (0 is read as 1) up to the first 0xFF;
//! the rest is the upstream's byte stream. The properties (any split gives the whole stream's
//! output and verdict; the output is a fixed point; fail closed: with strip, no INFO line a
//! client would read carries `connect_urls`, even after the follower lost sync;
//! a stream with no `I` passes byte for byte) are `natsgate::protocol::fuzz_logic`'s, shared
//! with tests/proptest_protocol.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::fuzz_logic::{check_server_stream, ADVERTS};

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let strip = settings & 1 == 1;
    let advert = ADVERTS[usize::from(settings >> 1) % ADVERTS.len()];
    let (reads, stream) = match rest.iter().position(|&b| b == 0xFF) {
        Some(sep) => (&rest[..sep], &rest[sep + 1..]),
        None => (&[][..], rest),
    };
    let reads: Vec<usize> = reads.iter().map(|&b| usize::from(b)).collect();
    check_server_stream(stream, &reads, advert, strip);
});
