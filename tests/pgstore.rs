//! The PostgreSQL store against a real server (tests/common/pg.rs): the same cases as the
//! SQLite store, claims by several stores at once (as several processes), leases, the
//! schema's version, `pgform token --store`, and cluster states with their locks.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::cli::PGFORM;
use common::pg;
use pgform::serve::pgstore::PgStore;
use pgform::serve::run::{Run, RunKind, RunState};
use pgform::serve::store::Store;
use pgform::serve::store_cases;
use pgform::state::{ResourceState, State};

#[test]
fn the_store_cases_pass_on_postgres() {
    for (name, case) in store_cases::ALL {
        let Some(db) = pg::database() else { return };
        eprintln!("case {name}");
        let store = PgStore::open(&db.url_with_password()).unwrap();
        case(&store);
    }
}

#[test]
fn opening_again_keeps_the_data_and_the_schema_version() {
    let Some(db) = pg::database() else { return };
    let url = db.url_with_password();
    let mut run = Run::new("a", RunKind::Plan, None);
    PgStore::open(&url).unwrap().create_run(&mut run).unwrap();
    let again = PgStore::open(&url).unwrap();
    assert_eq!(again.run(&run.id).unwrap().unwrap().cluster, "a");
    let versions = db.query("SELECT version FROM pgform_schema ORDER BY version");
    assert_eq!(
        versions,
        vec![vec![Some("1".to_string())], vec![Some("2".to_string())]]
    );
    // A newer schema than this pgform knows is refused, not guessed at.
    db.query("INSERT INTO pgform_schema VALUES (99)");
    let err = PgStore::open(&url).err().expect("refused").to_string();
    assert!(
        err.contains("version 99") && err.contains("upgrade"),
        "{err}"
    );
}

#[test]
fn a_bad_password_or_address_is_a_clear_error() {
    let Some(db) = pg::database() else { return };
    let url = format!(
        "postgres://{}:wrong@127.0.0.1:{}/{}",
        pg::ROLE,
        db.port,
        db.name
    );
    let err = PgStore::open(&url).err().expect("refused").to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains("wrong"),
        "the password is not repeated: {err}"
    );
}

/// Several stores (as several processes) claim from one queue at once: every run is
/// claimed exactly once, and a cluster never has two runs executing.
#[test]
fn concurrent_claims_take_each_run_once_and_one_per_cluster() {
    let Some(db) = pg::database() else { return };
    let url = db.url_with_password();
    let first = PgStore::open(&url).unwrap();
    let mut ids = HashSet::new();
    for i in 0..40 {
        let mut r = Run::new(&format!("c{}", i % 4), RunKind::Plan, None);
        first.create_run(&mut r).unwrap();
        ids.insert(r.id);
    }
    let stores: Vec<Arc<PgStore>> = (0..4)
        .map(|_| Arc::new(PgStore::open(&url).unwrap()))
        .collect();
    let executing: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let claimed: Arc<Mutex<Vec<String>>> = Arc::default();
    let threads: Vec<_> = stores
        .iter()
        .map(|s| {
            let (s, executing, claimed) = (s.clone(), executing.clone(), claimed.clone());
            std::thread::spawn(move || {
                let mut idle = 0;
                while idle < 20 {
                    let Some((mut run, lease)) = s.claim_next(&[], "t").unwrap() else {
                        idle += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    };
                    idle = 0;
                    assert_eq!(run.state, RunState::Planning);
                    if let Some(other) = executing
                        .lock()
                        .unwrap()
                        .insert(run.cluster.clone(), run.id.clone())
                    {
                        panic!("{} claimed while {other} executes", run.id);
                    }
                    claimed.lock().unwrap().push(run.id.clone());
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    executing.lock().unwrap().remove(&run.cluster);
                    run.state = RunState::Planned;
                    s.update_run(&run).unwrap();
                    drop(lease);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let claimed = claimed.lock().unwrap().clone();
    assert_eq!(claimed.len(), ids.len(), "each run once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), ids);
}

/// A run's lease shows its executor alive to other stores; once released (the process
/// died: its connection closed), recovery may take the run.
#[test]
fn an_executing_runs_lease_keeps_recovery_off_it() {
    let Some(db) = pg::database() else { return };
    let url = db.url_with_password();
    let (a, b) = (PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap());
    let mut r = Run::new("c", RunKind::Plan, None);
    a.create_run(&mut r).unwrap();
    let (run, lease) = a.claim_next(&[], "t").unwrap().unwrap();
    assert_eq!(run.id, r.id);
    assert!(b.take_orphan(&r.id).unwrap().is_none(), "a holds it");
    drop(lease);
    let held = b.take_orphan(&r.id).unwrap().expect("a let it go");
    assert!(a.take_orphan(&r.id).unwrap().is_none(), "b holds it now");
    drop(held);
    drop(a);
    assert!(b.take_orphan(&r.id).unwrap().is_some());
}

#[test]
fn tokens_are_made_listed_and_revoked_in_the_store() {
    let Some(db) = pg::database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = |args: &[&str]| {
        Command::new(PGFORM)
            .arg("token")
            .args(args)
            .args(["--store", &db.url, "--data"])
            .arg(dir.path())
            .envs(db.env())
            .output()
            .unwrap()
    };
    let out = token(&["create", "--role", "read"]);
    assert!(out.status.success(), "{out:?}");
    let list = token(&["list"]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        text.contains("\tread\t*\t") && text.contains("live"),
        "{text}"
    );
    let id = text.split('\t').next().unwrap().to_string();
    assert!(token(&["revoke", &id]).status.success());
    let rows = db.query("SELECT revoked FROM tokens");
    assert_eq!(rows, vec![vec![Some("t".to_string())]]);
    // Nothing went to the SQLite file.
    assert!(!dir.path().join("pgform.db").exists());
}

#[test]
fn a_password_on_the_command_line_is_refused() {
    let Some(db) = pg::database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(PGFORM)
        .args([
            "token",
            "list",
            "--store",
            &db.url_with_password(),
            "--data",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--store") && err.contains("PGPASSWORD"),
        "{err}"
    );
    assert!(
        err.contains("PGFORM_STORE") && err.contains(".pgpass"),
        "{err}"
    );
    assert!(!err.contains(pg::PASSWORD), "{err}");
    // The same URL in the environment is fine: it is not in the argument list.
    let out = Command::new(PGFORM)
        .args(["token", "list", "--data"])
        .arg(dir.path())
        .env("PGFORM_STORE", db.url_with_password())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!dir.path().join("pgform.db").exists());
}

fn sample_state(cluster: &str) -> State {
    let mut s = State::new(cluster);
    s.resources.insert(
        "docker_network.main".parse().unwrap(),
        ResourceState {
            id: Some("net-1".into()),
            attrs: Default::default(),
            outputs: Default::default(),
            depends_on: Default::default(),
            client_token: None,
        },
    );
    s
}

/// States as several processes see them (one store each): saved and read back, one
/// lock at a time naming its holder, the state before the lock kept, and a lock that
/// ends with its holder's session.
#[test]
fn states_are_saved_locked_and_released_in_the_store() {
    let Some(db) = pg::database() else { return };
    let url = db.url_with_password();
    let (one, two) = (PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap());
    let (a, b) = (one.states("demo").unwrap(), two.states("demo").unwrap());
    assert!(a.read().unwrap().is_none(), "nothing saved yet");
    assert!(a.holder().unwrap().is_none());

    let mut held = a.lock("apply").unwrap();
    let mut state = held.load_or_new("demo").unwrap();
    assert_eq!(state.serial, 0);
    state = sample_state("demo");
    held.save(&mut state).unwrap();
    held.save(&mut state).unwrap();
    assert_eq!(
        b.read().unwrap().unwrap(),
        state,
        "another process reads the save"
    );
    assert_eq!(state.serial, 2);

    // One holder at a time, named to the refused one.
    let refused = b.lock("destroy").err().expect("locked").to_string();
    assert!(refused.contains("locked by `pgform apply`"), "{refused}");
    assert!(
        refused.contains("the state of `demo` in the PostgreSQL store"),
        "{refused}"
    );
    assert_eq!(b.holder().unwrap().unwrap().operation, "apply");
    // Another cluster's state is not locked by it.
    let other = two.states("other").unwrap();
    drop(other.lock("apply").unwrap());
    assert!(other.read().unwrap().is_none());

    drop(held);
    assert!(b.holder().unwrap().is_none(), "released");
    let mut again = b.lock("apply").unwrap();
    let mut next = again.load_or_new("demo").unwrap();
    next.resources.clear();
    again.save(&mut next).unwrap();
    // The state before this lock's first save is kept, as the state file's backup.
    let previous = db.query("SELECT previous FROM states WHERE cluster = 'demo'");
    let previous = pgform::state::from_json(previous[0][0].as_deref().unwrap(), "previous");
    assert_eq!(previous.unwrap(), state);
    // A state of another cluster under this name is refused, as with files.
    assert!(matches!(
        again.load_or_new("elsewhere"),
        Err(pgform::state::StateError::WrongCluster { .. })
    ));

    // A holder whose session ends (its process died) holds nothing: the lock is free,
    // and what it saves afterwards is refused, so that it cannot write between the next
    // holder's saves.
    db.query("SELECT pg_terminate_backend(pid) FROM state_locks WHERE cluster = 'demo'");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.holder().unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the session ended");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut taker = a.lock("apply").unwrap();
    let err = again.save(&mut next).expect_err("lost").to_string();
    assert!(
        err.contains("removed") && err.contains("run again"),
        "{err}"
    );
    let mut taken = taker.load_or_new("demo").unwrap();
    taker.save(&mut taken).unwrap();
}

/// `force-unlock` removes a live holder's lock and ends its session: the next taker
/// gets the lock, and the old holder's next save is refused.
#[test]
fn force_unlock_takes_the_lock_from_its_holder() {
    let Some(db) = pg::database() else { return };
    let url = db.url_with_password();
    let (one, two) = (PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap());
    let (a, b) = (one.states("demo").unwrap(), two.states("demo").unwrap());
    assert_eq!(b.force_unlock().unwrap(), None, "nothing to remove");
    let mut stuck = a.lock("apply").unwrap();
    let mut state = sample_state("demo");
    stuck.save(&mut state).unwrap();
    let removed = b.force_unlock().unwrap().expect("a holder");
    assert!(removed.contains("`pgform apply`"), "{removed}");
    let mut next = b.lock("apply").unwrap();
    let err = stuck.save(&mut state).expect_err("refused").to_string();
    assert!(err.contains("force-unlock"), "{err}");
    let mut current = next.load_or_new("demo").unwrap();
    assert_eq!(current.serial, 1, "the refused save changed nothing");
    next.save(&mut current).unwrap();
    drop(stuck);
    assert_eq!(
        b.holder().unwrap().map(|h| h.operation),
        Some("apply".into()),
        "the old holder letting go leaves the new lock alone"
    );
}

/// The CLI keeps a cluster's state in the store with `--state postgres://...`: the same
/// state the service uses. A password in that URL is refused.
#[test]
fn the_cli_keeps_its_state_in_the_store() {
    let Some(db) = pg::database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("cluster.toml");
    std::fs::write(
        &spec,
        "name = \"listed\"\nprovider = \"hosts\"\n[[hosts]]\naddress = \"10.0.0.5\"\nrole = \"primary\"\n",
    )
    .unwrap();
    let pgform = |args: &[&str]| {
        Command::new(PGFORM)
            .args(args)
            .arg("-f")
            .arg(&spec)
            .envs(db.env())
            .output()
            .unwrap()
    };
    let out = pgform(&["state", "list", "--state", &db.url]);
    assert!(out.status.success(), "{out:?}");
    let store = PgStore::open(&db.url_with_password()).unwrap();
    let states = store.states("listed").unwrap();
    let held = states.lock("apply").unwrap();
    let out = pgform(&["force-unlock", "--state", &db.url]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("`pgform apply`"), "{said}");
    assert!(states.holder().unwrap().is_none());
    drop(held);
    // Nothing was written beside the spec.
    assert!(!dir.path().join("cluster.pgstate.json").exists());
    assert!(!dir.path().join("cluster.pgstate.json.lock").exists());

    let out = pgform(&["state", "list", "--state", &db.url_with_password()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--state") && err.contains("PGPASSWORD"),
        "{err}"
    );
    assert!(!err.contains(pg::PASSWORD), "{err}");
}
