//! The client's first line, as `session.rs` reads it: `scan_connect` is called after every read
//! on the bytes so far, and the session acts on the first answer that is not "need more".
//!
//! Input layout: byte 0 picks `max_control_line` (64..=4159, the configurable range starts at
//! 64), byte 1.. are split points (each byte is the length of one read, 0 is read as 1), up to
//! the first 0xFF separator; the rest is the byte stream. Checked:
//! - no panic, whatever the bytes and the splits;
//! - the streamed answer equals the whole-buffer answer (`Ok(None)` from every prefix and the
//!   final one from the whole buffer, or the same error/line earlier);
//! - a found line lies inside the buffer, ends in `\n`, and its argument is inside the line;
//! - a refusal's client bytes are one `-ERR '...'\r\n` line;
//! - the same stream through `scan_first_op` (no auth upstream; `max_payload` from byte 1):
//!   `natsgate::protocol::fuzz_logic::check_first_op`, shared with tests/proptest_protocol.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsgate::protocol::fuzz_logic::check_first_op;
use natsgate::protocol::{scan_connect, ConnectError, FirstOpLimits};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = 64 + (u16::from_le_bytes([data[0], data[1]]) as usize % 4096);
    let rest = &data[2..];
    let sep = rest.iter().position(|&b| b == 0xFF).unwrap_or(0);
    let (splits, stream) = if sep > 0 {
        (&rest[..sep], &rest[sep + 1..])
    } else {
        (&[][..], rest)
    };

    let whole = scan_connect(stream, max);

    // Streamed: the reads the splits describe, then whatever is left in one read.
    let mut end = 0usize;
    let mut streamed = None;
    let mut cuts = splits.iter().map(|&b| b.max(1) as usize);
    while streamed.is_none() {
        end = match cuts.next() {
            Some(n) => (end + n).min(stream.len()),
            None => stream.len(),
        };
        match scan_connect(&stream[..end], max) {
            Ok(None) if end < stream.len() => {}
            other => streamed = Some(other),
        }
    }
    let streamed = streamed.unwrap_or(Ok(None));
    assert_eq!(
        streamed,
        whole,
        "max {max}, stopped at {end} of {}",
        stream.len()
    );

    match whole {
        Ok(Some(line)) => {
            assert!(line.line_len <= stream.len());
            assert_eq!(stream[line.line_len - 1], b'\n');
            assert!(line.arg.start < line.arg.end && line.arg.end < line.line_len);
            let arg = &stream[line.arg.clone()];
            let first = arg.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\r'));
            assert_eq!(first, Some(&b'{'), "the argument is an object");
            // The argument, and the blanks before it, each at most max_control_line.
            assert!(
                line.line_len <= "CONNECT".len() + 2 * max + 2,
                "a line over max_control_line was accepted"
            );
            assert!(line.arg.len() <= max);
            // Re-scanning just the line gives the same answer (pipelined bytes do not matter).
            let again = scan_connect(&stream[..line.line_len], max);
            assert_eq!(again.ok().flatten().map(|l| l.fields), Some(line.fields));
        }
        Ok(None) => {
            assert!(!stream.contains(&b'\n'));
            assert!(stream.len() <= "CONNECT".len() + 2 * max + 1);
        }
        Err(e) => {
            let bytes = e.client_error();
            assert!(bytes.starts_with(b"-ERR '"));
            assert!(bytes.ends_with(b"'\r\n"));
            assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(bytes.iter().filter(|&&b| b == b'\'').count(), 2);
            if let ConnectError::NotConnect = e {
                assert!(!stream.is_empty());
            }
        }
    }
    let limits = FirstOpLimits {
        max_control_line: max,
        max_payload: usize::from(data[1]),
    };
    let reads: Vec<usize> = splits.iter().map(|&b| usize::from(b)).collect();
    check_first_op(stream, &reads, limits);
});
