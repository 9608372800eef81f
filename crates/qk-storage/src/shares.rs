//! The sealed share store: one AEAD-sealed file per share.
//!
//! Each share is sealed with the node seal key (AES-256-GCM, random nonce,
//! additional data = key id ‖ version ‖ epoch ‖ node id), so a sealed share
//! copied to another slot or node does not open. Files rather than sled
//! values: a log-structured store keeps old values in its segments until it
//! compacts, so a destroyed share could linger on disk; a file can be
//! overwritten in place, synced and unlinked.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use qk_crypto::{DkgSecretKey, KeyShare};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand::Rng;
use zeroize::Zeroizing;

const SEAL_MAGIC: &[u8; 4] = b"QKS1";
const NONCE_LEN: usize = 12;
/// A sealed share is magic + nonce + sealed 36-byte share + tag; anything far
/// larger is not ours.
const MAX_SEALED_LEN: usize = 256;
const SEAL_KEY_LEN: usize = 32;
const SALT_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareStoreError {
    #[error("share store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is readable by group or others, and it holds the seal key or its passphrase; run `chmod 600` on it")]
    KeyFilePermissions(PathBuf),
    #[error("seal key file {0} is not a 32-byte key; restore it from backup (shares sealed with another key cannot be opened)")]
    KeyFileInvalid(PathBuf),
    #[error("seal key file {0} already exists; refusing to overwrite it")]
    KeyFileExists(PathBuf),
    #[error("passphrase file {0} is empty; put the passphrase in it")]
    EmptyPassphrase(PathBuf),
    #[error("deriving the seal key from the passphrase failed: {0}")]
    Kdf(String),
    #[error("sealed share for key {key} {version} epoch {epoch} does not open: it was modified, moved from another slot, or sealed with another seal key")]
    Unseal {
        key: KeyId,
        version: KeyVersion,
        epoch: u64,
    },
    #[error("sealed share file {0} is malformed")]
    Malformed(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShareStoreError + '_ {
    move |source| ShareStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The node seal key. Never logged, never in the Raft log or config in clear.
pub struct SealKey(Zeroizing<[u8; SEAL_KEY_LEN]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// Creates a random key file with mode 0600 (fails if it exists).
    pub fn create_key_file(path: &Path) -> Result<SealKey, ShareStoreError> {
        let mut key = Zeroizing::new([0u8; SEAL_KEY_LEN]);
        rand::rng().fill_bytes(key.as_mut());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    ShareStoreError::KeyFileExists(path.to_path_buf())
                }
                _ => ShareStoreError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            })?;
        file.write_all(key.as_ref()).map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
        Ok(SealKey(key))
    }

    /// Loads a key file, refusing one that group or others can read.
    pub fn load_key_file(path: &Path) -> Result<SealKey, ShareStoreError> {
        check_private(path)?;
        let bytes = Zeroizing::new(fs::read(path).map_err(io(path))?);
        let key: [u8; SEAL_KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ShareStoreError::KeyFileInvalid(path.to_path_buf()))?;
        Ok(SealKey(Zeroizing::new(key)))
    }

    /// Derives the key with Argon2id from the passphrase in `passphrase_file`
    /// and a salt kept (created once) at `salt_path`.
    pub fn from_passphrase_file(
        passphrase_file: &Path,
        salt_path: &Path,
    ) -> Result<SealKey, ShareStoreError> {
        check_private(passphrase_file)?;
        let text = Zeroizing::new(fs::read(passphrase_file).map_err(io(passphrase_file))?);
        let passphrase = text.trim_ascii_end();
        if passphrase.is_empty() {
            return Err(ShareStoreError::EmptyPassphrase(
                passphrase_file.to_path_buf(),
            ));
        }
        let salt = match fs::read(salt_path) {
            Ok(s) if s.len() == SALT_LEN => s,
            Ok(_) => return Err(ShareStoreError::Malformed(salt_path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut s = vec![0u8; SALT_LEN];
                rand::rng().fill_bytes(&mut s);
                write_synced(salt_path, &s)?;
                s
            }
            Err(e) => return Err(io(salt_path)(e)),
        };
        let mut key = Zeroizing::new([0u8; SEAL_KEY_LEN]);
        argon2::Argon2::default()
            .hash_password_into(passphrase, &salt, key.as_mut())
            .map_err(|e| ShareStoreError::Kdf(e.to_string()))?;
        Ok(SealKey(key))
    }
}

/// Refuses a secret file that group or others can read.
fn check_private(path: &Path) -> Result<(), ShareStoreError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ShareStoreError::KeyFilePermissions(path.to_path_buf()));
    }
    Ok(())
}

/// Overwrites a file with zeros, syncs and unlinks it; `false` if absent.
fn erase_file(path: &Path) -> Result<bool, ShareStoreError> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len() as usize,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(path)(e)),
    };
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.write_all(&vec![0u8; len]).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    drop(f);
    fs::remove_file(path).map_err(io(path))?;
    Ok(true)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ShareStoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Which share: key, version, epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShareSlot {
    pub key: KeyId,
    pub version: KeyVersion,
    pub epoch: Epoch,
}

impl ShareSlot {
    fn file_name(&self) -> String {
        format!("{}-{}-{}.share", self.key, self.version.0, self.epoch.0)
    }

    fn parse(name: &str) -> Option<ShareSlot> {
        let stem = name.strip_suffix(".share")?;
        let mut parts = stem.split('-');
        let key_hex = parts.next()?;
        let version = parts.next()?.parse().ok()?;
        let epoch = parts.next()?.parse().ok()?;
        if parts.next().is_some() || key_hex.len() != 32 {
            return None;
        }
        let mut key = [0u8; 16];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(key_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ShareSlot {
            key: KeyId(key),
            version: KeyVersion(version),
            epoch: Epoch(epoch),
        })
    }

    fn aad(&self, node: NodeId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + 4 + 8 + 8);
        aad.extend_from_slice(&self.key.0);
        aad.extend_from_slice(&self.version.0.to_be_bytes());
        aad.extend_from_slice(&self.epoch.0.to_be_bytes());
        aad.extend_from_slice(&node.0.to_be_bytes());
        aad
    }
}

/// Shares this node holds, sealed at rest.
#[derive(Debug)]
pub struct ShareStore {
    dir: PathBuf,
    node: NodeId,
    seal: SealKey,
}

impl ShareStore {
    /// Opens (creating) the store and erases what a crash mid-write left
    /// behind (`*.share.tmp`: a sealed share never renamed into place).
    pub fn open(dir: &Path, node: NodeId, seal: SealKey) -> Result<ShareStore, ShareStoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(".share.tmp")) {
                erase_file(&path)?;
            }
        }
        Ok(ShareStore {
            dir: dir.to_path_buf(),
            node,
            seal,
        })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&(*self.seal.0).into())
    }

    /// This node's DKG key, derived from the seal key (HKDF-SHA256, bound to
    /// the node id): nothing more to store, and as protected at rest as the
    /// shares it opens. Another seal key gives another DKG key.
    pub fn dkg_key(&self) -> Result<DkgSecretKey, ShareStoreError> {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"qk/dkg-key/v1"), self.seal.0.as_ref());
        let mut seed = Zeroizing::new([0u8; 64]);
        hk.expand(&self.node.0.to_be_bytes(), seed.as_mut())
            .map_err(|e| ShareStoreError::Kdf(e.to_string()))?;
        Ok(DkgSecretKey::from_seed(&seed))
    }

    /// A secret this node alone can recompute for `id` (HKDF-SHA256 of the
    /// seal key, bound to the node id and `purpose`): the secret of a
    /// shared-secret credential bound to this node (an AWS SigV4 secret
    /// access key), kept nowhere but re-derived when a request needs it.
    /// Another seal key derives other secrets, so such credentials do not
    /// survive the loss of the seal key.
    pub fn gateway_secret(
        &self,
        purpose: &str,
        id: &str,
    ) -> Result<Zeroizing<[u8; 32]>, ShareStoreError> {
        let hk =
            hkdf::Hkdf::<sha2::Sha256>::new(Some(b"qk/gateway-secret/v1"), self.seal.0.as_ref());
        let mut info = self.node.0.to_be_bytes().to_vec();
        info.extend_from_slice(purpose.as_bytes());
        info.push(0);
        info.extend_from_slice(id.as_bytes());
        let mut secret = Zeroizing::new([0u8; 32]);
        hk.expand(&info, secret.as_mut())
            .map_err(|e| ShareStoreError::Kdf(e.to_string()))?;
        Ok(secret)
    }

    /// Seals and stores a share, synced to disk before returning.
    pub fn put(&self, slot: ShareSlot, share: &KeyShare) -> Result<(), ShareStoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let plain = share.to_secret_bytes();
        let aad = slot.aad(self.node);
        let sealed = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| ShareStoreError::Kdf("sealing failed".into()))?;
        let mut file = Vec::with_capacity(4 + NONCE_LEN + sealed.len());
        file.extend_from_slice(SEAL_MAGIC);
        file.extend_from_slice(&nonce);
        file.extend_from_slice(&sealed);
        let path = self.dir.join(slot.file_name());
        let tmp = self.dir.join(format!("{}.tmp", slot.file_name()));
        write_synced(&tmp, &file)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Opens a share; `None` if this node holds none for the slot.
    pub fn get(&self, slot: ShareSlot) -> Result<Option<KeyShare>, ShareStoreError> {
        let path = self.dir.join(slot.file_name());
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        if bytes.len() > MAX_SEALED_LEN || bytes.len() < 4 + NONCE_LEN || &bytes[..4] != SEAL_MAGIC
        {
            return Err(ShareStoreError::Malformed(path));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[4..4 + NONCE_LEN]);
        let unseal_err = || ShareStoreError::Unseal {
            key: slot.key,
            version: slot.version,
            epoch: slot.epoch.0,
        };
        let aad = slot.aad(self.node);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &bytes[4 + NONCE_LEN..],
                        aad: &aad,
                    },
                )
                .map_err(|_| unseal_err())?,
        );
        KeyShare::from_secret_bytes(&plain)
            .map(Some)
            .map_err(|_| unseal_err())
    }

    /// Overwrites the sealed share (and any temporary copy of it) with
    /// zeros, syncs, and unlinks it; `false` if there was none.
    pub fn erase(&self, slot: ShareSlot) -> Result<bool, ShareStoreError> {
        let tmp = self.dir.join(format!("{}.tmp", slot.file_name()));
        let erased_tmp = erase_file(&tmp)?;
        let erased = erase_file(&self.dir.join(slot.file_name()))?;
        if erased || erased_tmp {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(erased)
    }

    /// Every slot this node holds a file for.
    pub fn slots(&self) -> Result<Vec<ShareSlot>, ShareStoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if let Some(slot) = entry.file_name().to_str().and_then(ShareSlot::parse) {
                out.push(slot);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_file(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }

    #[test]
    fn a_passphrase_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        private_file(&pass, b"correct horse");
        let salt = dir.path().join("salt");
        SealKey::from_passphrase_file(&pass, &salt).expect("0600 is accepted");
        fs::set_permissions(&pass, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = SealKey::from_passphrase_file(&pass, &salt).expect_err("0644 is refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn leftover_temporary_shares_are_erased_at_open_and_with_their_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("seal.key");
        private_file(&key_path, &[7u8; SEAL_KEY_LEN]);
        let shares = dir.path().join("shares");
        fs::create_dir_all(&shares).expect("mkdir");
        let leftover = shares.join("00000000000000000000000000000001-1-0.share.tmp");
        fs::write(&leftover, b"sealed bytes of a crashed write").expect("write");
        let seal = SealKey::load_key_file(&key_path).expect("key");
        let store = ShareStore::open(&shares, NodeId(1), seal).expect("open");
        assert!(!leftover.exists(), "a crash leftover is erased at open");

        let slot = ShareSlot {
            key: KeyId([2; 16]),
            version: KeyVersion(1),
            epoch: Epoch(0),
        };
        let tmp = shares.join(format!("{}.tmp", slot.file_name()));
        fs::write(&tmp, b"half a share").expect("write");
        assert!(!store.erase(slot).expect("erase"), "no share file");
        assert!(
            !tmp.exists(),
            "erasing a slot erases its temporary copy too"
        );
    }

    #[test]
    fn the_dkg_key_follows_the_seal_key_and_the_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("seal.key");
        private_file(&key_path, &[7u8; SEAL_KEY_LEN]);
        let other_path = dir.path().join("other.key");
        private_file(&other_path, &[8u8; SEAL_KEY_LEN]);
        let open = |path: &Path, node: u64| {
            let seal = SealKey::load_key_file(path).expect("key");
            let store =
                ShareStore::open(&dir.path().join("shares"), NodeId(node), seal).expect("open");
            store.dkg_key().expect("derive").public_key()
        };
        assert_eq!(
            open(&key_path, 1),
            open(&key_path, 1),
            "stable across restarts"
        );
        assert_ne!(
            open(&key_path, 1),
            open(&key_path, 2),
            "bound to the node id"
        );
        assert_ne!(
            open(&key_path, 1),
            open(&other_path, 1),
            "bound to the seal key"
        );
    }

    #[test]
    fn gateway_secrets_follow_the_seal_key_the_node_the_purpose_and_the_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("seal.key");
        private_file(&key_path, &[7u8; SEAL_KEY_LEN]);
        let other_path = dir.path().join("other.key");
        private_file(&other_path, &[8u8; SEAL_KEY_LEN]);
        let derive = |path: &Path, node: u64, purpose: &str, id: &str| {
            let seal = SealKey::load_key_file(path).expect("key");
            let store =
                ShareStore::open(&dir.path().join("shares"), NodeId(node), seal).expect("open");
            *store.gateway_secret(purpose, id).expect("derive")
        };
        let base = derive(&key_path, 1, "aws", "ab");
        assert_eq!(base, derive(&key_path, 1, "aws", "ab"), "stable");
        assert_ne!(base, derive(&key_path, 2, "aws", "ab"), "bound to the node");
        assert_ne!(
            base,
            derive(&other_path, 1, "aws", "ab"),
            "bound to the seal key"
        );
        assert_ne!(
            base,
            derive(&key_path, 1, "aw", "sab"),
            "purpose and id are delimited"
        );
        assert_ne!(base, derive(&key_path, 1, "aws", "ac"), "bound to the id");
    }

    fn slot(key: u8, version: u32, epoch: u64) -> ShareSlot {
        ShareSlot {
            key: KeyId([key; 16]),
            version: KeyVersion(version),
            epoch: Epoch(epoch),
        }
    }

    fn store(dir: &Path) -> ShareStore {
        let key_path = dir.join("seal.key");
        if !key_path.exists() {
            SealKey::create_key_file(&key_path).expect("key file");
        }
        let seal = SealKey::load_key_file(&key_path).expect("key");
        ShareStore::open(&dir.join("shares"), NodeId(1), seal).expect("open")
    }

    #[test]
    fn each_slot_keeps_its_own_share_is_listed_and_is_erased_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let (_, shares) = qk_crypto::testing::generate(2, 3, &mut rand::rng());
        let (a, b) = (slot(1, 1, 0), slot(1, 1, 1));
        store.put(a, &shares[0]).expect("put a");
        store.put(b, &shares[1]).expect("put b");
        let got = |s| {
            store
                .get(s)
                .expect("get")
                .map(|k: KeyShare| k.to_secret_bytes().to_vec())
        };
        assert_eq!(got(a), Some(shares[0].to_secret_bytes().to_vec()));
        assert_eq!(got(b), Some(shares[1].to_secret_bytes().to_vec()));
        assert_eq!(store.slots().expect("slots"), vec![a, b]);
        let sealed = fs::read(dir.path().join("shares").join(a.file_name())).expect("file");
        let secret = shares[0].to_secret_bytes();
        assert!(
            !sealed.windows(secret.len()).any(|w| w == secret.as_slice()),
            "sealed at rest"
        );
        assert!(store.erase(a).expect("erase"), "a share was there");
        assert!(!store.erase(a).expect("erase again"), "nothing left");
        assert_eq!(got(a), None);
        assert_eq!(store.slots().expect("slots"), vec![b], "b untouched");
        // After a restart, with the same seal key, b is still there.
        drop(store);
        assert_eq!(self::store(dir.path()).slots().expect("slots"), vec![b]);
    }

    #[test]
    fn files_that_are_not_share_slots_are_not_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let shares = dir.path().join("shares");
        let good = slot(3, 2, 5);
        for stray in [
            "notes.share".to_string(),
            "0303-2-5.share".to_string(),
            format!("{}-7", good.file_name()),
            format!("{}-2-5-9.share", KeyId([3; 16])),
            format!("{}-x-5.share", KeyId([3; 16])),
        ] {
            fs::write(shares.join(stray), b"x").expect("write");
        }
        assert!(store.slots().expect("slots").is_empty());
        assert_eq!(ShareSlot::parse(&good.file_name()), Some(good));
    }

    #[test]
    fn a_share_file_that_cannot_be_looked_up_or_removed_is_an_error_not_a_missing_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let s = slot(4, 1, 0);
        // A directory where the share file should be: it exists, and
        // cannot be overwritten or removed as a file.
        fs::create_dir_all(dir.path().join("shares").join(s.file_name())).expect("mkdir");
        assert!(store.erase(s).is_err());
        // A file where the share directory should be: the share's path
        // cannot even be looked up, which is not "no share".
        let shares = dir.path().join("shares");
        fs::remove_dir_all(&shares).expect("rm");
        fs::write(&shares, b"not a directory").expect("write");
        assert!(store.erase(slot(4, 2, 0)).is_err());
        assert!(store.get(slot(4, 2, 0)).is_err(), "nor is a read");
    }

    #[test]
    fn the_seal_key_file_is_created_once_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seal.key");
        let key = SealKey::create_key_file(&path).expect("created");
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
        let again = SealKey::create_key_file(&path).expect_err("exists");
        assert!(
            matches!(again, ShareStoreError::KeyFileExists(_)),
            "{again}"
        );
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_passphrase_key_needs_its_salt_and_a_damaged_salt_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        private_file(&pass, b"correct horse\n");
        let salt = dir.path().join("salt");
        let derive = || SealKey::from_passphrase_file(&pass, &salt);
        let first = derive().expect("salt created");
        assert_eq!(fs::read(&salt).expect("salt").len(), SALT_LEN, "salt kept");
        let second = derive().expect("salt read");
        assert_eq!(
            first.0.as_ref(),
            second.0.as_ref(),
            "same passphrase and salt"
        );
        fs::write(&salt, [1u8; SALT_LEN + 1]).expect("damage");
        let err = derive().expect_err("a salt of the wrong length");
        assert!(matches!(err, ShareStoreError::Malformed(_)), "{err}");
        fs::remove_file(&salt).expect("rm");
        fs::create_dir(&salt).expect("a directory in its place");
        assert!(
            derive().is_err(),
            "an unreadable salt is an error, not a new salt"
        );
    }

    #[test]
    fn a_sealed_share_opens_only_in_its_own_slot_on_its_own_node_and_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let (_, shares) = qk_crypto::testing::generate(2, 3, &mut rand::rng());
        let (a, b) = (slot(5, 1, 0), slot(5, 2, 0));
        store.put(a, &shares[0]).expect("put");
        let dir_of = dir.path().join("shares");
        let sealed = fs::read(dir_of.join(a.file_name())).expect("read");
        // Moved to another slot's name: the slot is in the sealing's AAD.
        fs::write(dir_of.join(b.file_name()), &sealed).expect("copy");
        assert!(matches!(store.get(b), Err(ShareStoreError::Unseal { .. })));
        // The same file on another node (same seal key): the node is too.
        let seal = SealKey::load_key_file(&dir.path().join("seal.key")).expect("key");
        let other = ShareStore::open(&dir_of, NodeId(2), seal).expect("open");
        assert!(matches!(other.get(a), Err(ShareStoreError::Unseal { .. })));
        // Truncated, grown past the bound, or without the magic: malformed.
        let malformed = |bytes: &[u8]| {
            fs::write(dir_of.join(a.file_name()), bytes).expect("write");
            matches!(store.get(a), Err(ShareStoreError::Malformed(_)))
        };
        assert!(malformed(&sealed[..4 + NONCE_LEN - 1]));
        assert!(malformed(
            &[sealed.as_slice(), &vec![0; MAX_SEALED_LEN]].concat()
        ));
        assert!(malformed(&[b"XXXX".as_slice(), &sealed[4..]].concat()));
        // The header alone, or a file of exactly the bound, passes the size
        // checks and fails to open.
        for len in [4 + NONCE_LEN, MAX_SEALED_LEN] {
            let mut bytes = sealed[..4 + NONCE_LEN].to_vec();
            bytes.resize(len, 0);
            fs::write(dir_of.join(a.file_name()), &bytes).expect("write");
            assert!(
                matches!(store.get(a), Err(ShareStoreError::Unseal { .. })),
                "{len}"
            );
        }
        fs::write(dir_of.join(a.file_name()), &sealed).expect("restore");
        assert!(store.get(a).expect("opens").is_some());
    }
}
