//! `--output table|json`: aligned tables for people, the view structs as JSON
//! for scripts. Everything goes to stdout; progress and hints go to stderr.

use std::io::Write;

use anyhow::{Context, Result};
use clap::ValueEnum;
use qk_client::views::*;
use serde::Serialize;

use crate::util::{format_duration_ms, format_opt_time_ms, format_time_ms};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Rows under a header, columns padded to the widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_uppercase()).collect();
        let mut out = line(&header, &widths);
        for row in &self.rows {
            out.push_str(&line(row, &widths));
        }
        out
    }
}

fn line(cells: &[String], widths: &[usize]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    let mut text = padded.join("  ").trim_end().to_string();
    text.push('\n');
    text
}

/// `name: value` lines for one object.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    let mut text = serde_json::to_string_pretty(value).context("cannot render JSON")?;
    text.push('\n');
    Ok(text)
}

/// Prints `value` as JSON or as `table(value)`.
pub fn emit<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    let text = match format {
        OutputFormat::Json => to_json(value)?,
        OutputFormat::Table => table(value),
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .context("cannot write to stdout")
}

fn holders(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// The inventory.
pub fn keys_table(keys: &[KeyView]) -> String {
    let mut t = Table::new(&[
        "name",
        "purpose",
        "owner",
        "created",
        "last rotated",
        "next rotation",
        "expiry",
        "state",
        "primary",
        "holders",
    ]);
    for k in keys {
        t.row(vec![
            k.name.clone(),
            dash(&k.purpose),
            dash(&k.owner),
            format_time_ms(k.created_ms),
            format_time_ms(k.last_rotated_ms),
            format_opt_time_ms(k.next_rotation_ms),
            expiry(k),
            k.state.clone(),
            k.primary_version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "-".into()),
            holders(k.current_holders()),
        ]);
    }
    t.render()
}

fn expiry(k: &KeyView) -> String {
    let time = format_opt_time_ms(k.expires_at_ms);
    if k.expired {
        format!("{time} (expired)")
    } else {
        time
    }
}

pub fn key_detail(k: &KeyView) -> String {
    let mut text = fields(&[
        ("name", k.name.clone()),
        ("id", k.id.clone()),
        ("description", dash(&k.description)),
        ("owner", dash(&k.owner)),
        ("purpose", dash(&k.purpose)),
        ("state", k.state.clone()),
        (
            "primary version",
            k.primary_version
                .map(|v| format!("v{v}"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("min decrypt version", format!("v{}", k.min_decrypt_version)),
        ("created", format_time_ms(k.created_ms)),
        ("last rotated", format_time_ms(k.last_rotated_ms)),
        (
            "rotate every",
            k.rotation_period_ms
                .map(format_duration_ms)
                .unwrap_or_else(|| "-".into()),
        ),
        ("next rotation", format_opt_time_ms(k.next_rotation_ms)),
        ("expires", expiry(k)),
        (
            "policy",
            if k.policy.is_some() {
                "set (`qk policy show`)".into()
            } else {
                "-".into()
            },
        ),
    ]);
    text.push('\n');
    text.push_str(&versions_table(&k.versions));
    text
}

pub fn versions_table(versions: &[VersionView]) -> String {
    let mut t = Table::new(&[
        "version",
        "state",
        "threshold",
        "holders",
        "epoch",
        "created",
        "due",
        "note",
    ]);
    for v in versions {
        let note = v
            .compromised
            .as_ref()
            .map(|c| format!("compromised: {c}"))
            .or_else(|| v.failure.clone())
            .unwrap_or_default();
        t.row(vec![
            format!("v{}", v.version),
            v.state.clone(),
            format!("{}-of-{}", v.threshold, v.holders.len()),
            holders(&v.holders),
            v.epoch.to_string(),
            format_time_ms(v.created_ms),
            format_opt_time_ms(v.due_ms),
            note,
        ]);
    }
    t.render()
}

fn request_memory_text(m: &RequestMemoryView) -> String {
    let shares = if m.shares_enabled {
        format!(
            "per-principal shares on ({} each while more than {} are remembered)",
            m.share_per_principal, m.shares_enforced_above
        )
    } else {
        "per-principal shares OFF: once every node runs this release, run `qk cluster enable-request-shares`".to_string()
    };
    format!("{} of {} remembered; {shares}", m.remembered, m.fresh_limit)
}

pub fn cluster_text(c: &ClusterHealth) -> String {
    let mut text = fields(&[
        ("answered by", format!("node {}", c.node_id)),
        (
            "leader",
            c.leader
                .map(|l| format!("node {l}"))
                .unwrap_or_else(|| "none (no quorum?)".into()),
        ),
        ("term", c.term.to_string()),
        ("last applied", c.last_applied.to_string()),
    ]);
    if let Some(memory) = &c.request_memory {
        text.push_str(&fields(&[("request memory", request_memory_text(memory))]));
    }
    let schedule = c.refresh_every_ms.map_or("by hand only".to_string(), |e| {
        format!("every {}", format_duration_ms(e))
    });
    text.push_str(&fields(&[("key refresh", schedule)]));
    let mut members = Table::new(&[
        "node",
        "voter",
        "reachable",
        "rpc",
        "api",
        "applied",
        "term",
    ]);
    for m in &c.members {
        members.row(vec![
            m.node_id.to_string(),
            yes_no(m.voter),
            yes_no(m.reachable),
            m.rpc_addr.clone(),
            m.api_url.clone().unwrap_or_else(|| "-".into()),
            m.last_applied
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            m.term.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    text.push('\n');
    text.push_str(&members.render());
    if !c.versions.is_empty() {
        let mut versions = Table::new(&["key", "version", "state", "live holders", "quorum"]);
        for v in &c.versions {
            let ok = v.live_holders.len() >= usize::from(v.threshold);
            versions.row(vec![
                v.key.clone(),
                format!("v{}", v.version),
                v.state.clone(),
                format!(
                    "{}/{} ({})",
                    v.live_holders.len(),
                    v.holders.len(),
                    holders(&v.live_holders)
                ),
                format!(
                    "{} needed: {}",
                    v.threshold,
                    if ok { "ok" } else { "NOT ENOUGH" }
                ),
            ]);
        }
        text.push('\n');
        text.push_str(&versions.render());
    }
    text
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

pub fn principals_table(ps: &[PrincipalView]) -> String {
    let mut t = Table::new(&["name", "roles", "created", "disabled"]);
    for p in ps {
        t.row(vec![
            p.name.clone(),
            p.roles.join(","),
            format_time_ms(p.created_ms),
            yes_no(p.disabled),
        ]);
    }
    t.render()
}

pub fn tokens_table(ts: &[TokenView]) -> String {
    let mut t = Table::new(&[
        "id",
        "principal",
        "description",
        "created",
        "expires",
        "revoked",
    ]);
    for k in ts {
        t.row(vec![
            k.id.clone(),
            k.principal.clone(),
            dash(&k.description),
            format_time_ms(k.created_ms),
            format_time_ms(k.expires_at_ms),
            format_opt_time_ms(k.revoked_ms),
        ]);
    }
    t.render()
}

pub fn approvals_table(approvals: &[ApprovalView]) -> String {
    let mut t = Table::new(&[
        "id",
        "status",
        "key",
        "permission",
        "requester",
        "approvals",
        "expires",
        "action",
    ]);
    for a in approvals {
        t.row(vec![
            a.id.clone(),
            a.status.clone(),
            a.key.clone(),
            a.permission.clone(),
            a.requester.clone(),
            format!("{}/{}", a.approvers.len(), a.required),
            format_time_ms(a.expires_at_ms),
            a.action.clone(),
        ]);
    }
    t.render()
}

pub fn audit_table(records: &[AuditRecordView]) -> String {
    let mut t = Table::new(&["seq", "time", "principal", "operation", "key", "outcome"]);
    for r in records {
        let key = match (&r.key, r.version) {
            (Some(k), Some(v)) => format!("{k} v{v}"),
            (Some(k), None) => k.clone(),
            _ => "-".into(),
        };
        t.row(vec![
            r.seq.to_string(),
            format_time_ms(r.time_ms),
            r.principal.clone(),
            r.operation.clone(),
            key,
            r.outcome.clone(),
        ]);
    }
    t.render()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_key() -> KeyView {
        KeyView {
            name: "payments".into(),
            id: "ab".repeat(16),
            description: "card data".into(),
            owner: "team-pay".into(),
            purpose: "encrypt".into(),
            created_ms: 1_893_456_000_000,
            last_rotated_ms: 1_893_456_000_000,
            rotation_period_ms: Some(30 * 86_400_000),
            next_rotation_ms: Some(1_896_048_000_000),
            expires_at_ms: None,
            expired: false,
            min_decrypt_version: 1,
            primary_version: Some(1),
            state: "enabled".into(),
            policy: None,
            tags: Default::default(),
            aliases: Vec::new(),
            versions: vec![VersionView {
                version: 1,
                state: "enabled".into(),
                due_ms: None,
                failure: None,
                created_ms: 1_893_456_000_000,
                threshold: 2,
                holders: vec![1, 2, 3],
                epoch: 0,
                public_keys: Some("AAAA".into()),
                compromised: None,
                erase_receipts: vec![],
                refresh_failure: None,
            }],
        }
    }

    #[test]
    fn tables_align_columns_under_upper_case_headers() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONG HEADER\nwide cell  x\n");
    }

    #[test]
    fn the_inventory_shows_every_column() {
        let text = keys_table(&[sample_key()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for h in [
            "NAME",
            "PURPOSE",
            "OWNER",
            "CREATED",
            "LAST ROTATED",
            "NEXT ROTATION",
            "EXPIRY",
            "STATE",
            "PRIMARY",
            "HOLDERS",
        ] {
            assert!(lines[0].contains(h), "{h} missing in {}", lines[0]);
        }
        for cell in [
            "payments",
            "encrypt",
            "team-pay",
            "2030-01-01T00:00:00Z",
            "2030-01-31T00:00:00Z",
            "enabled",
            "v1",
            "1,2,3",
        ] {
            assert!(lines[1].contains(cell), "{cell} missing in {}", lines[1]);
        }
    }

    #[test]
    fn json_output_is_the_view_and_parses_back() -> Result<()> {
        let keys = vec![sample_key()];
        let text = to_json(&keys)?;
        let back: Vec<KeyView> = serde_json::from_str(&text)?;
        assert_eq!(back, keys);
        assert!(text.contains("\"next_rotation_ms\": 1896048000000"));
        Ok(())
    }

    #[test]
    fn key_detail_lists_versions_with_their_quorum() {
        let text = key_detail(&sample_key());
        assert!(text.contains("rotate every:"));
        assert!(text.contains("30d"));
        assert!(text.contains("2-of-3"));
    }
}
