//! INFO lines rendered once: what nats-server writes differently on each connection
//! (`client_id`, `client_ip`, `nonce`) is all that changes from one client's INFO to the next,
//! so a line is parsed and rewritten once and the next ones are filled in. Every function here
//! gives the bytes the whole parse and rewrite give ([`super::fuzz_logic::check_info_line`]
//! checks it against them).

use std::cell::RefCell;
use std::net::IpAddr;
use std::ops::Range;

use serde_json::Value;

use super::info::{apply_rewrite, parse_info, rewrite_info_with};
use super::{Info, InfoError, Rewrite};

/// A value nats-server writes per connection, and a hole of a [`Template`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hole {
    Id,
    Ip,
    Nonce,
}

impl Hole {
    const ALL: [Hole; 3] = [Hole::Id, Hole::Ip, Hole::Nonce];

    fn key(self) -> &'static str {
        match self {
            Hole::Id => "client_id",
            Hole::Ip => "client_ip",
            Hole::Nonce => "nonce",
        }
    }

    /// A JSON string no upstream writes by accident (NUL is written `\u0000`), set in place
    /// of the value while a template is rendered.
    fn mark(self) -> &'static str {
        match self {
            Hole::Id => "\u{0}natsgate client_id\u{0}",
            Hole::Ip => "\u{0}natsgate client_ip\u{0}",
            Hole::Nonce => "\u{0}natsgate nonce\u{0}",
        }
    }
}

/// An INFO line with holes where per-connection values go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    /// The line without the values.
    text: Vec<u8>,
    /// Where in `text` each value goes, in order.
    holes: Vec<(usize, Hole)>,
}

impl Template {
    /// `info` rendered with each hole's mark as a value where one was set. `None` when a mark
    /// occurs more than once (the upstream's INFO holds its text).
    fn of(info: &Info) -> Option<Template> {
        let line = info.to_info_line();
        let mut found = Vec::with_capacity(Hole::ALL.len());
        for hole in Hole::ALL {
            let quoted = serde_json::to_vec(hole.mark()).ok()?;
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

    fn has(&self, hole: Hole) -> bool {
        self.holes.iter().any(|&(_, h)| h == hole)
    }

    /// The line with each hole filled by `fill` (JSON text).
    fn render(&self, fill: impl Fn(Hole, &mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 96);
        let mut from = 0;
        for &(at, hole) in &self.holes {
            out.extend_from_slice(&self.text[from..at]);
            fill(hole, &mut out);
            from = at;
        }
        out.extend_from_slice(&self.text[from..]);
        out
    }
}

/// natsgate's own INFO line ([`super::own_info`] rewritten with a [`Rewrite`]) for one upstream INFO
/// and one rewrite, rendered once: only `client_id` and `client_ip` are filled in per client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnInfoLine(Template);

impl OwnInfoLine {
    /// `None` when the line cannot be rendered once (an upstream INFO that holds a mark's text
    /// itself): it is then rendered whole, per client.
    pub fn new(latest: &Info, rewrite: &Rewrite) -> Option<OwnInfoLine> {
        let mut info = latest.clone();
        info.remove("nonce");
        for hole in [Hole::Id, Hole::Ip] {
            info.set(hole.key(), &Value::from(hole.mark()));
        }
        apply_rewrite(&mut info, &rewrite.without_client_ip());
        let template = Template::of(&info)?;
        (template.holes.len() == 2 && template.has(Hole::Id) && template.has(Hole::Ip))
            .then_some(OwnInfoLine(template))
    }

    /// The line for one client: the same bytes as [`super::own_info`] and [`rewrite_info_with`] with
    /// the rewrite's `client_ip` set to `client_ip`.
    pub fn render(&self, client_id: u64, client_ip: IpAddr) -> Vec<u8> {
        self.0.render(|hole, out| match hole {
            Hole::Ip => write_ip(out, client_ip),
            // Writing to a Vec cannot fail.
            _ => {
                let _ = std::io::Write::write_fmt(out, format_args!("{client_id}"));
            }
        })
    }
}

/// A client's address as a JSON string (IPv4-mapped written as IPv4): no escaping needed.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let _ = std::io::Write::write_fmt(out, format_args!("\"{}\"", ip.to_canonical()));
}

/// Where an INFO line's per-connection values are: the top-level `client_id` (an integer),
/// `client_ip` and `nonce` (strings of printable ASCII without escapes), in line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Values {
    cuts: Vec<(Range<usize>, Hole)>,
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
        let mut cuts: Vec<(Range<usize>, Hole)> = Vec::with_capacity(3);
        let (mut depth, mut key_next, mut i) = (0usize, false, start);
        while i < line.len() {
            match line[i] {
                b'"' => {
                    let end = string_end(line, i)?;
                    if !(depth == 1 && key_next) {
                        i = end;
                        continue;
                    }
                    key_next = false;
                    let colon = skip_blanks(line, end);
                    if line.get(colon) != Some(&b':') {
                        return None;
                    }
                    let value = skip_blanks(line, colon + 1);
                    let hole = Hole::ALL
                        .into_iter()
                        .find(|h| &line[i + 1..end - 1] == h.key().as_bytes());
                    i = value;
                    if let Some(hole) = hole {
                        let end = match hole {
                            Hole::Id => integer_end(line, value)?,
                            _ => plain_string_end(line, value)?,
                        };
                        if cuts.iter().any(|&(_, h)| h == hole) {
                            return None;
                        }
                        cuts.push((value..end, hole));
                        i = end;
                    }
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
                            .then_some(Values { cuts });
                    }
                }
                b',' if depth == 1 => key_next = true,
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The value's JSON text in `line`.
    fn value<'a>(&self, line: &'a [u8], hole: Hole) -> Option<&'a [u8]> {
        self.cuts
            .iter()
            .find(|&&(_, h)| h == hole)
            .map(|(r, _)| &line[r.clone()])
    }

    /// Where the values are in `line` if it is `known` (whose values `self` found) with other
    /// values: the same bytes around them, and in their places values of the same form. No
    /// scan of the JSON: the bytes between the values are compared, and each value is read
    /// where it starts.
    fn matching(&self, known: &[u8], line: &[u8]) -> Option<Values> {
        let mut cuts = Vec::with_capacity(self.cuts.len());
        let (mut k, mut l) = (0, 0);
        for (r, hole) in &self.cuts {
            let piece = &known[k..r.start];
            if line.get(l..l + piece.len())? != piece {
                return None;
            }
            l += piece.len();
            let end = match hole {
                Hole::Id => integer_end(line, l)?,
                _ => plain_string_end(line, l)?,
            };
            cuts.push((l..end, *hole));
            (k, l) = (r.end, end);
        }
        (line.get(l..)? == &known[k..]).then_some(Values { cuts })
    }

    /// Whether the parsed `info` has exactly the fields the scan saw, with the same text: no
    /// other (escaped, duplicate) spelling of a key that [`Values::find`] could not see.
    fn agree_with(&self, line: &[u8], info: &Info) -> bool {
        Hole::ALL
            .into_iter()
            .all(|hole| match self.value(line, hole) {
                Some(text) => {
                    info.count(hole.key()) == 1
                        && info.raw(hole.key()).map(|v| v.get().as_bytes()) == Some(text)
                }
                None => info.count(hole.key()) == 0,
            })
    }
}

/// The index after the string that starts at `at` (a `"`).
fn string_end(line: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', line.get(i..)?)?;
        match line[i] {
            b'"' => return Some(i + 1),
            _ => i += 2,
        }
    }
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

/// Whether the value that ends at `end` is followed by the end of its member.
fn ends_member(line: &[u8], end: usize) -> bool {
    matches!(line.get(skip_blanks(line, end)), Some(b',' | b'}'))
}

/// The end of a JSON integer without sign or leading zero (a run of digits).
fn integer_end(line: &[u8], at: usize) -> Option<usize> {
    let n = line
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = at + n;
    let valid = n == 1 || (n > 1 && line[at] != b'0');
    (valid && ends_member(line, end)).then_some(end)
}

/// The end of a string of printable ASCII without escapes.
fn plain_string_end(line: &[u8], at: usize) -> Option<usize> {
    if line.get(at) != Some(&b'"') {
        return None;
    }
    let n = line
        .get(at + 1..)?
        .iter()
        .take_while(|&&b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        .count();
    let end = at + 1 + n + 1;
    (line.get(end - 1) == Some(&b'"') && ends_member(line, end)).then_some(end)
}

/// An INFO line kept to recognise the next ones by their bytes ([`same_info_line`]).
#[derive(Debug, Clone)]
pub struct KnownLine {
    line: Vec<u8>,
    /// `None`: not plain enough to recognise others by ([`Values::find`], [`Values::agree_with`]).
    values: Option<Values>,
}

impl KnownLine {
    /// `line` and its parse, `info`.
    pub fn new(line: Vec<u8>, info: &Info) -> KnownLine {
        let values = Values::find(&line).filter(|v| v.agree_with(&line, info));
        KnownLine { line, values }
    }

    /// Where the values are in `line` if it is this line with other values.
    fn matching(&self, line: &[u8]) -> Option<Values> {
        self.values.as_ref()?.matching(&self.line, line)
    }
}

/// Whether `line` says what `known` says, apart from the values nats-server writes per
/// connection. Returns `line`'s nonce when it does (`Some(None)`: it has none): whatever else
/// the line would be parsed for can be read from `known`'s parse.
pub fn same_info_line(known: &KnownLine, line: &[u8]) -> Option<Option<String>> {
    let values = known.matching(line)?;
    let nonce = values.value(line, Hole::Nonce).map(|v| {
        // A plain string: its text between the quotes is its value.
        String::from_utf8_lossy(&v[1..v.len() - 1]).into_owned()
    });
    Some(nonce)
}

/// A rendered rewrite of one INFO line: what lines that differ from it only in their
/// per-connection values become.
struct Rendered {
    rewrite: Rewrite,
    /// The line it was made of (its values found).
    known: KnownLine,
    template: Template,
}

/// Rewritten INFO lines kept per thread (each worker thread serves its own connections).
const RENDERED_KEPT: usize = 4;

thread_local! {
    static RENDERED: RefCell<Vec<Rendered>> = const { RefCell::new(Vec::new()) };
}

/// [`parse_info`] then [`rewrite_info_with`]: the same bytes, and the same error. nats-server
/// sends every client an INFO after its CONNECT that differs from the previous client's only in
/// `client_id` and `client_ip`; such a line is rendered from the template made of the first
/// one (kept per thread) instead of being parsed and rewritten again.
pub fn rewrite_info_line(line: &[u8], rewrite: &Rewrite) -> Result<Vec<u8>, InfoError> {
    let hit = RENDERED.with(|kept| {
        kept.borrow().iter().find_map(|r| {
            let values = r
                .rewrite
                .same_kind(rewrite)
                .then(|| r.known.matching(line))
                .flatten()?;
            Some(r.template.render(filler(line, &values, rewrite)))
        })
    });
    if let Some(out) = hit {
        return Ok(out);
    }
    let info = parse_info(line)?;
    let known = KnownLine::new(line.to_vec(), &info);
    let Some(values) = &known.values else {
        return Ok(rewrite_info_with(info, rewrite));
    };
    let whole = rewrite_info_with(info.clone(), rewrite);
    // Kept only when it renders this very line exactly as the whole rewrite does.
    let template = template_for(info, values, rewrite)
        .filter(|t| t.render(filler(line, values, rewrite)) == whole);
    if let Some(template) = template {
        RENDERED.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() >= RENDERED_KEPT {
                kept.remove(0);
            }
            kept.push(Rendered {
                rewrite: rewrite.clone(),
                known,
                template,
            });
        });
    }
    Ok(whole)
}

/// What fills a rewritten line's holes: the client's address when the rewrite sets it, the
/// line's own values otherwise.
fn filler<'a>(
    line: &'a [u8],
    values: &'a Values,
    rewrite: &'a Rewrite,
) -> impl Fn(Hole, &mut Vec<u8>) + 'a {
    move |hole, out| match (hole, rewrite.client_ip) {
        (Hole::Ip, Some(addr)) => write_ip(out, addr),
        _ => out.extend_from_slice(values.value(line, hole).unwrap_or_default()),
    }
}

/// The template of `info`'s rewrite, the values [`Values::find`] saw as holes: the marks go
/// where the whole rewrite puts the values (`client_ip` set last, as [`apply_rewrite`] does).
fn template_for(mut info: Info, values: &Values, rewrite: &Rewrite) -> Option<Template> {
    for &(_, hole) in &values.cuts {
        info.set(hole.key(), &Value::from(hole.mark()));
    }
    apply_rewrite(&mut info, &rewrite.without_client_ip());
    if rewrite.client_ip.is_some() {
        info.set(Hole::Ip.key(), &Value::from(Hole::Ip.mark()));
    }
    Template::of(&info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{own_info, ConnectUrls, TlsAdvert};

    fn line(id: u32, ip: &str, nonce: &str) -> Vec<u8> {
        format!(
            "INFO {{\"server_id\":\"S\",\"version\":\"2.15.1\",\"auth_required\":true,\"nonce\":\"{nonce}\",\"client_id\":{id},\"client_ip\":\"{ip}\",\"connect_urls\":[\"10.0.0.1:4222\"],\"connect_info\":true}} \r\n"
        )
        .into_bytes()
    }

    /// nats-server's INFO after CONNECT, client after client: the first is rewritten whole
    /// and kept as a template, the next ones are rendered from it (same bytes as the whole
    /// rewrite); natsgate's own INFO too.
    #[test]
    fn the_info_after_connect_is_rendered_from_a_template() {
        let rewrite = Rewrite {
            tls: TlsAdvert::Required { verify: false },
            connect_urls: ConnectUrls::Strip,
            client_ip: Some("203.0.113.9".parse().unwrap()),
        };
        RENDERED.with(|kept| kept.borrow_mut().clear());
        let whole = |l: &[u8]| rewrite_info_with(parse_info(l).unwrap(), &rewrite);
        let first = line(5, "127.0.0.1", "n0");
        assert_eq!(rewrite_info_line(&first, &rewrite).unwrap(), whole(&first));
        assert_eq!(RENDERED.with(|kept| kept.borrow().len()), 1);
        for (id, ip, nonce) in [
            (6, "127.0.0.1", "n1"),
            (1234567, "10.1.2.3", "x-_y"),
            (0, "::1", ""),
        ] {
            let next = line(id, ip, nonce);
            let out = rewrite_info_line(&next, &rewrite).unwrap();
            assert_eq!(out, whole(&next));
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(&format!("\"client_id\":{id},")), "{text}");
            assert!(text.contains(&format!("\"nonce\":\"{nonce}\"")), "{text}");
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
        let expected = Rewrite {
            client_ip: Some(ip),
            ..rewrite.clone()
        };
        assert_eq!(
            own.render(77, ip),
            rewrite_info_with(own_info(&latest, 77, ip), &expected)
        );
        let marked = format!(
            "INFO {{\"x\":{}}}",
            serde_json::to_string(Hole::Id.mark()).unwrap()
        );
        let marked = parse_info(marked.as_bytes()).unwrap();
        assert_eq!(OwnInfoLine::new(&marked, &rewrite), None);
    }

    /// An upstream INFO that says what the latest one said, apart from this connection's
    /// values, needs no parse: its nonce is read from its place. Anything else does.
    #[test]
    fn an_info_like_the_latest_one_is_known_by_its_bytes() {
        let known = KnownLine::new(
            line(5, "127.0.0.1", "abc"),
            &parse_info(&line(5, "127.0.0.1", "abc")).unwrap(),
        );
        assert_eq!(
            same_info_line(&known, &line(9, "10.0.0.9", "x_Y-z")),
            Some(Some("x_Y-z".to_string()))
        );
        let changed = String::from_utf8(line(9, "10.0.0.9", "n"))
            .unwrap()
            .replace("2.15.1", "2.15.2");
        assert_eq!(same_info_line(&known, changed.as_bytes()), None);
        let without_nonce = br#"INFO {"server_id":"S","client_id":1} "#;
        assert_eq!(
            same_info_line(&known, without_nonce),
            None,
            "a nonce that disappears is a change"
        );
        let escaped = br#"INFO {"server_id":"S","nonce":"a\u0062c","client_id":5} "#;
        let escaped_known = KnownLine::new(escaped.to_vec(), &parse_info(escaped).unwrap());
        assert_eq!(same_info_line(&escaped_known, escaped), None);
        let plain = br#"INFO {"server_id":"S","client_id":5,"client\u005fid":6} "#;
        assert_eq!(
            same_info_line(
                &KnownLine::new(plain.to_vec(), &parse_info(plain).unwrap()),
                plain
            ),
            None,
            "a key spelled with an escape is one the scan cannot see"
        );
    }
}
