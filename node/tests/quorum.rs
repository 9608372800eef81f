//! Quorum operations with real `qk-node` processes: generation, encrypt,
//! server- and client-side decrypt, node loss, restarts, rotation,
//! destruction, tampered shares, and no secrets on disk or in logs.

use std::path::Path;

use k256::elliptic_curve::PrimeField;
use qk_state::{Operation, VersionState};
use qk_testkit::cluster::*;
use qk_types::KeyVersion;

const BIN: &str = env!("CARGO_BIN_EXE_qk-node");
const CTX: &[(&str, &str)] = &[("tenant", "acme"), ("purpose", "tests")];

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn enabled(v: u32) -> impl Fn(&qk_state::KeyRecord) -> bool {
    move |k| {
        k.version(KeyVersion(v))
            .is_some_and(|r| r.state == VersionState::Enabled)
    }
}

/// Schedules (no waiting period) and commits destruction of version 1, and
/// waits until it is `Destroyed`.
async fn destroy_v1(c: &Cluster, name: &str) -> qk_state::KeyRecord {
    let v1 = KeyVersion(1);
    let schedule = Operation::ScheduleDestruction {
        name: name.into(),
        version: v1,
        after_ms: 0,
    };
    c.op(1, schedule).await.expect("schedule");
    c.op(
        1,
        Operation::Destroy {
            name: name.into(),
            version: v1,
        },
    )
    .await
    .expect("destroy");
    c.wait_key(1, name, |k| {
        k.version(v1)
            .is_some_and(|v| v.state == VersionState::Destroyed)
    })
}

async fn lifecycle(n: u64, t: u16) {
    let mut c = Cluster::start(bin(), n, 100_000);
    let holders: Vec<u64> = (1..=n).collect();
    c.create(1, "orders", t, &holders).await.expect("create");
    c.wait_key(1, "orders", enabled(1));

    let (ct1, v) = c
        .encrypt(2, "orders", CTX, b"data key one")
        .await
        .expect("encrypt");
    assert_eq!(v, 1);
    for id in 1..=n {
        assert_eq!(
            c.decrypt(id, &ct1, CTX).await.expect("server-side decrypt"),
            b"data key one"
        );
    }
    assert_eq!(
        c.decrypt_client_side("orders", &ct1, CTX)
            .await
            .expect("client-side"),
        b"data key one"
    );
    let wrong = c
        .decrypt(1, &ct1, &[("tenant", "other")])
        .await
        .expect_err("wrong context");
    assert!(wrong.contains("context"), "{wrong}");

    // Stop n - t holders: the remaining t still decrypt.
    let stop: Vec<u64> = ((u64::from(t) + 1)..=n).collect();
    for id in &stop {
        c.kill(*id);
    }
    assert_eq!(
        c.decrypt(1, &ct1, CTX).await.expect("t holders decrypt"),
        b"data key one"
    );
    assert_eq!(
        c.decrypt_client_side("orders", &ct1, CTX)
            .await
            .expect("client-side, t holders"),
        b"data key one"
    );

    // One more down: a clear error within the timeout.
    let extra = u64::from(t);
    c.kill(extra);
    let started = std::time::Instant::now();
    let err = c
        .decrypt(1, &ct1, CTX)
        .await
        .expect_err("t-1 holders cannot decrypt");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(
        err.contains(&format!("needed {t} holders")) && err.contains("answered"),
        "{err}"
    );

    // Restart them: decrypt again.
    for id in stop.iter().chain([&extra]) {
        c.restart(*id);
    }
    let leader_ok = |s: &qk_wire::NodeStatus| s.leader.is_some();
    c.wait_status(1, leader_ok);
    let plain = wait_until("decrypt after restart", || {
        let h = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| h.block_on(c.decrypt(1, &ct1, CTX))).ok()
    });
    assert_eq!(plain, b"data key one");

    // Restart every node: shares come back from disk.
    for id in 1..=n {
        c.stop(id);
    }
    for id in 1..=n {
        c.restart(id);
    }
    c.wait_status(1, leader_ok);
    let plain = wait_until("decrypt after full restart", || {
        let h = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| h.block_on(c.decrypt(n, &ct1, CTX))).ok()
    });
    assert_eq!(plain, b"data key one");

    // Rotate: new ciphertexts use v2; both versions decrypt.
    // No holders listed: every voter holds a share of the new version.
    let rotate = Operation::Rotate {
        name: "orders".into(),
        holders: Vec::new(),
        generation_timeout_ms: None,
    };
    c.op(1, rotate).await.expect("rotate");
    let k = c.wait_key(1, "orders", enabled(2));
    let v2_holders: Vec<u64> = k
        .version(KeyVersion(2))
        .expect("v2")
        .holders
        .iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(v2_holders, holders, "default holders: all voters");
    let (ct2, v) = c
        .encrypt(1, "orders", CTX, b"data key two")
        .await
        .expect("encrypt v2");
    assert_eq!(v, 2);
    assert_eq!(c.decrypt(1, &ct1, CTX).await.expect("v1"), b"data key one");
    assert_eq!(c.decrypt(1, &ct2, CTX).await.expect("v2"), b"data key two");

    // Destroy v1: erased everywhere, and its ciphertexts fail forever.
    let k = destroy_v1(&c, "orders").await;
    assert!(
        k.version(KeyVersion(1)).expect("v1").erase_receipts.len() > (n as usize) - usize::from(t),
        "n - t + 1 erase receipts before Destroyed"
    );
    let err = c.decrypt(1, &ct1, CTX).await.expect_err("destroyed");
    assert!(err.contains("destroyed"), "{err}");
    assert!(c.decrypt_client_side("orders", &ct1, CTX).await.is_err());
    assert_eq!(
        c.decrypt(2, &ct2, CTX).await.expect("v2 still decrypts"),
        b"data key two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_threshold_two_lifecycle() {
    lifecycle(3, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_threshold_three_lifecycle() {
    lifecycle(5, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_share_file_is_detected_at_start() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let (ct, _) = c.encrypt(1, "k", CTX, b"payload").await.expect("encrypt");
    c.stop(2);
    let shares = c.data_dir(2).join("shares");
    let file = std::fs::read_dir(&shares)
        .expect("shares")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "share"))
        .expect("a share file");
    let mut bytes = std::fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&file, bytes).expect("tamper");
    c.restart(2);
    wait_until("node 2 to report the tampered share", || {
        let log = std::fs::read_to_string(c.log_path(2)).unwrap_or_default();
        (log.contains("refusing to serve a share") && log.contains("\"k\"")).then_some(())
    });
    // Node 2 refuses to use it, and the other holders still decrypt.
    let err = c.decrypt_client_side("k", &ct, CTX).await;
    assert!(err.is_ok(), "holders 1 and 3 suffice: {err:?}");
    assert_eq!(
        c.decrypt(2, &ct, CTX)
            .await
            .expect("server-side via node 2"),
        b"payload"
    );
}

/// Reads a node's sealed shares with its seal key (test-only inspection).
fn unseal_all(dir: &Path, node: u64) -> Vec<(qk_storage::ShareSlot, Vec<u8>)> {
    let seal = qk_storage::SealKey::load_key_file(&dir.join("seal.key")).expect("seal key");
    let store = qk_storage::ShareStore::open(&dir.join("shares"), qk_types::NodeId(node), seal)
        .expect("store");
    store
        .slots()
        .expect("slots")
        .into_iter()
        .map(|s| {
            let share = store.get(s).expect("opens").expect("present");
            (s, share.to_secret_bytes()[4..].to_vec())
        })
        .collect()
}

fn scalar(bytes: &[u8]) -> k256::Scalar {
    let arr: [u8; 32] = bytes.try_into().expect("32 bytes");
    Option::from(k256::Scalar::from_repr(arr.into())).expect("canonical")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_on_disk_or_in_logs_and_nothing_left_after_destruction() {
    let mut c = Cluster::prepare(bin(), 3, 100_000);
    c.log_filter = "trace".into();
    c.boot();
    c.create(1, "vault", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "vault", enabled(1));
    let data_key = b"0123456789abcdef-data-key-bytes!";
    let (ct, _) = c.encrypt(1, "vault", CTX, data_key).await.expect("encrypt");
    assert_eq!(c.decrypt(2, &ct, CTX).await.expect("decrypt"), data_key);
    assert_eq!(
        c.decrypt_client_side("vault", &ct, CTX)
            .await
            .expect("client"),
        data_key
    );

    // The checker (and only it) reconstructs the root key from all shares.
    let mut shares = Vec::new();
    let mut sealed_files = Vec::new();
    for id in 1..=3u64 {
        for (_, x_i) in unseal_all(&c.data_dir(id), id) {
            shares.push((id, x_i));
        }
        for (path, bytes) in read_tree(&c.data_dir(id).join("shares")) {
            sealed_files.push((path, bytes));
        }
    }
    assert_eq!(shares.len(), 3);
    let xs: Vec<k256::Scalar> = shares.iter().map(|(_, b)| scalar(b)).collect();
    let idx: Vec<k256::Scalar> = (1..=3u64).map(k256::Scalar::from).collect();
    let lambda = |i: usize, set: &[usize]| -> k256::Scalar {
        set.iter()
            .filter(|j| **j != i)
            .fold(k256::Scalar::ONE, |acc, j| {
                acc * idx[*j]
                    * Option::<k256::Scalar>::from((idx[*j] - idx[i]).invert()).expect("inv")
            })
    };
    let root = lambda(0, &[0, 1]) * xs[0] + lambda(1, &[0, 1]) * xs[1];
    assert_eq!(
        root,
        lambda(1, &[1, 2]) * xs[1] + lambda(2, &[1, 2]) * xs[2],
        "shares are consistent"
    );

    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("root key".into(), root.to_repr().to_vec()),
        ("data key".into(), data_key.to_vec()),
    ];
    for (node, x_i) in &shares {
        secrets.push((format!("share of node {node}"), x_i.clone()));
    }
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into_bytes()
    };
    for id in 1..=3u64 {
        for (path, bytes) in read_tree(&c.data_dir(id))
            .into_iter()
            .chain(read_tree(&c.log_path(id)))
        {
            for (what, secret) in &secrets {
                assert!(
                    !contains(&bytes, secret),
                    "{what} in clear in {}",
                    path.display()
                );
                assert!(
                    !contains(&bytes, &hex(secret)),
                    "{what} as hex in {}",
                    path.display()
                );
            }
        }
        let log = std::fs::read(c.log_path(id)).expect("log");
        assert!(log.len() > 10_000, "trace logging was on");
        for (what, secret) in &secrets {
            assert!(
                !contains(&log, secret) && !contains(&log, &hex(secret)),
                "{what} in node {id}'s log"
            );
        }
    }

    // Destroy: afterwards not even the sealed shares remain on any disk.
    destroy_v1(&c, "vault").await;
    wait_until("every holder to erase", || {
        (1..=3u64)
            .all(|id| unseal_all(&c.data_dir(id), id).is_empty())
            .then_some(())
    });
    for id in 1..=3u64 {
        for (path, bytes) in read_tree(&c.data_dir(id)) {
            for (file, sealed) in &sealed_files {
                assert!(
                    !contains(&bytes, sealed),
                    "sealed share {} still in {}",
                    file.display(),
                    path.display()
                );
            }
            for (what, secret) in &secrets {
                assert!(!contains(&bytes, secret), "{what} in {}", path.display());
            }
        }
    }
}

fn share_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("shares"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".share"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_holder_fails_generation_and_no_holder_keeps_a_share() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    c.kill(3);
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: [1, 2, 3].map(qk_types::NodeId).to_vec(),
        generation_timeout_ms: Some(2000),
    };
    c.op(1, rotate).await.expect("rotate");
    let k = c.wait_key(1, "k", |k| {
        k.version(KeyVersion(2))
            .is_some_and(|v| matches!(v.state, VersionState::Failed { .. }))
    });
    let VersionState::Failed { reason } = &k.version(KeyVersion(2)).expect("v2").state else {
        unreachable!("waited for Failed");
    };
    assert!(
        reason.contains("node-3"),
        "the reason names the silent holder: {reason}"
    );
    // Holders 1 and 2 erased whatever they had of v2; v1 still works.
    wait_until("v2 shares erased on nodes 1 and 2", || {
        (1..=2u64)
            .all(|id| {
                share_files(&c.data_dir(id))
                    .iter()
                    .all(|f| f.contains("-1-"))
            })
            .then_some(())
    });
    let (ct, v) = c.encrypt(1, "k", CTX, b"still v1").await.expect("encrypt");
    assert_eq!(v, 1, "a failed version is never used to encrypt");
    assert_eq!(c.decrypt(2, &ct, CTX).await.expect("decrypt"), b"still v1");
    // The holder that was away comes back and holds nothing of v2 either.
    c.restart(3);
    c.wait_status(3, |s| s.leader.is_some());
    assert!(share_files(&c.data_dir(3))
        .iter()
        .all(|f| f.contains("-1-")));
}

/// Fail-closed audit: a holder releases its partial only once the audit
/// record of it is committed; without a majority to commit it, it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_partial_is_released_without_a_committed_audit_record() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let (ct, _) = c.encrypt(1, "k", CTX, b"audited").await.expect("encrypt");
    let context: std::collections::BTreeMap<String, String> = CTX
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let partial = || qk_wire::ClientRequest::Partial {
        ciphertext: ct.clone(),
        context: context.clone(),
        approval: None,
    };
    let released = c.request(1, partial()).await.expect("answered");
    assert!(
        matches!(released, qk_wire::ClientResponse::Partial(_)),
        "{released:?}"
    );
    c.kill(2);
    c.kill(3);
    let refused = c.request(1, partial()).await.expect("answered");
    let qk_wire::ClientResponse::Error(reason) = &refused else {
        panic!("a partial without a committed record: {refused:?}");
    };
    assert_eq!(reason.kind, qk_types::ErrorKind::Unavailable, "{reason}");
    assert!(reason.message.contains("audit record"), "{reason}");
}

/// A holder whose erase fails when its version is destroyed keeps trying:
/// once the fault clears, the share is gone without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_erase_fails_retries_until_the_share_is_gone() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let shares = c.data_dir(3).join("shares");
    let v1 = share_files(&c.data_dir(3))
        .into_iter()
        .find(|f| f.ends_with("-1-0.share"))
        .expect("node 3 holds a share of v1");
    // A directory where the erase first clears a temporary copy: it fails.
    let blocker = shares.join(format!("{v1}.tmp"));
    std::fs::create_dir(&blocker).expect("block the erase");
    std::fs::write(blocker.join("x"), b"x").expect("a non-empty directory");
    destroy_v1(&c, "k").await;
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        share_files(&c.data_dir(3)).contains(&v1),
        "the erase was expected to fail while blocked"
    );
    std::fs::remove_dir_all(&blocker).expect("clear the fault");
    wait_until("node 3 erased its share of v1 on a retry", || {
        (!share_files(&c.data_dir(3)).contains(&v1)).then_some(())
    });
}

/// A holder whose share store cannot write (its share directory replaced by
/// a file) must not ack a key set it did not store: the version fails at its
/// deadline naming that holder, instead of being enabled with a share that
/// exists nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_store_its_share_does_not_ack() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let shares = c.data_dir(3).join("shares");
    std::fs::rename(&shares, c.data_dir(3).join("shares.moved")).expect("move shares");
    std::fs::write(&shares, b"not a directory").expect("block the share directory");
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: [1, 2, 3].map(qk_types::NodeId).to_vec(),
        generation_timeout_ms: Some(3000),
    };
    c.op(1, rotate).await.expect("rotate");
    let k = c.wait_key(1, "k", |k| {
        k.version(KeyVersion(2))
            .is_some_and(|v| !matches!(v.state, VersionState::Generating))
    });
    let VersionState::Failed { reason } = &k.version(KeyVersion(2)).expect("v2").state else {
        panic!(
            "v2 is {:?}: node 3 acked a share it never stored",
            k.version(KeyVersion(2)).map(|v| &v.state)
        );
    };
    assert!(
        reason.contains("node-3"),
        "the reason names node 3: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromised_versions_and_minimum_decryption_version() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let (ct1, _) = c.encrypt(1, "k", CTX, b"one").await.expect("encrypt v1");
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: [1, 2, 3].map(qk_types::NodeId).to_vec(),
        generation_timeout_ms: None,
    };
    c.op(1, rotate).await.expect("rotate");
    c.wait_key(1, "k", enabled(2));
    let (ct2, _) = c.encrypt(1, "k", CTX, b"two").await.expect("encrypt v2");
    let compromise = |allow_decrypt| Operation::MarkCompromised {
        name: "k".into(),
        version: KeyVersion(2),
        reason: "key material seen in a crash dump".into(),
        allow_decrypt,
    };
    // Compromised: no encryption with it at once, and no decryption either...
    c.op(1, compromise(false)).await.expect("mark compromised");
    let (_, v) = c.encrypt(1, "k", CTX, b"x").await.expect("encrypt");
    assert_eq!(v, 1, "encryption falls back to the newest usable version");
    let err = c.decrypt(1, &ct2, CTX).await.expect_err("compromised");
    assert!(
        err.contains("compromised") && err.contains("crash dump"),
        "{err}"
    );
    // ...unless explicitly allowed, to re-encrypt its data.
    c.op(1, compromise(true)).await.expect("allow decrypt");
    assert_eq!(c.decrypt(2, &ct2, CTX).await.expect("allowed"), b"two");
    let enable = Operation::Enable {
        name: "k".into(),
        version: KeyVersion(2),
    };
    assert!(
        c.op(1, enable).await.is_err(),
        "a compromised version is never re-enabled"
    );
    // A minimum decryption version retires older ciphertexts.
    let min = Operation::SetMinDecryptVersion {
        name: "k".into(),
        version: KeyVersion(2),
    };
    assert!(
        c.op(1, min).await.is_err(),
        "above the newest enabled version (v1)"
    );
    let min = Operation::SetMinDecryptVersion {
        name: "k".into(),
        version: KeyVersion(1),
    };
    c.op(1, min).await.expect("min 1");
    assert_eq!(c.decrypt(1, &ct1, CTX).await.expect("v1"), b"one");
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: [1, 2, 3].map(qk_types::NodeId).to_vec(),
        generation_timeout_ms: None,
    };
    c.op(1, rotate).await.expect("rotate to v3");
    c.wait_key(1, "k", enabled(3));
    let (ct3, v) = c.encrypt(1, "k", CTX, b"three").await.expect("encrypt v3");
    assert_eq!(v, 3);
    let min = Operation::SetMinDecryptVersion {
        name: "k".into(),
        version: KeyVersion(3),
    };
    c.op(1, min).await.expect("min 3");
    for old in [&ct1, &ct2] {
        let err = c.decrypt(1, old, CTX).await.expect_err("below the minimum");
        assert!(err.contains("minimum decryption version 3"), "{err}");
    }
    assert_eq!(c.decrypt(1, &ct3, CTX).await.expect("v3"), b"three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_changes_every_share_but_not_the_key() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    let before = c.wait_key(1, "k", enabled(1));
    let (ct, _) = c
        .encrypt(1, "k", CTX, b"survives refresh")
        .await
        .expect("encrypt");
    let old_files: Vec<Vec<String>> = (1..=3).map(|id| share_files(&c.data_dir(id))).collect();
    let refresh = Operation::Refresh {
        name: "k".into(),
        version: KeyVersion(1),
        timeout_ms: None,
    };
    c.op(1, refresh).await.expect("refresh");
    let after = c.wait_key(1, "k", |k| {
        k.version(KeyVersion(1)).is_some_and(|v| v.epoch.0 == 1)
    });
    let keys = |k: &qk_state::KeyRecord| {
        let bytes = k
            .version(KeyVersion(1))
            .and_then(|v| v.public_keys.clone())
            .expect("key set");
        qk_crypto::PublicKeySet::from_bytes(&bytes).expect("decodes")
    };
    assert_eq!(
        keys(&before).public_key(),
        keys(&after).public_key(),
        "same key"
    );
    assert_ne!(keys(&before), keys(&after), "new commitments");
    wait_until("old-epoch shares erased", || {
        (1..=3u64)
            .all(|id| {
                let now = share_files(&c.data_dir(id));
                now.len() == 1
                    && now[0].ends_with("-1-1.share")
                    && !old_files[(id - 1) as usize].contains(&now[0])
            })
            .then_some(())
    });
    assert_eq!(
        c.decrypt(2, &ct, CTX).await.expect("server-side"),
        b"survives refresh"
    );
    assert_eq!(
        c.decrypt_client_side("k", &ct, CTX)
            .await
            .expect("client-side"),
        b"survives refresh"
    );
}

/// A holder whose disk was lost comes back (same id, empty data
/// directory, `--join`) without its share; a refresh is a reshare by the
/// holders that still have theirs, so it gets a fresh share of the same
/// key, and a decryption that needs it works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_disk_gets_a_new_share_from_a_refresh() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let (ct, _) = c
        .encrypt(1, "k", CTX, b"outlives a disk")
        .await
        .expect("encrypt");
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).expect("wipe node 3");
    c.spawn(3, &["--join".into(), c.addr(1)]);
    c.wait_status(3, |s| s.leader.is_some() && s.voters.contains(&3));
    assert!(
        share_files(&c.data_dir(3)).is_empty(),
        "node 3 lost its share"
    );
    // The first attempts may start before node 3 has published the DKG key
    // of its new disk (its shares would be sealed to the lost one): each
    // is abandoned at its deadline and tried again.
    let v1 = KeyVersion(1);
    let mut refreshed = false;
    for attempt in 1..=4u32 {
        let refresh = Operation::Refresh {
            name: "k".into(),
            version: v1,
            // Dealing waits 10 s for the dealer that lost its share.
            timeout_ms: Some(15_000),
        };
        c.op(1, refresh).await.expect("refresh");
        let k = c.wait_key(1, "k", |k| {
            k.version(v1).is_some_and(|v| {
                v.epoch.0 == 1 || (v.refresh.is_none() && v.refresh_attempts == attempt)
            })
        });
        if k.version(v1).is_some_and(|v| v.epoch.0 == 1) {
            refreshed = true;
            break;
        }
    }
    assert!(
        refreshed,
        "no refresh completed:\nnode 1:\n{}\nnode 3:\n{}",
        c.log_tail(1),
        c.log_tail(3)
    );
    wait_until("node 3 holds a share of epoch 1", || {
        let files = share_files(&c.data_dir(3));
        (files.len() == 1 && files[0].ends_with("-1-1.share")).then_some(())
    });
    // Only nodes 1 and 3 answer now: node 3's new share is needed.
    c.kill(2);
    assert_eq!(
        c.decrypt(1, &ct, CTX)
            .await
            .expect("server-side with node 3"),
        b"outlives a disk"
    );
}

/// The leader drives the schedule from log time: a key with a 5 s rotation
/// period gets version 2 by itself (a real DKG), an expiry stops encryption,
/// and a scheduled destruction is committed and erased without anyone
/// proposing `Destroy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_rotates_expires_and_destroys_by_log_time() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", enabled(1));
    let schedule = Operation::SetSchedule {
        name: "k".into(),
        rotation_period_ms: Some(qk_state::MIN_ROTATION_PERIOD_MS),
        expires_at_ms: None,
    };
    c.op(1, schedule).await.expect("schedule");
    let (ct1, _) = c.encrypt(1, "k", CTX, b"before").await.expect("encrypt");
    let rotated = c.wait_key(2, "k", enabled(2));
    assert_eq!(rotated.versions[1].holders.len(), 3);
    assert_eq!(
        c.decrypt(3, &ct1, CTX).await.expect("v1 decrypts"),
        b"before"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let expire = Operation::SetSchedule {
        name: "k".into(),
        rotation_period_ms: None,
        expires_at_ms: Some(now_ms + 1_000),
    };
    c.op(1, expire).await.expect("expiry set");
    let expired = c.wait_key(1, "k", |k| k.expired);
    assert!(expired.next_rotation_ms().is_none());
    let err = c.encrypt(1, "k", CTX, b"after").await.expect_err("expired");
    assert!(err.contains("no enabled version"), "{err}");
    assert_eq!(
        c.decrypt(1, &ct1, CTX).await.expect("still decrypts"),
        b"before"
    );
    let schedule_destroy = Operation::ScheduleDestruction {
        name: "k".into(),
        version: KeyVersion(1),
        after_ms: 1_000,
    };
    c.op(1, schedule_destroy).await.expect("scheduled");
    c.wait_key(1, "k", |k| {
        k.version(KeyVersion(1))
            .is_some_and(|v| v.state == VersionState::Destroyed)
    });
    let err = c.decrypt(1, &ct1, CTX).await.expect_err("destroyed");
    assert!(err.contains("destroyed"), "{err}");
}
