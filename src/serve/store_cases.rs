//! What every [`Store`] must do, as test bodies shared by the SQLite store's unit tests
//! and the PostgreSQL store's tests (`tests/pgstore.rs`, against a real server). Each
//! case expects an empty store.

use super::run::{Run, RunKind, RunState};
use super::store::{AuditRow, ClusterRow, Idempotency, RunFilter, Store, TokenRow};

pub type Case = fn(&dyn Store);

pub const ALL: &[(&str, Case)] = &[
    ("clusters_round_trip", clusters_round_trip),
    (
        "runs_round_trip_and_page_by_cursor",
        runs_round_trip_and_page_by_cursor,
    ),
    (
        "a_canceled_run_cannot_be_claimed",
        a_canceled_run_cannot_be_claimed,
    ),
    (
        "one_run_per_cluster_is_claimed",
        one_run_per_cluster_is_claimed,
    ),
    ("events_are_numbered_per_run", events_are_numbered_per_run),
    (
        "idempotency_replays_and_refuses_another_body",
        idempotency_replays_and_refuses_another_body,
    ),
    ("tokens_and_audit", tokens_and_audit),
];

pub fn clusters_round_trip(s: &dyn Store) {
    assert!(s.cluster("a").unwrap().is_none());
    for text in ["one", "two"] {
        s.put_cluster(&ClusterRow {
            name: "a".into(),
            spec_text: text.into(),
            format: "toml".into(),
            updated_at: "t".into(),
        })
        .unwrap();
    }
    assert_eq!(s.cluster("a").unwrap().unwrap().spec_text, "two");
    assert_eq!(s.clusters().unwrap().len(), 1);
}

pub fn runs_round_trip_and_page_by_cursor(s: &dyn Store) {
    for c in ["a", "b", "a"] {
        let mut r = Run::new(c, RunKind::Plan, None);
        s.create_run(&mut r).unwrap();
    }
    let a = s
        .runs(&RunFilter {
            cluster: Some("a".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(a.len(), 2);
    let mut r = a[0].clone();
    r.state = RunState::Planned;
    r.plan = Some("{}".into());
    r.result = Some(serde_json::json!({"x": 1}));
    r.only = Some(super::exec::Layer::Infra);
    s.update_run(&r).unwrap();
    let back = s.run(&r.id).unwrap().unwrap();
    assert_eq!(back.state, RunState::Planned);
    assert_eq!(back.result, r.result);
    assert_eq!(back.plan.as_deref(), Some("{}"));
    let page = s
        .runs(&RunFilter {
            after: Some(a[0].seq),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].cluster, "b");
    let last = s.last_run_in("a", &[RunState::Planned]).unwrap().unwrap();
    assert_eq!(last.id, r.id);
    assert!(s.last_run_in("b", &[RunState::Planned]).unwrap().is_none());
    s.set_progress(&r.id, 3).unwrap();
    assert_eq!(s.run(&r.id).unwrap().unwrap().done, 3);
}

pub fn a_canceled_run_cannot_be_claimed(s: &dyn Store) {
    let mut r = Run::new("a", RunKind::Plan, None);
    s.create_run(&mut r).unwrap();
    assert!(s.request_cancel(&r.id, "t").unwrap());
    assert!(s.claim_next(&[], "t").unwrap().is_none());
    assert_eq!(s.run(&r.id).unwrap().unwrap().state, RunState::Canceled);
    let mut q = Run::new("a", RunKind::Plan, None);
    s.create_run(&mut q).unwrap();
    let (claimed, _lease) = s.claim_next(&[], "t").unwrap().unwrap();
    assert_eq!(claimed.id, q.id);
    assert_eq!(claimed.state, RunState::Planning);
    // Planning: flagged, not canceled yet; the worker decides.
    assert!(s.request_cancel(&q.id, "t").unwrap());
    let back = s.run(&q.id).unwrap().unwrap();
    assert_eq!(back.state, RunState::Planning);
    assert!(back.cancel_requested);
    assert_eq!(back.started_at.as_deref(), Some("t"));
    // The worker saving its copy, read before the cancel, keeps the flag.
    s.update_run(&claimed).unwrap();
    assert!(s.run(&q.id).unwrap().unwrap().cancel_requested);
    assert!(s.claim_next(&[], "t").unwrap().is_none());
    // A canceled run is no longer live.
    assert!(!s.request_cancel(&r.id, "t").unwrap());
}

pub fn one_run_per_cluster_is_claimed(s: &dyn Store) {
    let mut ids = Vec::new();
    for c in ["a", "a", "b"] {
        let mut r = Run::new(c, RunKind::Plan, None);
        s.create_run(&mut r).unwrap();
        ids.push(r.id);
    }
    // A skipped cluster is left for later; a planned and confirmed run applies.
    let (first, _l1) = s.claim_next(&["a".into()], "t").unwrap().unwrap();
    assert_eq!(first.id, ids[2]);
    let (second, l2) = s.claim_next(&[], "t").unwrap().unwrap();
    assert_eq!(second.id, ids[0]);
    assert!(s.claim_next(&[], "t").unwrap().is_none(), "a is busy");
    let mut done = second.clone();
    done.state = RunState::Planned;
    s.update_run(&done).unwrap();
    // Its executor saves it, then lets it go.
    drop(l2);
    let (third, _l3) = s.claim_next(&[], "t").unwrap().unwrap();
    assert_eq!(third.id, ids[1]);
    let mut confirmed = s.run(&ids[0]).unwrap().unwrap();
    confirmed.plan = Some("{}".into());
    confirmed.approved = true;
    confirmed.state = RunState::Queued;
    s.update_run(&confirmed).unwrap();
    let mut finished = third.clone();
    finished.finish(RunState::NoChanges);
    s.update_run(&finished).unwrap();
    let (fourth, _l4) = s.claim_next(&[], "t").unwrap().unwrap();
    assert_eq!(fourth.id, ids[0]);
    assert_eq!(fourth.state, RunState::Applying);
    assert_eq!(s.run(&ids[0]).unwrap().unwrap().state, RunState::Applying);
}

pub fn events_are_numbered_per_run(s: &dyn Store) {
    assert_eq!(s.append_event("r1", "{}").unwrap(), 1);
    assert_eq!(s.append_event("r1", "{\"n\":2}").unwrap(), 2);
    assert_eq!(s.append_event("r2", "{}").unwrap(), 1);
    assert_eq!(
        s.events_after("r1", 1).unwrap(),
        vec![(2, "{\"n\":2}".to_string())]
    );
}

pub fn idempotency_replays_and_refuses_another_body(s: &dyn Store) {
    assert_eq!(
        s.idempotency_begin("k", "t", "h1").unwrap(),
        Idempotency::New
    );
    assert_eq!(
        s.idempotency_begin("k", "t", "h1").unwrap(),
        Idempotency::InFlight
    );
    s.idempotency_finish("k", "t", 202, "{}").unwrap();
    assert_eq!(
        s.idempotency_begin("k", "t", "h1").unwrap(),
        Idempotency::Done {
            status: 202,
            body: "{}".into()
        }
    );
    assert_eq!(
        s.idempotency_begin("k", "t", "h2").unwrap(),
        Idempotency::Mismatch
    );
    // Another caller's key of the same name is its own.
    assert_eq!(
        s.idempotency_begin("k", "u", "h2").unwrap(),
        Idempotency::New
    );
    s.idempotency_abort("k", "u").unwrap();
    assert_eq!(
        s.idempotency_begin("k", "u", "h3").unwrap(),
        Idempotency::New
    );
}

pub fn tokens_and_audit(s: &dyn Store) {
    for id in ["t1", "t2"] {
        s.add_token(&TokenRow {
            id: id.into(),
            hash: [7; 32],
            role: "read".into(),
            cluster: (id == "t2").then(|| "a".into()),
            created_at: "t".into(),
            revoked: false,
        })
        .unwrap();
    }
    assert!(s.revoke_token("t1").unwrap());
    assert!(!s.revoke_token("t1").unwrap());
    let tokens = s.tokens().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0].id, "t1");
    assert!(tokens[0].revoked && !tokens[1].revoked);
    assert_eq!(tokens[1].hash, [7; 32]);
    assert_eq!(tokens[1].cluster.as_deref(), Some("a"));
    for status in [200, 403] {
        s.audit(&AuditRow {
            at: "t".into(),
            token: Some("t2".into()),
            method: "POST".into(),
            path: "/v1/runs".into(),
            status,
        })
        .unwrap();
    }
    let rows = s.audit_rows().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 403]
    );
}
