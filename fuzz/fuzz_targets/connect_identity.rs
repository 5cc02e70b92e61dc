//! What natsgate logs about a client (`ConnectLine::client_identity`) against a reference
//! decoder with nats-server's semantics (Go `encoding/json` into a struct: the last duplicate
//! key wins, names match case-insensitively with Go's folding), and `Debug` of a CONNECT never
//! depending on its secrets. The properties are `natsgate::protocol::fuzz_logic`'s, shared with
//! tests/proptest_protocol.rs.
//!
//! Input: the CONNECT argument (the target adds `CONNECT ` and `\r\n`), and, as it is, a
//! whole client stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::fuzz_logic::check_connect_identity;

fuzz_target!(|data: &[u8]| {
    let line = [&b"CONNECT "[..], data, b"\r\n"].concat();
    check_connect_identity(&line, 1 << 16);
    check_connect_identity(data, 1 << 16);
});
