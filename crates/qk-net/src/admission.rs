//! Connection slots per client address (used by the QUIC server here and
//! by the HTTPS listener in `qk-api`). Slots are counted by IP address,
//! after QUIC has validated the address (a Retry round trip), so one host
//! cannot take every slot of the server and a spoofed source address takes
//! none. The same counter, keyed by a client's certificate name, bounds the
//! requests one client has in flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The slots each key (an address, a client) holds.
#[derive(Debug)]
pub struct KeyedSlots<K> {
    max_per_key: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One held slot; given back on drop.
#[derive(Debug)]
pub struct KeyedSlot<K: Eq + Hash> {
    slots: Arc<KeyedSlots<K>>,
    key: K,
}

/// Slots per client address.
pub type AddressSlots = KeyedSlots<IpAddr>;
/// One address's slot.
pub type AddressSlot = KeyedSlot<IpAddr>;

impl<K: Eq + Hash + Clone> KeyedSlots<K> {
    pub fn new(max_per_key: usize) -> Arc<KeyedSlots<K>> {
        Arc::new(KeyedSlots {
            max_per_key,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `key`, unless it already holds the most it may.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<KeyedSlot<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max_per_key {
            return None;
        }
        *count += 1;
        Some(KeyedSlot {
            slots: self.clone(),
            key,
        })
    }

    /// The slots `key` holds now.
    pub fn held_by(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_slots_back_on_drop() {
        let slots = AddressSlots::new(2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = slots.try_take(a).expect("first");
        let _second = slots.try_take(a).expect("second");
        assert!(slots.try_take(a).is_none(), "a third from the same address");
        assert!(
            slots.try_take(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(slots.held_by(&a), 1);
        assert!(
            slots.try_take(a).is_some(),
            "a slot given back is free again"
        );
    }

    #[test]
    fn an_address_with_no_slot_left_is_forgotten() {
        let slots = AddressSlots::new(1);
        let a: IpAddr = [10, 0, 0, 1].into();
        drop(slots.try_take(a));
        assert_eq!(slots.held_by(&a), 0);
        assert!(slots.held.lock().expect("lock").is_empty());
    }
}
