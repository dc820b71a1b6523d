//! The state document (a versioned JSON document sorted by address: equal states
//! serialise equally) and the file backend: written atomically (temp file, fsync, rename)
//! with a backup of the state as it was before the run, and a lock file that a second
//! writer cannot take.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Backend, LockInfo, LockedState, ResourceState, State, StateError, StateStore};
use crate::graph::Address;

const FORMAT_VERSION: u32 = 1;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
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
    match fs::read_to_string(path) {
        Ok(text) => from_json(&text, &format!("the state file {}", path.display())).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Parses a state document; `place` names where it came from in errors.
pub fn from_json(text: &str, place: &str) -> Result<State, StateError> {
    let corrupt = |why: String| StateError::Corrupt {
        place: place.to_string(),
        why,
    };
    let disk: OnDisk = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
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
    Ok(State {
        lineage: disk.lineage,
        serial: disk.serial,
        cluster: disk.cluster,
        resources,
    })
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

/// The state in a file, its lock in a file beside it.
#[derive(Debug, Clone)]
pub struct FileStates {
    path: PathBuf,
}

impl FileStates {
    pub fn new(path: &Path) -> FileStates {
        FileStates {
            path: path.to_path_buf(),
        }
    }
}

impl Backend for FileStates {
    fn place(&self) -> String {
        format!("the state file {}", self.path.display())
    }

    fn read(&self) -> Result<Option<State>, StateError> {
        read(&self.path)
    }

    fn lock(&self, operation: &str) -> Result<StateStore, StateError> {
        let path = &self.path;
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
                    place: self.place(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let info = LockInfo::here(operation);
        lock.set_len(0).map_err(io(&lock_path))?;
        lock.seek(SeekFrom::Start(0)).map_err(io(&lock_path))?;
        lock.write_all(serde_json::to_string(&info).expect("lock info").as_bytes())
            .map_err(io(&lock_path))?;
        let held = LockedFile {
            path: path.clone(),
            lock,
            backed_up: false,
        };
        Ok(StateStore::held(self.place(), Box::new(held)))
    }

    fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        // The holder empties the file when it lets go.
        let text = fs::read_to_string(lock_path(&self.path)).unwrap_or_default();
        Ok(serde_json::from_str(&text).ok())
    }

    fn force_unlock(&self) -> Result<Option<String>, StateError> {
        force_unlock(&self.path)
    }
}

/// A state file under its lock.
struct LockedFile {
    path: PathBuf,
    lock: File,
    backed_up: bool,
}

impl LockedState for LockedFile {
    fn read(&self) -> Result<Option<State>, StateError> {
        read(&self.path)
    }

    /// The first write of a run first keeps the previous file as `<state>.backup`.
    fn write(&mut self, state: &State) -> Result<(), StateError> {
        if !self.backed_up {
            if self.path.exists() {
                fs::copy(&self.path, backup_path(&self.path)).map_err(io(&self.path))?;
            }
            self.backed_up = true;
        }
        write_atomic(&self.path, to_json(state).as_bytes())
    }
}

impl Drop for LockedFile {
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

/// Now, as an RFC 3339 UTC timestamp to the second.
pub fn now_rfc3339() -> String {
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
