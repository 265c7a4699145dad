//! Atomic replacement of a checkpoint directory.
//!
//! A checkpoint is written into `.NAME.tmp` beside its final place, every file and the directory are fsynced, then
//! the old `NAME` is renamed to `.NAME.old`, the new one renamed to `NAME`, and the old one removed. A directory
//! cannot be renamed over a non-empty one, hence the two renames; a kill between them leaves `.NAME.old` (the
//! previous complete checkpoint), which [`resolve`] falls back to. At no moment is a half-written directory under
//! either name that [`resolve`] returns.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError, io_err};

fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| TrainError::Checkpoint {
            path: path.to_path_buf(),
            msg: "checkpoint path has no usable final component".into(),
        })?;
    Ok(path.with_file_name(format!(".{name}.{suffix}")))
}

fn fsync_path(path: &Path) -> Result<()> {
    // Directories open read-only on Unix and can be fsynced that way; elsewhere this is best effort.
    match File::open(path) {
        Ok(f) => match f.sync_all() {
            Ok(()) => Ok(()),
            Err(_) if path.is_dir() => Ok(()),
            Err(e) => Err(io_err(path)(e)),
        },
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn fsync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let p = entry.path();
        if entry.file_type().map_err(io_err(&p))?.is_dir() {
            fsync_tree(&p)?;
        } else {
            fsync_path(&p)?;
        }
    }
    fsync_path(dir)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).map_err(io_err(path))?;
    }
    Ok(())
}

/// Write a directory at `dest` atomically: `fill` writes the contents into the temporary directory it is given.
pub fn write_dir_atomic<F>(dest: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = sibling(dest, "tmp")?;
    let old = sibling(dest, "old")?;
    remove_if_exists(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    fill(&tmp)?;
    fsync_tree(&tmp)?;
    if dest.exists() {
        // A stale `.old` from a previous kill is older than `dest`: drop it first.
        remove_if_exists(&old)?;
        fs::rename(dest, &old).map_err(io_err(dest))?;
    }
    fs::rename(&tmp, dest).map_err(io_err(&tmp))?;
    fsync_path(&parent)?;
    remove_if_exists(&old)
}

/// The complete checkpoint for `path`: `path` itself, or the `.NAME.old` a kill between the two renames left.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let old = sibling(path, "old")?;
    if old.is_dir() {
        return Ok(old);
    }
    Err(TrainError::Checkpoint {
        path: path.to_path_buf(),
        msg: "no such checkpoint directory".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_existing_directory_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("checkpoint-last");
        write_dir_atomic(&dest, |d| fs::write(d.join("a.txt"), "1").map_err(io_err(d))).unwrap();
        write_dir_atomic(&dest, |d| {
            fs::create_dir(d.join("sub")).map_err(io_err(d))?;
            fs::write(d.join("sub/b.txt"), "2").map_err(io_err(d))
        })
        .unwrap();
        assert!(!dest.join("a.txt").exists());
        assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "2");
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["checkpoint-last".to_string()]);
    }

    #[test]
    fn failed_fill_keeps_previous_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("best");
        write_dir_atomic(&dest, |d| fs::write(d.join("a.txt"), "1").map_err(io_err(d))).unwrap();
        let err = write_dir_atomic(&dest, |d| {
            fs::write(d.join("a.txt"), "partial").map_err(io_err(d))?;
            Err(TrainError::Config("simulated failure".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            fs::read_to_string(resolve(&dest).unwrap().join("a.txt")).unwrap(),
            "1"
        );
    }

    #[test]
    fn resolve_falls_back_to_old_after_a_kill_between_renames() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("checkpoint-last");
        write_dir_atomic(&dest, |d| fs::write(d.join("a.txt"), "1").map_err(io_err(d))).unwrap();
        // Simulate the kill: dest moved aside, new one not yet in place.
        fs::rename(&dest, sibling(&dest, "old").unwrap()).unwrap();
        let got = resolve(&dest).unwrap();
        assert_eq!(fs::read_to_string(got.join("a.txt")).unwrap(), "1");
        assert!(resolve(&root.path().join("nothing")).is_err());
    }
}
