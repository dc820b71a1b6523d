//! The state file on disk: a versioned JSON document sorted by address (equal states
//! serialise equally), written atomically (temp file, fsync, rename) with a backup of the
//! state as it was before the run, and a lock file that a second writer cannot take.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ResourceState, State};
use crate::graph::Address;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a pgform state file: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "the state {} is locked by {holder}\n  another pgform is using it; wait for it to finish. If that process is gone, run `pgform force-unlock`",
        path.display()
    )]
    Locked { path: PathBuf, holder: String },
    #[error("{} belongs to cluster `{found}`, but the spec is for `{expected}`", path.display())]
    WrongCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds the lock; written into the lock file so a refused run can name them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub operation: String,
    pub host: String,
    pub since: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`pgform {}` (pid {} on {}, since {})",
            self.operation, self.pid, self.host, self.since
        )
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format_version: u32,
    pgform_version: String,
    lineage: String,
    serial: u64,
    cluster: String,
    resources: Vec<Record>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    address: Address,
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    resource: ResourceState,
}

/// Reads a state file; `None` when there is none yet.
pub fn read(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let corrupt = |why: String| StateError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let disk: OnDisk = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if disk.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this pgform reads version {FORMAT_VERSION})",
            disk.format_version
        )));
    }
    let resources = disk
        .resources
        .into_iter()
        .map(|r| (r.address, r.resource))
        .collect();
    Ok(Some(State {
        lineage: disk.lineage,
        serial: disk.serial,
        cluster: disk.cluster,
        resources,
    }))
}

/// The state document as it is written to disk.
pub fn to_json(state: &State) -> String {
    let disk = OnDisk {
        format_version: FORMAT_VERSION,
        pgform_version: env!("CARGO_PKG_VERSION").to_string(),
        lineage: state.lineage.clone(),
        serial: state.serial,
        cluster: state.cluster.clone(),
        resources: state
            .resources
            .iter()
            .map(|(a, r)| Record {
                address: a.clone(),
                kind: a.kind.type_name().to_string(),
                resource: r.clone(),
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&disk).expect("state serialises");
    text.push('\n');
    text
}

/// A state file held under an exclusive lock for the life of the value.
pub struct StateStore {
    path: PathBuf,
    lock: File,
    backed_up: bool,
}

impl StateStore {
    /// Takes the lock beside `path` for `operation`, or says who holds it.
    pub fn lock(path: &Path, operation: &str) -> Result<StateStore, StateError> {
        let lock_path = lock_path(path);
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                let holder = serde_json::from_str::<LockInfo>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "another process".into());
                return Err(StateError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let info = LockInfo {
            pid: std::process::id(),
            operation: operation.to_string(),
            host: hostname(),
            since: now_rfc3339(),
        };
        lock.set_len(0).map_err(io(&lock_path))?;
        lock.seek(SeekFrom::Start(0)).map_err(io(&lock_path))?;
        lock.write_all(serde_json::to_string(&info).expect("lock info").as_bytes())
            .map_err(io(&lock_path))?;
        Ok(StateStore {
            path: path.to_path_buf(),
            lock,
            backed_up: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The locked state, or a new empty one for `cluster`.
    pub fn load_or_new(&self, cluster: &str) -> Result<State, StateError> {
        match read(&self.path)? {
            Some(s) if s.cluster != cluster => Err(StateError::WrongCluster {
                path: self.path.clone(),
                found: s.cluster,
                expected: cluster.to_string(),
            }),
            Some(s) => Ok(s),
            None => Ok(State::new(cluster)),
        }
    }

    /// Writes `state` with its serial increased. The first write of a run first keeps
    /// the previous file as `<state>.backup`.
    pub fn save(&mut self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        if !self.backed_up {
            if self.path.exists() {
                fs::copy(&self.path, backup_path(&self.path)).map_err(io(&self.path))?;
            }
            self.backed_up = true;
        }
        write_atomic(&self.path, to_json(state).as_bytes())
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        // An empty lock file tells `force-unlock` and readers nobody holds it.
        let _ = self.lock.set_len(0);
        let _ = self.lock.unlock();
    }
}

/// Removes the lock file; a later run makes a fresh one. Returns who held it, if known.
pub fn force_unlock(path: &Path) -> Result<Option<String>, StateError> {
    let lock_path = lock_path(path);
    let holder = fs::read_to_string(&lock_path)
        .ok()
        .and_then(|t| serde_json::from_str::<LockInfo>(&t).ok())
        .map(|h| h.to_string());
    match fs::remove_file(&lock_path) {
        Ok(()) => Ok(holder),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&lock_path)(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub fn lock_path(path: &Path) -> PathBuf {
    sibling(path, "lock")
}

pub fn backup_path(path: &Path) -> PathBuf {
    sibling(path, "backup")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// This machine's name, for lock holders and run owners.
pub fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".into())
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Days to civil date (Howard Hinnant's algorithm): avoids a time crate for one stamp.
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Value;

    fn sample() -> State {
        let mut s = State::new("demo");
        for (addr, id) in [
            ("aws_vpc.main", "vpc-1"),
            ("aws_instance.replica[0]", "i-2"),
        ] {
            let mut r = ResourceState {
                id: Some(id.into()),
                attrs: Default::default(),
                outputs: Default::default(),
                depends_on: Default::default(),
                client_token: None,
            };
            r.attrs
                .insert("cidr_block".into(), Value::str("10.0.0.0/16"));
            s.resources.insert(addr.parse().unwrap(), r);
        }
        s
    }

    #[test]
    fn round_trip_is_stable_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.pgstate");
        let mut store = StateStore::lock(&path, "apply").unwrap();
        let mut s = sample();
        store.save(&mut s).unwrap();
        assert_eq!(s.serial, 1);
        let back = read(&path).unwrap().unwrap();
        assert_eq!(back, s);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, to_json(&back));
        assert!(text.find("aws_vpc.main").unwrap() < text.find("aws_instance.replica[0]").unwrap());
    }

    #[test]
    fn second_lock_is_refused_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let _held = StateStore::lock(&path, "apply").unwrap();
        let err = StateStore::lock(&path, "destroy").err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("locked by `pgform apply`"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(_held);
        StateStore::lock(&path, "destroy").unwrap();
    }

    #[test]
    fn backup_keeps_the_state_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut s = sample();
        StateStore::lock(&path, "apply")
            .unwrap()
            .save(&mut s)
            .unwrap();
        let before = fs::read_to_string(&path).unwrap();
        let mut store = StateStore::lock(&path, "apply").unwrap();
        s.resources.clear();
        store.save(&mut s).unwrap();
        store.save(&mut s).unwrap();
        assert_eq!(fs::read_to_string(backup_path(&path)).unwrap(), before);
        assert_eq!(read(&path).unwrap().unwrap().serial, 3);
    }

    #[test]
    fn corrupt_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, "{ not json").unwrap();
        assert!(matches!(read(&path), Err(StateError::Corrupt { .. })));
        let mut s = sample();
        fs::remove_file(&path).unwrap();
        let mut store = StateStore::lock(&path, "apply").unwrap();
        store.save(&mut s).unwrap();
        assert!(matches!(
            store.load_or_new("other"),
            Err(StateError::WrongCluster { .. })
        ));
    }
}
