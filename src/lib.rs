//! # natsgate
//!
//! A proxy in front of nats-server that terminates TLS (classic NATS upgrade, TLS-first, or
//! both on one port) and holds every client to the **authorization window**: TLS handshake
//! plus a well-formed `CONNECT` within `authorization.timeout` of accept, or
//! `-ERR 'Authentication Timeout'` and close. After CONNECT the byte stream is spliced to an
//! upstream nats-server untouched.
//!
//! # Layout
//!
//! One module, one job. Imports form a tree: `gateway` → `listener` (and `websocket`) → `session` → `limits`,
//! with `shared`, `config`, `protocol` and `metrics` as leaves everyone may use.
//!
//! | module       | job |
//! |--------------|-----|
//! | [`gateway`]  | [`Gateway`] and [`Handle`]: build, run, reload, shut down |
//! | `shared`     | the state every connection of one proxy shares |
//! | [`config`]   | `proxy.toml` schema, defaults, validation, the NATS timeout rules |
//! | [`protocol`] | NATS framing: INFO rewrite, CONNECT scan, server ops, PROXY header (pure, fuzzed) |
//! | `tls`        | rustls configs from PEM, certificate reloading |
//! | `stream`     | one socket, plaintext or TLS |
//! | `upstream`   | dialing the cluster, PROXY header, upstream TLS, reading INFO |
//! | `limits`     | connection limits checked at accept |
//! | `listener`   | accept loop, graceful shutdown |
//! | `lameduck`   | natsgate's own lame duck mode: announce, then close spread over the drain |
//! | `session`    | one connection: the pending phases, then the hand-off to the relay |
//! | `relay`      | the spliced byte stream, byte counts, half-close |
//! | [`metrics`]  | metric names, the Prometheus recorder, the `process_*` series |
//! | [`logout`]   | log lines to stdout a batch per event-loop turn (one `write`, not one per line) |
//! | `logsummary` | refusal log lines under a flood: a few per second, then a count per reason |
//! | `admin`      | `/metrics` `/livez` `/healthz` `/readyz`, bounded against floods |
//! | [`fdlimit`]  | `RLIMIT_NOFILE`: raised at start-up, shared out between clients and reserve |
//! | `websocket`  | `[websocket]`: the upgrade, the framing adapter, the same window and relay |
//!
//! `main.rs` is only the command line. Tests start the proxy in-process with [`Gateway::new`]
//! and [`Gateway::run`] on listeners they bound to port 0.

#![forbid(unsafe_code)]

mod admin;
pub mod config;
pub mod fdlimit;
pub mod gateway;
mod lameduck;
mod limits;
mod listener;
pub mod logout;
mod logsummary;
pub mod metrics;
pub mod protocol;
mod relay;
mod session;
mod shared;
mod stream;
mod tls;
mod upstream;
mod websocket;

pub use gateway::{Gateway, Handle, StartError};
pub use relay::WRITE_STALL_LIMIT;
