//! Structured logs: JSON lines on standard output and, for `serve`, one
//! file per log group in the log directory, rotated by size and deleted
//! after the retention period. Every line is masked on the way out.
//!
//! An event's group comes from its target: `learntrac::access` goes to
//! `gateway` and `learntrac::audit` to `audit`. Other events go to the
//! group of the role whose request they happen in, or to `gateway` outside
//! a request.

pub mod filter;
pub mod mask;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The log groups, one file each.
pub const GROUPS: &[&str] = &["gateway", "trac", "api", "idp", "audit"];

/// The location, size limit and retention of the log files.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub dir: PathBuf,
    /// A file is rotated when it would grow past this size.
    pub max_file_bytes: u64,
    /// Rotated files older than this are deleted.
    pub retention: Duration,
    /// At most this many rotated files are kept per group, so that a flood
    /// of requests cannot fill the disk within the retention period.
    pub max_rotated_files: usize,
}

impl LogSettings {
    pub fn for_data_dir(data_dir: &Path) -> LogSettings {
        LogSettings {
            dir: data_dir.join("logs"),
            max_file_bytes: 10 * 1024 * 1024,
            retention: Duration::from_secs(30 * 24 * 3600),
            max_rotated_files: 20,
        }
    }
}

/// Builds the filter from `LEARNTRAC_LOG`, or info without sqlx's chatter.
fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("LEARNTRAC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
}

/// Logs JSON lines to standard error only, for the short-lived commands,
/// whose standard output carries their results.
pub fn init_stderr() {
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_writer(|| MaskedWriter::new(Sink::Stderr));
    let _ = tracing_subscriber::registry().with(env_filter()).with(layer).try_init();
}

/// Logs to standard output and to the group files under `settings.dir`.
/// Each event is formatted and masked once and written to both.
pub fn init_with_files(settings: &LogSettings) -> Result<()> {
    let files = GroupFiles::open(settings)?;
    let layer = tracing_subscriber::fmt::layer().json().with_current_span(false).with_writer(files);
    tracing_subscriber::registry().with(env_filter()).with(layer).try_init().context("cannot install the logger")?;
    Ok(())
}

/// Returns the group an event belongs to.
fn group_of(target: &str) -> &'static str {
    match target {
        "learntrac::access" => "gateway",
        "learntrac::audit" => "audit",
        "learntrac::alert" => "gateway",
        _ => crate::gateway::current_role().unwrap_or("gateway"),
    }
}

enum Sink {
    Stdout,
    Stderr,
    /// Standard output and a group's file.
    StdoutAndFile(Arc<RotatingFile>),
}

/// Collects one formatted event and writes it, masked, when dropped; the
/// formatter writes each event through a new writer.
pub struct MaskedWriter {
    sink: Sink,
    buffer: Vec<u8>,
}

impl MaskedWriter {
    fn new(sink: Sink) -> MaskedWriter {
        MaskedWriter { sink, buffer: Vec::with_capacity(512) }
    }
}

impl Write for MaskedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskedWriter {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buffer);
        // A panic here would leave the formatter's buffer behind and break
        // every later event on this thread, so a failure drops the line.
        let masked = std::panic::catch_unwind(|| mask::mask_line(&text).into_owned()).unwrap_or_else(|_| {
            "{\"level\":\"ERROR\",\"fields\":{\"message\":\"a log line was dropped because masking failed\"}}\n"
                .to_string()
        });
        // A log line that cannot be written has nowhere else to go.
        let _ = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(masked.as_bytes()),
            Sink::Stderr => std::io::stderr().lock().write_all(masked.as_bytes()),
            Sink::StdoutAndFile(file) => {
                let _ = std::io::stdout().lock().write_all(masked.as_bytes());
                file.append(masked.as_bytes())
            }
        };
    }
}

/// The open file of each group.
#[derive(Clone)]
struct GroupFiles {
    files: Arc<Vec<(&'static str, Arc<RotatingFile>)>>,
}

impl GroupFiles {
    fn open(settings: &LogSettings) -> Result<GroupFiles> {
        create_private_dir(&settings.dir)?;
        let mut files = Vec::new();
        for group in GROUPS {
            let file = RotatingFile::open(settings.dir.join(format!("{group}.log")), settings)?;
            file.delete_expired();
            files.push((*group, Arc::new(file)));
        }
        Ok(GroupFiles { files: Arc::new(files) })
    }
}

impl<'a> MakeWriter<'a> for GroupFiles {
    type Writer = MaskedWriter;

    fn make_writer(&'a self) -> MaskedWriter {
        self.writer_for_group("gateway")
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> MaskedWriter {
        self.writer_for_group(group_of(meta.target()))
    }
}

impl GroupFiles {
    fn writer_for_group(&self, group: &str) -> MaskedWriter {
        let file = self.files.iter().find(|(name, _)| *name == group).or_else(|| self.files.first());
        match file {
            Some((_, file)) => MaskedWriter::new(Sink::StdoutAndFile(file.clone())),
            None => MaskedWriter::new(Sink::Stdout),
        }
    }
}

/// Reads the real user id of this process from `/proc/self/status`.
fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().next()?.parse().ok())
}

/// Creates the log directory with mode 0700. An existing directory keeps
/// its mode, because it may be shared with other services. The files in it
/// are created with mode 0600, and a warning names a directory that others
/// may write to.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0);
            if mode & 0o022 != 0 {
                eprintln!(
                    "warning: other users may write to the log directory {} (mode {mode:04o}); \
                     give LearnTrac a directory of its own",
                    dir.display()
                );
            }
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict the permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// A log file that is renamed to `NAME.UNIX_NANOSECONDS` when it would grow
/// past the size limit; renamed files past the retention are deleted.
struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    retention: Duration,
    max_rotated: usize,
    state: Mutex<(File, u64)>,
}

/// Opens a log file for appending, creating it with mode 0600. In a
/// directory that other users may write to, a link or a file they own
/// could redirect or expose the lines, so both are rejected.
fn open_append(path: &Path) -> std::io::Result<File> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if metadata.file_type().is_symlink() {
            return Err(std::io::Error::other(format!("{} is a symbolic link; remove it", path.display())));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if let Some(uid) = current_uid()
                && metadata.uid() != uid
            {
                return Err(std::io::Error::other(format!(
                    "{} belongs to another user (uid {}); remove it",
                    path.display(),
                    metadata.uid()
                )));
            }
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl RotatingFile {
    fn open(path: PathBuf, settings: &LogSettings) -> Result<RotatingFile> {
        let file = open_append(&path).with_context(|| format!("cannot open the log file {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path,
            max_bytes: settings.max_file_bytes,
            retention: settings.retention,
            max_rotated: settings.max_rotated_files,
            state: Mutex::new((file, size)),
        })
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.1 > 0 && state.1 + line.len() as u64 > self.max_bytes {
            let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let rotated = PathBuf::from(format!("{}.{stamp}", self.path.display()));
            std::fs::rename(&self.path, &rotated)?;
            *state = (open_append(&self.path)?, 0);
            drop(state);
            self.delete_expired();
            state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.0.write_all(line)?;
        state.1 += line.len() as u64;
        Ok(())
    }

    /// Deletes this file's rotated copies that are older than the retention,
    /// and the oldest ones beyond the maximum count.
    fn delete_expired(&self) {
        let rotated = rotated_files(&self.path);
        let excess = rotated.len().saturating_sub(self.max_rotated);
        for oldest in &rotated[..excess] {
            let _ = std::fs::remove_file(oldest);
        }
        for rotated in &rotated[excess..] {
            let expired = std::fs::metadata(rotated)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > self.retention);
            if expired {
                let _ = std::fs::remove_file(rotated);
            }
        }
    }
}

/// Appends `line` to a group's current file, creating the directory and
/// the file if needed; for commands that write no other logs there.
pub fn append_to_group(settings: &LogSettings, group: &str, line: &str) -> Result<()> {
    create_private_dir(&settings.dir)?;
    let path = settings.dir.join(format!("{group}.log"));
    let mut file = open_append(&path).with_context(|| format!("cannot open the log file {}", path.display()))?;
    file.write_all(line.as_bytes()).with_context(|| format!("cannot write the log file {}", path.display()))
}

/// Lists the rotated copies of `path` (`path.N`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name().to_string_lossy().to_string();
            let stamp = file_name.strip_prefix(&prefix)?.parse::<u128>().ok()?;
            Some((stamp, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// Lists a group's files, oldest first: the rotated copies, then the current file.
pub fn group_files(dir: &Path, group: &str) -> Vec<PathBuf> {
    let current = dir.join(format!("{group}.log"));
    let mut files = rotated_files(&current);
    if current.exists() {
        files.push(current);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_expire() {
        let dir = std::env::temp_dir().join(format!("lt-logs-{}", crate::random_token(6)));
        let settings = LogSettings {
            dir: dir.clone(),
            max_file_bytes: 100,
            retention: Duration::from_secs(3600),
            max_rotated_files: 20,
        };
        create_private_dir(&dir).expect("dir");
        let file = RotatingFile::open(dir.join("api.log"), &settings).expect("open");
        for i in 0..10 {
            file.append(format!("{{\"line\":{i},\"padding\":\"....................\"}}\n").as_bytes()).expect("append");
        }
        let files = group_files(&dir, "api");
        assert!(files.len() >= 4, "{files:?}");
        let all: String = files.iter().map(|f| std::fs::read_to_string(f).expect("read")).collect();
        assert_eq!(all.lines().count(), 10, "no line is lost in rotation");
        assert!(all.lines().next().expect("first").contains("\"line\":0"), "oldest first");

        let expiring = RotatingFile {
            retention: Duration::ZERO,
            ..RotatingFile::open(dir.join("api.log"), &settings).expect("open")
        };
        std::thread::sleep(Duration::from_millis(20));
        expiring.delete_expired();
        assert_eq!(group_files(&dir, "api").len(), 1, "only the current file is left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
