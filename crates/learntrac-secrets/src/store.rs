//! Named secrets encrypted under the master key, in `DATA_DIR/secrets.json`.
//!
//! The file holds, per secret, the id of the master key that encrypted it,
//! a nonce and the ciphertext, never the value. The secret's name is the
//! associated data, so a ciphertext copied to another name fails to
//! decrypt. Every change rewrites the file atomically while holding a lock
//! on `secrets.json.lock`, so that two commands do not lose each other's
//! changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::master_key::sibling;
use crate::seal::{open, seal};
use crate::{KeyRing, KeySource, MasterKey, Result, SecretError, SecretValue};

const FORMAT: u32 = 1;

/// The largest secret value, in bytes; keys, passwords and tokens are far
/// smaller, and the whole store is read at every start.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: u32,
    secrets: BTreeMap<String, Entry>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Entry {
    key_id: String,
    nonce: String,
    ciphertext: String,
    created_at: i64,
    rotated_at: i64,
}

/// A secret's name and history, without its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub created_at: i64,
    /// When the value was last replaced; equal to `created_at` until then.
    pub rotated_at: i64,
    pub key_id: String,
}

/// The outcome of a finished master-key rotation.
#[derive(Debug)]
pub struct Rotation {
    pub old_key_id: String,
    pub new_key_id: String,
    /// Secrets re-encrypted by this run (an earlier, interrupted run may
    /// have done the others).
    pub reencrypted: usize,
    /// The file that keeps the old key, for backups made under it.
    pub previous_key_file: Option<PathBuf>,
}

pub struct SecretStore {
    path: PathBuf,
    keys: KeyRing,
    file: StoreFile,
}

/// Checks a secret name: 1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`, starting
/// with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if valid { Ok(()) } else { Err(SecretError::InvalidName(name.to_string())) }
}

impl SecretStore {
    pub const FILE_NAME: &str = "secrets.json";

    /// Opens the store of `data_dir`. Every stored secret must be
    /// encrypted under a key of `keys`, so a wrong master key fails here,
    /// with both key ids in the message.
    pub fn open(data_dir: &Path, keys: KeyRing) -> Result<SecretStore> {
        let path = data_dir.join(SecretStore::FILE_NAME);
        let file = read_store_file(&path)?;
        for (name, entry) in &file.secrets {
            keys.find(&entry.key_id, &format!("secret {name:?}"))?;
        }
        Ok(SecretStore { path, keys, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file.secrets.contains_key(name)
    }

    pub fn list(&self) -> Vec<SecretInfo> {
        self.file
            .secrets
            .iter()
            .map(|(name, entry)| SecretInfo {
                name: name.clone(),
                created_at: entry.created_at,
                rotated_at: entry.rotated_at,
                key_id: entry.key_id.clone(),
            })
            .collect()
    }

    /// Decrypts the secret `name`; a missing one is [`SecretError::NotFound`].
    pub fn get(&self, name: &str) -> Result<SecretValue> {
        let entry = self.file.secrets.get(name).ok_or_else(|| SecretError::NotFound(name.to_string()))?;
        let plaintext = decrypt_entry(&self.keys, name, entry)?;
        let value = String::from_utf8(plaintext)
            .map_err(|_| SecretError::Corrupt(format!("secret {name:?} does not decrypt to text")))?;
        Ok(SecretValue::new(value))
    }

    /// Stores `value` under `name`, replacing an older value. Returns true
    /// when the name is new.
    /// The key ring is reread under the lock, so a value stored while
    /// another process rotates the master key uses the new key.
    pub fn put(&mut self, name: &str, value: &str, now: i64) -> Result<bool> {
        validate_name(name)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(SecretError::TooLarge { name: name.to_string(), size: value.len(), max: MAX_VALUE_BYTES });
        }
        let lock = lock(&self.path)?;
        self.keys.reload()?;
        let mut file = read_store_file(&self.path)?;
        let sealed = encrypt_entry(&self.keys, name, value.as_bytes())?;
        let created_at = file.secrets.get(name).map_or(now, |old| old.created_at);
        let created = file.secrets.insert(name.to_string(), Entry { created_at, rotated_at: now, ..sealed }).is_none();
        write_store_file(&self.path, &file)?;
        self.file = file;
        drop(lock);
        Ok(created)
    }

    /// Stores `value` under `name` unless the store already has that name.
    /// The check and the write happen under the store's lock, so processes
    /// starting together on one data directory agree on one value. Returns
    /// true when this call stored it. Otherwise the stored value stays, and
    /// this handle reads it.
    pub fn put_if_absent(&mut self, name: &str, value: &str, now: i64) -> Result<bool> {
        validate_name(name)?;
        let lock = lock(&self.path)?;
        self.keys.reload()?;
        let mut file = read_store_file(&self.path)?;
        if file.secrets.contains_key(name) {
            self.file = file;
            return Ok(false);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(SecretError::TooLarge { name: name.to_string(), size: value.len(), max: MAX_VALUE_BYTES });
        }
        let sealed = encrypt_entry(&self.keys, name, value.as_bytes())?;
        file.secrets.insert(name.to_string(), Entry { created_at: now, rotated_at: now, ..sealed });
        write_store_file(&self.path, &file)?;
        self.file = file;
        drop(lock);
        Ok(true)
    }

    pub fn delete(&mut self, name: &str) -> Result<()> {
        let ((), file) = modify(&self.path, |file| match file.secrets.remove(name) {
            Some(_) => Ok(()),
            None => Err(SecretError::NotFound(name.to_string())),
        })?;
        self.file = file;
        Ok(())
    }

    /// Re-encrypts every secret under a new master key.
    ///
    /// With a key file, the new key is generated into `FILE.next` first and
    /// moved over `FILE` last; the old key is kept as
    /// `FILE.previous-<id>`. Each secret is rewritten on its own, and the
    /// loader reads both keys while `FILE.next` exists, so a run stopped at
    /// any point leaves every secret readable and a rerun finishes the job.
    /// With a key from the environment or a command, `new_key` is required
    /// and the operator switches the source to it afterwards.
    ///
    /// `after_each` runs after each secret is rewritten; an error from it
    /// stops the rotation (tests use it to interrupt one).
    pub fn rotate_master_key(
        &mut self,
        new_key: Option<MasterKey>,
        mut after_each: impl FnMut(usize) -> Result<()>,
    ) -> Result<Rotation> {
        let lock = lock(&self.path)?;
        self.file = read_store_file(&self.path)?;
        let old_key_id = self.keys.current().id().to_string();

        if let Some(given) = &new_key
            && given.id() == old_key_id
        {
            return Err(SecretError::Rotation(format!(
                "the new key is the current master key {old_key_id}; generate another one"
            )));
        }
        match (self.keys.next(), new_key) {
            (Some(next), Some(given)) if next.id() != given.id() => {
                return Err(SecretError::Rotation(format!(
                    "a rotation to master key {} is unfinished; finish it first with that key",
                    next.id()
                )));
            }
            (Some(_), _) => {}
            (None, given) => {
                let next = match (given, self.keys.source().next_key_path()) {
                    (Some(key), _) => key,
                    (None, Some(_)) => MasterKey::generate()?,
                    (None, None) => {
                        return Err(SecretError::Rotation(format!(
                            "the master key comes from {}, which LearnTrac cannot change; \
                             create the new key in your key service and give it with --new-key-file",
                            self.keys.source().describe()
                        )));
                    }
                };
                if let Some(path) = self.keys.source().next_key_path() {
                    next.write_file(&path)?;
                }
                self.keys.set_next(next);
            }
        }
        // A next key given by the caller (--new-key-file) for a key file is
        // written to FILE.next too, so that the file can be moved in place
        // at the end and an interrupted run can be finished.
        if let (Some(next), Some(path)) = (self.keys.next(), self.keys.source().next_key_path())
            && !path.exists()
        {
            next.write_file(&path)?;
        }
        let new_key_id = self.keys.encrypting().id().to_string();

        let names: Vec<String> = self
            .file
            .secrets
            .iter()
            .filter(|(_, entry)| entry.key_id != new_key_id)
            .map(|(name, _)| name.clone())
            .collect();
        let mut reencrypted = 0;
        for name in names {
            let Some(entry) = self.file.secrets.get(&name).cloned() else { continue };
            let plaintext = decrypt_entry(&self.keys, &name, &entry)?;
            let sealed = encrypt_entry(&self.keys, &name, &plaintext)?;
            self.file
                .secrets
                .insert(name, Entry { created_at: entry.created_at, rotated_at: entry.rotated_at, ..sealed });
            write_store_file(&self.path, &self.file)?;
            reencrypted += 1;
            after_each(reencrypted)?;
        }

        let previous_key_file = match self.keys.source().clone() {
            KeySource::File(path) => {
                let previous = sibling(&path, &format!("previous-{old_key_id}"));
                if old_key_id != new_key_id {
                    self.keys.current().write_file(&previous)?;
                }
                let next_path = sibling(&path, "next");
                std::fs::rename(&next_path, &path)
                    .map_err(SecretError::io("cannot replace the master key file", &path))?;
                sync_parent(&path)?;
                (old_key_id != new_key_id).then_some(previous)
            }
            _ => None,
        };
        self.keys.promote_next();
        drop(lock);
        Ok(Rotation { old_key_id, new_key_id, reencrypted, previous_key_file })
    }
}

/// Rereads the file under the lock, applies `change` and writes the result
/// back, so that concurrent commands do not overwrite each other.
fn modify<T>(path: &Path, change: impl FnOnce(&mut StoreFile) -> Result<T>) -> Result<(T, StoreFile)> {
    let lock = lock(path)?;
    let mut file = read_store_file(path)?;
    let result = change(&mut file)?;
    write_store_file(path, &file)?;
    drop(lock);
    Ok((result, file))
}

fn lock(store_path: &Path) -> Result<std::fs::File> {
    let path = sibling(store_path, "lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options.open(&path).map_err(SecretError::io("cannot open the lock file", &path))?;
    lock.lock().map_err(SecretError::io("cannot lock", &path))?;
    Ok(lock)
}

fn decrypt_entry(keys: &KeyRing, name: &str, entry: &Entry) -> Result<Vec<u8>> {
    let key = keys.find(&entry.key_id, &format!("secret {name:?}"))?;
    let corrupt = || SecretError::Corrupt(format!("secret {name:?} in secrets.json is damaged or was altered"));
    let nonce = STANDARD.decode(&entry.nonce).map_err(|_| corrupt())?;
    let ciphertext = STANDARD.decode(&entry.ciphertext).map_err(|_| corrupt())?;
    open(&key.aead()?, &nonce, name.as_bytes(), &ciphertext).ok_or_else(corrupt)
}

fn encrypt_entry(keys: &KeyRing, name: &str, plaintext: &[u8]) -> Result<Entry> {
    let key = keys.encrypting();
    let (nonce, ciphertext) = seal(&key.aead()?, name.as_bytes(), plaintext)?;
    Ok(Entry {
        key_id: key.id().to_string(),
        nonce: STANDARD.encode(nonce),
        ciphertext: STANDARD.encode(ciphertext),
        created_at: 0,
        rotated_at: 0,
    })
}

fn read_store_file(path: &Path) -> Result<StoreFile> {
    if !path.exists() {
        return Ok(StoreFile { format: FORMAT, secrets: BTreeMap::new() });
    }
    let bytes = std::fs::read(path).map_err(SecretError::io("cannot read the secrets store", path))?;
    let file: StoreFile = serde_json::from_slice(&bytes)
        .map_err(|error| SecretError::Corrupt(format!("{} is not a valid secrets store: {error}", path.display())))?;
    if file.format != FORMAT {
        return Err(SecretError::Corrupt(format!(
            "{} has format {}, but this LearnTrac reads format {FORMAT}",
            path.display(),
            file.format
        )));
    }
    Ok(file)
}

fn write_store_file(path: &Path, file: &StoreFile) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(file).map_err(|_| SecretError::Crypto("cannot encode the store"))?;
    bytes.push(b'\n');
    write_private_atomic(path, &bytes)
}

/// Replaces `path` with `contents` through a temporary file, readable by
/// its owner only, synced before and after the rename so that a crash
/// leaves either the old or the new file.
pub(crate) fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;

    let temporary = sibling(path, "tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&temporary).map_err(SecretError::io("cannot write", &temporary))?;
    file.write_all(contents).map_err(SecretError::io("cannot write", &temporary))?;
    file.sync_all().map_err(SecretError::io("cannot sync", &temporary))?;
    std::fs::rename(&temporary, path).map_err(SecretError::io("cannot replace", path))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(SecretError::io("cannot sync the directory", parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master_key::SecretString;
    use crate::testing::temp_dir;

    fn open_store(dir: &Path) -> SecretStore {
        let keys = KeyRing::open(KeySource::File(dir.join("master.key")), true).expect("keys");
        SecretStore::open(dir, keys).expect("store")
    }

    #[test]
    fn put_get_list_delete() {
        let dir = temp_dir("crud");
        let mut store = open_store(&dir);
        assert!(store.put("db-password", "correct horse battery", 100).expect("put"));
        assert!(!store.put("db-password", "new horse battery", 200).expect("replace"));

        let reopened = open_store(&dir);
        assert_eq!(reopened.get("db-password").expect("get").expose(), "new horse battery");
        let info = &reopened.list()[0];
        assert_eq!((info.created_at, info.rotated_at), (100, 200));

        store.delete("db-password").expect("delete");
        assert!(matches!(store.get("db-password"), Err(SecretError::NotFound(_))));
        assert!(matches!(store.delete("db-password"), Err(SecretError::NotFound(_))));
    }

    #[test]
    fn put_if_absent_keeps_the_first_value() {
        let dir = temp_dir("absent");
        let mut first = open_store(&dir);
        // A second handle opened before either wrote, as a second process
        // starting at the same time would be.
        let mut second = open_store(&dir);
        assert!(first.put_if_absent("signing-key", "from the first", 1).expect("first"));
        assert!(!second.put_if_absent("signing-key", "from the second", 2).expect("second"));
        assert_eq!(second.get("signing-key").expect("get").expose(), "from the first");
        assert_eq!(open_store(&dir).get("signing-key").expect("get").expose(), "from the first");
    }

    #[test]
    fn file_holds_no_plaintext() {
        let dir = temp_dir("plain");
        let mut store = open_store(&dir);
        store.put("api-key", "sk-very-distinctive-value", 1).expect("put");
        let bytes = std::fs::read(dir.join(SecretStore::FILE_NAME)).expect("file");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("sk-very-distinctive-value"));
        assert!(text.contains("api-key"));
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = temp_dir("names");
        let mut store = open_store(&dir);
        for bad in ["", "Upper", "-lead", "has space", "slash/name", &"x".repeat(65)] {
            assert!(matches!(store.put(bad, "v", 1), Err(SecretError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn wrong_master_key_names_both_ids() {
        let dir = temp_dir("wrong");
        let mut store = open_store(&dir);
        store.put("smtp-password", "value", 1).expect("put");
        let other = MasterKey::generate().expect("key");
        let other_id = other.id().to_string();
        let keys = KeyRing::single(other, KeySource::Environment(SecretString(String::new())));
        let Err(error) = SecretStore::open(&dir, keys) else { unreachable!("a wrong key must not open the store") };
        let message = error.to_string();
        assert!(message.contains("LT-MASTER-KEY-WRONG"), "{message}");
        assert!(message.contains(&other_id), "{message}");
        assert!(message.contains(store.keys().current().id()), "{message}");
    }

    #[test]
    fn swapped_ciphertext_is_corrupt() {
        let dir = temp_dir("swap");
        let mut store = open_store(&dir);
        store.put("a", "first", 1).expect("put a");
        store.put("b", "second", 1).expect("put b");
        let path = dir.join(SecretStore::FILE_NAME);
        let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let b = file["secrets"]["b"].clone();
        file["secrets"]["a"] = b;
        std::fs::write(&path, serde_json::to_vec(&file).expect("encode")).expect("write");
        let store = open_store(&dir);
        assert!(matches!(store.get("a"), Err(SecretError::Corrupt(_))));
    }

    #[test]
    fn rotation_interrupted_and_rerun_keeps_every_secret() {
        let dir = temp_dir("rotate");
        let mut store = open_store(&dir);
        let values: Vec<(String, String)> =
            (0..5).map(|i| (format!("secret-{i}"), format!("value number {i}"))).collect();
        for (name, value) in &values {
            store.put(name, value, 10).expect("put");
        }
        let old_id = store.keys().current().id().to_string();

        let stopped = store.rotate_master_key(None, |done| {
            if done == 2 { Err(SecretError::Crypto("interrupted by the test")) } else { Ok(()) }
        });
        assert!(stopped.is_err());
        assert!(dir.join("master.key.next").exists());

        // A process started now reads both halves of the store.
        let midway = open_store(&dir);
        for (name, value) in &values {
            assert_eq!(midway.get(name).expect("readable midway").expose(), value);
        }

        let mut store = open_store(&dir);
        let rotation = store.rotate_master_key(None, |_| Ok(())).expect("rerun");
        assert_eq!(rotation.old_key_id, old_id);
        assert_eq!(rotation.reencrypted, 3);
        assert!(!dir.join("master.key.next").exists());
        assert!(dir.join(format!("master.key.previous-{old_id}")).exists());

        let after = open_store(&dir);
        assert_eq!(after.keys().current().id(), rotation.new_key_id);
        for (name, value) in &values {
            assert_eq!(after.get(name).expect("readable after").expose(), value);
        }
        assert!(after.list().iter().all(|info| info.key_id == rotation.new_key_id));
    }

    #[test]
    fn rotation_of_environment_key_needs_the_new_key() {
        let dir = temp_dir("rotate-env");
        let key = MasterKey::generate().expect("key");
        let source = KeySource::Environment(SecretString(key.to_base64()));
        let mut store = SecretStore::open(&dir, KeyRing::open(source.clone(), false).expect("keys")).expect("store");
        store.put("x", "value", 1).expect("put");
        assert!(store.rotate_master_key(None, |_| Ok(())).is_err());

        let new_key = MasterKey::generate().expect("new key");
        let rotation = store.rotate_master_key(Some(new_key.clone()), |_| Ok(())).expect("rotated");
        assert_eq!(rotation.new_key_id, new_key.id());
        let keys = KeyRing::single(new_key.clone(), KeySource::Environment(SecretString(new_key.to_base64())));
        assert_eq!(SecretStore::open(&dir, keys).expect("store").get("x").expect("get").expose(), "value");
    }
}
