//! The keys by name, with an index by id: the decrypt path and id
//! allocation find a key by the id a ciphertext names without scanning
//! every key. The index is derived data: it is never serialized (the
//! encoded state is the name map alone, as before the index existed) and is
//! rebuilt whenever a state is decoded.

use std::collections::BTreeMap;

use qk_types::KeyId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{KeyRecord, ALIASES_TAG};

#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTable {
    by_name: BTreeMap<String, KeyRecord>,
    /// Each key's id → its name. A key's id never changes once inserted.
    by_id: BTreeMap<KeyId, String>,
    /// Each alias → the name of the key it is on (`KeyRecord::aliases`).
    by_alias: BTreeMap<String, String>,
}

fn write_aliases(key: &mut KeyRecord, aliases: &[String]) {
    if aliases.is_empty() {
        key.tags.remove(ALIASES_TAG);
    } else {
        key.tags
            .insert(ALIASES_TAG.to_owned(), aliases.join("\n").into_bytes());
    }
}

impl KeyTable {
    pub(crate) fn get(&self, name: &str) -> Option<&KeyRecord> {
        self.by_name.get(name)
    }

    /// The key's record, to change anything but its id and name (the index
    /// is keyed by both).
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut KeyRecord> {
        self.by_name.get_mut(name)
    }

    pub(crate) fn by_id(&self, id: KeyId) -> Option<&KeyRecord> {
        self.by_id.get(&id).and_then(|name| self.by_name.get(name))
    }

    pub(crate) fn by_alias(&self, alias: &str) -> Option<&KeyRecord> {
        self.by_alias
            .get(alias)
            .and_then(|name| self.by_name.get(name))
    }

    /// Puts `alias` on key `to` (taking it off the key that had it), or with
    /// `None` removes it. The caller checked that `to` exists.
    pub(crate) fn set_alias(&mut self, alias: &str, to: Option<&str>) {
        if let Some(from) = self.by_alias.remove(alias) {
            if let Some(key) = self.by_name.get_mut(&from) {
                let kept: Vec<String> = key
                    .aliases()
                    .filter(|a| *a != alias)
                    .map(str::to_owned)
                    .collect();
                write_aliases(key, &kept);
            }
        }
        if let Some(to) = to {
            if let Some(key) = self.by_name.get_mut(to) {
                let mut all: Vec<String> = key.aliases().map(str::to_owned).collect();
                all.push(alias.to_owned());
                write_aliases(key, &all);
                self.by_alias.insert(alias.to_owned(), to.to_owned());
            }
        }
    }

    pub(crate) fn contains_name(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub(crate) fn contains_id(&self, id: KeyId) -> bool {
        self.by_id.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &KeyRecord> {
        self.by_name.values()
    }

    /// Adds a key whose name and id are both new (the caller checked).
    pub(crate) fn insert(&mut self, record: KeyRecord) {
        debug_assert!(!self.contains_name(&record.name) && !self.contains_id(record.id));
        self.by_id.insert(record.id, record.name.clone());
        self.by_name.insert(record.name.clone(), record);
        debug_assert_eq!(self.by_id.len(), self.by_name.len());
    }
}

impl TryFrom<BTreeMap<String, KeyRecord>> for KeyTable {
    type Error = String;

    /// Builds the index; refuses a map whose entry is filed under another
    /// name than its record's, or in which two keys share an id (a damaged
    /// or forged snapshot: no create ever makes one).
    fn try_from(by_name: BTreeMap<String, KeyRecord>) -> Result<Self, String> {
        let mut by_id = BTreeMap::new();
        let mut by_alias = BTreeMap::new();
        for (name, record) in &by_name {
            // Only SetAlias writes aliases (SetTag refuses the tag's empty
            // name), keeping them unique and apart from key names: a
            // snapshot that breaks that is damaged or forged.
            for alias in record.aliases() {
                if by_alias.insert(alias.to_owned(), name.clone()).is_some() {
                    return Err(format!("two keys share the alias {alias:?}"));
                }
            }
            if *name != record.name {
                return Err(format!(
                    "key {name:?} is stored under the name {:?}",
                    record.name
                ));
            }
            if by_id.insert(record.id, name.clone()).is_some() {
                return Err(format!("two keys share the id {}", record.id));
            }
        }
        if let Some(alias) = by_alias.keys().find(|a| by_name.contains_key(*a)) {
            return Err(format!("the alias {alias:?} is also a key's name"));
        }
        Ok(KeyTable {
            by_name,
            by_id,
            by_alias,
        })
    }
}

/// Two tables are equal when their keys are: the index follows from them.
impl PartialEq for KeyTable {
    fn eq(&self, other: &Self) -> bool {
        self.by_name == other.by_name
    }
}

impl Eq for KeyTable {}

impl Serialize for KeyTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.by_name.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let by_name = BTreeMap::<String, KeyRecord>::deserialize(deserializer)?;
        KeyTable::try_from(by_name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, id: u8) -> KeyRecord {
        KeyRecord {
            id: KeyId([id; 16]),
            name: name.into(),
            description: String::new(),
            owner: String::new(),
            purpose: String::new(),
            created_ms: 0,
            rotation_period_ms: None,
            expires_at_ms: None,
            last_rotated_ms: 0,
            versions: Vec::new(),
            tags: BTreeMap::new(),
            min_decrypt_version: qk_types::KeyVersion(0),
            policy: None,
            expired: false,
        }
    }

    #[test]
    fn a_decoded_table_finds_every_key_by_id_and_encodes_as_the_name_map() {
        let mut table = KeyTable::default();
        table.insert(record("a", 1));
        table.insert(record("b", 2));
        let bytes = postcard::to_allocvec(&table).expect("encode");
        let as_map: BTreeMap<String, KeyRecord> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(as_map.len(), 2, "the encoding is the name map alone");
        let decoded: KeyTable = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(decoded, table);
        assert_eq!(
            decoded.by_id(KeyId([2; 16])).map(|k| k.name.as_str()),
            Some("b")
        );
        assert!(decoded.by_id(KeyId([3; 16])).is_none());
    }

    #[test]
    fn a_table_with_a_misfiled_name_or_a_shared_id_is_refused_when_decoded() {
        let misfiled = BTreeMap::from([("a".to_string(), record("b", 1))]);
        let bytes = postcard::to_allocvec(&misfiled).expect("encode");
        postcard::from_bytes::<KeyTable>(&bytes).expect_err("a misfiled key is not decoded");
        let e = KeyTable::try_from(misfiled).expect_err("misfiled");
        assert!(e.contains("stored under the name"), "{e}");
        let shared = BTreeMap::from([
            ("a".to_string(), record("a", 7)),
            ("b".to_string(), record("b", 7)),
        ]);
        let e = KeyTable::try_from(shared).expect_err("two keys, one id");
        assert!(e.contains("share the id"), "{e}");
    }
}
