//! NATS framing that natsgate needs, and nothing more: the INFO line, the client's first
//! CONNECT line, the upstream verdict, the PROXY protocol header and the client-visible errors.
//!
//! Everything here is pure (bytes in, values out, no I/O, no clocks), so it is unit-tested,
//! property-tested and fuzzed directly. By concern:
//!
//! - [`connect`]: the client's CONNECT line, the identity a log may show, `proxy_sig`;
//! - [`info`]: the upstream's INFO and its rewrite for the client;
//! - [`template`]: INFO lines rendered once and filled in per connection (same bytes);
//! - [`server_ops`]: the follower of the upstream's ops after CONNECT ([`ServerStream`]);
//! - [`proxy_header`]: PROXY protocol v1/v2 headers;
//! - [`object`]: the JSON object both INFO and CONNECT are made of ([`RawObject`]), read the
//!   way nats-server's Go decoder reads it, with a `Debug` that masks secrets;
//! - [`fuzz_logic`]: the properties the fuzz targets and the property tests both check.

pub mod connect;
#[doc(hidden)]
pub mod fuzz_logic;
pub mod info;
pub mod object;
pub mod proxy_header;
pub mod server_ops;
pub mod template;

pub(crate) use connect::connect_with_proxy_sig;
pub use connect::{
    scan_connect, scan_first_op, ClientIdentity, ClientOp, ConnectError, ConnectLine, FirstOp,
    FirstOpLimits, IDENTITY_MAX_CHARS,
};
pub use info::{
    apply_rewrite, auth_required, insert_client_ip, latest_info_changed, ldm_info, max_payload,
    own_info, parse_info, rewrite_info, rewrite_info_with, set_client_ip, ConnectUrls, Info,
    InfoError, Rewrite, TlsAdvert, DEFAULT_MAX_PAYLOAD,
};
pub use object::{go_name_matches, is_secret_key, RawObject};
pub use proxy_header::{
    parse_proxy_header, proxy_header_v1, proxy_header_v2, ProxyHeader, ProxyHeaderError,
    PROXY_V1_MAX_LEN, PROXY_V2_MAX_ADDR_LEN, PROXY_V2_SIGNATURE,
};
pub use server_ops::{
    ServerStream, Verdict, DROPPED_BAD_INFO, DROPPED_LONG_INFO, LOST_BAD_MSG_SIZE, LOST_LONG_LINE,
    LOST_UNKNOWN_OP, MAX_SERVER_LINE,
};
pub use template::{rewrite_info_line, same_info_line, KnownLine, OwnInfoLine};

/// Sent when the window closes before a complete CONNECT (nats-server's own text).
pub const ERR_AUTH_TIMEOUT: &[u8] = b"-ERR 'Authentication Timeout'\r\n";
/// Sent when the first op is not CONNECT.
pub const ERR_AUTH_VIOLATION: &[u8] = b"-ERR 'Authorization Violation'\r\n";
/// Sent when the CONNECT line exceeds `listener.max_control_line`.
pub const ERR_MAX_CONTROL_LINE: &[u8] = b"-ERR 'maximum control line exceeded'\r\n";
/// Sent, with no auth upstream, when the first op is none nats-server knows (nats-server's text).
pub const ERR_UNKNOWN_PROTOCOL_OP: &[u8] = b"-ERR 'Unknown Protocol Operation'\r\n";
/// Sent, with no auth upstream, when a first PUB exceeds `max_payload` (nats-server's text).
pub const ERR_MAX_PAYLOAD: &[u8] = b"-ERR 'Maximum Payload Violation'\r\n";
/// Sent when a client speaks plaintext where TLS is required.
pub const ERR_TLS_REQUIRED: &[u8] = b"-ERR 'Secure Connection - TLS Required'\r\n";
/// Sent when a connection limit is reached at accept.
pub const ERR_MAX_CONNECTIONS: &[u8] = b"-ERR 'maximum connections exceeded'\r\n";
/// natsgate answered the client's INFO itself (`upstream.dial = after_connect`), and the
/// upstream it then reached requires a signed nonce the client never saw. It starts with
/// nats-server's `Authorization Violation` so clients treat it as the auth failure it is.
pub const ERR_NONCE_REQUIRED: &[u8] =
    b"-ERR 'Authorization Violation: the server requires a signed nonce; natsgate upstream.dial must be auto or on_accept'\r\n";
