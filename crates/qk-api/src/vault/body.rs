//! Request bodies as Vault clients send them. The CLI's `-f` sends `null`,
//! its `key=value` arguments arrive as JSON strings (`"true"`, `"2"`), and
//! Vault also takes form bodies: all are accepted, as Vault accepts them.

use axum::body::Bytes;
use axum::http::{header, HeaderMap};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::body_failure;
use crate::errors::Failure;

use super::Body;

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// The body as `T`: JSON (empty or `null` is `{}`) or, with a form content
/// type, `key=value&...`.
pub(crate) fn parse<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, Failure> {
    let body: Bytes = body.map_err(body_failure)?;
    let text = body.trim_ascii();
    // Like Vault: clients that label every body a form still send JSON.
    if is_form(headers) && !text.starts_with(b"{") && text != b"null" {
        return serde_urlencoded::from_bytes(text).map_err(|e| invalid("form", &e));
    }
    let text: &[u8] = if text.is_empty() || text == b"null" {
        b"{}"
    } else {
        text
    };
    serde_json::from_slice(text).map_err(|e| invalid("JSON", &e))
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(FORM_TYPE))
}

fn invalid(kind: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::invalid(format!(
        "the request body is not valid {kind} for this endpoint ({e}); see docs/API.md, \"Vault Transit\""
    ))
}

/// Go's `strconv.ParseBool`, which Vault's field parser uses.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A bool given as a JSON bool, `0`/`1`, or text (`"true"`, `"f"`, ...).
pub(crate) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let parsed = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Bool(b)) => Some(b),
        Some(Value::Number(n)) => n.as_u64().filter(|n| *n <= 1).map(|n| n == 1),
        Some(Value::String(s)) => parse_bool(s.trim()),
        Some(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| D::Error::custom("expected true or false"))
}

/// A whole number given as a JSON number or as decimal text.
pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let parsed = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| D::Error::custom("expected a whole number"))
}

/// [`opt_u64`] that must fit 32 bits (key versions, sizes).
pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt_u64(d)?
        .map(|n| u32::try_from(n).map_err(|_| D::Error::custom("the number is too large")))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Fields {
        #[serde(default, deserialize_with = "opt_bool")]
        flag: Option<bool>,
        #[serde(default, deserialize_with = "opt_u32")]
        version: Option<u32>,
        name: Option<String>,
    }

    fn fields(headers: &HeaderMap, body: &'static [u8]) -> Result<Fields, Failure> {
        parse(headers, Ok(Bytes::from_static(body)))
    }

    #[test]
    fn null_empty_and_cli_strings_are_accepted() {
        let json = HeaderMap::new();
        let none = Fields {
            flag: None,
            version: None,
            name: None,
        };
        assert_eq!(fields(&json, b"null").ok(), Some(none));
        assert_eq!(fields(&json, b" \n").ok().map(|f| f.flag), Some(None));
        let cli = fields(&json, br#"{"flag":"true","version":"3","name":"k"}"#).ok();
        assert_eq!(
            cli.as_ref().map(|f| (f.flag, f.version)),
            Some((Some(true), Some(3)))
        );
        let typed = fields(&json, br#"{"flag":false,"version":7}"#).ok();
        assert_eq!(
            typed.map(|f| (f.flag, f.version)),
            Some((Some(false), Some(7)))
        );
    }

    #[test]
    fn form_bodies_are_accepted_with_their_content_type() {
        let mut form = HeaderMap::new();
        form.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        let f = fields(&form, b"flag=f&version=12&name=a%20b").ok();
        assert_eq!(
            f.map(|f| (f.flag, f.version, f.name)),
            Some((Some(false), Some(12), Some("a b".to_owned())))
        );
        assert!(fields(&HeaderMap::new(), b"flag=f").is_err());
        let json_labelled_form = fields(&form, br#"{"flag":"t","version":2}"#).ok();
        assert_eq!(
            json_labelled_form.map(|f| (f.flag, f.version)),
            Some((Some(true), Some(2)))
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let json = HeaderMap::new();
        for body in [
            &br#"{"flag":"yes"}"#[..],
            br#"{"flag":2}"#,
            br#"{"version":"-1"}"#,
            br#"{"version":4294967296}"#,
            br#"{"version":[1]}"#,
            b"[1]",
        ] {
            assert!(
                fields(&json, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
