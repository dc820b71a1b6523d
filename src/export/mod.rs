//! Export modes: the same resource graph and task list that pgform executes, written as
//! Terraform and Ansible for review or for teams that keep those tools. Renderers are
//! pure (spec and state in, files out); only [`write_files`] touches the disk.

pub mod ansible;
pub mod terraform;
mod yaml;

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

/// Writes each `(dir, files)` set: every file under its `dir` (made if missing),
/// replacing files of the same name and leaving other files alone (a Terraform
/// directory keeps its state). All or nothing as far as the disk allows: every file is
/// first written into a staging folder beside its `dir`, and only when all are written
/// are they renamed into place. A file whose text starts with `#!` is made executable.
pub fn write_sets(sets: &[(&Path, &Files)]) -> Result<(), ExportError> {
    let mut staged = Vec::new();
    let result = stage_all(sets, &mut staged).and_then(|()| {
        for (from, to) in staged.iter().flat_map(|s| s.moves.iter()) {
            std::fs::rename(from, to).map_err(|source| ExportError::Write {
                path: to.clone(),
                source,
            })?;
        }
        Ok(())
    });
    for s in &staged {
        let _ = std::fs::remove_dir_all(&s.root);
    }
    result
}

/// Writes `files` under `dir`; see [`write_sets`].
pub fn write_files(dir: &Path, files: &Files) -> Result<(), ExportError> {
    write_sets(&[(dir, files)])
}

/// A staging folder and the renames that put its files in place.
struct Staged {
    root: PathBuf,
    moves: Vec<(PathBuf, PathBuf)>,
}

fn stage_all(sets: &[(&Path, &Files)], staged: &mut Vec<Staged>) -> Result<(), ExportError> {
    for (dir, files) in sets {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ExportError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("export");
        let root = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.pgform-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir(&root).map_err(err(&root))?;
        let mut set = Staged {
            root: root.clone(),
            moves: Vec::new(),
        };
        let result = (|| {
            for (rel, text) in files.iter() {
                let tmp = root.join(rel);
                let dest = dir.join(rel);
                for d in [tmp.parent(), dest.parent()].into_iter().flatten() {
                    std::fs::create_dir_all(d).map_err(err(d))?;
                }
                std::fs::write(&tmp, text).map_err(err(&tmp))?;
                if text.starts_with("#!") {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                        .map_err(err(&tmp))?;
                }
                set.moves.push((tmp, dest));
            }
            Ok(())
        })();
        staged.push(set);
        result?;
    }
    Ok(())
}
