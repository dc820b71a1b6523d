//! The pure part of planning: fold what refresh saw into the state (finding drift), then
//! decide per resource: create, update in place, replace, delete, or nothing.

use std::collections::HashSet;

use super::{Action, AttrChange, Change, Drift};
use crate::graph::{Address, Attrs, ResourceGraph};
use crate::provider::Observed;
use crate::state::{ResourceState, State};

/// What refresh found for one recorded resource (`None`: it no longer exists).
pub type Observation = (Address, Option<Observed>);

/// The state as the cloud has it now, and what changed behind pgform's back.
/// Attributes the provider does not observe keep their recorded values.
pub fn merge_observations(state: &State, observations: Vec<Observation>) -> (State, Vec<Drift>) {
    let mut refreshed = state.clone();
    let mut drift = Vec::new();
    for (address, found) in observations {
        let Some(recorded) = refreshed.resources.get_mut(&address) else {
            continue;
        };
        match found {
            // A create whose outcome is unknown and that the cloud does not show (yet):
            // keep its client token, so that the retried create is the same request.
            None if recorded.id.is_none() => {}
            None => {
                drift.push(Drift {
                    address: address.clone(),
                    attrs: Vec::new(),
                    deleted: true,
                });
                refreshed.resources.remove(&address);
            }
            Some(seen) => {
                let adopted = recorded.id.is_none();
                let changed = changed_attrs(&address, &seen.attrs, &recorded.attrs);
                if !adopted && !changed.is_empty() {
                    drift.push(Drift {
                        address: address.clone(),
                        attrs: changed,
                        deleted: false,
                    });
                }
                recorded.id = Some(seen.id);
                recorded.attrs.extend(seen.attrs);
                recorded.outputs = seen.outputs;
                recorded.client_token = None;
            }
        }
    }
    (refreshed, drift)
}

/// The changes that take `state` to `desired`, dependencies first, deletes last.
pub fn diff(desired: &ResourceGraph, state: &State) -> Vec<Change> {
    // Resources being (re)created: references to them are unknown until apply.
    let mut fresh: HashSet<Address> = HashSet::new();
    let mut changes = Vec::new();
    for resource in desired.in_order() {
        let address = &resource.address;
        let lookup = |a: &Address| {
            if fresh.contains(a) {
                None
            } else {
                state.id_of(a).map(str::to_string)
            }
        };
        let after: Attrs = resource
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), v.resolve(&lookup)))
            .collect();
        let desired_resource = resource.clone();
        let current = state.resources.get(address).filter(|r| r.id.is_some());
        let Some(current) = current else {
            fresh.insert(address.clone());
            changes.push(Change {
                address: address.clone(),
                action: Action::Create,
                reason: "not in the state".into(),
                id: None,
                attrs: all_attrs(None, Some(&after)),
                desired: Some(desired_resource),
            });
            continue;
        };
        let changed = changed_attrs(address, &after, &current.attrs);
        if changed.is_empty() {
            continue;
        }
        let forcing: Vec<&str> = changed
            .iter()
            .filter(|c| c.forces_replacement)
            .map(|c| c.name.as_str())
            .collect();
        let (action, reason) = if forcing.is_empty() {
            let names: Vec<&str> = changed.iter().map(|c| c.name.as_str()).collect();
            (
                Action::Update,
                format!("{} can change in place", names.join(", ")),
            )
        } else {
            fresh.insert(address.clone());
            (
                Action::Replace,
                format!("{} forces replacement", forcing.join(", ")),
            )
        };
        changes.push(Change {
            address: address.clone(),
            action,
            reason,
            id: current.id.clone(),
            attrs: changed,
            desired: Some(desired_resource),
        });
    }
    let mut gone: Vec<(&Address, &ResourceState)> = state
        .resources
        .iter()
        .filter(|(a, r)| desired.get(a).is_none() && r.id.is_some())
        .collect();
    gone.reverse();
    for (address, current) in gone {
        changes.push(delete_change(address, current, "no longer in the spec"));
    }
    changes
}

/// The change that deletes a recorded resource.
pub fn delete_change(address: &Address, current: &ResourceState, reason: &str) -> Change {
    Change {
        address: address.clone(),
        action: Action::Delete,
        reason: reason.into(),
        id: current.id.clone(),
        attrs: all_attrs(Some(&current.attrs), None),
        desired: None,
    }
}

/// Attributes of `after` that differ from `before` (only keys `after` has).
fn changed_attrs(address: &Address, after: &Attrs, before: &Attrs) -> Vec<AttrChange> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| AttrChange {
            name: k.clone(),
            before: before.get(k).cloned(),
            after: Some(v.clone()),
            forces_replacement: address.kind.forces_replacement(k),
        })
        .collect()
}

fn all_attrs(before: Option<&Attrs>, after: Option<&Attrs>) -> Vec<AttrChange> {
    let source = after.or(before).cloned().unwrap_or_default();
    source
        .into_iter()
        .map(|(name, v)| AttrChange {
            name,
            before: before.map(|_| v.clone()),
            after: after.map(|_| v.clone()),
            forces_replacement: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Value;
    use crate::graph::{Kind, Lookups, build};
    use crate::spec::parse_str;

    fn spec(extra: &str) -> crate::spec::ClusterSpec {
        let text = format!(
            "name = \"demo\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"k\"\n[access]\nadmin_cidrs = [\"198.51.100.0/24\"]\n{extra}"
        );
        parse_str(&text, std::path::Path::new("t.toml"))
            .unwrap()
            .spec
    }

    fn lookups() -> Lookups {
        Lookups {
            default_ami: Some("ami-1".into()),
            ..Default::default()
        }
    }

    /// The state after a perfect apply of `graph`: ids are addresses, attrs as desired.
    fn applied(graph: &ResourceGraph) -> State {
        let mut s = State::new("demo");
        for r in graph.in_order() {
            let attrs = r
                .attrs
                .iter()
                .map(|(k, v)| (k.clone(), v.resolve(&|a: &Address| Some(format!("id-{a}")))))
                .collect();
            s.resources.insert(
                r.address.clone(),
                ResourceState {
                    id: Some(format!("id-{}", r.address)),
                    attrs,
                    outputs: Default::default(),
                    depends_on: r.depends_on.clone(),
                    client_token: None,
                },
            );
        }
        s
    }

    #[test]
    fn empty_state_creates_everything_in_dependency_order() {
        let g = build(&spec(""), &lookups()).unwrap();
        let changes = diff(&g, &State::new("demo"));
        assert_eq!(changes.len(), g.len());
        assert!(changes.iter().all(|c| c.action == Action::Create));
        let pos = |s: &str| {
            changes
                .iter()
                .position(|c| c.address.to_string() == s)
                .unwrap()
        };
        assert!(pos("aws_vpc.main") < pos("aws_subnet.main"));
        assert!(pos("aws_subnet.main") < pos("aws_instance.primary"));
        // A reference to something not yet made is unknown in the plan.
        let subnet = changes[pos("aws_subnet.main")]
            .attrs
            .iter()
            .find(|a| a.name == "vpc_id")
            .unwrap();
        assert_eq!(subnet.after, Some(Value::unknown()));
    }

    #[test]
    fn adding_a_data_volume_replaces_the_instances() {
        let g = build(&spec(""), &lookups()).unwrap();
        let state = applied(&g);
        let g2 = build(&spec("[instances]\ndata_volume_size = 100\n"), &lookups()).unwrap();
        let changes = diff(&g2, &state);
        let instances = g.in_order().filter(|r| r.address.kind == Kind::Instance);
        assert_eq!(changes.len(), instances.count(), "{changes:#?}");
        for c in &changes {
            assert_eq!(c.action, Action::Replace);
            assert_eq!(
                c.reason,
                "data_volume_size, data_volume_type forces replacement"
            );
        }
    }

    #[test]
    fn converged_state_plans_nothing() {
        let g = build(&spec(""), &lookups()).unwrap();
        assert!(diff(&g, &applied(&g)).is_empty());
    }

    #[test]
    fn ami_replaces_and_cidr_updates_in_place() {
        let g = build(&spec(""), &lookups()).unwrap();
        let state = applied(&g);
        let g2 = build(
            &spec("[instances]\nami = \"ami-2\"\n"),
            &Lookups {
                default_ami: Some("ami-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let changes = diff(&g2, &state);
        assert_eq!(changes.len(), 3, "{changes:#?}");
        assert!(
            changes
                .iter()
                .all(|c| c.action == Action::Replace && c.reason == "ami forces replacement")
        );

        let mut s3 = spec("");
        s3.access.client_cidrs.push("10.9.0.0/16".parse().unwrap());
        let changes = diff(&build(&s3, &lookups()).unwrap(), &state);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].action, Action::Update);
        assert_eq!(changes[0].address.to_string(), "aws_security_group.main");
        assert_eq!(changes[0].reason, "ingress can change in place");
    }

    #[test]
    fn unpinned_image_does_not_replace_running_instances() {
        let g = build(&spec(""), &lookups()).unwrap();
        let state = applied(&g);
        let mut l = lookups();
        l.default_ami = Some("ami-newer".into());
        for a in state.resources.keys().filter(|a| a.kind == Kind::Instance) {
            l.current_amis.insert(a.clone(), "ami-1".into());
        }
        assert!(diff(&build(&spec(""), &l).unwrap(), &state).is_empty());
    }

    #[test]
    fn scaling_down_deletes_the_highest_replicas() {
        let g = build(&spec("[postgres]\nreplicas = 3\n"), &lookups()).unwrap();
        let state = applied(&g);
        let changes = diff(
            &build(&spec("[postgres]\nreplicas = 1\n"), &lookups()).unwrap(),
            &state,
        );
        let deleted: Vec<String> = changes
            .iter()
            .map(|c| format!("{:?} {}", c.action, c.address))
            .collect();
        assert_eq!(
            deleted,
            [
                "Delete aws_instance.replica[2]",
                "Delete aws_instance.replica[1]"
            ]
        );
    }

    #[test]
    fn replaced_dependency_makes_references_unknown() {
        let g = build(&spec(""), &lookups()).unwrap();
        let state = applied(&g);
        let mut s = spec("");
        s.network.vpc_cidr = "10.1.0.0/16".parse().unwrap();
        s.network.subnet_cidr = "10.1.1.0/24".parse().unwrap();
        let changes = diff(&build(&s, &lookups()).unwrap(), &state);
        // The VPC is replaced, so everything in it is too (vpc_id/subnet_id are unknown).
        for c in &changes {
            assert_eq!(c.action, Action::Replace, "{}", c.address);
        }
        assert_eq!(changes.len(), g.len());
    }

    #[test]
    fn refresh_finds_drift_and_adopts_interrupted_creates() {
        let g = build(&spec(""), &lookups()).unwrap();
        let mut state = applied(&g);
        let primary: Address = "aws_instance.primary".parse().unwrap();
        let vpc: Address = "aws_vpc.main".parse().unwrap();
        let replica: Address = "aws_instance.replica[0]".parse().unwrap();
        state.resources.get_mut(&replica).unwrap().id = None;
        let mut seen_primary = state.resources[&primary].clone();
        seen_primary
            .attrs
            .insert("instance_type".into(), Value::str("t3.large"));
        let obs = vec![
            (
                primary.clone(),
                Some(Observed {
                    id: "id-aws_instance.primary".into(),
                    attrs: seen_primary.attrs.clone(),
                    outputs: Default::default(),
                }),
            ),
            (vpc.clone(), None),
            (
                replica.clone(),
                Some(Observed {
                    id: "i-found".into(),
                    attrs: state.resources[&replica].attrs.clone(),
                    outputs: Default::default(),
                }),
            ),
        ];
        let (refreshed, drift) = merge_observations(&state, obs);
        assert_eq!(drift.len(), 2);
        assert!(drift.iter().any(|d| d.address == vpc && d.deleted));
        assert!(
            drift
                .iter()
                .any(|d| d.address == primary && d.attrs[0].name == "instance_type")
        );
        assert!(!refreshed.resources.contains_key(&vpc));
        assert_eq!(refreshed.id_of(&replica), Some("i-found"));
        let changes = diff(&g, &refreshed);
        assert!(
            changes
                .iter()
                .any(|c| c.address == vpc && c.action == Action::Create)
        );
        assert!(
            changes
                .iter()
                .any(|c| c.address == primary && c.action != Action::Create)
        );
    }
}
