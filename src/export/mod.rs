//! Export modes: the same resource graph and task list that pgform executes, written as
//! Terraform and Ansible for review or for teams that keep those tools. Renderers are
//! pure (spec and state in, files out); only [`write_files`] touches the disk.

pub mod ansible;
pub mod terraform;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files to write, by path relative to the export directory.
pub type Files = BTreeMap<PathBuf, String>;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Input(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `files` under `dir` (made if missing), replacing files of the same name.
pub fn write_files(dir: &Path, files: &Files) -> Result<(), ExportError> {
    for (rel, text) in files {
        let path = dir.join(rel);
        let write = |p: &Path| -> std::io::Result<()> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, text)
        };
        write(&path).map_err(|source| ExportError::Write { path, source })?;
    }
    Ok(())
}
