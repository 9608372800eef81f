//! AWS Signature Version 4, as a verifier: the canonical request, the
//! string to sign and the signing key, from the request as received.
//!
//! Pure: the caller passes the clock and the secret.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TERMINATOR: &str = "aws4_request";
/// The service name a KMS request is signed for.
pub(crate) const SERVICE: &str = "kms";
/// Longest a signature is accepted before or after its time stamp (AWS
/// allows five minutes of clock skew).
pub(crate) const MAX_SKEW_MS: u64 = 5 * 60 * 1000;
const MAX_SIGNED_HEADERS: usize = 32;

/// Why a signature was not accepted; each maps to AWS's error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SigError {
    #[error("the request is not signed: send an `Authorization: AWS4-HMAC-SHA256 ...` header (an AWS SDK signs requests when given credentials)")]
    Missing,
    #[error("the request's signature is incomplete: {0}")]
    Incomplete(String),
    #[error("the signature is expired or not yet valid: signed at {signed}, more than 5 minutes from this node's clock; check the client's clock")]
    Expired { signed: String },
    #[error("the request signature we calculated does not match the signature you provided; check your AWS secret access key and signing method")]
    Mismatch,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authorization {
    pub access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, as listed (AWS lists them sorted).
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Authorization, SigError> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(SigError::Missing)?
            .to_str()
            .map_err(|_| SigError::Incomplete("the Authorization header is not text".into()))?;
        Self::parse(value)
    }

    pub(crate) fn parse(value: &str) -> Result<Authorization, SigError> {
        let incomplete = |m: &str| SigError::Incomplete(m.to_owned());
        let rest = value
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| incomplete("only AWS4-HMAC-SHA256 signatures are accepted"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (name, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| incomplete("each Authorization part is name=value"))?;
            match name {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed = Some(v),
                "Signature" => signature = Some(v),
                _ => return Err(incomplete("unknown Authorization part")),
            }
        }
        let credential = credential.ok_or_else(|| incomplete("no Credential"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(incomplete(
                "the Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
            ));
        };
        if terminator != TERMINATOR || date.len() != 8 || access_key_id.is_empty() {
            return Err(incomplete(
                "the Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
            ));
        }
        let signed_headers: Vec<String> = signed
            .ok_or_else(|| incomplete("no SignedHeaders"))?
            .split(';')
            .map(str::to_owned)
            .collect();
        if signed_headers.len() > MAX_SIGNED_HEADERS || signed_headers.iter().any(String::is_empty)
        {
            return Err(incomplete("SignedHeaders is malformed"));
        }
        let signature = signature.ok_or_else(|| incomplete("no Signature"))?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(incomplete("the Signature must be 64 hex digits"));
        }
        Ok(Authorization {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }

    fn scope(&self) -> String {
        format!(
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }
}

/// The request as received.
pub(crate) struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The URI authority, for a `host` signed over HTTP/2 (no Host header).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// The body may hold plaintext: it is never printed.
impl std::fmt::Debug for Received<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// Checks `auth`'s signature of `req` with `secret` at `now_ms`.
pub(crate) fn verify(
    auth: &Authorization,
    req: &Received<'_>,
    secret: &str,
    now_ms: u64,
) -> Result<(), SigError> {
    // The operation is named by X-Amz-Target: unsigned, a captured request
    // could be replayed as another operation on the same body.
    for needed in ["host", "x-amz-date", "x-amz-target"] {
        if !auth.signed_headers.iter().any(|h| h == needed) {
            return Err(SigError::Incomplete(format!(
                "the {needed} header must be signed"
            )));
        }
    }
    check_signature(auth, req, secret, now_ms)
}

/// The signature check itself, whatever headers were signed.
fn check_signature(
    auth: &Authorization,
    req: &Received<'_>,
    secret: &str,
    now_ms: u64,
) -> Result<(), SigError> {
    let amz_date = header_text(req.headers, "x-amz-date")
        .ok_or_else(|| SigError::Incomplete("no X-Amz-Date header".into()))?;
    let signed_ms = parse_amz_date(&amz_date)
        .ok_or_else(|| SigError::Incomplete("X-Amz-Date must be YYYYMMDDTHHMMSSZ".into()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::Incomplete(
            "the Credential date is not the X-Amz-Date's day".into(),
        ));
    }
    if signed_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(SigError::Expired { signed: amz_date });
    }
    let canonical = canonical_request(auth, req)?;
    let expected = signature(secret, auth, &amz_date, &canonical);
    let matches: bool = expected.as_bytes().ct_eq(auth.signature.as_bytes()).into();
    if matches {
        Ok(())
    } else {
        Err(SigError::Mismatch)
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    if values.is_empty() {
        return None;
    }
    let joined = values
        .iter()
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(",");
    Some(joined)
}

fn canonical_request(auth: &Authorization, req: &Received<'_>) -> Result<String, SigError> {
    let mut headers = String::new();
    for name in &auth.signed_headers {
        let value = match header_text(req.headers, name) {
            Some(v) => v,
            None if name == "host" => req.authority.unwrap_or_default().to_owned(),
            None => {
                return Err(SigError::Incomplete(format!(
                    "signed header {name} is not in the request"
                )))
            }
        };
        headers.push_str(&format!("{name}:{value}\n"));
    }
    Ok(format!(
        "{}\n{}\n{}\n{headers}\n{}\n{}",
        req.method,
        if req.path.is_empty() { "/" } else { req.path },
        canonical_query(req.query.unwrap_or_default()),
        auth.signed_headers.join(";"),
        hex(&Sha256::digest(req.body)),
    ))
}

/// The query's `name=value` pairs sorted (as the client encoded them).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key of `secret` for `auth`'s scope.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, TERMINATOR.as_bytes())
}

fn signature(secret: &str, auth: &Authorization, amz_date: &str, canonical: &str) -> String {
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        auth.scope(),
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    hex(&hmac(&key, to_sign.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    crate::views::hex(bytes)
}

/// `YYYYMMDDTHHMMSSZ` as Unix milliseconds.
fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_signing_key_matches_the_aws_documentation_example() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    fn example_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        h.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h
    }

    const EXAMPLE_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
    const EXAMPLE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// 2015-08-30T12:36:00Z.
    const EXAMPLE_NOW_MS: u64 = 1_440_938_160_000;

    fn check(headers: &HeaderMap, query: &str, secret: &str, now_ms: u64) -> Result<(), SigError> {
        let auth = Authorization::parse(EXAMPLE_AUTH)?;
        let req = Received {
            method: "GET",
            path: "/",
            query: Some(query),
            headers,
            authority: None,
            body: b"",
        };
        check_signature(&auth, &req, secret, now_ms)
    }

    #[test]
    fn a_request_must_sign_its_operation() {
        let auth = Authorization::parse(EXAMPLE_AUTH).expect("parses");
        let headers = example_headers();
        let req = Received {
            method: "GET",
            path: "/",
            query: Some("Action=ListUsers&Version=2010-05-08"),
            headers: &headers,
            authority: None,
            body: b"",
        };
        let refused = verify(&auth, &req, EXAMPLE_SECRET, EXAMPLE_NOW_MS);
        assert_eq!(
            refused,
            Err(SigError::Incomplete(
                "the x-amz-target header must be signed".into()
            ))
        );
    }

    #[test]
    fn the_aws_documentation_example_request_verifies() {
        let headers = example_headers();
        let query = "Action=ListUsers&Version=2010-05-08";
        assert_eq!(
            check(&headers, query, EXAMPLE_SECRET, EXAMPLE_NOW_MS),
            Ok(())
        );
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(EXAMPLE_NOW_MS));
    }

    #[test]
    fn any_change_to_what_was_signed_is_refused() {
        let query = "Action=ListUsers&Version=2010-05-08";
        let headers = example_headers();
        let wrong_secret = check(&headers, query, "another secret", EXAMPLE_NOW_MS);
        assert_eq!(wrong_secret, Err(SigError::Mismatch));
        let other_query = check(
            &headers,
            "Action=DeleteUser&Version=2010-05-08",
            EXAMPLE_SECRET,
            EXAMPLE_NOW_MS,
        );
        assert_eq!(other_query, Err(SigError::Mismatch));
        let mut moved = example_headers();
        moved.insert("host", HeaderValue::from_static("elsewhere.example"));
        assert_eq!(
            check(&moved, query, EXAMPLE_SECRET, EXAMPLE_NOW_MS),
            Err(SigError::Mismatch)
        );
        let late = EXAMPLE_NOW_MS + MAX_SKEW_MS + 1;
        assert!(matches!(
            check(&headers, query, EXAMPLE_SECRET, late),
            Err(SigError::Expired { .. })
        ));
        let mut no_date = example_headers();
        no_date.remove("x-amz-date");
        assert!(matches!(
            check(&no_date, query, EXAMPLE_SECRET, EXAMPLE_NOW_MS),
            Err(SigError::Incomplete(_))
        ));
    }

    #[test]
    fn malformed_authorization_headers_are_incomplete() {
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/20150830/r/kms/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/kms, SignedHeaders=host, Signature=",
            "AWS4-HMAC-SHA256 Credential=a/2015/r/kms/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/kms/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/kms/aws4_request, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/kms/aws4_request, SignedHeaders=host;;x, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(matches!(Authorization::parse(bad), Err(SigError::Incomplete(_))), "{bad}");
        }
    }

    #[test]
    fn dates_convert_like_the_calendar() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20000301T000000Z"), Some(951_868_800_000));
        assert_eq!(parse_amz_date("20241231T235959Z"), Some(1_735_689_599_000));
        for bad in [
            "2024-12-31T23:59:59Z",
            "20241331T000000Z",
            "20241231T240000Z",
            "2024123T000000Z",
            "+0241231T000000Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}
