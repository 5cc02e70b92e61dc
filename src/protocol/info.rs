//! The upstream's INFO line and its rewrite for the client.

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use serde_json::Value;

use super::RawObject;

/// A problem with the upstream's INFO line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    #[error("upstream's first line is not INFO")]
    NotInfo,
    #[error("upstream INFO is not a JSON object: {0}")]
    BadJson(String),
}

/// The upstream's INFO object.
pub type Info = RawObject;

/// Parses `INFO {json} \r\n` (the terminator may be present or already stripped).
pub fn parse_info(line: &[u8]) -> Result<Info, InfoError> {
    if line.len() < 5
        || !line[..4].eq_ignore_ascii_case(b"INFO")
        || !matches!(line[4], b' ' | b'\t')
    {
        return Err(InfoError::NotInfo);
    }
    let json = line[5..].trim_ascii();
    serde_json::from_slice::<Info>(json).map_err(|e| InfoError::BadJson(e.to_string()))
}

/// What the client-facing INFO says about TLS: natsgate's own listener, not the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsAdvert {
    /// No TLS on the client side.
    None,
    /// `tls_required: true`.
    Required { verify: bool },
    /// `tls_available: true`: plaintext and TLS clients are both served.
    Available { verify: bool },
    /// `tls_required: true` and `tls_available: true`: what nats-server says on a connection
    /// that did the TLS handshake first when its listener serves plaintext too
    /// (`handshake_first` with `allow_non_tls`; natsgate: a TLS-first connection with
    /// `tls.required = false`). A TLS-first connection on a listener that requires TLS is
    /// [`TlsAdvert::Required`], as nats-server says there.
    RequiredAndAvailable { verify: bool },
}

/// What every INFO the client receives says about the servers it may reconnect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectUrls {
    /// As the upstream sent them (`upstream.strip_connect_urls = false`).
    Keep,
    /// None: `connect_urls` and `ws_connect_urls` are removed, so clients cannot bypass
    /// natsgate.
    Strip,
    /// Exactly these (`listener.advertise`): the gateway replicas, never the servers behind
    /// them. `connect_urls` is replaced (an empty list is left out, as nats-server leaves out an
    /// empty one); `ws_connect_urls` is removed (nats-server never sends it to a plain NATS
    /// client, and natsgate serves no websocket).
    Advertise(Arc<[String]>),
}

/// How natsgate rewrites every INFO the client receives: the first one, later ones
/// ([`super::ServerStream`]) and the lame duck one ([`ldm_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// What the client-facing INFO says about TLS: natsgate's listener (and, for a TLS-first
    /// connection, [`TlsAdvert::Required`] or [`TlsAdvert::RequiredAndAvailable`]).
    pub tls: TlsAdvert,
    pub connect_urls: ConnectUrls,
    /// `Some`: every INFO carries this `client_ip` (the client's own address, from its socket
    /// or its inbound PROXY header), in place of the upstream's (natsgate's own address, or
    /// absent when nats-server expects a PROXY header). IPv4-mapped addresses are written as
    /// IPv4. `None`: the upstream's field is kept.
    pub client_ip: Option<IpAddr>,
}

impl Rewrite {
    /// The rewrite of [`rewrite_info`]: TLS flags, and `connect_urls` stripped or kept.
    pub fn new(tls: TlsAdvert, strip_connect_urls: bool) -> Rewrite {
        Rewrite {
            tls,
            connect_urls: if strip_connect_urls {
                ConnectUrls::Strip
            } else {
                ConnectUrls::Keep
            },
            client_ip: None,
        }
    }
}

/// Rewrites the upstream INFO for the client: the nonce and every other field are kept; only
/// the TLS flags (natsgate's listener decides them) and, when asked, `connect_urls` (which would
/// let clients bypass natsgate) change. Returns the complete `INFO {json} \r\n` line.
/// Same as [`rewrite_info_with`] with [`Rewrite::new`].
pub fn rewrite_info(info: Info, tls: TlsAdvert, strip_connect_urls: bool) -> Vec<u8> {
    rewrite_info_with(info, &Rewrite::new(tls, strip_connect_urls))
}

/// Rewrites the upstream INFO for the client as `rewrite` says (see [`apply_rewrite`]) and
/// returns the complete `INFO {json} \r\n` line.
pub fn rewrite_info_with(mut info: Info, rewrite: &Rewrite) -> Vec<u8> {
    apply_rewrite(&mut info, rewrite);
    info.to_info_line()
}

/// The rewrite itself: the TLS flags; `connect_urls` kept, stripped or replaced (matched as a
/// client's Go decoder matches names, in any letter case); `client_ip` set. Every other field,
/// the nonce included, is kept byte for byte.
pub fn apply_rewrite(info: &mut Info, rewrite: &Rewrite) {
    let (required, available, verify) = match rewrite.tls {
        TlsAdvert::None => (false, false, false),
        TlsAdvert::Required { verify } => (true, false, verify),
        TlsAdvert::Available { verify } => (false, true, verify),
        TlsAdvert::RequiredAndAvailable { verify } => (true, true, verify),
    };
    info.set_flag("tls_required", required);
    info.set_flag("tls_available", available);
    info.set_flag("tls_verify", verify);
    match &rewrite.connect_urls {
        ConnectUrls::Keep => {}
        ConnectUrls::Strip => {
            info.remove_go("connect_urls");
            info.remove_go("ws_connect_urls");
        }
        ConnectUrls::Advertise(urls) => {
            let at = info.remove_go("connect_urls");
            info.remove_go("ws_connect_urls");
            if !urls.is_empty() {
                info.insert_at(at, "connect_urls", &Value::from(urls.to_vec()));
            }
        }
    }
    if let Some(ip) = rewrite.client_ip {
        set_client_ip(info, ip);
    }
}

/// Sets `client_ip` to the client's own address (IPv4-mapped written as IPv4), in place of
/// whatever the upstream wrote.
pub fn set_client_ip(info: &mut Info, ip: IpAddr) {
    info.set("client_ip", &Value::from(ip.to_canonical().to_string()));
}

/// Sets `client_ip` only when the INFO lacks it (nats-server omits it when it expects a PROXY
/// header); returns whether it did.
pub fn insert_client_ip(info: &mut Info, ip: IpAddr) -> bool {
    if info.raw("client_ip").is_some() {
        return false;
    }
    set_client_ip(info, ip);
    true
}

/// The lame duck INFO natsgate sends an established client when it shuts down itself:
/// `latest` (the latest upstream INFO for that connection) with `"ldm":true`, without its
/// `nonce` (nats-server's lame duck INFO has none), rewritten as every INFO is. Clients that
/// see it prefer other servers when they reconnect.
pub fn ldm_info(latest: &Info, rewrite: &Rewrite) -> Vec<u8> {
    let mut info = latest.clone();
    info.remove("nonce");
    info.set_flag("ldm", true);
    rewrite_info_with(info, rewrite)
}

/// Whether the upstream requires authentication (`auth_required` in its INFO). Without it,
/// nats-server accepts ops before CONNECT: read the first op with
/// [`super::scan_first_op`] instead of [`super::scan_connect`]. (nats-server with
/// `no_auth_user` also accepts them, but says `auth_required`, so natsgate keeps to CONNECT
/// there.)
pub fn auth_required(info: &Info) -> bool {
    info.bool_field("auth_required") == Some(true)
}

/// nats-server's default `max_payload`, when an INFO does not say.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The upstream's `max_payload` (a first PUB over it is refused as nats-server refuses it).
pub fn max_payload(info: &Info) -> usize {
    info.raw("max_payload")
        .and_then(|v| serde_json::from_str::<u64>(v.get()).ok())
        .map_or(DEFAULT_MAX_PAYLOAD, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
}

/// natsgate's own INFO for a client it answers itself (`upstream.dial = after_connect`): the
/// latest upstream INFO with every field that shapes client behaviour kept as nats-server sent
/// it (`auth_required`, `headers`, `max_payload`, `proto`, ...), but without the `nonce` (it
/// belongs to another connection, and a client that would sign one is never served this way)
/// and with this client's own `client_id` and `client_ip`.
pub fn own_info(latest: &Info, client_id: u64, client_ip: std::net::IpAddr) -> Info {
    let mut info = latest.clone();
    info.remove("nonce");
    info.set("client_id", &serde_json::Value::from(client_id));
    info.set(
        "client_ip",
        &serde_json::Value::from(client_ip.to_canonical().to_string()),
    );
    info
}

/// The fields of an upstream INFO that differ from one connection to the next:
/// [`latest_info_changed`] ignores their values.
const PER_CONNECTION: [&str; 3] = ["client_id", "client_ip", "nonce"];

/// Whether `new` says anything `latest` does not, apart from the values nats-server writes
/// per connection (`client_id`, `client_ip`, `nonce`; a nonce that appears or disappears is a
/// change). natsgate's own INFO is built from the latest one, so only a change needs storing.
pub fn latest_info_changed(latest: &Info, new: &Info) -> bool {
    !latest.same_apart_from(new, &PER_CONNECTION)
}

/// natsgate's own INFO line ([`own_info`] rewritten with a [`Rewrite`]) for one upstream INFO
/// and one rewrite, rendered once: only `client_id` and `client_ip` are filled in per client.
/// The same bytes as rendering it whole for each client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnInfoLine(Template);

impl OwnInfoLine {
    /// `None` when the line cannot be rendered once (an upstream INFO that holds the marker
    /// text itself): it is then rendered whole, per client.
    pub fn new(latest: &Info, rewrite: &Rewrite) -> Option<OwnInfoLine> {
        let mut info = latest.clone();
        info.remove("nonce");
        info.set("client_id", &Value::from(ID_MARK));
        info.set("client_ip", &Value::from(IP_MARK));
        apply_rewrite(&mut info, &rewrite.without_client_ip());
        let template = Template::of(&info)?;
        (template.holes.len() == 2).then_some(OwnInfoLine(template))
    }

    /// The line for one client.
    pub fn render(&self, client_id: u64, client_ip: IpAddr) -> Vec<u8> {
        let (mut id, mut ip) = (Vec::with_capacity(20), Vec::with_capacity(48));
        write_ip(&mut ip, client_ip);
        // Writing to a Vec cannot fail.
        let _ = std::io::Write::write_fmt(&mut id, format_args!("{client_id}"));
        self.0.render(&id, &ip)
    }
}

/// A client's address as a JSON string (IPv4-mapped written as IPv4): no escaping needed.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let _ = std::io::Write::write_fmt(out, format_args!("\"{}\"", ip.to_canonical()));
}

/// JSON strings no upstream writes by accident (NUL is written `\u0000`), set in place of the
/// per-connection values while a template is rendered.
const ID_MARK: &str = "\u{0}natsgate client_id\u{0}";
const IP_MARK: &str = "\u{0}natsgate client_ip\u{0}";

/// Which per-connection value goes into a hole of a [`Template`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hole {
    Id,
    Ip,
}

/// An INFO line with holes where `client_id` and `client_ip` go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    /// The line without the two values.
    text: Vec<u8>,
    /// Where in `text` each value goes, in order.
    holes: Vec<(usize, Hole)>,
}

impl Template {
    /// `info` rendered with [`ID_MARK`] and [`IP_MARK`] as values; each is a hole if it
    /// occurs once. `None` when one occurs more than once.
    fn of(info: &Info) -> Option<Template> {
        let line = info.to_info_line();
        let mut found = Vec::with_capacity(2);
        for (mark, hole) in [(ID_MARK, Hole::Id), (IP_MARK, Hole::Ip)] {
            let quoted = serde_json::to_vec(mark).ok()?;
            let mut at = memchr::memmem::find_iter(&line, &quoted);
            if let Some(first) = at.next() {
                if at.next().is_some() {
                    return None;
                }
                found.push((first, first + quoted.len(), hole));
            }
        }
        found.sort_unstable();
        let mut text = Vec::with_capacity(line.len());
        let mut holes = Vec::with_capacity(found.len());
        let mut from = 0;
        for (start, end, hole) in found {
            text.extend_from_slice(&line[from..start]);
            holes.push((text.len(), hole));
            from = end;
        }
        text.extend_from_slice(&line[from..]);
        Some(Template { text, holes })
    }

    /// The line with `id` and `ip` (JSON text) in their holes.
    fn render(&self, id: &[u8], ip: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + id.len() + ip.len());
        let mut from = 0;
        for &(at, hole) in &self.holes {
            out.extend_from_slice(&self.text[from..at]);
            out.extend_from_slice(if hole == Hole::Id { id } else { ip });
            from = at;
        }
        out.extend_from_slice(&self.text[from..]);
        out
    }
}

impl Rewrite {
    fn without_client_ip(&self) -> Rewrite {
        Rewrite {
            client_ip: None,
            ..self.clone()
        }
    }

    /// The same rewrite for another client: everything but the address itself.
    fn same_kind(&self, other: &Rewrite) -> bool {
        self.tls == other.tls
            && self.connect_urls == other.connect_urls
            && self.client_ip.is_some() == other.client_ip.is_some()
    }
}

/// Where the values of the top-level `client_id` (digits) and `client_ip` (a string without
/// escapes) are in an INFO line: what nats-server writes differently on each connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Values {
    id: Option<Range<usize>>,
    ip: Option<Range<usize>>,
}

impl Values {
    /// Finds them with a scan of the line's JSON that knows only strings and nesting. `None`
    /// when the line is not plain enough to be sure (a key seen twice, a value of another
    /// form, anything after the object): such a line is parsed and rewritten whole.
    fn find(line: &[u8]) -> Option<Values> {
        let start = 5 + line.get(5..)?.iter().position(|&b| b == b'{')?;
        if !line.get(..5)?.eq_ignore_ascii_case(b"INFO ")
            || !line[5..start].iter().all(u8::is_ascii_whitespace)
        {
            return None;
        }
        let mut values = Values::default();
        let (mut depth, mut key_next, mut i) = (0usize, false, start);
        while i < line.len() {
            match line[i] {
                b'"' => {
                    let end = string_end(line, i)?;
                    if depth == 1 && key_next {
                        key_next = false;
                        let colon = skip_blanks(line, end);
                        if line.get(colon) != Some(&b':') {
                            return None;
                        }
                        let value = skip_blanks(line, colon + 1);
                        let (slot, end) = match &line[i + 1..end - 1] {
                            b"client_id" => (&mut values.id, digits_end(line, value)?),
                            b"client_ip" => (&mut values.ip, plain_string_end(line, value)?),
                            _ => {
                                i = value;
                                continue;
                            }
                        };
                        if slot.replace(value..end).is_some() {
                            return None;
                        }
                        i = end;
                        continue;
                    }
                    i = end;
                    continue;
                }
                b'{' | b'[' => {
                    depth += 1;
                    key_next = depth == 1;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return line[i + 1..]
                            .iter()
                            .all(u8::is_ascii_whitespace)
                            .then_some(values);
                    }
                }
                b',' if depth == 1 => key_next = true,
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The line without the two values, in three pieces (empty ones where a value is absent).
    fn outside<'a>(&self, line: &'a [u8]) -> [&'a [u8]; 3] {
        let mut cuts: Vec<&Range<usize>> = self.id.iter().chain(self.ip.iter()).collect();
        cuts.sort_unstable_by_key(|r| r.start);
        match cuts.as_slice() {
            [] => [line, &[], &[]],
            [a] => [&line[..a.start], &line[a.end..], &[]],
            [a, b, ..] => [&line[..a.start], &line[a.end..b.start], &line[b.end..]],
        }
    }
}

/// The index after the string that starts at `at` (a `"`).
fn string_end(line: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn skip_blanks(line: &[u8], mut at: usize) -> usize {
    while line
        .get(at)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        at += 1;
    }
    at
}

/// The end of a JSON integer without sign or leading zero (a run of digits) that ends the
/// value.
fn digits_end(line: &[u8], at: usize) -> Option<usize> {
    let n = line
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = at + n;
    let valid = n == 1 || (n > 1 && line[at] != b'0');
    (valid && matches!(line.get(skip_blanks(line, end)), Some(b',' | b'}'))).then_some(end)
}

/// The end of a string of address characters (no escapes) that ends the value.
fn plain_string_end(line: &[u8], at: usize) -> Option<usize> {
    if line.get(at) != Some(&b'"') {
        return None;
    }
    let n = line
        .get(at + 1..)?
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'%'))
        .count();
    let end = at + 1 + n + 1;
    (line.get(end - 1) == Some(&b'"')
        && matches!(line.get(skip_blanks(line, end)), Some(b',' | b'}')))
    .then_some(end)
}

/// A rendered rewrite of one INFO line: what lines that differ from it only in the two
/// per-connection values become.
struct Rendered {
    rewrite: Rewrite,
    /// The source line without its two values ([`Values::outside`]).
    outside: [Vec<u8>; 3],
    /// Which of the two values it had, and in which order.
    shape: (bool, bool, bool),
    template: Template,
}

/// Rewritten INFO lines kept per thread (each worker thread serves its own connections).
const RENDERED_KEPT: usize = 4;

thread_local! {
    static RENDERED: std::cell::RefCell<Vec<Rendered>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`parse_info`] then [`rewrite_info_with`]: the same bytes, and the same error. nats-server
/// sends every client an INFO after its CONNECT that differs from the previous client's only in
/// `client_id` and `client_ip`; such a line is rendered from the template made of the first
/// one (kept per thread) instead of being parsed and rewritten again.
pub fn rewrite_info_line(line: &[u8], rewrite: &Rewrite) -> Result<Vec<u8>, InfoError> {
    let Some(values) = Values::find(line) else {
        return Ok(rewrite_info_with(parse_info(line)?, rewrite));
    };
    let outside = values.outside(line);
    let shape = shape(&values);
    let id = values.id.clone().map_or(&[][..], |r| &line[r]);
    let fill = |template: &Template| {
        let mut ip = Vec::with_capacity(48);
        match (rewrite.client_ip, &values.ip) {
            (Some(addr), _) => write_ip(&mut ip, addr),
            (None, Some(r)) => ip.extend_from_slice(&line[r.clone()]),
            (None, None) => {}
        }
        template.render(id, &ip)
    };
    let hit = RENDERED.with(|kept| {
        let kept = kept.borrow();
        kept.iter()
            .find(|r| {
                r.shape == shape
                    && r.rewrite.same_kind(rewrite)
                    && r.outside.iter().zip(outside).all(|(a, b)| a == b)
            })
            .map(|r| fill(&r.template))
    });
    if let Some(out) = hit {
        return Ok(out);
    }
    let info = parse_info(line)?;
    let whole = rewrite_info_with(info.clone(), rewrite);
    // Kept only when it renders this very line exactly as the whole rewrite does.
    if let Some(template) = template_for(info, line, &values, rewrite).filter(|t| fill(t) == whole)
    {
        RENDERED.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() >= RENDERED_KEPT {
                kept.remove(0);
            }
            kept.push(Rendered {
                rewrite: rewrite.clone(),
                outside: outside.map(<[u8]>::to_vec),
                shape,
                template,
            });
        });
    }
    Ok(whole)
}

/// Which values a line has, and whether `client_id` comes first.
fn shape(values: &Values) -> (bool, bool, bool) {
    let id_first = match (&values.id, &values.ip) {
        (Some(a), Some(b)) => a.start < b.start,
        _ => false,
    };
    (values.id.is_some(), values.ip.is_some(), id_first)
}

/// The template of `info`'s rewrite, with the values [`Values::find`] saw as holes: the marks
/// go where the whole rewrite puts those values (`client_ip` set last, as [`apply_rewrite`]
/// does). `None` unless the parsed object has exactly the fields the scan saw, with the same
/// text.
fn template_for(
    mut info: Info,
    line: &[u8],
    values: &Values,
    rewrite: &Rewrite,
) -> Option<Template> {
    for (key, value, mark) in [
        ("client_id", &values.id, ID_MARK),
        ("client_ip", &values.ip, IP_MARK),
    ] {
        let same = match value {
            Some(r) => {
                info.count(key) == 1
                    && info.raw(key).map(|v| v.get().as_bytes()) == Some(&line[r.clone()])
            }
            None => info.count(key) == 0,
        };
        if !same {
            return None;
        }
        if value.is_some() {
            info.set(key, &Value::from(mark));
        }
    }
    apply_rewrite(&mut info, &rewrite.without_client_ip());
    if rewrite.client_ip.is_some() {
        info.set("client_ip", &Value::from(IP_MARK));
    }
    Template::of(&info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_rewrite_keeps_nonce_strips_urls() {
        let line = br#"INFO {"server_id":"S","nonce":"abc","connect_urls":["10.0.0.1:4222"],"tls_required":true,"headers":true,"max_payload":1048576} "#;
        let info = parse_info(line).unwrap();
        let out = rewrite_info(info, TlsAdvert::None, true);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("INFO {\"server_id\":\"S\",\"nonce\":\"abc\""),
            "{text}"
        );
        assert!(text.ends_with("} \r\n"));
        assert!(!text.contains("connect_urls"));
        assert!(!text.contains("tls_required"));
        let again = parse_info(&out).unwrap();
        assert_eq!(again.bool_field("headers"), Some(true));

        let out = rewrite_info(
            parse_info(line).unwrap(),
            TlsAdvert::Available { verify: false },
            false,
        );
        let m = parse_info(&out).unwrap();
        assert_eq!(m.bool_field("tls_available"), Some(true));
        assert!(m.raw("connect_urls").is_some());
    }

    #[test]
    fn info_values_are_relayed_byte_for_byte() {
        let line = br#"INFO {"big":2000222222222222222222222222222222222222222222222222222,"f":2.8e60,"s":"a\u00e9\/b","nonce":"n0-_","tls_required":true} "#;
        let out = rewrite_info(
            parse_info(line).unwrap(),
            TlsAdvert::Required { verify: false },
            true,
        );
        assert_eq!(
            out,
            br#"INFO {"big":2000222222222222222222222222222222222222222222222222222,"f":2.8e60,"s":"a\u00e9\/b","nonce":"n0-_","tls_required":true} "#
                .iter()
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>()
        );
    }

    #[test]
    fn info_stays_one_line() {
        let out = rewrite_info(
            parse_info(b"INFO {\"a\":{\"b\":[1,\r\n2]}}").unwrap(),
            TlsAdvert::None,
            true,
        );
        assert_eq!(out, b"INFO {\"a\":{\"b\":[1,  2]}} \r\n");
    }

    fn rewritten(line: &[u8], rewrite: &Rewrite) -> String {
        String::from_utf8(rewrite_info_with(parse_info(line).unwrap(), rewrite)).unwrap()
    }

    /// `listener.advertise`: exactly the advertised list, in the upstream's `connect_urls`
    /// place, whatever the upstream sent (any letter case, duplicates); `ws_connect_urls` gone.
    #[test]
    fn advertise_replaces_connect_urls() {
        let rw = Rewrite {
            tls: TlsAdvert::None,
            connect_urls: ConnectUrls::Advertise(
                vec![
                    "edge-a.example.com:4222".into(),
                    "edge-b.example.com:4222".into(),
                ]
                .into(),
            ),
            client_ip: None,
        };
        let line = br#"INFO {"server_id":"S","connect_urls":["10.0.0.1:4222","10.0.0.2:4222"],"ws_connect_urls":["10.0.0.1:8080"],"max_payload":1048576} "#;
        assert_eq!(
            rewritten(line, &rw),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge-a.example.com:4222\",\"edge-b.example.com:4222\"],\"max_payload\":1048576} \r\n"
        );
        // None upstream (a single server): the list is added.
        assert_eq!(
            rewritten(br#"INFO {"server_id":"S"}"#, &rw),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge-a.example.com:4222\",\"edge-b.example.com:4222\"]} \r\n"
        );
        // A Go client would read CONNECT_URLS too: replaced, as are duplicates.
        let out = rewritten(
            br#"INFO {"CONNECT_URLS":["10.9.9.9:1"],"connect_urls":["10.9.9.8:1"]}"#,
            &rw,
        );
        assert!(!out.contains("10.9.9"), "{out}");
        let strip = rewritten(
            br#"INFO {"Connect_Urls":["10.9.9.9:1"],"ws_CONNECT_urls":["x"]}"#,
            &Rewrite::new(TlsAdvert::None, true),
        );
        assert_eq!(strip, "INFO {} \r\n");
        // An empty list is left out, as nats-server leaves out an empty one.
        let none = Rewrite {
            connect_urls: ConnectUrls::Advertise(Vec::new().into()),
            ..rw.clone()
        };
        assert_eq!(
            rewritten(line, &none),
            "INFO {\"server_id\":\"S\",\"max_payload\":1048576} \r\n"
        );
    }

    #[test]
    fn client_ip_is_the_clients_own() {
        let ip: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let rw = Rewrite {
            client_ip: Some(ip),
            ..Rewrite::new(TlsAdvert::None, true)
        };
        // nats-server with proxy_protocol omits it: added.
        assert_eq!(
            rewritten(br#"INFO {"server_id":"S","client_id":7}"#, &rw),
            "INFO {\"server_id\":\"S\",\"client_id\":7,\"client_ip\":\"203.0.113.7\"} \r\n"
        );
        // Without it nats-server names natsgate's address: replaced in place.
        assert_eq!(
            rewritten(br#"INFO {"client_ip":"10.0.0.5","client_id":7}"#, &rw),
            "INFO {\"client_ip\":\"203.0.113.7\",\"client_id\":7} \r\n"
        );
        let mut info = parse_info(br#"INFO {"client_ip":"10.0.0.5"}"#).unwrap();
        assert!(!insert_client_ip(&mut info, ip));
        assert_eq!(info.str_field("client_ip").as_deref(), Some("10.0.0.5"));
        let mut info = parse_info(br#"INFO {}"#).unwrap();
        assert!(insert_client_ip(&mut info, ip));
        assert_eq!(info.str_field("client_ip").as_deref(), Some("203.0.113.7"));
    }

    /// nats-server's lame duck INFO: `"ldm":true`, no nonce; natsgate's is also rewritten.
    #[test]
    fn lame_duck_info() {
        let latest = parse_info(
            br#"INFO {"server_id":"S","nonce":"abc","tls_required":true,"connect_urls":["10.0.0.1:4222"],"client_id":9} "#,
        )
        .unwrap();
        let rw = Rewrite {
            tls: TlsAdvert::Available { verify: false },
            connect_urls: ConnectUrls::Advertise(vec!["edge:4222".into()].into()),
            client_ip: Some("203.0.113.7".parse().unwrap()),
        };
        assert_eq!(
            String::from_utf8(ldm_info(&latest, &rw)).unwrap(),
            "INFO {\"server_id\":\"S\",\"connect_urls\":[\"edge:4222\"],\"client_id\":9,\"ldm\":true,\"tls_available\":true,\"client_ip\":\"203.0.113.7\"} \r\n"
        );
    }

    /// A TLS-first connection: nats-server 2.15.1 with `handshake_first` and `allow_non_tls`
    /// says `"tls_required":true,"tls_available":true`; with TLS required, only the first.
    #[test]
    fn tls_first_connections_are_advertised_as_nats_server_does() {
        let line = br#"INFO {"server_id":"S","headers":true}"#;
        let first = Rewrite::new(TlsAdvert::RequiredAndAvailable { verify: false }, true);
        assert_eq!(
            rewritten(line, &first),
            "INFO {\"server_id\":\"S\",\"headers\":true,\"tls_required\":true,\"tls_available\":true} \r\n"
        );
        let required = Rewrite::new(TlsAdvert::Required { verify: true }, true);
        assert_eq!(
            rewritten(line, &required),
            "INFO {\"server_id\":\"S\",\"headers\":true,\"tls_required\":true,\"tls_verify\":true} \r\n"
        );
    }

    #[test]
    fn auth_and_max_payload() {
        assert!(auth_required(
            &parse_info(br#"INFO {"auth_required":true}"#).unwrap()
        ));
        assert!(!auth_required(
            &parse_info(br#"INFO {"max_payload":5}"#).unwrap()
        ));
        assert_eq!(
            max_payload(&parse_info(br#"INFO {"max_payload":5}"#).unwrap()),
            5
        );
        assert_eq!(
            max_payload(&parse_info(br#"INFO {}"#).unwrap()),
            1024 * 1024
        );
    }

    #[test]
    fn info_errors() {
        assert_eq!(parse_info(b"-ERR 'x'\r\n"), Err(InfoError::NotInfo));
        assert!(matches!(
            parse_info(b"INFO [1]\r\n"),
            Err(InfoError::BadJson(_))
        ));
        assert!(matches!(
            parse_info(b"INFO {\r\n"),
            Err(InfoError::BadJson(_))
        ));
    }

    /// nats-server's INFO after CONNECT, client after client: the first is rewritten whole
    /// and kept as a template, the next ones are rendered from it (same bytes as the whole
    /// rewrite), natsgate's own INFO too.
    #[test]
    fn the_info_after_connect_is_rendered_from_a_template() {
        let line = |id: u32, ip: &str| {
            format!(
                "INFO {{\"server_id\":\"S\",\"version\":\"2.15.1\",\"auth_required\":true,\"client_id\":{id},\"client_ip\":\"{ip}\",\"connect_urls\":[\"10.0.0.1:4222\"],\"connect_info\":true}} \r\n"
            )
            .into_bytes()
        };
        let rewrite = Rewrite {
            tls: TlsAdvert::Required { verify: false },
            connect_urls: ConnectUrls::Strip,
            client_ip: Some("203.0.113.9".parse().unwrap()),
        };
        RENDERED.with(|kept| kept.borrow_mut().clear());
        let whole = |l: &[u8]| rewrite_info_with(parse_info(l).unwrap(), &rewrite);
        let first = line(5, "127.0.0.1");
        assert_eq!(rewrite_info_line(&first, &rewrite).unwrap(), whole(&first));
        assert_eq!(RENDERED.with(|kept| kept.borrow().len()), 1);
        for (id, ip) in [(6, "127.0.0.1"), (1234567, "10.1.2.3"), (0, "::1")] {
            let next = line(id, ip);
            let out = rewrite_info_line(&next, &rewrite).unwrap();
            assert_eq!(out, whole(&next));
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(&format!("\"client_id\":{id},")), "{text}");
            assert!(text.contains("\"client_ip\":\"203.0.113.9\""), "{text}");
        }
        assert_eq!(
            RENDERED.with(|kept| kept.borrow().len()),
            1,
            "a line differing only in the per-connection values made a new template"
        );

        let latest = parse_info(&first).unwrap();
        let own = OwnInfoLine::new(&latest, &rewrite).expect("a template");
        let ip: IpAddr = "::ffff:198.51.100.4".parse().unwrap();
        assert_eq!(
            own.render(77, ip),
            rewrite_info_with(
                own_info(&latest, 77, ip),
                &Rewrite {
                    client_ip: Some(ip),
                    ..rewrite.clone()
                }
            )
        );
        let marked = parse_info(
            format!("INFO {{\"x\":{}}}", serde_json::to_string(ID_MARK).unwrap()).as_bytes(),
        )
        .unwrap();
        assert_eq!(
            OwnInfoLine::new(&marked, &rewrite),
            None,
            "an INFO holding the marker"
        );
    }
}
