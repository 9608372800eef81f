//! A fake in-memory backend, a real TLS API server on 127.0.0.1:0 and
//! reqwest clients for it.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use qk_api::{ApiServer, Backend, BoxFuture, Caller, Gauges};
use qk_net::{ClusterCa, Credentials};
use qk_state::{
    Applied, ApprovalRecord, ApprovalStatus, Command, KeyRecord, KeyVersionRecord, Operation,
    PendingAction, Permission, PrincipalRecord, Response, Role, StateError, TokenRecord,
    VersionState,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, RequestError};
use qk_wire::{ClientRequest, ClientResponse, Redacted};

/// Token of principal `alice` (admin).
pub const ALICE_TOKEN: &str = "qkt.t1.alicesecret";
/// Token of principal `mallory`, whom the fake denies everything.
pub const MALLORY_TOKEN: &str = "qkt.t2.mallorysecret";

#[derive(Debug, Default)]
struct Store {
    keys: BTreeMap<String, KeyRecord>,
    /// ciphertext text -> (plaintext, context)
    wrapped: BTreeMap<String, (Vec<u8>, BTreeMap<String, String>)>,
    calls: Vec<(String, String)>,
    /// The request id of every write, in order.
    write_ids: Vec<[u8; 16]>,
}

/// Answers ClientRequests from a small map of keys. Generation finishes on
/// the first read after it started. Key `down` answers encrypts with an
/// unavailability error; a write by `mallory` is denied; disabling key
/// `guarded` needs approval.
#[derive(Debug, Default)]
pub struct FakeBackend {
    store: Mutex<Store>,
}

impl FakeBackend {
    /// (principal, request kind) of every call so far.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.store.lock().unwrap().calls.clone()
    }

    /// The request id of every write so far.
    pub fn write_ids(&self) -> Vec<[u8; 16]> {
        self.store.lock().unwrap().write_ids.clone()
    }
}

fn written(result: Result<Applied, StateError>) -> ClientResponse {
    ClientResponse::Written {
        log_index: 1,
        response: Response {
            result,
            audit_seq: 1,
            duplicate: false,
        },
        not_applied_on: Vec::new(),
    }
}

fn new_version(v: u32) -> KeyVersionRecord {
    KeyVersionRecord {
        version: KeyVersion(v),
        state: VersionState::Generating,
        created_ms: 1000,
        threshold: 2,
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
        epoch: Epoch(0),
        public_keys: None,
        erase_receipts: BTreeSet::new(),
        compromised: None,
        compromised_decrypt_allowed: false,
        generation_deadline_ms: 31_000,
        dkg: serde_json_free_dkg(),
        refresh: None,
        refresh_attempts: 0,
        last_refresh_failure: None,
    }
}

fn serde_json_free_dkg() -> qk_state::DkgRecord {
    qk_state::DkgRecord {
        phase: qk_state::DkgPhase::Dealing,
        dealt: BTreeSet::new(),
        complained: BTreeSet::new(),
        acks: BTreeMap::new(),
        acked_keys: None,
        started_ms: 0,
        closed_ms: None,
    }
}

fn approval() -> ApprovalRecord {
    ApprovalRecord {
        id: "ap1".into(),
        requester: "alice".into(),
        key: "guarded".into(),
        permission: Permission::KeyDisable,
        action: PendingAction::Operation(Box::new(Operation::Disable {
            name: "guarded".into(),
            version: KeyVersion(1),
        })),
        required: 2,
        approvers: BTreeSet::new(),
        created_ms: 1,
        expires_at_ms: 2,
        status: ApprovalStatus::Pending,
    }
}

fn principal(name: &str) -> PrincipalRecord {
    PrincipalRecord {
        name: name.into(),
        roles: [Role::Admin].into_iter().collect(),
        created_ms: 5,
        disabled: false,
    }
}

impl Store {
    fn write(&mut self, cmd: Command) -> ClientResponse {
        match cmd.op {
            Operation::CreateKey(c) => {
                if self.keys.contains_key(&c.name) {
                    return written(Err(StateError::KeyExists(c.name)));
                }
                let id = KeyId([self.keys.len() as u8 + 1; 16]);
                let record = KeyRecord {
                    id,
                    name: c.name.clone(),
                    description: c.description,
                    owner: c.owner,
                    purpose: c.purpose,
                    created_ms: 1000,
                    rotation_period_ms: c.rotation_period_ms,
                    expires_at_ms: c.expires_at_ms,
                    last_rotated_ms: 1000,
                    versions: vec![new_version(1)],
                    tags: BTreeMap::new(),
                    min_decrypt_version: KeyVersion(0),
                    policy: None,
                    expired: false,
                };
                self.keys.insert(c.name, record);
                written(Ok(Applied::KeyCreated {
                    id,
                    version: KeyVersion(1),
                }))
            }
            Operation::Rotate { name, .. } => self.with_key(&name, |k| {
                let v = k.versions.len() as u32 + 1;
                k.versions.push(new_version(v));
                Ok(Applied::VersionCreated {
                    version: KeyVersion(v),
                })
            }),
            Operation::Disable { name, .. } if name == "guarded" => {
                written(Ok(Applied::ApprovalRequested {
                    id: "ap1".into(),
                    required: 2,
                }))
            }
            Operation::Disable { name, version } => {
                self.transition(&name, version, "disable", |s| {
                    (*s == VersionState::Enabled).then_some(VersionState::Disabled)
                })
            }
            Operation::Enable { name, version } => self.transition(&name, version, "enable", |s| {
                (*s == VersionState::Disabled).then_some(VersionState::Enabled)
            }),
            Operation::ScheduleDestruction {
                name,
                version,
                after_ms,
            } => self.transition(&name, version, "schedule destruction", |s| {
                matches!(s, VersionState::Enabled | VersionState::Disabled)
                    .then_some(VersionState::PendingDestruction { due_ms: after_ms })
            }),
            Operation::SetTag { name, tag, value } => self.with_key(&name, |k| {
                match value {
                    Some(v) => k.tags.insert(tag, v),
                    None => k.tags.remove(&tag),
                };
                Ok(Applied::Done)
            }),
            Operation::SetMinDecryptVersion { name, version } => self.with_key(&name, |k| {
                k.min_decrypt_version = version;
                Ok(Applied::Done)
            }),
            _ => written(Ok(Applied::Done)),
        }
    }

    fn with_key(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut KeyRecord) -> Result<Applied, StateError>,
    ) -> ClientResponse {
        match self.keys.get_mut(name) {
            Some(k) => written(f(k)),
            None => written(Err(StateError::NoSuchKey(name.into()))),
        }
    }

    fn transition(
        &mut self,
        name: &str,
        version: KeyVersion,
        action: &str,
        next: impl FnOnce(&VersionState) -> Option<VersionState>,
    ) -> ClientResponse {
        self.with_key(name, |k| {
            let v = k.versions.iter_mut().find(|v| v.version == version).ok_or(
                StateError::NoSuchVersion {
                    name: name.into(),
                    version: version.0,
                },
            )?;
            let state = next(&v.state).ok_or_else(|| StateError::InvalidTransition {
                name: name.into(),
                version: version.0,
                state: v.state.name().into(),
                action: action.into(),
            })?;
            v.state = state;
            Ok(Applied::Done)
        })
    }

    fn finish_generation(&mut self) {
        for k in self.keys.values_mut() {
            for v in &mut k.versions {
                if v.state == VersionState::Generating {
                    v.state = VersionState::Enabled;
                    v.public_keys = Some(vec![2; 33]);
                }
            }
        }
    }

    fn wrap(
        &mut self,
        name: &str,
        context: BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> ClientResponse {
        let Some(k) = self.keys.get(name) else {
            return ClientResponse::NotFound(format!("key {name:?} does not exist"));
        };
        let Some(v) = k.primary_version() else {
            return ClientResponse::Error(RequestError::conflict(format!(
                "key {name:?} has no enabled version"
            )));
        };
        let ct = qk_crypto::wrap(
            &mut rand::rng(),
            &k256::AffinePoint::GENERATOR,
            k.id,
            v.version,
            &context,
            plaintext,
        )
        .unwrap();
        let text = ct.to_text();
        let version = v.version.0;
        self.wrapped
            .insert(text.clone(), (plaintext.to_vec(), context));
        ClientResponse::Ciphertext { text, version }
    }

    fn unwrap(&self, ciphertext: &str, context: &BTreeMap<String, String>) -> ClientResponse {
        match self.wrapped.get(ciphertext) {
            Some((p, c)) if c == context => ClientResponse::Plaintext(Redacted(p.clone())),
            Some(_) => ClientResponse::Error(RequestError::invalid(
                "the ciphertext does not verify under this encryption context",
            )),
            None => ClientResponse::Error(RequestError::invalid("the ciphertext is not valid")),
        }
    }

    fn answer(&mut self, caller: &Caller, req: ClientRequest) -> ClientResponse {
        match req {
            ClientRequest::Write(cmd) => {
                self.write_ids.push(cmd.request_id.0);
                self.write(cmd)
            }
            ClientRequest::GetKey { name } => {
                self.finish_generation();
                ClientResponse::Key(self.keys.get(&name).cloned())
            }
            ClientRequest::ListKeys => ClientResponse::Keys(self.keys.keys().cloned().collect()),
            ClientRequest::KeyInventory => {
                ClientResponse::KeyRecords(self.keys.values().cloned().collect())
            }
            ClientRequest::Encrypt { name, .. } if name == "down" => ClientResponse::Error(
                RequestError::unavailable("cannot reach a quorum of holders: 2 needed, 1 answered"),
            ),
            ClientRequest::Encrypt {
                name,
                context,
                plaintext,
            } => self.wrap(&name, context, &plaintext.0),
            ClientRequest::DataKey {
                name,
                bytes,
                context,
            } => {
                let plain = vec![7u8; usize::from(bytes)];
                match self.wrap(&name, context, &plain) {
                    ClientResponse::Ciphertext { text, version } => ClientResponse::DataKey {
                        plaintext: Redacted(plain),
                        ciphertext: text,
                        version,
                    },
                    other => other,
                }
            }
            ClientRequest::Decrypt {
                ciphertext,
                context,
                ..
            } => self.unwrap(&ciphertext, &context),
            ClientRequest::Rewrap {
                ciphertext,
                context,
                to_key,
            } => match self.unwrap(&ciphertext, &context) {
                ClientResponse::Plaintext(p) => {
                    let key = to_key.unwrap_or_else(|| "k1".into());
                    self.wrap(&key, context, &p.0)
                }
                other => other,
            },
            ClientRequest::ListApprovals => ClientResponse::Approvals(vec![approval()]),
            ClientRequest::ListPrincipals => {
                ClientResponse::Principals(vec![principal("alice"), principal("bob")])
            }
            ClientRequest::WhoAmI { token_id } => ClientResponse::Identity {
                principal: principal(&caller.principal),
                token: token_id.map(|id| TokenRecord {
                    id,
                    principal: caller.principal.clone(),
                    description: "test".into(),
                    secret_sha256: [9; 32],
                    verify_key: [8; 32],
                    created_ms: 1,
                    expires_at_ms: 3_600_000,
                    revoked_ms: None,
                }),
            },
            other => ClientResponse::Error(RequestError::internal(format!(
                "{other:?} is not served by the fake"
            ))),
        }
    }
}

fn kind(req: &ClientRequest) -> String {
    let text = format!("{req:?}");
    text.split([' ', '(', '{']).next().unwrap_or("").to_owned()
}

impl Backend for FakeBackend {
    fn call(&self, caller: Caller, req: ClientRequest) -> BoxFuture<'_, ClientResponse> {
        Box::pin(async move {
            let mut store = self.store.lock().unwrap();
            store.calls.push((caller.principal.clone(), kind(&req)));
            if caller.principal == "mallory" {
                return ClientResponse::Denied("principal mallory has no roles".into());
            }
            store.answer(&caller, req)
        })
    }

    fn authenticate_token(&self, token: &str) -> Result<(String, String), RequestError> {
        match token {
            ALICE_TOKEN => Ok(("alice".into(), "t1".into())),
            MALLORY_TOKEN => Ok(("mallory".into(), "t2".into())),
            _ => Err(RequestError::unauthenticated("unknown token")),
        }
    }

    fn node_id(&self) -> u64 {
        1
    }

    fn readiness(&self) -> Result<u64, RequestError> {
        Ok(1)
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            term: 3,
            last_applied: 42,
            key_count: self.store.lock().unwrap().keys.len() as u64,
            audit_len: 7,
            is_leader: true,
            voters: 3,
            leader_api_url: Some("https://127.0.0.1:7201".into()),
        }
    }

    fn applied_index(&self) -> u64 {
        FAKE_APPLIED
    }

    /// The fake node issued no AWS access keys.
    fn aws_secret(&self, _token_id: &str) -> Result<qk_api::AwsSecret, RequestError> {
        Err(RequestError::unauthenticated("no such access key"))
    }

    fn authenticate_aws_token(&self, _token: &str) -> Result<(String, String), RequestError> {
        Err(RequestError::unauthenticated("no such access key"))
    }

    fn wait_applied(&self, index: u64) -> BoxFuture<'_, Result<(), RequestError>> {
        Box::pin(async move {
            if index <= FAKE_APPLIED {
                Ok(())
            } else {
                Err(RequestError::unavailable(format!(
                    "node is behind: it has applied log index {FAKE_APPLIED}, the request needs {index}; retry"
                )))
            }
        })
    }
}

/// The fake node's applied log index (X-Qk-Index).
pub const FAKE_APPLIED: u64 = 42;

/// A running server with its CA and a client certificate.
pub struct Harness {
    pub server: ApiServer,
    pub backend: Arc<FakeBackend>,
    pub ca: ClusterCa,
    pub client_creds: Credentials,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("qk-api test").unwrap();
        let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
        ca.issue_node(1, &["127.0.0.1"])
            .unwrap()
            .save(&cert, &key)
            .unwrap();
        let node = Credentials::load(&cert, &key).unwrap();
        let client_creds = ca.issue_client("bob").unwrap();
        let backend = Arc::new(FakeBackend::default());
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = ApiServer::bind(addr, &node, ca.cert(), backend.clone())
            .await
            .unwrap();
        let base = format!("https://127.0.0.1:{}", server.local_addr().port());
        Harness {
            server,
            backend,
            ca,
            client_creds,
            base,
            _dir: dir,
        }
    }

    pub fn tls(&self, identity: Option<&Credentials>) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert().der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match identity {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let chain = CertificateDer::pem_slice_iter(c.cert_pem().as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(c.key_pem().as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        }
    }

    /// A client without a certificate.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.tls(None))
            .build()
            .unwrap()
    }

    /// A client presenting `bob`'s client certificate.
    pub fn cert_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.tls(Some(&self.client_creds)))
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
