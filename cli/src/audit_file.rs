//! Exported audit files (JSON lines of `AuditRecordView`) and their offline
//! verification with the same hash the cluster uses.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use qk_client::views::{hex, AuditRecordView};
use qk_state::{verify_chain, AuditRecord, GENESIS_HASH};

/// The replicated record a view shows (hex decoded).
pub fn to_record(v: &AuditRecordView) -> Result<AuditRecord> {
    Ok(AuditRecord::try_from(v)?)
}

pub fn read_jsonl(path: &Path) -> Result<Vec<AuditRecordView>> {
    read_lines(path, "an audit record", "qk audit export")
}

/// One `T` per non-empty JSON line of `path`; an error names the line and
/// the command (`made_by`) that writes such files.
pub fn read_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    made_by: &str,
) -> Result<Vec<T>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {} is not {what}; use a file written by `{made_by}`",
                path.display(),
                i + 1
            )
        })?;
        out.push(value);
    }
    Ok(out)
}

/// What a local verification found.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct LocalVerification {
    pub ok: bool,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub head_hash: Option<String>,
}

/// Recomputes every hash and link. A file starting at seq 1 must link to the
/// genesis hash; a later start is trusted as its own anchor.
pub fn verify_views(views: &[AuditRecordView]) -> Result<LocalVerification> {
    let records = views.iter().map(to_record).collect::<Result<Vec<_>>>()?;
    let anchor = match records.first() {
        Some(r) if r.seq > 1 => r.prev_hash,
        _ => GENESIS_HASH,
    };
    if let Err(e) = verify_chain(&records, anchor) {
        bail!("{e}; the exported trail does not verify (compare with `qk audit verify` on the cluster)");
    }
    Ok(LocalVerification {
        ok: true,
        records: records.len() as u64,
        first_seq: records.first().map(|r| r.seq),
        head_hash: records.last().map(|r| hex(&r.hash)),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use qk_state::RequestId;
    use qk_types::KeyVersion;

    pub fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    time_ms: 1_700_000_000_000 + seq,
                    request_id: RequestId([seq as u8; 16]),
                    principal: "admin".into(),
                    operation: "key-create".into(),
                    key: Some("payments".into()),
                    version: Some(KeyVersion(1)),
                    outcome: "ok".into(),
                    prev_hash: prev,
                    hash: [0; 32],
                };
                r.hash = r.compute_hash();
                prev = r.hash;
                r
            })
            .collect()
    }

    fn write(records: &[AuditRecordView]) -> Result<tempfile::NamedTempFile> {
        let mut file = tempfile::NamedTempFile::new()?;
        for r in records {
            std::io::Write::write_all(
                &mut file,
                format!("{}\n", serde_json::to_string(r)?).as_bytes(),
            )?;
        }
        Ok(file)
    }

    #[test]
    fn an_untouched_export_verifies() -> Result<()> {
        let views: Vec<_> = chain(5).iter().map(AuditRecordView::from).collect();
        let file = write(&views)?;
        let result = verify_views(&read_jsonl(file.path())?)?;
        assert!(result.ok);
        assert_eq!(result.records, 5);
        assert_eq!(result.head_hash, Some(views[4].hash.clone()));
        Ok(())
    }

    #[test]
    fn a_tampered_field_names_its_record() -> Result<()> {
        let mut views: Vec<_> = chain(5).iter().map(AuditRecordView::from).collect();
        views[2].outcome = "refused: nope".into();
        let file = write(&views)?;
        let err = verify_views(&read_jsonl(file.path())?)
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("audit record 3 was modified"), "{err}");
        Ok(())
    }

    #[test]
    fn a_dropped_record_is_a_gap_and_a_bad_hex_is_named() -> Result<()> {
        let mut views: Vec<_> = chain(5).iter().map(AuditRecordView::from).collect();
        views.remove(1);
        let err = verify_views(&views)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("jumps from 1 to 3"), "{err}");
        let mut views: Vec<_> = chain(2).iter().map(AuditRecordView::from).collect();
        views[1].prev_hash = "zz".into();
        let err = verify_views(&views)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("audit record 2: prev_hash"), "{err}");
        Ok(())
    }

    #[test]
    fn a_later_window_is_anchored_on_its_first_record() -> Result<()> {
        let views: Vec<_> = chain(6).iter().skip(3).map(AuditRecordView::from).collect();
        assert!(verify_views(&views)?.ok);
        Ok(())
    }
}
