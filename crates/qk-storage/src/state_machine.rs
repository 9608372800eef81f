//! The applied state: [`RaftStateMachine`] + [`RaftSnapshotBuilder`] on sled.

use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StoredMembership,
};
use qk_raft::{BatchResponse, QkNode, TypeConfig};
use qk_state::authn::GrantCheck;
use qk_state::{Command, RefreshSchedule, RequestShares, Response, StateMachine};
use serde::{Deserialize, Serialize};

use crate::codec::{self, MAX_META_BYTES, MAX_SNAPSHOT_BYTES};
use crate::error::{self, StoreError};
use crate::{Entry, NodeId};

/// Key of the persisted applied state in the state-machine tree.
const KEY_APPLIED: &[u8] = b"applied";
/// Keys of the snapshot tree.
const KEY_SNAPSHOT_META: &[u8] = b"meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"data";

/// First byte of every snapshot payload. Bump on any change of
/// [`PayloadRef`]/[`Payload`] or of [`StateMachine`]'s encoding, and keep
/// decoding the format before it.
const SNAPSHOT_FORMAT: u8 = 2;
/// The format before the per-principal request shares ([`RequestShares`]),
/// and the refresh schedule, still decoded: shares off until
/// `EnableRequestShares`, no schedule until `SetRefreshSchedule`.
const SNAPSHOT_FORMAT_WITHOUT_SHARES: u8 = 1;

pub(crate) type Membership = StoredMembership<NodeId, QkNode>;
pub(crate) type SnapshotMetadata = SnapshotMeta<NodeId, QkNode>;

/// The state machine with the Raft bookkeeping that belongs to it.
#[derive(Clone, Debug, Default)]
pub struct AppliedState {
    machine: StateMachine,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
}

impl AppliedState {
    /// The replicated key-custody state.
    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// The last log entry applied to [`Self::machine`].
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.last_applied
    }

    /// The last membership configuration applied.
    pub fn last_membership(&self) -> &Membership {
        &self.last_membership
    }
}

/// Snapshot payload, encoding side (borrows the state, no clone).
#[derive(Serialize)]
struct PayloadRef<'a> {
    format: u8,
    last_applied: &'a Option<LogId<NodeId>>,
    last_membership: &'a Membership,
    machine: &'a StateMachine,
    shares: &'a RequestShares,
    refresh_schedule: &'a RefreshSchedule,
}

/// Snapshot payload, decoding side. Same fields, same order as [`PayloadRef`].
#[derive(Deserialize)]
struct Payload {
    format: u8,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    machine: StateMachine,
    shares: RequestShares,
    refresh_schedule: RefreshSchedule,
}

/// A payload of [`SNAPSHOT_FORMAT_WITHOUT_SHARES`].
#[derive(Deserialize)]
struct PayloadWithoutShares {
    format: u8,
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    machine: StateMachine,
}

/// The snapshot payload of `state` (also the restart checkpoint).
pub fn encode_payload(state: &AppliedState) -> Result<Vec<u8>, StoreError> {
    codec::encode(
        "state machine snapshot",
        &PayloadRef {
            format: SNAPSHOT_FORMAT,
            last_applied: &state.last_applied,
            last_membership: &state.last_membership,
            machine: &state.machine,
            shares: state.machine.request_shares(),
            refresh_schedule: state.machine.refresh_schedule(),
        },
        MAX_SNAPSHOT_BYTES,
    )
}

/// Decodes a snapshot payload strictly; `what` names it in errors.
pub fn decode_payload(what: &str, bytes: &[u8]) -> Result<AppliedState, StoreError> {
    let corrupt = |d| StoreError::corrupt(what, d);
    let p: Payload = match bytes.first() {
        None => return Err(StoreError::corrupt(what, "empty")),
        Some(&SNAPSHOT_FORMAT) => codec::decode(bytes, MAX_SNAPSHOT_BYTES).map_err(corrupt)?,
        Some(&SNAPSHOT_FORMAT_WITHOUT_SHARES) => {
            let old: PayloadWithoutShares =
                codec::decode(bytes, MAX_SNAPSHOT_BYTES).map_err(corrupt)?;
            Payload {
                format: old.format,
                last_applied: old.last_applied,
                last_membership: old.last_membership,
                machine: old.machine,
                shares: RequestShares::default(),
                refresh_schedule: RefreshSchedule::default(),
            }
        }
        Some(other) => {
            return Err(StoreError::UnsupportedFormat {
                what: what.to_string(),
                found: *other,
                expected: SNAPSHOT_FORMAT,
            })
        }
    };
    debug_assert!([SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_WITHOUT_SHARES].contains(&p.format));
    let mut machine = p.machine;
    machine.restore_request_shares(p.shares);
    machine.restore_refresh_schedule(p.refresh_schedule);
    if p.last_membership.log_id() > &p.last_applied {
        return Err(StoreError::corrupt(
            what,
            "its membership is newer than its last applied log id",
        ));
    }
    Ok(AppliedState {
        machine,
        last_applied: p.last_applied,
        last_membership: p.last_membership,
    })
}

fn snapshot_id(last: &Option<LogId<NodeId>>) -> String {
    // The payload is a deterministic function of the applied log prefix, so
    // the last applied log id identifies the snapshot's bytes.
    match last {
        Some(l) => l.to_string(),
        None => "empty".to_string(),
    }
}

/// Everything the store, its snapshot builders and its readers share.
struct Shared {
    db: sled::Db,
    /// Persisted applied state (a recovery checkpoint), key [`KEY_APPLIED`].
    sm_tree: sled::Tree,
    /// Current snapshot: [`KEY_SNAPSHOT_META`] and [`KEY_SNAPSHOT_DATA`].
    snapshots: sled::Tree,
    /// In-memory applied state. Never held across an `.await`.
    state: RwLock<AppliedState>,
    /// Serialises writes of the snapshot + checkpoint pair, so a slow builder
    /// cannot overwrite a newer installed snapshot.
    snapshot_write: Mutex<()>,
    /// Called after each applied command, with the state as of that entry.
    hook: Mutex<Option<ApplyHook>>,
    /// Called after a snapshot from the leader replaced the state.
    install_hook: Mutex<Option<InstallHook>>,
    /// Checks the session grants commands are signed under (the cluster CA).
    grants: Arc<dyn GrantCheck>,
}

/// Observer of applied commands: `(state after the command, log index (the
/// commands of one batch share their entry's index), command,
/// response)`. Runs inside `apply` with the state locked: keep it short and
/// never block on Raft from it.
pub type ApplyHook = Box<dyn FnMut(&StateMachine, u64, &Command, &Response) + Send>;

/// Observer of installed snapshots, with the last log index the snapshot
/// covers. The commands it covers never reach the [`ApplyHook`], so
/// whatever reacts to applies (erasing shares of destroyed versions and
/// replaced epochs) must look at the new state as a whole. Runs inside
/// `install_snapshot`: keep it short.
pub type InstallHook = Box<dyn FnMut(u64) + Send>;

impl Shared {
    fn read(&self) -> Result<RwLockReadGuard<'_, AppliedState>, StoreError> {
        self.state.read().map_err(|_| StoreError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, AppliedState>, StoreError> {
        self.state.write().map_err(|_| StoreError::Poisoned)
    }

    fn read_snapshot_meta(&self) -> Result<Option<SnapshotMetadata>, StoreError> {
        let Some(bytes) = self
            .snapshots
            .get(KEY_SNAPSHOT_META)
            .map_err(StoreError::io("reading snapshot metadata"))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes, MAX_META_BYTES)
            .map(Some)
            .map_err(|d| StoreError::corrupt("snapshot metadata", d))
    }

    fn read_snapshot(&self) -> Result<Option<(SnapshotMetadata, Vec<u8>)>, StoreError> {
        let Some(meta) = self.read_snapshot_meta()? else {
            return Ok(None);
        };
        let data = self
            .snapshots
            .get(KEY_SNAPSHOT_DATA)
            .map_err(StoreError::io("reading snapshot data"))?
            .ok_or_else(|| StoreError::corrupt("snapshot", "metadata present but data missing"))?;
        if data.len() > MAX_SNAPSHOT_BYTES {
            return Err(StoreError::corrupt(
                "snapshot data",
                format!(
                    "{} bytes, over the limit of {MAX_SNAPSHOT_BYTES}",
                    data.len()
                ),
            ));
        }
        Ok(Some((meta, data.to_vec())))
    }

    /// Stores `data` as the current snapshot and as the recovery checkpoint.
    /// With `only_if_newer`, leaves a stored snapshot of a later log id in
    /// place and returns `false`. Does not flush.
    fn store_snapshot(
        &self,
        meta: &SnapshotMetadata,
        data: &[u8],
        only_if_newer: bool,
    ) -> Result<bool, StoreError> {
        let meta_bytes = codec::encode("snapshot metadata", meta, MAX_META_BYTES)?;
        let _guard = self
            .snapshot_write
            .lock()
            .map_err(|_| StoreError::Poisoned)?;
        if only_if_newer {
            if let Some(current) = self.read_snapshot_meta()? {
                if current.last_log_id > meta.last_log_id {
                    return Ok(false);
                }
            }
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_SNAPSHOT_META, meta_bytes);
        batch.insert(KEY_SNAPSHOT_DATA, data);
        self.snapshots
            .apply_batch(batch)
            .map_err(StoreError::io("writing the snapshot"))?;
        self.sm_tree
            .insert(KEY_APPLIED, data)
            .map_err(StoreError::io("writing the state-machine checkpoint"))?;
        Ok(true)
    }

    async fn flush(&self, action: &'static str) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(StoreError::io(action))
    }
}

/// Loads the applied state at open: the newer of the checkpoint and the
/// current snapshot (they are written together, but not atomically).
pub(crate) fn load_applied(
    sm_tree: &sled::Tree,
    snapshots: &sled::Tree,
) -> Result<AppliedState, StoreError> {
    let checkpoint = sm_tree
        .get(KEY_APPLIED)
        .map_err(StoreError::io("reading the state-machine checkpoint"))?;
    let checkpoint = match checkpoint {
        Some(bytes) => Some(decode_payload("state-machine checkpoint", &bytes)?),
        None => None,
    };
    let snap_meta: Option<SnapshotMetadata> = match snapshots
        .get(KEY_SNAPSHOT_META)
        .map_err(StoreError::io("reading snapshot metadata"))?
    {
        Some(bytes) => Some(
            codec::decode(&bytes, MAX_META_BYTES)
                .map_err(|d| StoreError::corrupt("snapshot metadata", d))?,
        ),
        None => None,
    };
    let checkpoint_last = checkpoint.as_ref().and_then(|c| c.last_applied);
    match snap_meta {
        Some(meta) if meta.last_log_id > checkpoint_last => {
            let data = snapshots
                .get(KEY_SNAPSHOT_DATA)
                .map_err(StoreError::io("reading snapshot data"))?
                .ok_or_else(|| {
                    StoreError::corrupt("snapshot", "metadata present but data missing")
                })?;
            let state = decode_payload("snapshot data", &data)?;
            if state.last_applied != meta.last_log_id {
                return Err(StoreError::corrupt(
                    "snapshot",
                    "its data and metadata disagree on the last applied log id",
                ));
            }
            Ok(state)
        }
        _ => Ok(checkpoint.unwrap_or_default()),
    }
}

/// The state machine of one node, as openraft drives it.
///
/// Cheap to clone; clones share the state. Reads for clients go through
/// [`StateMachineStore::reader`].
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last_applied = self.shared.read().ok().map(|s| s.last_applied);
        f.debug_struct("StateMachineStore")
            .field("last_applied", &last_applied)
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    pub(crate) fn new(
        db: sled::Db,
        sm_tree: sled::Tree,
        snapshots: sled::Tree,
        state: AppliedState,
        grants: Arc<dyn GrantCheck>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                db,
                sm_tree,
                snapshots,
                state: RwLock::new(state),
                snapshot_write: Mutex::new(()),
                hook: Mutex::new(None),
                install_hook: Mutex::new(None),
                grants,
            }),
        }
    }

    /// Installs the observer of applied commands (replacing any previous one).
    pub fn set_apply_hook(&self, hook: ApplyHook) {
        if let Ok(mut slot) = self.shared.hook.lock() {
            *slot = Some(hook);
        }
    }

    /// Installs the observer of installed snapshots (replacing any previous one).
    pub fn set_install_hook(&self, hook: InstallHook) {
        if let Ok(mut slot) = self.shared.install_hook.lock() {
            *slot = Some(hook);
        }
    }

    /// A handle for serving reads from the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Read access to the applied state, for serving client reads and status.
///
/// Reads see the state as of some applied log index (check
/// [`AppliedState::last_applied`]); they are not linearizable by themselves.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<Shared>,
}

impl fmt::Debug for StateReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

impl StateReader {
    /// Runs `f` on a consistent view of the applied state. Keep `f` short:
    /// applying entries waits while it runs.
    pub fn read<T>(&self, f: impl FnOnce(&AppliedState) -> T) -> Result<T, StoreError> {
        let guard = self.shared.read()?;
        Ok(f(&guard))
    }
}

/// Applies one log entry: the node's `apply`, also driven by the simulator.
/// `on_command` sees every command with the state right after it (the
/// commands of one batch share their entry's index). Blank entries (a new
/// leader's) and membership changes carry no command: no response, no audit
/// record.
pub fn apply_entry(
    state: &mut AppliedState,
    entry: Entry,
    grants: &dyn GrantCheck,
    on_command: &mut dyn FnMut(&StateMachine, u64, &Command, &Response),
) -> BatchResponse {
    state.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => BatchResponse::default(),
        EntryPayload::Normal(batch) => {
            let mut responses = Vec::with_capacity(batch.0.len());
            // The members as of this entry, the same on every replica. None
            // known yet (a log from before the first membership entry):
            // nobody is refused for it.
            let membership = state.last_membership.membership();
            let known = membership.nodes().next().is_some();
            let is_member = |n: qk_types::NodeId| !known || membership.get_node(&n.0).is_some();
            for cmd in &batch.0 {
                let response = state.machine.apply_from_members(cmd, grants, &is_member);
                on_command(&state.machine, entry.log_id.index, cmd, &response);
                responses.push(response);
            }
            BatchResponse(responses)
        }
        EntryPayload::Membership(m) => {
            state.last_membership = StoredMembership::new(Some(entry.log_id), m);
            BatchResponse::default()
        }
    }
}

/// Builds snapshots from a consistent view of the state; runs concurrently
/// with `apply`.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder").finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Encode under the read lock: the bytes, the applied log id and the
        // membership describe one and the same moment.
        let (data, meta) = {
            let state = self.shared.read().map_err(error::read_sm)?;
            let data = encode_payload(&state).map_err(error::write_snapshot)?;
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
                snapshot_id: snapshot_id(&state.last_applied),
            };
            (data, meta)
        };
        let stored = self
            .shared
            .store_snapshot(&meta, &data, true)
            .map_err(error::write_snapshot)?;
        if stored {
            self.shared
                .flush("flushing the snapshot to disk")
                .await
                .map_err(error::write_snapshot)?;
        }
        tracing::info!(snapshot = %meta, bytes = data.len(), stored, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let state = self.shared.read().map_err(error::read_sm)?;
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.shared.write().map_err(error::write_sm)?;
        let entries = entries.into_iter();
        let mut responses = Vec::with_capacity(entries.size_hint().0);
        let mut hook = self
            .shared
            .hook
            .lock()
            .map_err(|_| error::write_sm(StoreError::Poisoned))?;
        let grants = self.shared.grants.as_ref();
        for entry in entries {
            responses.push(apply_entry(&mut state, entry, grants, &mut |s, i, c, r| {
                if let Some(h) = hook.as_mut() {
                    h(s, i, c, r);
                }
            }));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let fail = |e: StoreError| {
            e.into_raft(
                openraft::ErrorSubject::Snapshot(Some(meta.signature())),
                openraft::ErrorVerb::Write,
            )
        };
        if data.len() > MAX_SNAPSHOT_BYTES {
            return Err(fail(StoreError::TooLarge {
                what: "received snapshot".to_string(),
                len: data.len(),
                max: MAX_SNAPSHOT_BYTES,
            }));
        }
        let new_state = decode_payload("received snapshot", &data).map_err(fail)?;
        if new_state.last_applied != meta.last_log_id {
            return Err(fail(StoreError::SnapshotMismatch {
                detail: format!(
                    "data is applied up to {:?}, metadata says {:?}",
                    new_state.last_applied, meta.last_log_id
                ),
            }));
        }
        if new_state.last_membership != meta.last_membership {
            return Err(fail(StoreError::SnapshotMismatch {
                detail: "data and metadata carry different memberships".to_string(),
            }));
        }
        // Durable first, then visible: a failed write leaves the old state.
        self.shared
            .store_snapshot(meta, &data, false)
            .map_err(fail)?;
        self.shared
            .flush("flushing the installed snapshot to disk")
            .await
            .map_err(fail)?;
        *self.shared.write().map_err(fail)? = new_state;
        tracing::info!(snapshot = %meta, bytes = data.len(), "installed snapshot");
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if let Ok(mut hook) = self.shared.install_hook.lock() {
            if let Some(h) = hook.as_mut() {
                h(index);
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snapshot = self.shared.read_snapshot().map_err(error::read_snapshot)?;
        Ok(snapshot.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn command(id: u8, principal: &str, op: qk_state::Operation) -> Command {
        Command {
            request_id: qk_state::RequestId([id; 16]),
            time_ms: 1,
            principal: principal.into(),
            op,
            proof: None,
        }
    }

    fn tag() -> qk_state::Operation {
        qk_state::Operation::SetTag {
            name: "k".into(),
            tag: "t".into(),
            value: None,
        }
    }

    /// A machine bootstrapped as a node of this release does (shares on,
    /// then the admin) that remembers one of alice's commands.
    fn machine_with_a_remembered_request() -> StateMachine {
        let mut machine = StateMachine::default();
        let admin = qk_state::Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [qk_state::Role::Admin].into(),
        };
        let shares_on = qk_state::Operation::EnableRequestShares;
        machine.apply(&command(2, "node-1", shares_on));
        machine.apply(&command(1, "node-1", admin));
        machine.apply(&command(7, "alice", tag()));
        assert!(machine.request_shares().is_active());
        assert_eq!(machine.request_shares().remembered_by("alice"), 1);
        machine
    }

    #[test]
    fn a_snapshot_carries_who_sent_each_remembered_request() {
        let machine = machine_with_a_remembered_request();
        let state = AppliedState {
            machine: machine.clone(),
            ..AppliedState::default()
        };
        let bytes = encode_payload(&state).expect("encode");
        assert_eq!(bytes[0], SNAPSHOT_FORMAT);
        let back = decode_payload("snapshot", &bytes).expect("decode");
        assert_eq!(back.machine(), &machine);
        assert_eq!(back.machine().request_shares().remembered_by("alice"), 1);
    }

    /// A cluster of the release before shares: they stay off (every
    /// replica counts nothing) until the log enables them, and from then
    /// on only what is remembered after that entry counts.
    #[test]
    fn a_snapshot_of_the_format_before_request_shares_still_decodes() {
        let machine = machine_with_a_remembered_request();
        let membership = Membership::default();
        let old = postcard::to_allocvec(&(
            SNAPSHOT_FORMAT_WITHOUT_SHARES,
            None::<LogId<NodeId>>,
            &membership,
            &machine,
        ))
        .expect("encode");
        let back = decode_payload("snapshot", &old).expect("a format-1 snapshot decodes");
        let mut machine_back = back.machine().clone();
        assert!(!machine_back.request_shares().is_active());
        assert_eq!(machine_back.request_shares().remembered_by("alice"), 0);
        assert_eq!(
            machine_back.remembered_requests(),
            machine.remembered_requests()
        );
        let enable = command(8, "admin", qk_state::Operation::EnableRequestShares);
        machine_back.apply(&enable).result.expect("enabled");
        assert!(machine_back.request_shares().is_active());
        machine_back.apply(&command(9, "alice", tag()));
        assert_eq!(machine_back.request_shares().remembered_by("alice"), 1);
    }
}
