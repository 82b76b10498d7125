//! The master key: 32 random bytes, written as base64 text, from a file
//! readable by its owner only, an environment variable or a command.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::{Result, SecretError, random_bytes};

const KEY_BYTES: usize = 32;

/// An AES-256 key with a short public id derived from it. The id names the
/// key in stored records, so a wrong key is reported as such instead of as
/// corrupt data.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_BYTES],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey> {
        let mut bytes = [0u8; KEY_BYTES];
        random_bytes(&mut bytes)?;
        Ok(MasterKey::from_bytes(bytes))
    }

    fn from_bytes(bytes: [u8; KEY_BYTES]) -> MasterKey {
        let mut input = b"learntrac master key id\0".to_vec();
        input.extend_from_slice(&bytes);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        let id = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        MasterKey { id, bytes }
    }

    /// Parses the base64 text of a key; `source_name` names where it came
    /// from in the error.
    pub fn from_base64(text: &str, source_name: &str) -> Result<MasterKey> {
        let invalid =
            |reason: &str| SecretError::KeyInvalid { source_name: source_name.to_string(), reason: reason.to_string() };
        if text.trim().is_empty() {
            return Err(invalid("it is empty"));
        }
        let decoded = STANDARD.decode(text.trim()).map_err(|_| invalid("it is not base64 text"))?;
        let bytes: [u8; KEY_BYTES] =
            decoded.try_into().map_err(|_| invalid("it must be the base64 text of exactly 32 bytes"))?;
        Ok(MasterKey::from_bytes(bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes)
    }

    /// Returns the public id, 16 hexadecimal digits.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn aead(&self) -> Result<LessSafeKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, &self.bytes).map_err(|_| SecretError::Crypto("invalid AES key"))?;
        Ok(LessSafeKey::new(unbound))
    }

    /// Writes the key to a file readable by its owner only, replacing it.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        crate::store::write_private_atomic(path, format!("{}\n", self.to_base64()).as_bytes())
    }

    /// Writes the key to `path` only if no file is there, and returns the
    /// key that `path` contains afterwards: this one, or the one another
    /// process wrote first. The key goes to a uniquely named file that is
    /// then hard-linked to `path`, which fails rather than replaces.
    fn create_file(self, path: &Path) -> Result<(MasterKey, bool)> {
        let mut suffix = [0u8; 8];
        random_bytes(&mut suffix)?;
        let unique: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let temporary = sibling(path, &format!("new-{unique}"));
        crate::store::write_private_atomic(&temporary, format!("{}\n", self.to_base64()).as_bytes())?;
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => Ok((self, true)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok((MasterKey::read_file(path)?, false)),
            Err(error) => Err(SecretError::io("cannot create the master key file", path)(error)),
        }
    }

    /// Reads a key file, rejecting one that group or others may read.
    pub fn read_file(path: &Path) -> Result<MasterKey> {
        check_owner_only(path)?;
        let bytes = std::fs::read(path).map_err(SecretError::io("cannot read the master key file", path))?;
        let text = String::from_utf8(bytes).map_err(|_| SecretError::KeyInvalid {
            source_name: path.display().to_string(),
            reason: "it is not base64 text".into(),
        })?;
        MasterKey::from_base64(&text, &path.display().to_string())
    }
}

/// Rejects a file whose mode lets group or others read or write it.
pub fn check_owner_only(path: &Path) -> Result<()> {
    let metadata = std::fs::metadata(path).map_err(SecretError::io("cannot read the master key file", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyMode { path: path.to_path_buf(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    Ok(())
}

/// The source of the master key.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A file holding the base64 key, mode 0600; created on first use
    /// where the caller allows it.
    File(PathBuf),
    /// The base64 key itself, from `LEARNTRAC_MASTER_KEY`.
    Environment(SecretString),
    /// A program and its arguments (no shell) whose standard output is
    /// the base64 key, for a key service.
    Command(Vec<String>),
}

/// A string that `Debug` never shows.
#[derive(Clone)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl KeySource {
    /// Names the source in messages, without the key.
    pub fn describe(&self) -> String {
        match self {
            KeySource::File(path) => format!("master key file {}", path.display()),
            KeySource::Environment(_) => "LEARNTRAC_MASTER_KEY".to_string(),
            KeySource::Command(argv) => format!("master_key_command {}", argv.join(" ")),
        }
    }

    /// Returns the file that contains the next key while a rotation is
    /// under way. Only a file source has one.
    pub fn next_key_path(&self) -> Option<PathBuf> {
        match self {
            KeySource::File(path) => Some(sibling(path, "next")),
            _ => None,
        }
    }

    /// Loads the key. A missing file is created with a new key when
    /// `create` is true, and reported otherwise.
    pub fn load(&self, create: bool) -> Result<MasterKey> {
        match self {
            KeySource::File(path) => {
                if !path.exists() {
                    if !create {
                        return Err(SecretError::KeyMissing {
                            path: path.clone(),
                            hint: "copy the master key there, or set LEARNTRAC_MASTER_KEY or master_key_command",
                        });
                    }
                    let (key, created) = MasterKey::generate()?.create_file(path)?;
                    if created {
                        tracing::warn!(
                            path = %path.display(),
                            key_id = key.id(),
                            "created a new master key; keep a copy apart from the data directory and its backups"
                        );
                    }
                    return Ok(key);
                }
                MasterKey::read_file(path)
            }
            KeySource::Environment(value) => MasterKey::from_base64(&value.0, "LEARNTRAC_MASTER_KEY"),
            KeySource::Command(argv) => run_key_command(argv),
        }
    }
}

/// `PATH.SUFFIX` beside `PATH`.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

// NOTE: the command runs without a timeout, so a key service that hangs
// holds up start-up until the operator stops it.
fn run_key_command(argv: &[String]) -> Result<MasterKey> {
    // Only the program is named in messages: its arguments may hold a token.
    let failed =
        |reason: String| SecretError::KeyCommand { command: argv.first().cloned().unwrap_or_default(), reason };
    let Some((program, args)) = argv.split_first() else {
        return Err(failed("the command is empty".into()));
    };
    let output = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| failed(format!("cannot run it: {error}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = match stderr.lines().next().filter(|line| !line.trim().is_empty()) {
            Some(first_line) => format!("it exited with {}: {first_line}", output.status),
            None => format!("it exited with {} and printed no error", output.status),
        };
        return Err(failed(reason));
    }
    let text = String::from_utf8(output.stdout).map_err(|_| failed("its output is not text".into()))?;
    MasterKey::from_base64(&text, "master_key_command")
}

/// The keys that can decrypt stored records: the current key and, while a
/// rotation is under way, the next one. New records use the next key as
/// soon as it exists, so a rerun rotation never has to go back.
#[derive(Debug)]
pub struct KeyRing {
    current: MasterKey,
    next: Option<MasterKey>,
    source: KeySource,
}

impl KeyRing {
    /// Loads the current key from `source` (creating a missing key file
    /// when `create` is true) and the next key of an unfinished rotation.
    pub fn open(source: KeySource, create: bool) -> Result<KeyRing> {
        let current = source.load(create)?;
        let next = match source.next_key_path() {
            Some(path) if path.exists() => Some(MasterKey::read_file(&path)?),
            _ => None,
        };
        Ok(KeyRing { current, next, source })
    }

    /// Builds a ring of one key, for keys that come from elsewhere, such as
    /// tests.
    pub fn single(key: MasterKey, source: KeySource) -> KeyRing {
        KeyRing { current: key, next: None, source }
    }

    /// Adds the key a rotation moves to, so that records already under it
    /// can be read before the rotation is finished.
    pub fn with_next(mut self, next: MasterKey) -> KeyRing {
        if next.id() != self.current.id() {
            self.next = Some(next);
        }
        self
    }

    /// Rereads a key file source, whose keys another process may have
    /// rotated since this ring was loaded. Other sources are left as they are.
    pub fn reload(&mut self) -> Result<()> {
        if let KeySource::File(_) = &self.source {
            let fresh = KeyRing::open(self.source.clone(), false)?;
            self.current = fresh.current;
            self.next = fresh.next;
        }
        Ok(())
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    pub fn next(&self) -> Option<&MasterKey> {
        self.next.as_ref()
    }

    pub(crate) fn set_next(&mut self, key: MasterKey) {
        self.next = Some(key);
    }

    /// Makes the next key the current one, once nothing needs the old key.
    pub(crate) fn promote_next(&mut self) {
        if let Some(next) = self.next.take() {
            self.current = next;
        }
    }

    /// Returns the key that new records are encrypted under.
    pub fn encrypting(&self) -> &MasterKey {
        self.next.as_ref().unwrap_or(&self.current)
    }

    /// Returns the key with id `id`; `what` names the record in the error.
    pub fn find(&self, id: &str, what: &str) -> Result<&MasterKey> {
        [Some(&self.current), self.next.as_ref()].into_iter().flatten().find(|key| key.id() == id).ok_or_else(|| {
            SecretError::WrongKey {
                what: what.to_string(),
                wanted: id.to_string(),
                have: self.current.id().to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn file_key_is_created_once() {
        let path = temp_dir("create").join("master.key");
        let source = KeySource::File(path.clone());
        let first = source.load(true).expect("created");
        let second = source.load(false).expect("loaded");
        assert_eq!(first.id(), second.id());
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let path = temp_dir("race").join("master.key");
        let ids: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| KeySource::File(path.clone()).load(true).expect("key").id().to_string()))
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("thread")).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(MasterKey::read_file(&path).expect("file").id(), ids[0]);
    }

    #[test]
    fn missing_file_is_reported() {
        let path = temp_dir("missing").join("master.key");
        let error = KeySource::File(path).load(false).expect_err("missing");
        assert!(error.to_string().contains("LT-MASTER-KEY-MISSING"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_file_is_rejected() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_dir("mode").join("master.key");
        MasterKey::generate().expect("key").write_file(&path).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = KeySource::File(path).load(false).expect_err("mode 0644");
        let message = error.to_string();
        assert!(message.contains("0644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }

    #[test]
    fn environment_key_must_be_32_bytes() {
        let short = KeySource::Environment(SecretString(STANDARD.encode([7u8; 16])));
        let error = short.load(false).expect_err("16 bytes");
        assert!(error.to_string().contains("32 bytes"), "{error}");
        let empty = KeySource::Environment(SecretString(String::new())).load(false).expect_err("empty");
        assert!(empty.to_string().contains("it is empty"), "{empty}");
        let good = KeySource::Environment(SecretString(STANDARD.encode([7u8; 32])));
        assert_eq!(good.load(false).expect("32 bytes").id().len(), 16);
    }

    #[test]
    fn command_output_is_the_key() {
        let encoded = STANDARD.encode([9u8; 32]);
        let source = KeySource::Command(vec!["echo".into(), encoded.clone()]);
        let from_command = source.load(false).expect("echo");
        let expected = MasterKey::from_base64(&encoded, "test").expect("key");
        assert_eq!(from_command.id(), expected.id());
    }

    #[test]
    fn failing_command_is_reported() {
        let error = KeySource::Command(vec!["false".into()]).load(false).expect_err("false exits 1");
        assert!(error.to_string().contains("LT-MASTER-KEY-COMMAND"), "{error}");
    }

    #[test]
    fn debug_hides_the_key() {
        let key = MasterKey::generate().expect("key");
        let shown = format!("{key:?} {:?}", KeySource::Environment(SecretString(key.to_base64())));
        assert!(!shown.contains(&key.to_base64()), "{shown}");
    }
}
