//! The request ids remembered for deduplication, past the number kept in
//! the long run, and the node times that decide when they are forgotten.

use qk_state::proof::INTENT_MAX_AGE_MS;
use qk_state::{Command, Operation, RequestId, StateMachine, MAX_REMEMBERED_REQUESTS};

mod common;

struct Log {
    sm: StateMachine,
    next: u64,
}

impl Log {
    fn new() -> Log {
        Log {
            sm: StateMachine::new(),
            next: 0,
        }
    }

    fn apply(&mut self, principal: &str, time_ms: u64, op: Operation) {
        self.next += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next.to_be_bytes());
        self.sm.apply(&Command {
            request_id: RequestId(id),
            time_ms,
            principal: principal.into(),
            op,
            proof: None,
        });
    }

    /// Refused commands, each remembered, until `count` are.
    fn fill_to(&mut self, count: usize, time_ms: u64) {
        while self.sm.remembered_requests() < count {
            self.apply("svc", time_ms, Operation::PruneRecords);
        }
        assert_eq!(self.sm.remembered_requests(), count);
    }

    fn attest(&mut self, node: u64, time_ms: u64) {
        self.apply(&format!("node-{node}"), time_ms, Operation::Attest);
    }
}

#[test]
fn a_request_is_forgotten_just_after_its_proof_goes_stale_not_at_that_instant() {
    let mut log = Log::new();
    common::publish_dkg_keys(&mut log.sm);
    let admin = Operation::CreatePrincipal {
        name: "admin".into(),
        roles: [qk_state::Role::Admin].into(),
    };
    log.apply("node-1", 0, admin);
    log.apply("admin", 0, common::create_key("k", &[1, 2]));
    log.fill_to(MAX_REMEMBERED_REQUESTS + 1, 0);
    let stale_at = INTENT_MAX_AGE_MS;
    for node in [1, 2] {
        log.attest(node, stale_at);
    }
    assert_eq!(log.sm.vouched_ms(), stale_at);
    log.apply("svc", stale_at, Operation::PruneRecords);
    assert_eq!(log.sm.remembered_requests(), MAX_REMEMBERED_REQUESTS + 2);
    for node in [1, 2] {
        log.attest(node, stale_at + 1);
    }
    log.apply("svc", stale_at + 1, Operation::PruneRecords);
    assert_eq!(log.sm.remembered_requests(), MAX_REMEMBERED_REQUESTS);
}

#[test]
fn a_node_attests_for_the_ids_only_past_the_limit_and_more_than_a_minute_after_it_signed() {
    let mut log = Log::new();
    log.attest(1, 1_000);
    log.fill_to(MAX_REMEMBERED_REQUESTS, 1_000);
    assert!(!log.sm.needs_attestation("node-1", 1_000_000));
    log.fill_to(MAX_REMEMBERED_REQUESTS + 1, 1_000);
    assert!(!log.sm.needs_attestation("node-1", 61_000));
    assert!(log.sm.needs_attestation("node-1", 61_001));
}

#[test]
fn the_times_of_256_nodes_are_kept_and_the_one_heard_from_longest_ago_goes_first() {
    let mut log = Log::new();
    log.fill_to(MAX_REMEMBERED_REQUESTS + 1, 0);
    log.attest(1, 10);
    for node in 2..=256 {
        log.attest(node, 20);
    }
    // A node whose time is not kept is asked to attest at once.
    assert!(!log.sm.needs_attestation("node-1", 20));
    log.attest(257, 20);
    assert!(log.sm.needs_attestation("node-1", 20));
    assert!(!log.sm.needs_attestation("node-2", 20));
}
