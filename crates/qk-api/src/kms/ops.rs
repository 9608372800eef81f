//! The AWS KMS operations, each mapped onto the requests every other API
//! sends (docs/API.md, "AWS KMS").
//!
//! Keys are named by their id (the UUID form of the Quorumkey key id), its
//! ARN, or an alias: `alias/<alias>` names the key an alias is on
//! (`Operation::SetAlias`), or else the key with that name.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_crypto::Ciphertext;
use qk_state::{AliasChange, KeyRecord, Operation, StateError, VersionState};
use qk_types::{KeyId, KeyVersion};
use qk_wire::{ClientRequest, ClientResponse, Redacted};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroize as _;

use super::{Call, KmsError, ACCOUNT_ID};
use crate::errors::{state_failure, ErrorKind, Failure, Refusal};
use crate::native::{apply_transition, rotate_and_wait, wait_generated, LifecycleBody, Transition};
use crate::uuid_text;

const ALGORITHM: &str = "SYMMETRIC_DEFAULT";
/// How AWS names an alias.
const ALIAS_TAG: &str = "alias/";
/// Key tags set through this API carry this prefix (AWS tag keys are up to
/// 128 characters; with the prefix, Quorumkey's tag names are too).
const TAG_PREFIX: &str = "kms.tag.";
const MAX_TAG_KEY_LEN: usize = 128 - TAG_PREFIX.len();
const MAX_PLAINTEXT_BYTES: usize = 4096;
const MAX_RANDOM_BYTES: usize = 1024;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
const DEFAULT_ROTATION_DAYS: u64 = 365;
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 1000;
/// Threshold of the keys CreateKey makes (as `qk key create`'s default).
const CREATE_THRESHOLD: u16 = 2;

pub(crate) async fn dispatch(
    call: &Call,
    operation: &str,
    input: Value,
) -> Result<Value, KmsError> {
    match operation {
        "Encrypt" => encrypt(call, parse(input)?).await,
        "Decrypt" => decrypt(call, parse(input)?).await,
        "ReEncrypt" => re_encrypt(call, parse(input)?).await,
        "GenerateDataKey" => data_key(call, parse(input)?, true).await,
        "GenerateDataKeyWithoutPlaintext" => data_key(call, parse(input)?, false).await,
        "GenerateRandom" => random(parse(input)?),
        "CreateKey" => create_key(call, parse(input)?).await,
        "DescribeKey" => describe_key(call, parse(input)?).await,
        "ListKeys" => list_keys(call, parse(input)?).await,
        "ListAliases" => list_aliases(call, parse(input)?).await,
        "EnableKey" => lifecycle(call, parse(input)?, Transition::Enable).await,
        "DisableKey" => lifecycle(call, parse(input)?, Transition::Disable).await,
        "CancelKeyDeletion" => cancel_deletion(call, parse(input)?).await,
        "ScheduleKeyDeletion" => schedule_deletion(call, parse(input)?).await,
        "EnableKeyRotation" => enable_rotation(call, parse(input)?).await,
        "DisableKeyRotation" => disable_rotation(call, parse(input)?).await,
        "GetKeyRotationStatus" => rotation_status(call, parse(input)?).await,
        "RotateKeyOnDemand" => rotate_now(call, parse(input)?).await,
        "TagResource" => tag(call, parse(input)?).await,
        "UntagResource" => untag(call, parse(input)?).await,
        "ListResourceTags" => list_tags(call, parse(input)?).await,
        "CreateAlias" => set_alias(call, parse(input)?, AliasChange::Create).await,
        "UpdateAlias" => set_alias(call, parse(input)?, AliasChange::Move).await,
        "DeleteAlias" => set_alias(call, parse(input)?, AliasChange::Delete).await,
        other => Err(KmsError::new(
            "UnsupportedOperationException",
            format!(
                "{other} is not offered by Quorumkey's KMS endpoint; docs/API.md (\"AWS KMS\") \
                 lists the operations it serves"
            ),
        )),
    }
}

fn parse<T: DeserializeOwned>(input: Value) -> Result<T, KmsError> {
    serde_json::from_value(input).map_err(|e| KmsError::validation(format!("invalid request: {e}")))
}

// ---- naming keys ----

/// How a request names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRef {
    /// `alias/<alias>`: an alias, or else a key's name.
    Alias(String),
    Id(KeyId),
}

fn key_ref(text: &str) -> Result<KeyRef, KmsError> {
    let resource = match text.strip_prefix("arn:") {
        Some(arn) => arn
            .splitn(5, ':')
            .nth(4)
            .ok_or_else(|| KmsError::not_found(format!("invalid ARN {text:?}")))?,
        None => text,
    };
    if let Some(name) = resource.strip_prefix("alias/") {
        return Ok(KeyRef::Alias(name.to_owned()));
    }
    let id = resource.strip_prefix("key/").unwrap_or(resource);
    parse_uuid(id).map(KeyRef::Id).ok_or_else(|| {
        KmsError::not_found(format!(
            "invalid keyId {text:?}: name a key by its id, its ARN or alias/<name>"
        ))
    })
}

fn parse_uuid(text: &str) -> Option<KeyId> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if text.len() != 36 || hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(KeyId(id))
}

fn key_arn(region: &str, id: KeyId) -> String {
    format!("arn:aws:kms:{region}:{ACCOUNT_ID}:key/{}", uuid_text(&id.0))
}

/// Every version gone: AWS's deleted key.
fn deleted(key: &KeyRecord) -> bool {
    key.versions.iter().all(|v| {
        matches!(
            v.state,
            VersionState::Destroyed | VersionState::Destroying | VersionState::Failed { .. }
        )
    })
}

/// The key a reference names (NotFoundException when none, or deleted).
async fn resolve(call: &Call, text: &str) -> Result<KeyRecord, KmsError> {
    let key = match key_ref(text)? {
        KeyRef::Alias(alias) => match call
            .state
            .read(&call.caller, ClientRequest::GetKeyByAlias { alias })
            .await?
        {
            ClientResponse::Key(Some(k)) => k,
            other => return Err(Failure::unexpected("a key read", &other).into()),
        },
        KeyRef::Id(id) => match call
            .state
            .read(&call.caller, ClientRequest::GetKeyById { id })
            .await?
        {
            ClientResponse::Key(Some(k)) => k,
            other => return Err(Failure::unexpected("a key read", &other).into()),
        },
    };
    if deleted(&key) {
        return Err(KmsError::not_found(format!(
            "key {} is deleted (every version destroyed)",
            key_arn(&call.region, key.id)
        )));
    }
    Ok(key)
}

/// The key's name, read only when the request names it by id.
async fn key_name(call: &Call, text: &str) -> Result<String, KmsError> {
    Ok(resolve(call, text).await?.name)
}

/// AWS's key state, and the deletion date when deletion is pending.
fn key_state(key: &KeyRecord) -> (&'static str, Option<u64>) {
    let pending = key
        .versions
        .iter()
        .filter_map(|v| match v.state {
            VersionState::PendingDestruction { due_ms } => Some(due_ms),
            _ => None,
        })
        .min();
    let has = |s: VersionState| key.versions.iter().any(|v| v.state == s);
    match pending {
        Some(due) => ("PendingDeletion", Some(due)),
        None if deleted(key) => ("PendingDeletion", None),
        None if has(VersionState::Enabled) => ("Enabled", None),
        None if has(VersionState::Generating) => ("Creating", None),
        None => ("Disabled", None),
    }
}

/// Why a data operation on `key` was refused, in AWS's terms: its state
/// first (disabled, pending deletion), else the failure itself, an invalid
/// request being `invalid` (InvalidCiphertextException for a decrypt).
async fn refusal_of(call: &Call, key: &str, refusal: Refusal, invalid: &'static str) -> KmsError {
    let Refusal::Failed(f) = &refusal else {
        return refusal.into();
    };
    if matches!(
        f.code,
        ErrorKind::Denied | ErrorKind::Unauthenticated | ErrorKind::Unavailable
    ) {
        return refusal.into();
    }
    match resolve(call, key).await.map(|k| key_state(&k).0) {
        Ok("Disabled") => KmsError::new("DisabledException", f.message.clone()),
        Ok("PendingDeletion") => KmsError::new("KMSInvalidStateException", f.message.clone()),
        Err(e) if e.kind == "NotFoundException" => e,
        _ if f.code == ErrorKind::Invalid => KmsError::new(invalid, f.message.clone()),
        _ => refusal.into(),
    }
}

fn metadata(call: &Call, key: &KeyRecord) -> Value {
    let (state, deletion_ms) = key_state(key);
    let mut m = json!({
        "AWSAccountId": ACCOUNT_ID,
        "KeyId": uuid_text(&key.id.0),
        "Arn": key_arn(&call.region, key.id),
        "CreationDate": key.created_ms as f64 / 1000.0,
        "Enabled": state == "Enabled",
        "Description": key.description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": state,
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": ALGORITHM,
        "KeySpec": ALGORITHM,
        "EncryptionAlgorithms": [ALGORITHM],
        "MultiRegion": false,
    });
    if let Some(ms) = deletion_ms {
        m["DeletionDate"] = json!(ms as f64 / 1000.0);
    }
    m
}

// ---- data ----

fn check_algorithm(algorithm: Option<&str>) -> Result<(), KmsError> {
    match algorithm {
        None | Some(ALGORITHM) => Ok(()),
        Some(other) => Err(KmsError::validation(format!(
            "encryption algorithm {other} is not supported; use {ALGORITHM} or leave it out"
        ))),
    }
}

fn refuse_grants_and_dry_runs(grants: &[String], dry_run: bool) -> Result<(), KmsError> {
    if !grants.is_empty() {
        return Err(KmsError::validation(
            "grant tokens are not supported here: Quorumkey authorizes by principal, role and \
             key policy (a decrypt takes one grant token, an approved approval's id); leave \
             GrantTokens out",
        ));
    }
    refuse_dry_run(dry_run)
}

/// A decrypt's grant token is the id of the approval that allows it (a key
/// whose policy puts decryption under M-of-N approval).
fn approval_of(grants: &[String], dry_run: bool) -> Result<Option<String>, KmsError> {
    refuse_dry_run(dry_run)?;
    match grants {
        [] => Ok(None),
        [id] => Ok(Some(id.clone())),
        _ => Err(KmsError::validation(
            "a decrypt takes one grant token: the id of the approval that allows it",
        )),
    }
}

fn refuse_dry_run(dry_run: bool) -> Result<(), KmsError> {
    if dry_run {
        return Err(KmsError::validation(
            "DryRun is not supported; send the request without it",
        ));
    }
    Ok(())
}

fn blob(text: &str) -> Result<String, KmsError> {
    let ct = Ciphertext::from_text(text).map_err(|e| {
        KmsError::from(Failure::new(
            ErrorKind::Internal,
            format!("the node returned an unreadable ciphertext: {e}"),
        ))
    })?;
    Ok(B64.encode(ct.to_bytes()))
}

fn read_blob(blob: &str) -> Result<Ciphertext, KmsError> {
    let invalid = |why: &str| KmsError::new("InvalidCiphertextException", why.to_owned());
    let bytes = B64
        .decode(blob)
        .map_err(|_| invalid("CiphertextBlob is not base64"))?;
    Ciphertext::from_bytes(&bytes)
        .map_err(|e| invalid(&format!("the ciphertext does not decode: {e}")))
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptIn {
    key_id: String,
    plaintext: String,
    #[serde(default)]
    encryption_context: BTreeMap<String, String>,
    #[serde(default)]
    grant_tokens: Vec<String>,
    encryption_algorithm: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl std::fmt::Debug for EncryptIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptIn")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Drop for EncryptIn {
    fn drop(&mut self) {
        self.plaintext.zeroize();
    }
}

async fn encrypt(call: &Call, b: EncryptIn) -> Result<Value, KmsError> {
    refuse_grants_and_dry_runs(&b.grant_tokens, b.dry_run)?;
    check_algorithm(b.encryption_algorithm.as_deref())?;
    let plaintext = crate::native::decode_b64("Plaintext", &b.plaintext)?;
    if plaintext.0.is_empty() || plaintext.0.len() > MAX_PLAINTEXT_BYTES {
        return Err(KmsError::validation(format!(
            "Plaintext is 1 to {MAX_PLAINTEXT_BYTES} bytes; wrap larger data under a data key \
             (GenerateDataKey)"
        )));
    }
    let text = wrap(call, &b.key_id, b.encryption_context.clone(), plaintext).await?;
    let ct = Ciphertext::from_text(&text)
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    Ok(json!({
        "CiphertextBlob": B64.encode(ct.to_bytes()),
        "KeyId": key_arn(&call.region, ct.key_id),
        "EncryptionAlgorithm": ALGORITHM,
    }))
}

/// Encrypts under the key `key_id` names; the qk ciphertext text.
async fn wrap(
    call: &Call,
    key_id: &str,
    context: BTreeMap<String, String>,
    plaintext: Redacted,
) -> Result<String, KmsError> {
    let name = key_name(call, key_id).await?;
    let req = ClientRequest::Encrypt {
        name,
        context,
        plaintext,
    };
    match call.state.read(&call.caller, req).await {
        Ok(ClientResponse::Ciphertext { text, .. }) => Ok(text),
        Ok(other) => Err(Failure::unexpected("encrypt", &other).into()),
        Err(r) => Err(refusal_of(call, key_id, r, "ValidationException").await),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptIn {
    ciphertext_blob: String,
    #[serde(default)]
    encryption_context: BTreeMap<String, String>,
    key_id: Option<String>,
    #[serde(default)]
    grant_tokens: Vec<String>,
    encryption_algorithm: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn decrypt(call: &Call, b: DecryptIn) -> Result<Value, KmsError> {
    let approval = approval_of(&b.grant_tokens, b.dry_run)?;
    check_algorithm(b.encryption_algorithm.as_deref())?;
    let ct = read_blob(&b.ciphertext_blob)?;
    check_key_matches(call, b.key_id.as_deref(), ct.key_id).await?;
    let plaintext = unwrap(call, &ct, b.encryption_context, approval).await?;
    Ok(json!({
        "KeyId": key_arn(&call.region, ct.key_id),
        "Plaintext": crate::native::secret_b64(&plaintext).as_str(),
        "EncryptionAlgorithm": ALGORITHM,
    }))
}

/// With a KeyId, the ciphertext must be under that key (IncorrectKeyException).
async fn check_key_matches(
    call: &Call,
    key_id: Option<&str>,
    actual: KeyId,
) -> Result<(), KmsError> {
    let Some(key_id) = key_id else {
        return Ok(());
    };
    let named = match key_ref(key_id)? {
        KeyRef::Id(id) => id,
        KeyRef::Alias(_) => resolve(call, key_id).await?.id,
    };
    if named == actual {
        Ok(())
    } else {
        Err(KmsError::new(
            "IncorrectKeyException",
            format!(
                "the ciphertext was encrypted under {}, not under {key_id}",
                key_arn(&call.region, actual)
            ),
        ))
    }
}

/// Threshold decryption of `ct` by the holders, as the caller.
async fn unwrap(
    call: &Call,
    ct: &Ciphertext,
    context: BTreeMap<String, String>,
    approval: Option<String>,
) -> Result<Redacted, KmsError> {
    let req = ClientRequest::Decrypt {
        ciphertext: ct.to_text(),
        context,
        approval,
    };
    match call.state.read(&call.caller, req).await {
        Ok(ClientResponse::Plaintext(p)) => Ok(p),
        Ok(other) => Err(Failure::unexpected("decrypt", &other).into()),
        Err(r) => {
            let key = uuid_text(&ct.key_id.0);
            Err(refusal_of(call, &key, r, "InvalidCiphertextException").await)
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReEncryptIn {
    ciphertext_blob: String,
    #[serde(default)]
    source_encryption_context: BTreeMap<String, String>,
    source_key_id: Option<String>,
    destination_key_id: String,
    #[serde(default)]
    destination_encryption_context: BTreeMap<String, String>,
    source_encryption_algorithm: Option<String>,
    destination_encryption_algorithm: Option<String>,
    #[serde(default)]
    grant_tokens: Vec<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Decrypts and encrypts again on this node; the plaintext never leaves it.
async fn re_encrypt(call: &Call, b: ReEncryptIn) -> Result<Value, KmsError> {
    let approval = approval_of(&b.grant_tokens, b.dry_run)?;
    check_algorithm(b.source_encryption_algorithm.as_deref())?;
    check_algorithm(b.destination_encryption_algorithm.as_deref())?;
    let ct = read_blob(&b.ciphertext_blob)?;
    check_key_matches(call, b.source_key_id.as_deref(), ct.key_id).await?;
    let plaintext = unwrap(call, &ct, b.source_encryption_context, approval).await?;
    let text = wrap(
        call,
        &b.destination_key_id,
        b.destination_encryption_context,
        plaintext,
    )
    .await?;
    let new = Ciphertext::from_text(&text)
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    Ok(json!({
        "CiphertextBlob": B64.encode(new.to_bytes()),
        "SourceKeyId": key_arn(&call.region, ct.key_id),
        "KeyId": key_arn(&call.region, new.key_id),
        "SourceEncryptionAlgorithm": ALGORITHM,
        "DestinationEncryptionAlgorithm": ALGORITHM,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DataKeyIn {
    key_id: String,
    key_spec: Option<String>,
    number_of_bytes: Option<u64>,
    #[serde(default)]
    encryption_context: BTreeMap<String, String>,
    #[serde(default)]
    grant_tokens: Vec<String>,
    #[serde(default)]
    dry_run: bool,
}

fn data_key_bytes(b: &DataKeyIn) -> Result<u16, KmsError> {
    let bytes = match (b.key_spec.as_deref(), b.number_of_bytes) {
        (Some(_), Some(_)) => {
            return Err(KmsError::validation(
                "give KeySpec or NumberOfBytes, not both",
            ))
        }
        (Some("AES_256"), None) => 32,
        (Some("AES_128"), None) => 16,
        (Some(other), None) => {
            return Err(KmsError::validation(format!(
                "KeySpec {other} is not valid; use AES_256 or AES_128"
            )))
        }
        (None, Some(n)) => n,
        (None, None) => {
            return Err(KmsError::validation(
                "give KeySpec (AES_256 or AES_128) or NumberOfBytes",
            ))
        }
    };
    u16::try_from(bytes)
        .ok()
        .filter(|n| (16..=64).contains(n))
        .ok_or_else(|| {
            KmsError::validation(format!(
                "NumberOfBytes {bytes} is not supported: Quorumkey makes data keys of 16 to 64 \
                 bytes"
            ))
        })
}

async fn data_key(call: &Call, b: DataKeyIn, with_plaintext: bool) -> Result<Value, KmsError> {
    refuse_grants_and_dry_runs(&b.grant_tokens, b.dry_run)?;
    let bytes = data_key_bytes(&b)?;
    let req = ClientRequest::DataKey {
        name: key_name(call, &b.key_id).await?,
        bytes,
        context: b.encryption_context,
    };
    let (plaintext, text) = match call.state.read(&call.caller, req).await {
        Ok(ClientResponse::DataKey {
            plaintext,
            ciphertext,
            ..
        }) => (plaintext, ciphertext),
        Ok(other) => return Err(Failure::unexpected("datakey", &other).into()),
        Err(r) => return Err(refusal_of(call, &b.key_id, r, "ValidationException").await),
    };
    let ct = Ciphertext::from_text(&text)
        .map_err(|e| KmsError::new("KMSInternalException", e.to_string()))?;
    let mut out = json!({
        "CiphertextBlob": blob(&text)?,
        "KeyId": key_arn(&call.region, ct.key_id),
    });
    if with_plaintext {
        out["Plaintext"] = json!(crate::native::secret_b64(&plaintext).as_str());
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RandomIn {
    number_of_bytes: Option<u64>,
    custom_key_store_id: Option<String>,
    recipient: Option<Value>,
}

fn random(b: RandomIn) -> Result<Value, KmsError> {
    if b.custom_key_store_id.is_some() || b.recipient.is_some() {
        return Err(KmsError::validation(
            "custom key stores and Nitro Enclave recipients are not supported; send \
             NumberOfBytes alone",
        ));
    }
    let n = b
        .number_of_bytes
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_RANDOM_BYTES).contains(n))
        .ok_or_else(|| {
            KmsError::validation(format!("NumberOfBytes must be 1 to {MAX_RANDOM_BYTES}"))
        })?;
    let mut bytes = Redacted(vec![0u8; n]);
    rand::fill(&mut bytes.0[..]);
    Ok(json!({ "Plaintext": crate::native::secret_b64(&bytes).as_str() }))
}

// ---- keys ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    tag_key: String,
    tag_value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateKeyIn {
    #[serde(default)]
    description: String,
    key_usage: Option<String>,
    key_spec: Option<String>,
    customer_master_key_spec: Option<String>,
    origin: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    policy: Option<String>,
    custom_key_store_id: Option<String>,
    #[serde(default)]
    multi_region: bool,
}

impl CreateKeyIn {
    fn refuse_unsupported(&self) -> Result<(), KmsError> {
        let checks = [
            (self.key_usage.as_deref(), "ENCRYPT_DECRYPT", "KeyUsage"),
            (self.key_spec.as_deref(), ALGORITHM, "KeySpec"),
            (
                self.customer_master_key_spec.as_deref(),
                ALGORITHM,
                "CustomerMasterKeySpec",
            ),
            (self.origin.as_deref(), "AWS_KMS", "Origin"),
        ];
        for (given, supported, field) in checks {
            if let Some(v) = given.filter(|v| *v != supported) {
                return Err(KmsError::validation(format!(
                    "{field} {v} is not supported: Quorumkey keys are {supported} (threshold \
                     keys generated by the cluster); leave {field} out"
                )));
            }
        }
        if self.policy.is_some() {
            return Err(KmsError::new(
                "MalformedPolicyDocumentException",
                "AWS key policies are not supported; set a Quorumkey key policy with `qk key \
                 policy set` (docs/ACCESS.md) and leave Policy out",
            ));
        }
        if self.custom_key_store_id.is_some() || self.multi_region {
            return Err(KmsError::validation(
                "custom key stores and multi-Region keys are not supported; leave \
                 CustomKeyStoreId and MultiRegion out",
            ));
        }
        Ok(())
    }
}

fn tag_name(key: &str) -> Result<String, KmsError> {
    if key.is_empty() || key.len() > MAX_TAG_KEY_LEN {
        return Err(KmsError::new(
            "TagException",
            format!("tag keys are 1 to {MAX_TAG_KEY_LEN} characters"),
        ));
    }
    Ok(format!("{TAG_PREFIX}{key}"))
}

async fn set_tags(call: &Call, name: &str, tags: &[Tag]) -> Result<(), KmsError> {
    for t in tags {
        let op = Operation::SetTag {
            name: name.to_owned(),
            tag: tag_name(&t.tag_key)?,
            value: Some(t.tag_value.clone().into_bytes()),
        };
        call.state.write(&call.caller, op).await?;
    }
    Ok(())
}

async fn create_key(call: &Call, b: CreateKeyIn) -> Result<Value, KmsError> {
    b.refuse_unsupported()?;
    for t in &b.tags {
        tag_name(&t.tag_key)?;
    }
    let name = format!("kms-{}", crate::views::hex(&rand::random::<[u8; 8]>()));
    let op = Operation::CreateKey(qk_state::CreateKey {
        name: name.clone(),
        description: b.description.clone(),
        owner: call.caller.principal.clone(),
        purpose: "encrypt".to_owned(),
        rotation_period_ms: None,
        expires_at_ms: None,
        threshold: CREATE_THRESHOLD,
        holders: Vec::new(),
    });
    let version = match call.state.write(&call.caller, op).await? {
        qk_state::Applied::KeyCreated { version, .. } => version,
        _ => KeyVersion(1),
    };
    set_tags(call, &name, &b.tags).await?;
    let key = wait_generated(&call.state, &call.caller, &name, version).await?;
    Ok(json!({ "KeyMetadata": metadata(call, &key) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyIn {
    key_id: String,
}

async fn describe_key(call: &Call, b: KeyIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    Ok(json!({ "KeyMetadata": metadata(call, &key) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListIn {
    limit: Option<u64>,
    marker: Option<String>,
    key_id: Option<String>,
}

impl ListIn {
    fn limit(&self) -> Result<usize, KmsError> {
        match self.limit {
            None => Ok(DEFAULT_LIST_LIMIT),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| {
                    KmsError::validation(format!("Limit must be 1 to {MAX_LIST_LIMIT}"))
                }),
        }
    }
}

/// Keys that exist for AWS (not deleted), sorted by name, after `marker`.
async fn live_keys(call: &Call, marker: Option<&str>) -> Result<Vec<KeyRecord>, KmsError> {
    match call
        .state
        .read(&call.caller, ClientRequest::KeyInventory)
        .await?
    {
        ClientResponse::KeyRecords(keys) => Ok(keys
            .into_iter()
            .filter(|k| !deleted(k) && marker.is_none_or(|m| k.name.as_str() > m))
            .collect()),
        other => Err(Failure::unexpected("the key inventory", &other).into()),
    }
}

/// One page: `items`, `Truncated` and, when truncated, `NextMarker`.
fn page(field: &str, mut items: Vec<(String, Value)>, limit: usize) -> Value {
    let truncated = items.len() > limit;
    items.truncate(limit);
    let mut out = json!({ "Truncated": truncated });
    if truncated {
        if let Some((last, _)) = items.last() {
            out["NextMarker"] = json!(last);
        }
    }
    out[field] = Value::Array(items.into_iter().map(|(_, v)| v).collect());
    out
}

async fn list_keys(call: &Call, b: ListIn) -> Result<Value, KmsError> {
    let limit = b.limit()?;
    let keys = live_keys(call, b.marker.as_deref()).await?;
    let items = keys
        .iter()
        .map(|k| {
            let entry =
                json!({ "KeyId": uuid_text(&k.id.0), "KeyArn": key_arn(&call.region, k.id) });
            (k.name.clone(), entry)
        })
        .collect();
    Ok(page("Keys", items, limit))
}

/// A key's aliases: its name, and the aliases set on it.
fn aliases_of(key: &KeyRecord) -> impl Iterator<Item = &str> {
    std::iter::once(key.name.as_str()).chain(key.aliases())
}

async fn list_aliases(call: &Call, b: ListIn) -> Result<Value, KmsError> {
    let limit = b.limit()?;
    let only = match &b.key_id {
        Some(k) => Some(resolve(call, k).await?.id),
        None => None,
    };
    let keys = live_keys(call, None).await?;
    let mut items: Vec<(String, Value)> = keys
        .iter()
        .filter(|k| only.is_none_or(|id| id == k.id))
        .flat_map(|k| aliases_of(k).map(move |alias| (alias, k)))
        .filter(|(alias, _)| b.marker.as_deref().is_none_or(|m| *alias > m))
        .map(|(alias, k)| {
            let entry = json!({
                "AliasName": format!("alias/{alias}"),
                "AliasArn": format!("arn:aws:kms:{}:{ACCOUNT_ID}:alias/{alias}", call.region),
                "TargetKeyId": uuid_text(&k.id.0),
            });
            (alias.to_owned(), entry)
        })
        .collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(page("Aliases", items, limit))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AliasIn {
    alias_name: String,
    target_key_id: Option<String>,
}

impl AliasIn {
    fn alias(&self) -> Result<&str, KmsError> {
        self.alias_name
            .strip_prefix(ALIAS_TAG)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| KmsError::validation("AliasName must begin with alias/"))
    }

    fn target(&self) -> Result<&str, KmsError> {
        self.target_key_id
            .as_deref()
            .ok_or_else(|| KmsError::validation("TargetKeyId is required"))
    }
}

async fn set_alias(call: &Call, b: AliasIn, change: AliasChange) -> Result<Value, KmsError> {
    let alias = b.alias()?.to_owned();
    let name = match change {
        AliasChange::Delete => {
            let key = resolve(call, &b.alias_name).await?;
            if key.name == alias {
                return Err(KmsError::validation(format!(
                    "{} is the name of key {}, not an alias that can be deleted",
                    b.alias_name,
                    uuid_text(&key.id.0)
                )));
            }
            key.name
        }
        AliasChange::Create | AliasChange::Move => key_name(call, b.target()?).await?,
    };
    let exists = state_failure(&StateError::AliasExists(alias.clone()));
    let op = Operation::SetAlias {
        name,
        alias,
        change,
    };
    match call.state.write(&call.caller, op).await {
        Ok(_) => Ok(json!({})),
        Err(Refusal::Failed(f)) if f == exists => {
            Err(KmsError::new("AlreadyExistsException", f.message))
        }
        Err(r) => Err(r.into()),
    }
}

async fn lifecycle(call: &Call, b: KeyIn, t: Transition) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    if key_state(&key).0 == "PendingDeletion" {
        return Err(KmsError::new(
            "KMSInvalidStateException",
            format!(
                "{} is pending deletion; cancel the deletion first (CancelKeyDeletion)",
                key_arn(&call.region, key.id)
            ),
        ));
    }
    if key.versions.iter().any(|v| t.applies_to(v)) {
        apply_transition(
            &call.state,
            &call.caller,
            &key.name,
            t,
            &LifecycleBody::default(),
        )
        .await?;
    }
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduleDeletionIn {
    key_id: String,
    pending_window_in_days: Option<u64>,
}

async fn schedule_deletion(call: &Call, b: ScheduleDeletionIn) -> Result<Value, KmsError> {
    let days = b.pending_window_in_days.unwrap_or(30);
    if !(7..=30).contains(&days) {
        return Err(KmsError::validation(
            "PendingWindowInDays must be 7 to 30 (as in AWS KMS)",
        ));
    }
    let key = resolve(call, &b.key_id).await?;
    if key_state(&key).0 == "PendingDeletion" {
        return Err(KmsError::new(
            "KMSInvalidStateException",
            format!(
                "{} is already pending deletion",
                key_arn(&call.region, key.id)
            ),
        ));
    }
    let body = LifecycleBody {
        after_ms: Some(days * DAY_MS),
        ..LifecycleBody::default()
    };
    let key = apply_transition(
        &call.state,
        &call.caller,
        &key.name,
        Transition::Destroy,
        &body,
    )
    .await?;
    let (state, deletion_ms) = key_state(&key);
    let mut out = json!({
        "KeyId": key_arn(&call.region, key.id),
        "KeyState": state,
        "PendingWindowInDays": days,
    });
    if let Some(ms) = deletion_ms {
        out["DeletionDate"] = json!(ms as f64 / 1000.0);
    }
    Ok(out)
}

async fn cancel_deletion(call: &Call, b: KeyIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    if key_state(&key).0 != "PendingDeletion" {
        return Err(KmsError::new(
            "KMSInvalidStateException",
            format!("{} is not pending deletion", key_arn(&call.region, key.id)),
        ));
    }
    apply_transition(
        &call.state,
        &call.caller,
        &key.name,
        Transition::CancelDestroy,
        &LifecycleBody::default(),
    )
    .await?;
    Ok(json!({ "KeyId": key_arn(&call.region, key.id) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RotationIn {
    key_id: String,
    rotation_period_in_days: Option<u64>,
}

async fn set_rotation(
    call: &Call,
    key: &KeyRecord,
    period_ms: Option<u64>,
) -> Result<(), KmsError> {
    let op = Operation::SetSchedule {
        name: key.name.clone(),
        rotation_period_ms: period_ms,
        expires_at_ms: key.expires_at_ms,
    };
    call.state.write(&call.caller, op).await?;
    Ok(())
}

async fn enable_rotation(call: &Call, b: RotationIn) -> Result<Value, KmsError> {
    let days = b.rotation_period_in_days.unwrap_or(DEFAULT_ROTATION_DAYS);
    if !(90..=2560).contains(&days) {
        return Err(KmsError::validation(
            "RotationPeriodInDays must be 90 to 2560 (as in AWS KMS)",
        ));
    }
    let key = resolve(call, &b.key_id).await?;
    set_rotation(call, &key, Some(days * DAY_MS)).await?;
    Ok(json!({}))
}

async fn disable_rotation(call: &Call, b: KeyIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    set_rotation(call, &key, None).await?;
    Ok(json!({}))
}

async fn rotation_status(call: &Call, b: KeyIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    let mut out = json!({
        "KeyId": key_arn(&call.region, key.id),
        "KeyRotationEnabled": key.rotation_period_ms.is_some(),
    });
    if let Some(period) = key.rotation_period_ms {
        out["RotationPeriodInDays"] = json!(period / DAY_MS);
    }
    if let Some(next) = key.next_rotation_ms() {
        out["NextRotationDate"] = json!(next as f64 / 1000.0);
    }
    Ok(out)
}

async fn rotate_now(call: &Call, b: KeyIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    rotate_and_wait(&call.state, &call.caller, &key.name).await?;
    Ok(json!({ "KeyId": uuid_text(&key.id.0) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagIn {
    key_id: String,
    tags: Vec<Tag>,
}

async fn tag(call: &Call, b: TagIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    set_tags(call, &key.name, &b.tags).await?;
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UntagIn {
    key_id: String,
    tag_keys: Vec<String>,
}

async fn untag(call: &Call, b: UntagIn) -> Result<Value, KmsError> {
    let key = resolve(call, &b.key_id).await?;
    for k in &b.tag_keys {
        let op = Operation::SetTag {
            name: key.name.clone(),
            tag: tag_name(k)?,
            value: None,
        };
        call.state.write(&call.caller, op).await?;
    }
    Ok(json!({}))
}

async fn list_tags(call: &Call, b: ListIn) -> Result<Value, KmsError> {
    let limit = b.limit()?;
    let key_id = b
        .key_id
        .as_deref()
        .ok_or_else(|| KmsError::validation("KeyId is required"))?;
    let key = resolve(call, key_id).await?;
    let items: Vec<(String, Value)> = key
        .tags
        .iter()
        .filter_map(|(name, value)| {
            let tag_key = name.strip_prefix(TAG_PREFIX)?;
            let after_marker = b.marker.as_deref().is_none_or(|m| tag_key > m);
            after_marker.then(|| {
                let value = String::from_utf8_lossy(value).into_owned();
                (
                    tag_key.to_owned(),
                    json!({ "TagKey": tag_key, "TagValue": value }),
                )
            })
        })
        .collect();
    Ok(page("Tags", items, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_by_id_arn_or_alias() {
        let id = KeyId([0xab; 16]);
        let uuid = uuid_text(&id.0);
        assert_eq!(key_ref(&uuid), Ok(KeyRef::Id(id)));
        assert_eq!(key_ref(&key_arn("eu-west-1", id)), Ok(KeyRef::Id(id)));
        assert_eq!(
            key_ref("alias/payments"),
            Ok(KeyRef::Alias("payments".into()))
        );
        assert_eq!(
            key_ref("arn:aws:kms:us-east-1:000000000000:alias/payments"),
            Ok(KeyRef::Alias("payments".into()))
        );
        for bad in [
            "",
            "payments",
            "arn:aws:kms",
            "abababab-abab-abab-abab-ababababab",
            "zzabababababababababababababababababab",
        ] {
            assert_eq!(
                key_ref(bad).map_err(|e| e.kind),
                Err("NotFoundException"),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_key_sizes_follow_aws_where_the_cluster_can() {
        let size = |spec: Option<&str>, n: Option<u64>| {
            data_key_bytes(&DataKeyIn {
                key_spec: spec.map(str::to_owned),
                number_of_bytes: n,
                ..DataKeyIn::default()
            })
            .map_err(|e| e.kind)
        };
        assert_eq!(size(Some("AES_256"), None), Ok(32));
        assert_eq!(size(Some("AES_128"), None), Ok(16));
        assert_eq!(size(None, Some(64)), Ok(64));
        assert_eq!(size(None, Some(8)), Err("ValidationException"));
        assert_eq!(size(None, None), Err("ValidationException"));
        assert_eq!(size(Some("AES_256"), Some(32)), Err("ValidationException"));
    }

    #[test]
    fn pages_end_with_a_marker_only_when_truncated() {
        let items = |n: usize| {
            (0..n)
                .map(|i| (format!("k{i}"), json!(i)))
                .collect::<Vec<_>>()
        };
        let full = page("Keys", items(3), 2);
        assert_eq!(full["Truncated"], json!(true));
        assert_eq!(full["NextMarker"], json!("k1"));
        assert_eq!(full["Keys"], json!([0, 1]));
        let last = page("Keys", items(2), 2);
        assert_eq!(last["Truncated"], json!(false));
        assert!(last.get("NextMarker").is_none());
    }
}
