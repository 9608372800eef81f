//! Signed audit checkpoints: every member's signed statement of its audit
//! head (`qk audit checkpoint`), and an exported trail verified offline
//! against them with the cluster CA certificate alone
//! (`qk audit verify --file F --checkpoints C`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use qk_client::http::{ApiClient, HttpError};
use qk_client::views::{AuditCheckpointView, AuditRecordView};
use qk_state::AuditCheckpoint;
use qk_types::ErrorKind;

/// A member behind on the record asked for is asked again this often.
const BEHIND_TRIES: usize = 20;
const BEHIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// Every member's checkpoint of record `seq` (0: each one's last record),
/// members from the cluster and every address this client was given; the
/// members that could not sign, with why.
pub async fn gather(api: &ApiClient, seq: u64) -> Result<(Vec<AuditCheckpointView>, Vec<String>)> {
    let (_, targets) = crate::audit_check::targets(api).await?;
    let asks = targets.iter().map(|(_, url)| async move {
        let client = api.at(url).map_err(|e| format!("{url}: {e}"))?;
        let mut tries = 0;
        loop {
            match client.audit_checkpoint(seq).await {
                Ok(cp) => return Ok(cp),
                Err(HttpError::Api(e))
                    if tries < BEHIND_TRIES && e.kind() == Some(ErrorKind::Unavailable) =>
                {
                    tries += 1;
                    tokio::time::sleep(BEHIND_PAUSE).await;
                }
                Err(e) => return Err(format!("{url}: {e}")),
            }
        }
    });
    let mut signed = Vec::new();
    let mut failed = Vec::new();
    for answer in futures::future::join_all(asks).await {
        match answer {
            Ok(cp)
                if !signed
                    .iter()
                    .any(|s: &AuditCheckpointView| s.node == cp.node) =>
            {
                signed.push(cp)
            }
            Ok(_) => {}
            Err(e) => failed.push(e),
        }
    }
    if signed.is_empty() {
        bail!(
            "no member signed a checkpoint ({}); check that the cluster is reachable",
            failed.join("; ")
        );
    }
    Ok((signed, failed))
}

pub fn read_checkpoints(path: &Path) -> Result<Vec<AuditCheckpointView>> {
    crate::audit_file::read_lines(path, "a checkpoint", "qk audit checkpoint")
}

/// What the checkpoints say about an exported trail.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointVerdict {
    pub ok: bool,
    /// Nodes whose valid checkpoint matches the file.
    pub vouching: Vec<u64>,
    pub min_signers: usize,
    /// Checkpoints of records the file does not reach (exported earlier).
    pub beyond_file: Vec<u64>,
}

/// Checks each checkpoint against the CA and the file: a checkpoint that
/// does not verify, or that a node signed for another hash than the file
/// holds, fails the whole check; at least `min_signers` distinct nodes
/// must vouch for the file.
pub fn verify(
    records: &[AuditRecordView],
    checkpoints: &[AuditCheckpointView],
    ca_cert: &Path,
    min_signers: usize,
) -> Result<CheckpointVerdict> {
    let ca = qk_net::CaCert::load(ca_cert).with_context(|| {
        format!(
            "cannot load the cluster CA certificate {}",
            ca_cert.display()
        )
    })?;
    let verifier = qk_net::GrantVerifier::new(&ca).context("cannot use the cluster CA")?;
    let mut vouching = BTreeSet::new();
    let mut beyond_file = Vec::new();
    for view in checkpoints {
        let cp = AuditCheckpoint::try_from(view).map_err(|e| {
            anyhow::anyhow!("the checkpoint of node {} is malformed: {e}", view.node)
        })?;
        if let Err(e) = verifier.verify_checkpoint(&cp) {
            bail!(
                "the checkpoint said to be node {}'s does not verify against the CA ({e}): the \
                 checkpoints file was altered",
                view.node
            );
        }
        match records.iter().find(|r| r.seq == cp.seq) {
            None => beyond_file.push(cp.node),
            Some(r) if r.hash.eq_ignore_ascii_case(&view.hash) => {
                vouching.insert(cp.node);
            }
            Some(r) => bail!(
                "node {} signed hash {} for record {}, but the file holds {}: the exported trail \
                 was altered",
                cp.node,
                view.hash,
                cp.seq,
                r.hash
            ),
        }
    }
    let vouching: Vec<u64> = vouching.into_iter().collect();
    Ok(CheckpointVerdict {
        ok: vouching.len() >= min_signers,
        vouching,
        min_signers,
        beyond_file,
    })
}

pub fn text(v: &CheckpointVerdict) -> String {
    let nodes: Vec<String> = v.vouching.iter().map(|n| format!("node {n}")).collect();
    let mut out = format!(
        "checkpoints: {} of at least {} nodes vouch for the file ({})\n",
        v.vouching.len(),
        v.min_signers,
        if nodes.is_empty() {
            "none".to_owned()
        } else {
            nodes.join(", ")
        }
    );
    if !v.beyond_file.is_empty() {
        out.push_str(&format!(
            "checkpoints of nodes {:?} are of records past the file's end; export again, then \
             take checkpoints\n",
            v.beyond_file
        ));
    }
    out
}

pub fn require(v: &CheckpointVerdict) -> Result<()> {
    if v.ok {
        return Ok(());
    }
    bail!(
        "only {} node(s) vouch for this file, fewer than {}: take checkpoints right after the \
         export (`qk audit checkpoint`) with the cluster reachable",
        v.vouching.len(),
        v.min_signers
    )
}
