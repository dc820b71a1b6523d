//! The resource graph: addresses, attribute values, the build from a spec, and the
//! dependency walker. Pure: no I/O.

mod address;
mod build;
mod value;
pub mod walk;

use std::collections::{BTreeSet, HashMap};

use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

pub use address::{Address, Kind};
pub use build::{ADDRESS_TAG, CLUSTER_TAG, Lookups, SubnetInfo, build, sort_rules};
pub use value::{Attrs, Value};

/// One desired resource: its address, its attributes (which may refer to other nodes'
/// ids) and the nodes it depends on (every reference, plus explicit ordering).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub address: Address,
    pub attrs: Attrs,
    pub depends_on: BTreeSet<Address>,
}

impl Resource {
    /// A resource whose dependencies are its references plus `also_after`.
    pub fn new(address: Address, attrs: Attrs, also_after: &[&Address]) -> Resource {
        let mut depends_on = BTreeSet::new();
        for v in attrs.values() {
            v.refs(&mut depends_on);
        }
        depends_on.extend(also_after.iter().map(|a| (*a).clone()));
        Resource {
            address,
            attrs,
            depends_on,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("{from} depends on {to}, which is not in the graph")]
    MissingDependency { from: Address, to: Address },
    #[error("{0} appears twice in the graph")]
    Duplicate(Address),
    #[error("dependency cycle through {0}")]
    Cycle(Address),
}

/// Resources and their dependency edges (dependency -> dependant).
#[derive(Debug, Clone)]
pub struct ResourceGraph {
    dag: DiGraph<Resource, ()>,
    by_address: HashMap<Address, NodeIndex>,
    order: Vec<NodeIndex>,
}

impl ResourceGraph {
    pub fn from_resources(resources: Vec<Resource>) -> Result<ResourceGraph, GraphError> {
        let mut dag = DiGraph::new();
        let mut by_address = HashMap::new();
        for r in resources {
            let address = r.address.clone();
            let idx = dag.add_node(r);
            if by_address.insert(address.clone(), idx).is_some() {
                return Err(GraphError::Duplicate(address));
            }
        }
        for idx in dag.node_indices().collect::<Vec<_>>() {
            for dep in dag[idx].depends_on.clone() {
                let from = *by_address
                    .get(&dep)
                    .ok_or_else(|| GraphError::MissingDependency {
                        from: dag[idx].address.clone(),
                        to: dep.clone(),
                    })?;
                dag.add_edge(from, idx, ());
            }
        }
        let order = petgraph::algo::toposort(&dag, None)
            .map_err(|c| GraphError::Cycle(dag[c.node_id()].address.clone()))?;
        Ok(ResourceGraph {
            dag,
            by_address,
            order,
        })
    }

    /// Resources with every dependency before its dependants.
    pub fn in_order(&self) -> impl Iterator<Item = &Resource> {
        self.order.iter().map(|i| &self.dag[*i])
    }

    pub fn get(&self, address: &Address) -> Option<&Resource> {
        self.by_address.get(address).map(|i| &self.dag[*i])
    }

    pub fn len(&self) -> usize {
        self.dag.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.dag.node_count() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: Kind, name: &str, refs: &[&Address]) -> Resource {
        let mut attrs = Attrs::new();
        for (i, r) in refs.iter().enumerate() {
            attrs.insert(format!("ref{i}"), Value::reference(r));
        }
        Resource::new(Address::new(kind, name), attrs, &[])
    }

    #[test]
    fn references_become_edges_and_order() {
        let vpc = Address::new(Kind::Vpc, "main");
        let subnet = Address::new(Kind::Subnet, "main");
        let g = ResourceGraph::from_resources(vec![
            res(Kind::Instance, "primary", &[&subnet]),
            res(Kind::Subnet, "main", &[&vpc]),
            res(Kind::Vpc, "main", &[]),
        ])
        .unwrap();
        let order: Vec<String> = g.in_order().map(|r| r.address.to_string()).collect();
        assert_eq!(
            order,
            ["aws_vpc.main", "aws_subnet.main", "aws_instance.primary"]
        );
    }

    #[test]
    fn missing_dependency_and_cycle_are_errors() {
        let vpc = Address::new(Kind::Vpc, "main");
        let err =
            ResourceGraph::from_resources(vec![res(Kind::Subnet, "main", &[&vpc])]).unwrap_err();
        assert!(matches!(err, GraphError::MissingDependency { .. }));
        let a = Address::new(Kind::Vpc, "a");
        let b = Address::new(Kind::Vpc, "b");
        let err = ResourceGraph::from_resources(vec![
            res(Kind::Vpc, "a", &[&b]),
            res(Kind::Vpc, "b", &[&a]),
        ])
        .unwrap_err();
        assert!(matches!(err, GraphError::Cycle(_)));
    }

    #[test]
    fn address_round_trips() {
        for text in ["aws_instance.replica[12]", "aws_vpc.main"] {
            let a: Address = text.parse().unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert!("aws_nothing.x".parse::<Address>().is_err());
        assert!("aws_instance.replica[x]".parse::<Address>().is_err());
    }
}
