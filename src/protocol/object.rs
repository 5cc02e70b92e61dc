//! A JSON object field by field, each value kept as its exact JSON text: the upstream's INFO and
//! the client's CONNECT both arrive as one.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Field names whose values are secrets: a CONNECT's credentials and ADR-55 signature, and any
/// key that looks like one (`seed`, `secret`, `password`, ...). [`RawObject`]'s `Debug` masks
/// their values.
const SECRET_NAMES: [&str; 6] = ["pass", "auth_token", "jwt", "sig", "proxy_sig", "nkey"];
const SECRET_PARTS: [&str; 6] = ["pass", "token", "jwt", "sig", "seed", "secret"];

/// A JSON object field by field, each value kept as its exact JSON text: the upstream's INFO
/// and the client's CONNECT. Relaying never re-encodes a value, so numbers, escapes and the
/// nonce pass byte for byte and field order is kept; and, like nats-server's own decoder, it
/// checks values' syntax without converting them (a number too large for f64 is not an error).
/// Duplicate keys are all kept, in order.
///
/// `Debug` shows every key but masks the values of secrets (see [`is_secret_key`]).
#[derive(Clone, Default)]
pub struct RawObject {
    fields: Vec<(String, Box<RawValue>)>,
}

/// Whether a key's value must never be shown: it names a secret as nats-server would read it
/// (case-insensitively, see [`go_name_matches`]), or merely looks like one.
pub fn is_secret_key(key: &str) -> bool {
    let lower = key.to_lowercase();
    SECRET_NAMES.iter().any(|n| go_name_matches(key, n))
        || SECRET_PARTS.iter().any(|p| lower.contains(p))
}

impl std::fmt::Debug for RawObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.fields {
            if is_secret_key(k) {
                m.entry(k, &format_args!("<masked>"));
            } else {
                m.entry(k, &format_args!("{}", v.get()));
            }
        }
        m.finish()
    }
}

/// Whether the JSON key `key` fills the Go struct field tagged `name` (ASCII, as every
/// nats-server field name is) when nats-server decodes it with `encoding/json`.
///
/// Go prefers an exact match and otherwise accepts a case-insensitive one: it folds each
/// character to the smallest member of its simple case-folding orbit (`foldName`/`foldRune`,
/// built on `unicode.SimpleFold`). No two of nats-server's CONNECT fields fold alike, so "exact,
/// else folded" is simply "folded". Two non-ASCII characters share an orbit with an ASCII
/// letter, and so match it: KELVIN SIGN (K) and LATIN SMALL LETTER LONG S (S). The Turkish
/// dotted and dotless I do not (Go folds them only to themselves); tests/audit_user.rs checks
/// both against nats-server.
pub fn go_name_matches(key: &str, name: &str) -> bool {
    key.chars()
        .map(go_fold)
        .eq(name.bytes().map(|b| char::from(b.to_ascii_uppercase())))
}

/// Go's fold for one character, as far as it can yield ASCII: every other non-ASCII character
/// folds to something non-ASCII, which no field name contains.
fn go_fold(c: char) -> char {
    match c {
        '\u{212A}' => 'K',
        '\u{017F}' => 'S',
        c => c.to_ascii_uppercase(),
    }
}

impl RawObject {
    /// Number of fields (duplicates counted).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The raw JSON text of the first field named exactly `key` (INFO: nats-server writes
    /// each key once, in its own spelling).
    pub fn raw(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }

    /// A field that holds a string (`nonce`, `server_id`), by exact name.
    pub fn str_field(&self, key: &str) -> Option<String> {
        self.raw(key)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// A field that holds a boolean (`tls_required`), by exact name.
    pub fn bool_field(&self, key: &str) -> Option<bool> {
        self.raw(key)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// The string nats-server reads for its field `name` (ASCII) from this object, decoding it
    /// into a Go struct with `encoding/json`: keys match as [`go_name_matches`] says, duplicates
    /// are applied in order so the last one wins, and a `null` or a value of another type
    /// leaves the field as it was (Go records a type error, and nats-server then refuses the
    /// CONNECT).
    pub fn go_str_field(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .rev()
            .filter(|(k, _)| go_name_matches(k, name))
            .find_map(|(_, v)| serde_json::from_str::<String>(v.get()).ok())
    }

    /// The fields as JSON values, for inspection (not used on the relay path).
    pub fn to_map(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_str(v.get()).ok()?)))
            .collect()
    }

    /// How many fields are named exactly `key`.
    pub fn count(&self, key: &str) -> usize {
        self.fields.iter().filter(|(k, _)| k == key).count()
    }

    /// The same fields in the same order with the same values, except that the values of the
    /// keys in `ignore` may differ (their presence may not).
    pub fn same_apart_from(&self, other: &RawObject, ignore: &[&str]) -> bool {
        self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((k, v), (k2, v2))| {
                    k == k2 && (v.get() == v2.get() || ignore.contains(&k.as_str()))
                })
    }

    /// nats-server omits false flags (`omitempty`); do the same so clients see familiar INFO.
    /// A flag that is set keeps its place; a new one goes last.
    pub(crate) fn set_flag(&mut self, key: &str, on: bool) {
        let mut seen = false;
        self.fields.retain(|(k, _)| {
            let keep = k != key || (on && !seen);
            seen |= k == key;
            keep
        });
        if on {
            let value = RawValue::from_string("true".into()).unwrap_or_default();
            match self.fields.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => self.fields.push((key.to_string(), value)),
            }
        }
    }

    /// Sets a field to a JSON value: in place when present, last otherwise.
    pub(crate) fn set(&mut self, key: &str, value: &Value) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let Ok(value) = RawValue::from_string(text) else {
            return;
        };
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key.to_string(), value)),
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| k != key);
    }

    /// Removes every field that fills the Go struct field `name` ([`go_name_matches`]: any
    /// letter case, duplicates included), so no client decoder reads it; returns where the
    /// first one was.
    pub(crate) fn remove_go(&mut self, name: &str) -> Option<usize> {
        let first = self
            .fields
            .iter()
            .position(|(k, _)| go_name_matches(k, name));
        self.fields.retain(|(k, _)| !go_name_matches(k, name));
        first
    }

    /// Sets `key` to a JSON value at position `at` (or last), after [`RawObject::remove_go`].
    pub(crate) fn insert_at(&mut self, at: Option<usize>, key: &str, value: &Value) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let Ok(value) = RawValue::from_string(text) else {
            return;
        };
        let at = at.unwrap_or(self.fields.len()).min(self.fields.len());
        self.fields.insert(at, (key.to_string(), value));
    }

    /// `INFO {json} \r\n`, with the space before CRLF that nats-server writes.
    pub(crate) fn to_info_line(&self) -> Vec<u8> {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(16 + size);
        out.extend_from_slice(b"INFO {");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Encoding a string cannot fail.
            out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
            out.push(b':');
            // A value's own whitespace is kept, except line breaks: the INFO must stay one
            // line. (They can only be whitespace between tokens: JSON strings cannot hold raw
            // control characters.)
            out.extend(
                v.get()
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
        }
        out.extend_from_slice(b"} \r\n");
        out
    }
}

/// Equal when the same fields hold the same JSON text, in the same order.
impl PartialEq for RawObject {
    fn eq(&self, other: &RawObject) -> bool {
        self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((ka, va), (kb, vb))| ka == kb && va.get() == vb.get())
    }
}

impl<'de> serde::Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawObject, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RawObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawObject, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: &str) -> RawObject {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn go_names_fold_like_encoding_json() {
        for key in ["user", "USER", "User", "uSeR", "u\u{17F}er", "U\u{17F}ER"] {
            assert!(go_name_matches(key, "user"), "{key}");
        }
        for key in ["user ", "usr", "users", "us_er", "\u{212A}", "us\u{0130}"] {
            assert!(!go_name_matches(key, "user"), "{key}");
        }
        assert!(go_name_matches("\u{212A}ey", "key"));
        assert!(!go_name_matches("vers\u{0131}on", "version"));
        assert!(!go_name_matches("VERS\u{0130}ON", "version"));
    }

    #[test]
    fn the_last_string_wins_whatever_its_case() {
        let f = |json: &str| obj(json).go_str_field("user");
        assert_eq!(
            f(r#"{"user":"alice","user":"bob"}"#).as_deref(),
            Some("bob")
        );
        assert_eq!(
            f(r#"{"user":"alice","USER":"bob"}"#).as_deref(),
            Some("bob")
        );
        assert_eq!(f(r#"{"USER":"bob"}"#).as_deref(), Some("bob"));
        assert_eq!(
            f(r#"{"user":"a","USER":"b","user":"c"}"#).as_deref(),
            Some("c")
        );
        // null and other types leave the field as it was, as Go does.
        assert_eq!(f(r#"{"user":"bob","user":null}"#).as_deref(), Some("bob"));
        assert_eq!(f(r#"{"user":"bob","User":7}"#).as_deref(), Some("bob"));
        assert_eq!(f(r#"{"name":"bob"}"#), None);
    }

    #[test]
    fn debug_masks_secrets() {
        let o = obj(
            r#"{"user":"u","pass":"hunter2","PASS":"hunter3","auth_token":"tok1","jwt":"eyJ1",
                "sig":"sig1","proxy_sig":"psig1","nkey":"UABC1","seed":"SUAB1","pa\u017f\u017f":"p5"}"#,
        );
        let text = format!("{o:?}");
        for secret in [
            "hunter2", "hunter3", "tok1", "eyJ1", "sig1", "psig1", "UABC1", "SUAB1", "p5",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains(r#""user": "u""#), "{text}");
        assert!(text.contains(r#""pass": <masked>"#), "{text}");
    }
}
