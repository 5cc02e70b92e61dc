//! Typed values that validate themselves while the file is deserialised, so that a field's
//! type and its `#[serde(...)]` attribute are the whole of its rules, and every problem is
//! reported at the key it belongs to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serializer};

/// The longest duration any setting accepts (a day): larger values are typos.
const MAX_SECONDS: f64 = 86_400.0;

/// `#[serde(with = "value::seconds")]`: a number of seconds (fractions allowed, 0 to 86400)
/// as a [`Duration`], written back as a number of seconds.
pub(crate) mod seconds {
    use super::*;

    /// Reads a number of seconds.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || !(0.0..=MAX_SECONDS).contains(&v) {
            return Err(D::Error::custom(format!(
                "{v} is not a number of seconds between 0 and {MAX_SECONDS}"
            )));
        }
        Ok(Duration::from_secs_f64(v))
    }

    /// Writes the duration as a number of seconds, as it is read.
    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// `#[serde(with = "value::positive_seconds")]`: [`seconds`] that must be greater than 0
/// (a zero timeout would refuse everything).
pub(crate) mod positive_seconds {
    pub(crate) use super::seconds::serialize;
    use super::*;

    /// Reads a number of seconds greater than 0.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = super::seconds::deserialize(d)?;
        if v.is_zero() {
            return Err(D::Error::custom("must be greater than 0"));
        }
        Ok(v)
    }
}

/// `#[serde(default = "value::secs::<N>")]`: a default of `N` whole seconds.
pub(crate) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// `#[serde(default = "value::int::<N>")]`: a default count.
pub(crate) fn int<const N: usize>() -> usize {
    N
}

/// `#[serde(default = "value::yes")]`: a default of `true`.
pub(crate) fn yes() -> bool {
    true
}

/// `#[serde(default = "value::all_defaults")]` on a table: the table as if it were empty, so
/// each field's own default applies and no `impl Default` repeats them.
pub(crate) fn all_defaults<T: DeserializeOwned>() -> T {
    T::deserialize(serde_value::Value::Map(Default::default()))
        .unwrap_or_else(|e| panic!("a table with a required key used all_defaults: {e}"))
}

/// `#[serde(deserialize_with = "value::at_least::<MIN, _>")]`: a count of at least `MIN`.
pub(crate) fn at_least<'de, const MIN: usize, D: Deserializer<'de>>(
    d: D,
) -> Result<usize, D::Error> {
    let v = usize::deserialize(d)?;
    match v {
        0 if MIN == 1 => Err(D::Error::custom("must be greater than 0")),
        v if v < MIN => Err(D::Error::custom(format!(
            "{v} is too small; use at least {MIN}"
        ))),
        v => Ok(v),
    }
}

/// `#[serde(deserialize_with = "value::non_zero")]`: a limit that must be greater than 0.
pub(crate) fn non_zero<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    at_least::<1, D>(d)
}

/// `#[serde(default, deserialize_with = "value::optional_non_zero")]`: an optional limit that,
/// when given, must be greater than 0.
pub(crate) fn optional_non_zero<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    non_zero(d).map(Some)
}

/// `#[serde(deserialize_with = "value::non_empty")]`: a list with at least one entry.
pub(crate) fn non_empty<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(D::Error::custom("must list at least one entry"));
    }
    Ok(v)
}

/// `#[serde(deserialize_with = "value::socket_addr")]`: `ip:port`, with an error that shows
/// the expected form (serde's own says only "invalid socket address syntax").
pub(crate) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        D::Error::custom(format!(
            "`{s}` is not an address such as \"0.0.0.0:4222\" or \"[::]:4222\""
        ))
    })
}

/// `#[serde(deserialize_with = "value::file")]`: a file that must be named (not `""`).
pub(crate) fn file<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    match optional_file(d)? {
        Some(p) => Ok(p),
        None => Err(D::Error::custom("must name a file")),
    }
}

/// `#[serde(default, deserialize_with = "value::optional_file")]`: an optional file, where
/// `""` means none (so templates can always write the key).
pub(crate) fn optional_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(optional_string(d)?.map(PathBuf::from))
}

/// `#[serde(default, deserialize_with = "value::optional_string")]`: `""` means none.
pub(crate) fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok(Some(s).filter(|s| !s.is_empty()))
}

/// Shows a duration as seconds (`1.5s`), the unit every setting is written in.
pub(crate) fn show_secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
