//! The simulated network between nodes: which messages are lost, delayed
//! or duplicated. It draws from the world's seeded generator, so a seed
//! replays the same fate for every message.

use std::ops::RangeInclusive;

use super::*;

/// The simulated network between nodes: partitions (one-way pairs
/// blocked), message loss and duplication, per mille.
pub(crate) struct Network {
    /// `(from, to)` pairs whose messages are dropped.
    pub(crate) blocked: BTreeSet<(NodeId, NodeId)>,
    pub(crate) loss_per_mille: u32,
    pub(crate) dup_per_mille: u32,
}

impl Network {
    pub(crate) fn new(loss_per_mille: u32, dup_per_mille: u32) -> Self {
        Network {
            blocked: BTreeSet::new(),
            loss_per_mille,
            dup_per_mille,
        }
    }

    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Sets loss and duplication; returns the previous pair.
    pub(crate) fn set_loss(&mut self, loss: u32, dup: u32) -> (u32, u32) {
        let old = (self.loss_per_mille, self.dup_per_mille);
        self.loss_per_mille = loss;
        self.dup_per_mille = dup;
        old
    }

    pub(crate) fn blocks(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// The delay of one message from `from` to `to`, or `None` if it is lost
    /// (blocked, or lost by chance).
    pub(crate) fn fate(
        &self,
        rng: &mut StdRng,
        delays_ms: RangeInclusive<u64>,
        from: NodeId,
        to: NodeId,
    ) -> Option<u64> {
        if self.blocks(from, to) || rng.random_range(0..1000) < self.loss_per_mille {
            return None;
        }
        Some(rng.random_range(delays_ms))
    }

    /// The delay of a duplicate copy of a message, if one is made.
    pub(crate) fn duplicate(
        &self,
        rng: &mut StdRng,
        delays_ms: RangeInclusive<u64>,
    ) -> Option<u64> {
        if rng.random_range(0..1000) >= self.dup_per_mille {
            return None;
        }
        Some(rng.random_range(delays_ms))
    }
}

/// How messages between simulated nodes are sent and delivered.
impl World {
    /// Decides the fate of one message from `from` to `to`: its delay, or
    /// `None` if it is lost (partition, loss, dead receiver).
    pub(crate) fn link(&mut self, from: NodeId, to: NodeId) -> Option<u64> {
        if from == to {
            return Some(0);
        }
        let delays_ms = self.delays_ms();
        self.net.fate(&mut self.rng, delays_ms, from, to)
    }

    /// The range a message's delay is drawn from.
    pub(super) fn delays_ms(&self) -> std::ops::RangeInclusive<u64> {
        self.cfg.net.min_delay_ms..=self.cfg.net.max_delay_ms
    }

    /// Whether to deliver a copy of a Raft request, and after what delay.
    pub(crate) fn duplicate_delay(&mut self) -> Option<u64> {
        let delays_ms = self.delays_ms();
        let delay_ms = self.net.duplicate(&mut self.rng, delays_ms)?;
        self.stats.raft_duplicates += 1;
        Some(delay_ms)
    }

    /// The Raft of `to` if a message from `from` reaches it now.
    pub(crate) fn reachable_raft(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        let node = self.nodes.get(&to)?;
        if !node.alive || self.net.blocks(from, to) {
            return None;
        }
        node.raft.clone()
    }

    /// Sends `bytes`; `dkg` is the session of a DKG share (kept for the
    /// root search once the session's root is known).
    pub(super) fn send(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        self.check_secret_free("sent message", &bytes);
        if from == to {
            self.schedule(0, Ev::Deliver { from, to, bytes });
            return;
        }
        let Some(d) = self.link(from, to) else {
            self.stats.messages_lost += 1;
            return;
        };
        let delays_ms = self.delays_ms();
        if let Some(d2) = self.net.duplicate(&mut self.rng, delays_ms) {
            let copy = bytes.clone();
            self.schedule(
                d2,
                Ev::Deliver {
                    from,
                    to,
                    bytes: copy,
                },
            );
        }
        self.schedule(d, Ev::Deliver { from, to, bytes });
    }

    pub(super) fn deliver(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let alive = self.nodes.get(&to).is_some_and(|n| n.alive);
        if !alive || self.net.blocks(from, to) {
            self.stats.messages_lost += 1;
            return;
        }
        self.check_secret_free("delivered message", &bytes);
        self.stats.messages_delivered += 1;
        let now = self.now();
        self.trace(&format!("deliver {from}->{to}@{now}"), &bytes);
        let msg = match ProtocolMessage::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.fail(format!("message from {from} to {to} does not decode: {e}"));
                return;
            }
        };
        if let ProtocolMessage::PartialResponse {
            op_id,
            result: Ok(_),
        } = &msg
        {
            self.check_partial_allowed(from, to, *op_id);
            let byz = Some(from) == self.adversary.byzantine;
            if let Some(f) = self
                .nodes
                .get_mut(&to)
                .and_then(|n| n.inflight.get_mut(op_id))
            {
                f.byz_partial_delivered |= byz;
                f.partials_from.insert(from);
            }
            if self.combine_short(to, *op_id) {
                return;
            }
        }
        self.drive(to, Event::Message { from, msg });
    }
}
