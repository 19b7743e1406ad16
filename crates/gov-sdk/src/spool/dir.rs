//! The spool's folder on disk: private to the user, synced, and its quarantine.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::Error;

/// Environment variable naming the spool folder (default: a per-user state folder).
pub const ENV_SPOOL_DIR: &str = "GOVERNANCE_SPOOL_DIR";
/// Environment variable for fault tests only: the process aborts at the named point of the
/// spool (see docs/configuration.md). Never set it in production.
pub(crate) const ENV_SPOOL_FAULT: &str = "GOVERNANCE_SPOOL_FAULT";

/// Aborts the process at `point` when [`ENV_SPOOL_FAULT`] names it (`point`, or `point:N`
/// for its N-th passage): how the fault tests kill a process at an exact step of writing or
/// adopting a spool.
pub(crate) fn fault(point: &str) {
    static FAULT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static PASSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let armed = FAULT.get_or_init(|| {
        let v = std::env::var(ENV_SPOOL_FAULT).ok()?;
        Some(match v.split_once(':') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    if let Some((at, nth)) = armed
        && at == point
        && PASSED.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == *nth
    {
        eprintln!("governance: {ENV_SPOOL_FAULT}={at}:{nth}: aborting here");
        std::process::abort();
    }
}

/// The default spool folder: `governance/spool` in the user's state folder
/// (`$XDG_STATE_HOME`, else `~/.local/state`, on Linux; the local application-data folder
/// elsewhere), never a folder other users can write.
pub(crate) fn default_root() -> Option<PathBuf> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("governance").join("spool"))
}

fn unsafe_dir(dir: &Path, why: String) -> Error {
    Error::Config(format!(
        "the spool folder {} cannot be trusted: {why}. Spooled records are replayed into the audit chain, so only you may write there: choose a folder of your own with {ENV_SPOOL_DIR} or spool_dir(..)",
        dir.display()
    ))
}

/// Checks that `dir` is a folder only this user can write: owned by the user, not writable
/// by group or others, and reached through folders that no other user can swap (owned by the
/// user or root, and writable by others only with the sticky bit, as `/tmp`).
pub(crate) fn check_private(dir: &Path) -> Result<(), Error> {
    let meta =
        std::fs::metadata(dir).map_err(|e| unsafe_dir(dir, format!("it cannot be read ({e})")))?;
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, "it is not a folder".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(unsafe_dir(
                dir,
                format!(
                    "it belongs to user id {}, not to this user ({me})",
                    meta.uid()
                ),
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(unsafe_dir(
                dir,
                format!(
                    "group or others may write it (mode {:o}); run `chmod 700 {}`",
                    mode & 0o777,
                    dir.display()
                ),
            ));
        }
        let real = std::fs::canonicalize(dir)
            .map_err(|e| unsafe_dir(dir, format!("its path cannot be resolved ({e})")))?;
        for up in real.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(up) else {
                continue;
            };
            let sticky = m.mode() & 0o1000 != 0;
            if m.uid() != me && m.uid() != 0 {
                return Err(unsafe_dir(
                    dir,
                    format!(
                        "the folder {} above it belongs to another user (id {}), who could replace it",
                        up.display(),
                        m.uid()
                    ),
                ));
            }
            if m.mode() & 0o022 != 0 && !sticky {
                return Err(unsafe_dir(
                    dir,
                    format!(
                        "the folder {} above it may be written by group or others without the sticky bit (mode {:o}), so they could replace it",
                        up.display(),
                        m.mode() & 0o7777
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) private to the user, syncs the new entries, and checks
/// the result with [`check_private`].
pub(crate) fn ensure_private(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        // The first missing ancestor: its parent's entry must be synced too.
        let mut missing = Vec::new();
        let mut up = Some(dir);
        while let Some(d) = up.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d.to_path_buf());
            up = d.parent();
        }
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(dir).map_err(|e| {
            Error::Config(format!(
                "the spool folder {} cannot be created ({e}); choose another with {ENV_SPOOL_DIR} or spool_dir(..)",
                dir.display()
            ))
        })?;
        for d in missing.iter().rev() {
            if let Some(parent) = d.parent() {
                let _ = sync_dir(parent);
            }
        }
    }
    check_private(dir)
}

/// Syncs a folder, so entries created or renamed in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates a new file (never an existing one or through a symlink), readable and writable
/// by the user only.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true).append(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

/// Where refused spool content is kept aside (never replayed, never deleted).
pub(crate) fn quarantine_dir(dir: &Path) -> PathBuf {
    dir.join("quarantine")
}

/// One refused line, as kept in a quarantine file.
#[derive(serde::Serialize)]
struct Kept<'a> {
    from: &'a str,
    line: usize,
    reason: &'a str,
    /// The line as text (invalid UTF-8 replaced)…
    text: String,
    /// …and as it was, byte for byte.
    hex: String,
}

/// Appends refused lines of `from` to a new quarantine file in `dir`'s quarantine folder,
/// synced; returns its path.
pub(crate) fn quarantine_lines(
    dir: &Path,
    from: &str,
    lines: &[super::format::Rejected],
) -> std::io::Result<PathBuf> {
    let q = quarantine_dir(dir);
    std::fs::create_dir_all(&q)?;
    let path = q.join(format!("{}-{}.rejected", from, uuid::Uuid::now_v7()));
    let mut f = create_private_file(&path)?;
    for r in lines {
        let kept = Kept {
            from,
            line: r.line,
            reason: &r.reason,
            text: String::from_utf8_lossy(&r.bytes).into_owned(),
            hex: hex::encode(&r.bytes),
        };
        serde_json::to_writer(&mut f, &kept)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    sync_dir(&q)?;
    Ok(path)
}

/// Moves a whole refused file into the quarantine folder (a rename: nothing is copied, so
/// nothing can be lost on the way); returns its new path.
pub(crate) fn quarantine_file(dir: &Path, file: &Path) -> std::io::Result<PathBuf> {
    let q = quarantine_dir(dir);
    std::fs::create_dir_all(&q)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = q.join(format!("{name}.{}.rejected", uuid::Uuid::now_v7()));
    std::fs::rename(file, &to)?;
    sync_dir(&q)?;
    sync_dir(dir)?;
    Ok(to)
}
