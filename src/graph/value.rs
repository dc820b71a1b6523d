use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Address;

/// An attribute value. `Ref` points at another node's id and is what makes a graph edge;
/// `Unknown` stands, in a plan, for a value known only after apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Ref {
        #[serde(rename = "$ref")]
        target: Address,
    },
    Unknown {
        #[serde(rename = "$unknown")]
        unknown: bool,
    },
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// A resource's attributes, sorted by name.
pub type Attrs = BTreeMap<String, Value>;

impl Value {
    pub fn unknown() -> Value {
        Value::Unknown { unknown: true }
    }
    pub fn reference(target: &Address) -> Value {
        Value::Ref {
            target: target.clone(),
        }
    }
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_list(&self) -> &[Value] {
        match self {
            Value::List(l) => l,
            _ => &[],
        }
    }
    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn is_known(&self) -> bool {
        match self {
            Value::Unknown { .. } | Value::Ref { .. } => false,
            Value::List(l) => l.iter().all(Value::is_known),
            Value::Map(m) => m.values().all(Value::is_known),
            _ => true,
        }
    }

    /// Every node this value refers to.
    pub fn refs(&self, out: &mut BTreeSet<Address>) {
        match self {
            Value::Ref { target } => {
                out.insert(target.clone());
            }
            Value::List(l) => l.iter().for_each(|v| v.refs(out)),
            Value::Map(m) => m.values().for_each(|v| v.refs(out)),
            _ => {}
        }
    }

    /// Replaces each reference with what `lookup` says of its target; an absent target
    /// becomes `Unknown`.
    pub fn resolve(&self, lookup: &dyn Fn(&Address) -> Option<String>) -> Value {
        match self {
            Value::Ref { target } => lookup(target)
                .map(Value::Str)
                .unwrap_or_else(Value::unknown),
            Value::List(l) => Value::List(l.iter().map(|v| v.resolve(lookup)).collect()),
            Value::Map(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.resolve(lookup)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

impl fmt::Display for Value {
    /// HCL-like rendering, used in plans.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Ref { target } => write!(f, "{target}.id"),
            Value::Unknown { .. } => f.write_str("(known after apply)"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{ ")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k:?} = {v}")?;
                }
                f.write_str(" }")
            }
        }
    }
}
