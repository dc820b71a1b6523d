//! What an operation reports while it runs: the engine's resource events, the task
//! list's task events, and the steps between them. Every event serializes as one JSON
//! object with an `event` key.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::engine::{self, ApplyReport};
use crate::hosts::Verified;
use crate::tasks::{Recap, TaskEvent};

#[derive(Debug, Clone)]
pub enum Event {
    /// Refresh and apply progress per resource (`refreshing`, `started`,
    /// `still_running`, `finished`, `failed`, `skipped`).
    Resource(engine::Event),
    /// The infrastructure's changes are made and recorded (`complete`); the outputs
    /// when something exists.
    InfraDone {
        destroy: bool,
        report: ApplyReport,
        outputs: Option<BTreeMap<String, serde_json::Value>>,
    },
    /// The task list starts on these hosts (`hosts`): (name, address) pairs.
    HostsStarted {
        check: bool,
        hosts: Vec<(String, String)>,
    },
    /// A task finished on a host (`task`).
    Task(TaskEvent),
    /// The task list is done: counts per host (`recap`).
    Recap { check: bool, recap: Recap },
    /// Every replica streams (`verified`).
    Verified(Verified),
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tagged = |name: &str, body: serde_json::Value| {
            let mut v = serde_json::json!({"event": name});
            if let (Some(o), serde_json::Value::Object(b)) = (v.as_object_mut(), body) {
                o.extend(b);
            }
            v
        };
        let value = match self {
            Event::Resource(e) => json(e),
            Event::InfraDone {
                destroy,
                report,
                outputs,
            } => serde_json::json!({
                "event": "complete", "destroy": destroy, "report": report, "outputs": outputs,
            }),
            Event::HostsStarted { check, hosts } => serde_json::json!({
                "event": "hosts",
                "check": check,
                "hosts": hosts.iter().map(|(n, a)| serde_json::json!({"name": n, "address": a})).collect::<Vec<_>>(),
            }),
            Event::Task(t) => tagged("task", json(t)),
            Event::Recap { check, recap } => {
                serde_json::json!({"event": "recap", "check": check, "recap": recap})
            }
            Event::Verified(v) => serde_json::json!({"event": "verified", "verified": v}),
        };
        value.serialize(s)
    }
}

fn json<T: Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap_or_default()
}

/// Where events go. Cheap to clone; must not block for long.
pub type Sink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A sink that drops every event.
pub fn no_events() -> Sink {
    Arc::new(|_| {})
}

/// The engine's sink, forwarding into `sink`.
pub(super) fn resource_sink(sink: &Sink) -> engine::EventSink {
    let sink = sink.clone();
    Arc::new(move |e: &engine::Event| sink(&Event::Resource(e.clone())))
}

/// The task runner's sink, forwarding into `sink`.
pub(super) fn task_sink(sink: &Sink) -> crate::tasks::Sink {
    let sink = sink.clone();
    Arc::new(move |e: &TaskEvent| sink(&Event::Task(e.clone())))
}
