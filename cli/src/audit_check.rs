//! Cross-checking the audit trail across the cluster's members. Every node
//! keeps its own replica of the hash chain, so a chain rewritten on one
//! node (or on its disk, or handed over in a forged snapshot) disagrees with
//! the other nodes' copies however consistent it is in itself. The record at
//! one sequence number is asked of every member, each over its own TLS
//! connection; a majority of voters must hold the same hash and none a
//! different one.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};
use qk_client::http::ApiClient;
use qk_client::views::ClusterHealth;
use serde::Serialize;

/// Tries for a member that has not applied the record yet.
const BEHIND_TRIES: u32 = 5;
const BEHIND_PAUSE: Duration = Duration::from_millis(200);

/// What one member holds at the sequence number asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The same hash.
    Agrees,
    /// Another hash: this member's trail, or the one checked, was rewritten.
    Differs,
    /// The member has not applied that record yet.
    Behind,
    /// No answer (down, cut off, or it refused).
    Unreachable,
    /// The address answered with another node's certificate (or none): the
    /// membership named it falsely.
    WrongIdentity,
}

#[derive(Debug, Serialize)]
pub struct MemberVerdict {
    /// The node the membership says is at `api_url` (`None`: an address
    /// from this client's configuration the membership did not name).
    pub claimed: Option<u64>,
    /// The node its TLS certificate names.
    pub node_id: Option<u64>,
    pub api_url: String,
    pub verdict: Verdict,
    /// The hash this member holds at `seq`, when it answered with one.
    pub hash: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CrossCheck {
    pub seq: u64,
    pub hash: String,
    pub voters: usize,
    pub agreeing: usize,
    pub ok: bool,
    pub members: Vec<MemberVerdict>,
}

/// Every member's API address (with the id the cluster gives it), and every
/// address this client was configured with, so an answer that leaves
/// members out cannot shrink a check.
pub async fn targets(api: &ApiClient) -> Result<(ClusterHealth, Vec<(Option<u64>, String)>)> {
    let health = api.cluster().await?;
    let mut targets: Vec<(Option<u64>, String)> = health
        .members
        .iter()
        .filter_map(|m| Some((Some(m.node_id), m.api_url.clone()?)))
        .collect();
    for url in api.base_urls() {
        let known = targets
            .iter()
            .any(|(_, u)| u.trim_end_matches('/') == url.trim_end_matches('/'));
        if !known {
            targets.push((None, url));
        }
    }
    Ok((health, targets))
}

/// Asks every member (and every address this client was configured with,
/// so an answer that leaves members out cannot shrink the check) for its
/// record `seq` and compares it with `hash`.
pub async fn cross_check(api: &ApiClient, seq: u64, hash: &str) -> Result<CrossCheck> {
    let hash = hash.to_ascii_lowercase();
    let (health, targets) = targets(api).await?;
    let asks = targets
        .iter()
        .map(|(claimed, url)| ask(api, *claimed, url, seq, &hash));
    let members: Vec<MemberVerdict> = futures::future::join_all(asks).await;
    let mut voters: BTreeSet<u64> = health
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.node_id)
        .collect();
    voters.extend(
        members
            .iter()
            .filter(|m| m.claimed.is_none())
            .filter_map(|m| m.node_id),
    );
    let agreeing: BTreeSet<u64> = members
        .iter()
        .filter(|m| m.verdict == Verdict::Agrees)
        .filter_map(|m| m.node_id)
        .filter(|id| voters.contains(id))
        .collect();
    let failed = members
        .iter()
        .any(|m| matches!(m.verdict, Verdict::Differs | Verdict::WrongIdentity));
    Ok(CrossCheck {
        seq,
        hash,
        voters: voters.len(),
        agreeing: agreeing.len(),
        ok: agreeing.len() > voters.len() / 2 && !failed,
        members,
    })
}

async fn ask(
    api: &ApiClient,
    claimed: Option<u64>,
    url: &str,
    seq: u64,
    hash: &str,
) -> MemberVerdict {
    let verdict = |node_id, verdict, hash: Option<String>, detail: Option<String>| MemberVerdict {
        claimed,
        node_id,
        api_url: url.to_owned(),
        verdict,
        hash,
        detail,
    };
    let client = match api.at(url) {
        Ok(c) => c,
        Err(e) => return verdict(None, Verdict::Unreachable, None, Some(e.to_string())),
    };
    for _ in 0..BEHIND_TRIES {
        let records = match client.audit(seq, 1).await {
            Ok(records) => records,
            Err(e) => return verdict(None, Verdict::Unreachable, None, Some(e.to_string())),
        };
        let who = client.answered_by();
        if who.is_none() || (claimed.is_some() && who != claimed) {
            let named = who.map_or("no node".to_owned(), |id| format!("node {id}"));
            let detail = format!("its certificate names {named}");
            return verdict(who, Verdict::WrongIdentity, None, Some(detail));
        }
        match records.first() {
            Some(r) if r.seq == seq => {
                let theirs = r.hash.to_ascii_lowercase();
                let v = if theirs == hash {
                    Verdict::Agrees
                } else {
                    Verdict::Differs
                };
                return verdict(who, v, Some(theirs), None);
            }
            _ => tokio::time::sleep(BEHIND_PAUSE).await,
        }
    }
    let detail = Some(format!("has not applied record {seq}"));
    verdict(client.answered_by(), Verdict::Behind, None, detail)
}

fn name(m: &MemberVerdict) -> String {
    match (m.claimed, m.node_id) {
        (Some(id), _) | (None, Some(id)) => format!("node {id}"),
        (None, None) => m.api_url.clone(),
    }
}

/// `Ok` when the check holds; otherwise what failed and what to do.
pub fn require(check: &CrossCheck) -> Result<()> {
    if check.ok {
        return Ok(());
    }
    let named = |v: Verdict| -> Vec<String> {
        check
            .members
            .iter()
            .filter(|m| m.verdict == v)
            .map(name)
            .collect()
    };
    let impostors = named(Verdict::WrongIdentity);
    if !impostors.is_empty() {
        bail!(
            "the cluster's membership names addresses that answer as another node ({}); \
             the node that answered `qk cluster status` may be compromised: check again with \
             --addr set to each node you trust",
            impostors.join(", ")
        );
    }
    let differing = named(Verdict::Differs);
    if !differing.is_empty() {
        bail!(
            "audit record {} differs between the trail checked and {}: a trail was rewritten; \
             keep the export and every node's data, and treat the disagreeing side as compromised \
             (docs/OPERATIONS.md, \"A node or a share is suspected compromised\")",
            check.seq,
            differing.join(", ")
        );
    }
    bail!(
        "only {} of {} voters hold audit record {} with this hash; bring the others back \
         (`qk cluster status`) and check again",
        check.agreeing,
        check.voters,
        check.seq
    )
}

/// One line a member, then the verdict.
pub fn text(check: &CrossCheck) -> String {
    let mut out = format!("record {} hash {}\n", check.seq, check.hash);
    for m in &check.members {
        let what = match (&m.verdict, &m.hash, &m.detail) {
            (Verdict::Differs, Some(h), _) => format!("differs: {h}"),
            (v, _, Some(d)) => format!("{}: {d}", verdict_name(*v)),
            (v, _, None) => verdict_name(*v).to_owned(),
        };
        out += &format!("  {} ({}): {what}\n", name(m), m.api_url);
    }
    out += &format!(
        "{}: {} of {} voters agree\n",
        if check.ok { "ok" } else { "FAILED" },
        check.agreeing,
        check.voters
    );
    out
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Agrees => "agrees",
        Verdict::Differs => "differs",
        Verdict::Behind => "behind",
        Verdict::Unreachable => "unreachable",
        Verdict::WrongIdentity => "wrong identity",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: u64, verdict: Verdict) -> MemberVerdict {
        MemberVerdict {
            claimed: Some(node_id),
            node_id: Some(node_id),
            api_url: format!("https://127.0.0.1:{}", 9000 + node_id),
            verdict,
            hash: None,
            detail: None,
        }
    }

    fn check(verdicts: &[Verdict], voters: usize) -> CrossCheck {
        let agreeing = verdicts.iter().filter(|v| **v == Verdict::Agrees).count();
        let differs =
            verdicts.contains(&Verdict::Differs) || verdicts.contains(&Verdict::WrongIdentity);
        CrossCheck {
            seq: 7,
            hash: "ab".into(),
            voters,
            agreeing,
            ok: agreeing > voters / 2 && !differs,
            members: (1..).zip(verdicts).map(|(id, v)| member(id, *v)).collect(),
        }
    }

    #[test]
    fn a_majority_agreeing_and_none_differing_holds() {
        let c = check(&[Verdict::Agrees, Verdict::Agrees, Verdict::Unreachable], 3);
        assert!(require(&c).is_ok());
    }

    #[test]
    fn one_differing_member_fails_and_is_named() {
        let c = check(&[Verdict::Agrees, Verdict::Agrees, Verdict::Differs], 3);
        let e = require(&c).expect_err("a differing member fails the check");
        assert!(e.to_string().contains("node 3"), "{e}");
    }

    #[test]
    fn an_address_answering_as_another_node_fails() {
        let c = check(
            &[Verdict::Agrees, Verdict::Agrees, Verdict::WrongIdentity],
            3,
        );
        let e = require(&c).expect_err("a false membership fails the check");
        assert!(e.to_string().contains("node 3"), "{e}");
    }

    #[test]
    fn half_of_the_voters_is_not_enough() {
        let c = check(
            &[
                Verdict::Agrees,
                Verdict::Agrees,
                Verdict::Behind,
                Verdict::Unreachable,
            ],
            4,
        );
        let e = require(&c).expect_err("2 of 4 is no majority");
        assert!(e.to_string().contains("only 2 of 4"), "{e}");
    }
}
