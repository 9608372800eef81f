//! Runs the sans-IO quorum protocol (`qk-protocol`) inside the node: feeds it
//! applied log entries, peer messages, ticks and unwrap requests, and executes
//! its actions (send, propose, persist or erase a share, answer a partial).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use qk_protocol::{
    check_intent_proof, holder_partial, stored_share, Action, Event, NodeProtocol, OpId,
    PartialRequest, ProtocolConfig, ProtocolMessage, StoredShare, UnwrapError, UnwrapMode,
    UnwrapRequest,
};
use qk_state::proof::ProofError;
use qk_state::{Command, Response, StateMachine};
use qk_storage::{ShareSlot, ShareStore, StateReader};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, RequestError};
use tokio::sync::{mpsc, oneshot};

use crate::applied::AppliedIndex;
use crate::io::{now_ms, Io};
use tracing::{error, info, warn};

/// How often the protocol's timeouts are driven.
const TICK: Duration = Duration::from_millis(100);
/// How often a failed share erase is tried again.
const ERASE_RETRY: Duration = Duration::from_secs(2);

/// The protocol and what it needs synchronously (called from the apply hook).
pub struct QuorumCore {
    me: NodeId,
    protocol: Mutex<NodeProtocol>,
    actions: mpsc::UnboundedSender<Vec<Action>>,
    /// Entries at or below this index were in the local log when the process
    /// started: replays. The start-up reconciliation covers them; the protocol
    /// does not react to them (it would, say, deal again for an old key).
    replay_upto: u64,
}

impl QuorumCore {
    pub fn new(
        me: NodeId,
        replay_upto: u64,
        dkg_key: qk_crypto::DkgSecretKey,
    ) -> (Arc<QuorumCore>, mpsc::UnboundedReceiver<Vec<Action>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let core = QuorumCore {
            me,
            protocol: Mutex::new(NodeProtocol::new(me, ProtocolConfig::default(), dkg_key)),
            actions: tx,
            replay_upto,
        };
        (Arc::new(core), rx)
    }

    fn handle(&self, state: &StateMachine, event: Event) {
        let actions = match self.protocol.lock() {
            Ok(mut p) => p.handle(state, event, &mut rand::rng()),
            Err(_) => {
                error!("protocol state poisoned by an earlier panic; restart the node");
                return;
            }
        };
        if !actions.is_empty() {
            let _ = self.actions.send(actions);
        }
    }

    /// The apply hook: runs with the state as of `index`.
    pub fn on_applied(
        &self,
        state: &StateMachine,
        index: u64,
        command: &Command,
        response: &Response,
    ) {
        if index <= self.replay_upto {
            return;
        }
        self.handle(
            state,
            Event::Applied {
                index,
                command: command.clone(),
                response: response.clone(),
            },
        );
    }
}

/// The outcome of a server-side unwrap.
pub type UnwrapOutcome = Result<qk_types::Redacted, UnwrapError>;

/// Where a finished unwrap is delivered: the outcome and any faulty holders.
type Waiter = oneshot::Sender<(UnwrapOutcome, Vec<NodeId>)>;

/// The node-side runtime of the protocol.
pub struct Quorum {
    pub core: Arc<QuorumCore>,
    state: StateReader,
    shares: ShareStore,
    /// Shares that failed their start-up check: never served.
    refused: Mutex<BTreeSet<ShareSlot>>,
    pending: Mutex<BTreeMap<OpId, Waiter>>,
    next_op: AtomicU64,
    applied: AppliedIndex,
    /// Checks the session grants of certificate principals' decrypt proofs.
    grants: Arc<qk_net::GrantVerifier>,
    /// Where a refused partial request is recorded.
    audit: crate::audit::AuditQueue,
}

fn slot(key: KeyId, version: KeyVersion, epoch: Epoch) -> ShareSlot {
    ShareSlot {
        key,
        version,
        epoch,
    }
}

impl Quorum {
    /// A secret only this node can derive (see
    /// [`ShareStore::gateway_secret`]).
    pub fn gateway_secret(
        &self,
        purpose: &str,
        id: &str,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, qk_storage::ShareStoreError> {
        self.shares.gateway_secret(purpose, id)
    }

    pub fn new(
        core: Arc<QuorumCore>,
        state: StateReader,
        shares: ShareStore,
        applied: AppliedIndex,
        (grants, audit): (Arc<qk_net::GrantVerifier>, crate::audit::AuditQueue),
    ) -> Quorum {
        Quorum {
            applied,
            grants,
            audit,
            core,
            state,
            shares,
            refused: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(BTreeMap::new()),
            next_op: AtomicU64::new(1),
        }
    }

    fn with_state(&self, f: impl FnOnce(&StateMachine)) {
        if let Err(e) = self.state.read(|a| f(a.machine())) {
            error!("cannot read the local state: {e}");
        }
    }

    pub fn on_message(&self, from: NodeId, bytes: &[u8]) -> Result<(), String> {
        let msg = ProtocolMessage::decode(bytes).map_err(|e| e.to_string())?;
        self.with_state(|s| self.core.handle(s, Event::Message { from, msg }));
        Ok(())
    }

    fn tick(&self) {
        let now_ms = now_ms();
        self.with_state(|s| self.core.handle(s, Event::Tick { now_ms }));
    }

    /// Server-side unwrap: asks the holders, waits for the combination.
    pub async fn unwrap(
        &self,
        name: String,
        ciphertext: Vec<u8>,
        context: BTreeMap<String, String>,
        principal: String,
        proof: qk_state::proof::IntentProof,
    ) -> (UnwrapOutcome, Vec<NodeId>) {
        let op_id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(op_id, tx);
        }
        let request = UnwrapRequest {
            op_id,
            name,
            ciphertext,
            context,
            principal,
            mode: UnwrapMode::ServerSide,
            // Holders decide on state at least as new as this node's.
            min_applied: self.applied.get(),
            proof: Some(proof),
        };
        let now_ms = now_ms();
        self.with_state(|s| self.core.handle(s, Event::StartUnwrap { now_ms, request }));
        // The protocol bounds the wait itself; this is a backstop.
        let waited = tokio::time::timeout(Duration::from_secs(30), rx).await;
        // Whatever happened, this unwrap's waiter must not outlive the call.
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&op_id);
        }
        match waited {
            Ok(Ok(outcome)) => outcome,
            _ => (
                Err(UnwrapError::BadCiphertext(
                    "the unwrap was dropped; retry".into(),
                )),
                Vec::new(),
            ),
        }
    }

    /// This node's partial for another node's unwrap: only for the
    /// principal's own proof of exactly this ciphertext and context.
    async fn proven_partial(
        &self,
        from: NodeId,
        request: &PartialRequest,
    ) -> Result<Vec<u8>, String> {
        if let Err(reason) = self.check_proof(from, request) {
            warn!(
                %from,
                principal = %request.principal,
                key = %request.name,
                "refused a partial without a valid proof from its principal: {reason}"
            );
            // The requesting node is who spoke; the principal it named is not.
            self.audit.record(
                &from.to_string(),
                "partial",
                Some(&request.name),
                Some(request.version),
                format!(
                    "refused: asked in the name of {} without that principal's proof: {reason}",
                    request.principal
                ),
            );
            return Err(format!("node {}: {reason}", self.core.me));
        }
        self.recorded_partial(Some(from), request)
            .await
            .map_err(|e| e.message)
    }

    /// This node's partial, with one audit record of the outcome naming the
    /// principal, key, version, this holder, the node that asked (`None`: the
    /// client itself, client-side combining) and the ciphertext and context
    /// digests. Fail-closed: the partial is released only once that record
    /// is committed to the replicated trail.
    pub async fn recorded_partial(
        &self,
        asked_by: Option<NodeId>,
        request: &PartialRequest,
    ) -> Result<Vec<u8>, RequestError> {
        let result = self.own_partial(request);
        let verdict = match &result {
            Ok(_) => "ok".to_string(),
            Err(reason) => format!("refused: {reason}"),
        };
        let via = asked_by.map_or("the client itself".to_string(), |n| n.to_string());
        let detail = format!(
            "holder {}, asked by {via}; ciphertext sha256 {}, context sha256 {}",
            self.core.me,
            short_digest(&[&request.ciphertext]),
            context_digest(&request.context),
        );
        let outcome = format!("{verdict}; {detail}");
        let what = (Some(request.name.as_str()), Some(request.version));
        match result {
            Ok(partial) => {
                let durable = self
                    .audit
                    .record_durable(&request.principal, "partial", what, outcome)
                    .await;
                if durable {
                    Ok(partial)
                } else {
                    // The "ok" record may still commit later (a leader that
                    // regains its majority): the trail then also says the
                    // partial never left this node.
                    let (key, version) = what;
                    let withheld = format!(
                        "withheld: its audit record was not committed within 5 s, so no partial was released; {detail}"
                    );
                    self.audit
                        .record(&request.principal, "partial", key, version, withheld);
                    Err(RequestError::unavailable(format!(
                        "node {}: the audit record of this partial was not committed within 5 s, so no partial is released; retry when a majority of the cluster is up",
                        self.core.me
                    )))
                }
            }
            Err(reason) => {
                let (key, version) = what;
                self.audit
                    .record(&request.principal, "partial", key, version, outcome);
                Err(reason)
            }
        }
    }

    /// The signature checks run outside the state lock; only a token's
    /// record is read from the state.
    fn check_proof(&self, from: NodeId, request: &PartialRequest) -> Result<(), String> {
        let now_ms = now_ms();
        let token = |id: &str| {
            let mut signer = Err(ProofError::Signer(
                "this node cannot read its replicated state to check the token".into(),
            ));
            self.with_state(|s| signer = s.token_signer(id, now_ms));
            signer
        };
        check_intent_proof(from, request, now_ms, self.grants.as_ref(), token)
            .map_err(|e| e.to_string())
    }

    /// This node's own partial, for client-side combining.
    pub fn own_partial(&self, request: &PartialRequest) -> Result<Vec<u8>, RequestError> {
        let mut out = Err(RequestError::internal(
            "this node cannot read its replicated state; see its log",
        ));
        self.with_state(|s| {
            let share = self.load_share(s, request.key, request.version);
            out = holder_partial(
                s,
                self.core.me,
                share.as_ref(),
                request,
                now_ms(),
                &mut rand::rng(),
            );
        });
        out
    }

    fn load_share(
        &self,
        s: &StateMachine,
        key: KeyId,
        version: KeyVersion,
    ) -> Option<qk_crypto::KeyShare> {
        let record = s.key_by_id(key)?;
        let epoch = record.version(version)?.epoch;
        let slot = slot(key, version, epoch);
        if self
            .refused
            .lock()
            .map(|r| r.contains(&slot))
            .unwrap_or(true)
        {
            return None;
        }
        match self.shares.get(slot) {
            Ok(share) => share,
            Err(e) => {
                error!("{e}");
                None
            }
        }
    }

    /// Executes action batches in order: share writes and erasures complete
    /// before later actions of the same batch; sends and proposals run
    /// concurrently so one slow peer holds nothing up.
    pub async fn run(
        self: Arc<Self>,
        io: Arc<dyn Io>,
        mut rx: mpsc::UnboundedReceiver<Vec<Action>>,
    ) {
        let ticker = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(TICK);
                loop {
                    interval.tick().await;
                    me.tick();
                }
            })
        };
        // A failed erase and the proposals that wait on it (its receipt),
        // retried in order until the erase succeeds.
        let mut held: Vec<Action> = Vec::new();
        let mut retry = tokio::time::interval(ERASE_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    let again = self.execute_batch(batch, &io);
                    held.extend(again);
                }
                _ = retry.tick(), if !held.is_empty() => {
                    let waiting = self.still_to_erase(std::mem::take(&mut held));
                    info!(actions = waiting.len(), "retrying a share erase that failed");
                    held = self.execute_batch(waiting, &io);
                }
            }
        }
        ticker.abort();
    }

    /// Runs a batch in order. qk-protocol's contract: a later action of the
    /// batch (an ack, an erase receipt) may run only once the share write or
    /// erase before it is durable. A failure holds back the later proposals
    /// about the same key version; the rest runs. Returns a failed erase with
    /// the proposals it held back, to retry: a share of a destroyed version
    /// must not stay on disk because one erase failed.
    fn execute_batch(self: &Arc<Self>, batch: Vec<Action>, io: &Arc<dyn Io>) -> Vec<Action> {
        let mut failed: Vec<(String, KeyVersion)> = Vec::new();
        let mut erase_failed: Vec<(String, KeyVersion)> = Vec::new();
        let mut held = Vec::new();
        for action in batch {
            if let Action::Propose(op) = &action {
                let about = op.key_name().zip(op.version());
                let is = |list: &[(String, KeyVersion)]| {
                    about.is_some_and(|(k, v)| list.iter().any(|f| f.0 == k && f.1 == v))
                };
                if is(&erase_failed) {
                    held.push(action);
                    continue;
                }
                if is(&failed) {
                    error!(
                        op = op.name(),
                        "not proposed: the share write before it failed"
                    );
                    continue;
                }
            }
            let about = share_action_of(&action);
            let again = erase_again(&action);
            if let Err(e) = self.execute(action, io) {
                error!("{e}");
                if again.is_some() {
                    erase_failed.extend(about.clone());
                }
                failed.extend(about);
                held.extend(again);
            }
        }
        held
    }

    /// The held actions that still apply: an erase of one epoch's share is
    /// dropped once the replicated state says to keep that slot (a later
    /// refresh attempt for the same epoch stored a new share there), and so
    /// are the proposals it held back. Destroyed and failed versions never
    /// get a share again, so their erases always stay.
    fn still_to_erase(&self, held: Vec<Action>) -> Vec<Action> {
        let mut dropped: Vec<(String, KeyVersion)> = Vec::new();
        let mut out = Vec::new();
        for action in held {
            if let Action::EraseShare {
                key,
                name,
                version,
                epoch,
            } = &action
            {
                let mut fate = StoredShare::Keep;
                self.with_state(|s| fate = self.check_slot(s, slot(*key, *version, *epoch)));
                if !matches!(fate, StoredShare::Erase { .. }) {
                    info!(key = %name, %version, epoch = epoch.0, "a held erase no longer applies; dropped");
                    dropped.push((name.clone(), *version));
                    continue;
                }
            }
            if let Action::Propose(op) = &action {
                let about = op.key_name().zip(op.version());
                if about.is_some_and(|(k, v)| dropped.iter().any(|d| d.0 == k && d.1 == v)) {
                    continue;
                }
            }
            out.push(action);
        }
        out
    }

    /// Runs one action; `Err` when a share write or erase failed, so the
    /// actions after it must not run.
    fn execute(self: &Arc<Self>, action: Action, io: &Arc<dyn Io>) -> Result<(), String> {
        match action {
            Action::Send { to, msg } => self.send(io, to, &msg),
            Action::Propose(op) => {
                let io = io.clone();
                tokio::spawn(async move { io.propose(op).await });
            }
            Action::PersistShare {
                key,
                name,
                version,
                epoch,
                share,
            } => {
                self.shares
                    .put(slot(key, version, epoch), &share)
                    .map_err(|e| format!("cannot store the new share of {name} {version}: {e}"))?;
            }
            Action::EraseShare {
                key,
                name,
                version,
                epoch,
            } => match self.shares.erase(slot(key, version, epoch)) {
                Ok(true) => info!(key = %name, %version, "share erased"),
                Ok(false) => {}
                Err(e) => return Err(format!("cannot erase the share of {name} {version}: {e}")),
            },
            Action::EraseVersion { key, name, version } => {
                self.erase_version(key, &name, version)?
            }
            Action::AnswerPartial { to, request } => {
                // Off the action loop: partials for many unwraps run in parallel.
                let (me, io) = (self.clone(), io.clone());
                tokio::spawn(async move {
                    let result = match me.applied.wait_for_holder(request.min_applied).await {
                        Ok(_) => me.proven_partial(to, &request).await,
                        Err(behind) => Err(format!("node {}: {behind}", me.core.me)),
                    };
                    let answer = ProtocolMessage::PartialResponse {
                        op_id: request.op_id,
                        result,
                    };
                    me.send(&io, to, &answer);
                });
            }
            Action::UnwrapDone {
                op_id,
                result,
                faulty,
            } => {
                for node in &faulty {
                    warn!(%node, "holder sent an invalid partial decryption");
                }
                if let Some(tx) = self.pending.lock().ok().and_then(|mut p| p.remove(&op_id)) {
                    let _ = tx.send((result, faulty));
                }
            }
            Action::NeedShare {
                key,
                name,
                version,
                epoch,
            } => {
                let slot = slot(key, version, epoch);
                let refused = self
                    .refused
                    .lock()
                    .map(|r| r.contains(&slot))
                    .unwrap_or(true);
                let share = match self.shares.get(slot) {
                    Ok(share) if !refused => share,
                    Ok(_) => None,
                    Err(e) => {
                        error!(key = %name, %version, "cannot load the share for a refresh: {e}");
                        None
                    }
                };
                let event = Event::ShareLoaded {
                    key,
                    version,
                    epoch,
                    share,
                };
                self.with_state(|s| self.core.handle(s, event));
            }
            Action::Warning(w) => warn!("{w}"),
            other => warn!("unhandled protocol action {other:?}"),
        }
        Ok(())
    }

    /// Erases every stored share of the version, whatever its epoch.
    fn erase_version(&self, key: KeyId, name: &str, version: KeyVersion) -> Result<(), String> {
        let slots = self
            .shares
            .slots()
            .map_err(|e| format!("cannot list shares of {name} {version} to erase: {e}"))?;
        for slot in slots
            .into_iter()
            .filter(|s| s.key == key && s.version == version)
        {
            match self.shares.erase(slot) {
                Ok(true) => info!(key = %name, %version, epoch = slot.epoch.0, "share erased"),
                Ok(false) => {}
                Err(e) => return Err(format!("cannot erase the share of {name} {version}: {e}")),
            }
        }
        Ok(())
    }

    fn send(self: &Arc<Self>, io: &Arc<dyn Io>, to: NodeId, msg: &ProtocolMessage) {
        let bytes = match msg.encode() {
            Ok(b) => b.to_vec(),
            Err(e) => return error!("cannot encode a protocol message: {e}"),
        };
        if to == self.core.me {
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.on_message(to, &bytes) {
                    error!("own protocol message refused: {e}");
                }
            });
            return;
        }
        let io = io.clone();
        tokio::spawn(async move { io.send(to, bytes).await });
    }

    /// At start: erase shares of versions that were destroyed or failed while
    /// this node was away, and refuse to serve any share that does not open or
    /// does not match the replicated commitments.
    pub async fn reconcile(&self, io: &Arc<dyn Io>) -> Result<()> {
        let slots = self.shares.slots()?;
        let mut receipts = Vec::new();
        for slot in slots {
            let mut verdict = StoredShare::Keep;
            self.with_state(|s| verdict = self.check_slot(s, slot));
            match verdict {
                StoredShare::Keep => {}
                StoredShare::Erase { receipt } => {
                    self.shares.erase(slot)?;
                    info!(key = %slot.key, version = %slot.version, epoch = slot.epoch.0, "erased a share of a destroyed or failed version, or of an epoch a refresh replaced");
                    // One receipt per version, whatever epochs it had.
                    receipts.extend(receipt.filter(|r| !receipts.contains(r)));
                }
                StoredShare::Refuse(reason) => {
                    error!("refusing to serve a share: {reason}");
                    if let Ok(mut r) = self.refused.lock() {
                        r.insert(slot);
                    }
                }
            }
        }
        for op in receipts {
            io.propose(op).await;
        }
        Ok(())
    }

    fn check_slot(&self, s: &StateMachine, slot: ShareSlot) -> StoredShare {
        let load = || self.shares.get(slot);
        stored_share(s, self.core.me, (slot.key, slot.version, slot.epoch), load)
    }
}

/// The same erase, to run again after it failed.
fn erase_again(action: &Action) -> Option<Action> {
    match action {
        Action::EraseShare {
            key,
            name,
            version,
            epoch,
        } => Some(Action::EraseShare {
            key: *key,
            name: name.clone(),
            version: *version,
            epoch: *epoch,
        }),
        Action::EraseVersion { key, name, version } => Some(Action::EraseVersion {
            key: *key,
            name: name.clone(),
            version: *version,
        }),
        _ => None,
    }
}

/// The key version a share write or erase is about.
fn share_action_of(action: &Action) -> Option<(String, KeyVersion)> {
    match action {
        Action::PersistShare { name, version, .. }
        | Action::EraseShare { name, version, .. }
        | Action::EraseVersion { name, version, .. } => Some((name.clone(), *version)),
        _ => None,
    }
}

/// The first 8 bytes of a SHA-256, in hex: enough to match a record to a
/// ciphertext, too short to matter as a secret.
fn short_digest(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn context_digest(context: &BTreeMap<String, String>) -> String {
    let fields: Vec<&[u8]> = context
        .iter()
        .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
        .collect();
    short_digest(&fields)
}
