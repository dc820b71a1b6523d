//! The engine through its library API, on the in-memory provider: apply converges,
//! failures stop only dependants and keep what was made, and saved plans go stale.

use std::sync::{Arc, Mutex};

use pgform::engine::{self, ApplyOptions, EngineError, Event};
use pgform::graph::Address;
use pgform::plan::Action;
use pgform::provider::Provider;
use pgform::provider::memory::MemoryProvider;
use pgform::spec::{ClusterSpec, parse_str};
use pgform::state::{self, State, StateStore};

fn spec(replicas: u32) -> ClusterSpec {
    let text = format!(
        "name = \"mem\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"k\"\n\
         [access]\nadmin_cidrs = [\"198.51.100.0/24\"]\n[postgres]\nreplicas = {replicas}\n"
    );
    parse_str(&text, std::path::Path::new("mem.toml"))
        .unwrap()
        .spec
}

async fn plan_and_apply(
    provider: &dyn Provider,
    spec: &ClusterSpec,
    path: &std::path::Path,
) -> Result<State, EngineError> {
    let mut store = StateStore::lock(path, "apply")?;
    let state = store.load_or_new(&spec.name)?;
    let plan = engine::plan(provider, spec, &state, &engine::no_events()).await?;
    let (state, _) =
        engine::apply(provider, &plan, &mut store, state, &ApplyOptions::default()).await?;
    Ok(state)
}

#[tokio::test]
async fn apply_converges_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.pgstate.json");
    let provider = MemoryProvider::new();
    let spec = spec(2);

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut store = StateStore::lock(&path, "apply").unwrap();
    let state = store.load_or_new("mem").unwrap();
    let plan = engine::plan(&provider, &spec, &state, &engine::no_events())
        .await
        .unwrap();
    assert!(plan.changes.iter().all(|c| c.action == Action::Create));
    let options = ApplyOptions {
        parallelism: 4,
        events: Arc::new(move |e: &Event| sink.lock().unwrap().push(e.clone())),
        ..ApplyOptions::default()
    };
    let (state, report) = engine::apply(&provider, &plan, &mut store, state, &options)
        .await
        .unwrap();
    drop(store);
    assert_eq!(report.created, plan.changes.len());
    assert_eq!(state.resources.len(), provider.existing().len());
    let finished = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Finished { .. }))
        .count();
    assert_eq!(finished, plan.changes.len());

    // What was written is what a second plan starts from: nothing left to do.
    let on_disk = state::read(&path).unwrap().unwrap();
    assert_eq!(on_disk, state);
    let again = engine::plan(&provider, &spec, &on_disk, &engine::no_events())
        .await
        .unwrap();
    assert!(!again.has_changes(), "{}", pgform::plan::render(&again));
}

#[tokio::test]
async fn a_failed_resource_stops_its_dependants_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let provider = MemoryProvider::new();
    provider.fail_on(&"aws_security_group.main".parse().unwrap());
    let err = plan_and_apply(&provider, &spec(1), &path)
        .await
        .unwrap_err();
    let EngineError::ApplyFailed { failures, skipped } = &err else {
        panic!("{err}")
    };
    assert_eq!(failures[0].0.to_string(), "aws_security_group.main");
    let skipped: Vec<String> = skipped.iter().map(Address::to_string).collect();
    assert!(
        skipped.contains(&"aws_instance.primary".to_string()),
        "{skipped:?}"
    );
    // The network was made and recorded; the rerun (once the cause is gone) converges.
    let recorded = state::read(&path).unwrap().unwrap();
    assert!(recorded.id_of(&"aws_vpc.main".parse().unwrap()).is_some());
    assert!(err.to_string().contains("run apply again"));
}

#[tokio::test]
async fn drift_is_repaired_and_scaling_down_removes_only_the_extra_replica() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let provider = MemoryProvider::new();
    let state = plan_and_apply(&provider, &spec(2), &path).await.unwrap();
    let replica1: Address = "aws_instance.replica[1]".parse().unwrap();
    provider.remove(state.id_of(&replica1).unwrap());
    let plan = engine::plan(&provider, &spec(2), &state, &engine::no_events())
        .await
        .unwrap();
    assert!(
        plan.drift
            .iter()
            .any(|d| d.address == replica1 && d.deleted)
    );
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].action, Action::Create);
    let state = plan_and_apply(&provider, &spec(2), &path).await.unwrap();
    let primary_id = state
        .id_of(&"aws_instance.primary".parse().unwrap())
        .unwrap()
        .to_string();

    let state = plan_and_apply(&provider, &spec(1), &path).await.unwrap();
    assert!(state.id_of(&replica1).is_none());
    assert_eq!(
        state.id_of(&"aws_instance.primary".parse().unwrap()),
        Some(primary_id.as_str())
    );
}

#[tokio::test]
async fn a_plan_made_before_another_apply_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let provider = MemoryProvider::new();
    let stale = {
        let state = State::new("mem");
        engine::plan(&provider, &spec(1), &state, &engine::no_events())
            .await
            .unwrap()
    };
    plan_and_apply(&provider, &spec(2), &path).await.unwrap();
    let mut store = StateStore::lock(&path, "apply").unwrap();
    let state = store.load_or_new("mem").unwrap();
    let before = provider.existing();
    let err = engine::apply(
        &provider,
        &stale,
        &mut store,
        state,
        &ApplyOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EngineError::StalePlan { .. }), "{err}");
    assert_eq!(provider.existing(), before);
}

#[tokio::test]
async fn destroy_removes_everything_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.json");
    let provider = MemoryProvider::new();
    plan_and_apply(&provider, &spec(2), &path).await.unwrap();
    let mut store = StateStore::lock(&path, "destroy").unwrap();
    let state = store.load_or_new("mem").unwrap();
    let plan = engine::plan_destroy(&provider, &state, &engine::no_events())
        .await
        .unwrap();
    assert!(plan.changes.iter().all(|c| c.action == Action::Delete));
    let vpc = plan
        .changes
        .iter()
        .position(|c| c.address.to_string() == "aws_vpc.main")
        .unwrap();
    let primary = plan
        .changes
        .iter()
        .position(|c| c.address.to_string() == "aws_instance.primary")
        .unwrap();
    assert!(primary < vpc);
    let (state, report) = engine::apply(
        &provider,
        &plan,
        &mut store,
        state,
        &ApplyOptions::default(),
    )
    .await
    .unwrap();
    assert!(state.resources.is_empty());
    assert_eq!(report.deleted, plan.changes.len());
    assert!(provider.existing().is_empty());
}

#[tokio::test]
async fn interrupted_apply_keeps_what_was_made_and_reruns_to_convergence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.pgstate.json");
    let provider = MemoryProvider::new();
    let spec = spec(2);

    let mut store = StateStore::lock(&path, "apply").unwrap();
    let state = store.load_or_new("mem").unwrap();
    let plan = engine::plan(&provider, &spec, &state, &engine::no_events())
        .await
        .unwrap();
    // Interrupt as soon as the first resource is made (as Ctrl-C would).
    let interrupt = engine::Interrupt::default();
    let trigger = interrupt.clone();
    let options = ApplyOptions {
        parallelism: 1,
        events: Arc::new(move |e: &Event| {
            if matches!(e, Event::Finished { .. }) {
                trigger.trigger();
            }
        }),
        interrupt,
    };
    let err = engine::apply(&provider, &plan, &mut store, state, &options)
        .await
        .unwrap_err();
    drop(store);
    let EngineError::Interrupted {
        completed,
        not_started,
    } = &err
    else {
        panic!("expected an interrupted apply, got {err}");
    };
    assert_eq!(*completed, 1);
    assert_eq!(not_started.len(), plan.changes.len() - 1);
    assert!(err.to_string().contains("run apply again"), "{err}");
    let on_disk = state::read(&path).unwrap().unwrap();
    assert_eq!(on_disk.resources.len(), 1, "the one made is recorded");
    assert_eq!(provider.existing().len(), 1);

    let state = plan_and_apply(&provider, &spec, &path).await.unwrap();
    assert_eq!(state.resources.len(), provider.existing().len());
    assert_eq!(
        provider.existing().len(),
        plan.changes.len(),
        "no duplicate"
    );
}

#[tokio::test]
async fn a_create_with_unknown_outcome_is_retried_with_its_recorded_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.pgstate.json");
    let provider = MemoryProvider::new();
    plan_and_apply(&provider, &spec(0), &path).await.unwrap();

    // A run that died after recording its intent for replica[0] and before any answer.
    let replica: Address = "aws_instance.replica[0]".parse().unwrap();
    let gone: Address = "aws_instance.replica[5]".parse().unwrap();
    {
        let mut store = StateStore::lock(&path, "apply").unwrap();
        let mut state = store.load_or_new("mem").unwrap();
        for (address, token) in [
            (&replica, "pgform-retry-token"),
            (&gone, "pgform-gone-token"),
        ] {
            state.resources.insert(
                address.clone(),
                state::ResourceState {
                    id: None,
                    attrs: Default::default(),
                    outputs: Default::default(),
                    depends_on: Default::default(),
                    client_token: Some(token.into()),
                },
            );
        }
        store.save(&mut state).unwrap();
    }

    let state = plan_and_apply(&provider, &spec(1), &path).await.unwrap();
    let tokens = provider.client_tokens();
    let id = state.id_of(&replica).expect("replica[0] made").to_string();
    assert_eq!(tokens.get("pgform-retry-token"), Some(&id), "{tokens:?}");
    assert_eq!(state.resources[&replica].client_token, None);
    // A pending record of an address no longer wanted is dropped, nothing is deleted.
    assert!(
        !state.resources.contains_key(&gone),
        "{:?}",
        state.resources.keys()
    );
    assert_eq!(provider.existing().len(), state.resources.len());
}
