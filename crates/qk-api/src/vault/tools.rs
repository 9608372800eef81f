//! `transit/random` and `transit/hash`: Vault's key-less utilities. They
//! touch no key, so they run on the answering node alone (a token is still
//! required, as in Vault) and leave no audit record.

use axum::extract::Path;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use zeroize::Zeroizing;

use crate::errors::Failure;

use super::{body, respond_secret, Body, Reply, VaultCaller, VaultError};

/// Vault's limit on one `transit/random` answer.
pub const MAX_RANDOM_BYTES: u64 = 128 * 1024;
const DEFAULT_RANDOM_BYTES: u64 = 32;

#[derive(Debug, Default, Deserialize)]
struct RandomBody {
    #[serde(default, deserialize_with = "body::opt_u64")]
    bytes: Option<u64>,
    format: Option<String>,
    source: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Hex,
    Base64,
}

impl Format {
    fn parse(text: Option<&str>, default: Format) -> Result<Format, VaultError> {
        match text.unwrap_or_default() {
            "" => Ok(default),
            "hex" => Ok(Format::Hex),
            "base64" => Ok(Format::Base64),
            other => Err(VaultError::bad_request(format!(
                "unsupported encoding format {other}; use hex or base64"
            ))),
        }
    }

    fn encode(self, bytes: &[u8]) -> Zeroizing<String> {
        Zeroizing::new(match self {
            Format::Hex => crate::views::hex(bytes),
            Format::Base64 => B64.encode(bytes),
        })
    }
}

/// `random`, `random/:bytes`, `random/:source` and `random/:source/:bytes`.
#[derive(Debug, Default)]
pub(crate) struct RandomPath {
    source: Option<String>,
    bytes: Option<String>,
}

impl RandomPath {
    fn one(segment: String) -> Self {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            RandomPath {
                source: None,
                bytes: Some(segment),
            }
        } else {
            RandomPath {
                source: Some(segment),
                bytes: None,
            }
        }
    }
}

/// Bytes asked for: the path wins over the body, as in Vault.
fn random_len(path: Option<&str>, body: Option<u64>) -> Result<usize, VaultError> {
    let len = match path {
        Some(p) => p.parse::<u64>().map_err(|_| {
            VaultError::bad_request(format!("error parsing url-set byte count {p:?}"))
        })?,
        None => body.unwrap_or(DEFAULT_RANDOM_BYTES),
    };
    if len == 0 || len > MAX_RANDOM_BYTES {
        return Err(VaultError::bad_request(format!(
            "bytes must be between 1 and {MAX_RANDOM_BYTES}; got {len}"
        )));
    }
    usize::try_from(len).map_err(|_| VaultError::bad_request("bytes is too large"))
}

/// Quorumkey has one entropy source, the operating system's.
fn check_source(source: Option<&str>) -> Result<(), VaultError> {
    match source.unwrap_or("platform") {
        "" | "platform" => Ok(()),
        other => Err(VaultError::bad_request(format!(
            "unsupported entropy source {other:?}: Quorumkey nodes have no seal device, so only \
             \"platform\" (the operating system's generator, the default) is offered"
        ))),
    }
}

fn random_reply(path: &RandomPath, b: &RandomBody) -> Reply {
    check_source(path.source.as_deref().or(b.source.as_deref()))?;
    let len = random_len(path.bytes.as_deref(), b.bytes)?;
    let format = Format::parse(b.format.as_deref(), Format::Base64)?;
    let mut bytes = Zeroizing::new(vec![0u8; len]);
    rand::Rng::fill_bytes(&mut rand::rng(), bytes.as_mut_slice());
    Ok(respond_secret(
        json!({ "random_bytes": format.encode(&bytes).as_str() }),
    ))
}

async fn random_in(headers: HeaderMap, body: Body, path: RandomPath) -> Reply {
    let b: RandomBody = body::parse(&headers, body)?;
    random_reply(&path, &b)
}

pub(crate) async fn random(_: VaultCaller, headers: HeaderMap, body: Body) -> Reply {
    random_in(headers, body, RandomPath::default()).await
}

pub(crate) async fn random_one(
    _: VaultCaller,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    random_in(headers, body, RandomPath::one(segment)).await
}

pub(crate) async fn random_two(
    _: VaultCaller,
    Path((source, bytes)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let path = RandomPath {
        source: Some(source),
        bytes: Some(bytes),
    };
    random_in(headers, body, path).await
}

#[derive(Debug, Default, Deserialize)]
struct HashBody {
    input: Option<String>,
    algorithm: Option<String>,
    format: Option<String>,
}

/// The names Vault gives its hash algorithms.
pub const HASH_ALGORITHMS: [&str; 8] = [
    "sha2-224", "sha2-256", "sha2-384", "sha2-512", "sha3-224", "sha3-256", "sha3-384", "sha3-512",
];

fn sum<D: Digest>(input: &[u8]) -> Vec<u8> {
    D::digest(input).to_vec()
}

/// The digest of `input` by Vault's algorithm name.
pub(crate) fn hash_of(algorithm: &str, input: &[u8]) -> Result<Vec<u8>, VaultError> {
    Ok(match algorithm {
        "sha2-224" => sum::<sha2::Sha224>(input),
        "sha2-256" => sum::<sha2::Sha256>(input),
        "sha2-384" => sum::<sha2::Sha384>(input),
        "sha2-512" => sum::<sha2::Sha512>(input),
        "sha3-224" => sum::<sha3::Sha3_224>(input),
        "sha3-256" => sum::<sha3::Sha3_256>(input),
        "sha3-384" => sum::<sha3::Sha3_384>(input),
        "sha3-512" => sum::<sha3::Sha3_512>(input),
        other => {
            return Err(VaultError::bad_request(format!(
                "unsupported algorithm {other}; use one of {}",
                HASH_ALGORITHMS.join(", ")
            )))
        }
    })
}

fn hash_reply(path_algorithm: Option<&str>, b: &HashBody) -> Reply {
    let algorithm = path_algorithm
        .or(b.algorithm.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or("sha2-256");
    let format = Format::parse(b.format.as_deref(), Format::Hex)?;
    let input = B64
        .decode(b.input.as_deref().unwrap_or_default())
        .map(Zeroizing::new)
        .map_err(|_| Failure::invalid("unable to decode input as base64"))?;
    let digest = hash_of(algorithm, &input)?;
    Ok(respond_secret(
        json!({ "sum": format.encode(&digest).as_str() }),
    ))
}

pub(crate) async fn hash(_: VaultCaller, headers: HeaderMap, body: Body) -> Reply {
    let b: HashBody = body::parse(&headers, body)?;
    hash_reply(None, &b)
}

pub(crate) async fn hash_with(
    _: VaultCaller,
    Path(algorithm): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let b: HashBody = body::parse(&headers, body)?;
    hash_reply(Some(&algorithm), &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let hex = |a: &str| crate::views::hex(&hash_of(a, b"hi").unwrap_or_default());
        assert_eq!(
            hex("sha2-256"),
            "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
        );
        assert_eq!(
            B64.encode(hash_of("sha3-256", b"hi").unwrap_or_default()),
            "s5wUyNo7I4EfZBW34LM1JtfgekbyzwSEF5Q1dn5KiAQ="
        );
        for (a, len) in HASH_ALGORITHMS.iter().zip([28, 32, 48, 64, 28, 32, 48, 64]) {
            assert_eq!(hash_of(a, b"").map(|d| d.len()).ok(), Some(len), "{a}");
        }
        assert!(hash_of("md5", b"").is_err());
    }

    #[test]
    fn random_lengths_and_sources() {
        assert_eq!(random_len(None, None).ok(), Some(32));
        assert_eq!(random_len(Some("16"), Some(64)).ok(), Some(16));
        assert_eq!(random_len(None, Some(MAX_RANDOM_BYTES)).ok(), Some(131_072));
        assert!(random_len(None, Some(MAX_RANDOM_BYTES + 1)).is_err());
        assert!(random_len(Some("0"), None).is_err());
        assert!(random_len(Some("x"), None).is_err());
        assert!(check_source(Some("platform")).is_ok());
        assert!(check_source(None).is_ok());
        assert!(check_source(Some("seal")).is_err());
        assert!(check_source(Some("all")).is_err());
        let p = RandomPath::one("24".into());
        assert_eq!((p.source, p.bytes.as_deref()), (None, Some("24")));
        let p = RandomPath::one("platform".into());
        assert_eq!((p.source.as_deref(), p.bytes), (Some("platform"), None));
    }
}
