//! Human rendering of plans, in the shape Terraform users read every day. Lists and
//! maps are printed one element a line and diffed line by line (similar), so a one-rule
//! change in a security group shows as one `+` and one `-`.

use std::fmt::Write;

use similar::{ChangeTag, TextDiff};

use super::{Action, AttrChange, Change, Drift, Plan};
use crate::graph::Value;

/// The whole plan: drift first, then changes, then the summary line.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    if !plan.drift.is_empty() {
        out.push_str(&render_drift(&plan.drift));
        out.push('\n');
    }
    if !plan.has_changes() {
        out.push_str("No changes. The infrastructure matches the spec.\n");
        return out;
    }
    out.push_str("pgform will perform the following actions:\n");
    for change in &plan.changes {
        out.push('\n');
        render_change(&mut out, change);
    }
    let _ = writeln!(out, "\nPlan: {}.", plan.summary());
    out
}

/// Changes made outside pgform, found by refresh.
pub fn render_drift(drift: &[Drift]) -> String {
    let mut out =
        String::from("Note: objects have changed outside of pgform since the last apply:\n");
    for d in drift {
        if d.deleted {
            let _ = writeln!(out, "\n  # {} has been deleted", d.address);
        } else {
            let _ = writeln!(out, "\n  # {} has changed", d.address);
            for a in &d.attrs {
                render_attr(&mut out, a, Action::Update);
            }
        }
    }
    out
}

fn render_change(out: &mut String, c: &Change) {
    let what = match c.action {
        Action::Create => "will be created".to_string(),
        Action::Update => format!("will be updated in place ({})", c.reason),
        Action::Replace => format!("must be replaced ({})", c.reason),
        Action::Delete => format!("will be destroyed ({})", c.reason),
    };
    let _ = writeln!(out, "  # {} {what}", c.address);
    let name = match c.address.index {
        Some(i) => format!("{}[{i}]", c.address.name),
        None => c.address.name.clone(),
    };
    let _ = writeln!(
        out,
        "{:>3} resource \"{}\" \"{name}\" {{",
        c.action.symbol(),
        c.address.kind
    );
    if let (Some(id), Action::Update | Action::Replace) = (&c.id, c.action) {
        let _ = writeln!(out, "        id = {id:?}");
    }
    let width = c.attrs.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for a in &c.attrs {
        render_attr_aligned(out, a, c.action, width);
    }
    out.push_str("    }\n");
}

fn render_attr(out: &mut String, a: &AttrChange, action: Action) {
    render_attr_aligned(out, a, action, a.name.len())
}

fn render_attr_aligned(out: &mut String, a: &AttrChange, action: Action, width: usize) {
    let name = format!("{:<width$}", a.name);
    let forces = if a.forces_replacement {
        " # forces replacement"
    } else {
        ""
    };
    match (&a.before, &a.after) {
        (None, Some(v)) => block(out, "+", &name, v, ""),
        (Some(v), None) => block(out, "-", &name, v, ""),
        (Some(b), Some(v)) if action == Action::Create || action == Action::Delete || b == v => {
            block(out, action_symbol(action), &name, v, "")
        }
        (Some(b), Some(v)) if is_multiline(b) || is_multiline(v) => {
            let _ = writeln!(out, "      ~ {name} = {}", open_of(v));
            let (before, after) = (lines_of(b), lines_of(v));
            let before: Vec<&str> = before.iter().map(String::as_str).collect();
            let after: Vec<&str> = after.iter().map(String::as_str).collect();
            let diff = TextDiff::from_slices(&before, &after);
            for change in diff.iter_all_changes() {
                let sign = match change.tag() {
                    ChangeTag::Delete => "- ",
                    ChangeTag::Insert => "+ ",
                    ChangeTag::Equal => "  ",
                };
                let _ = writeln!(out, "          {sign}{},", change.value());
            }
            let _ = writeln!(out, "        {}{forces}", close_of(v));
        }
        (Some(b), Some(v)) => {
            let _ = writeln!(out, "      ~ {name} = {b} -> {v}{forces}");
        }
        (None, None) => {}
    }
}

fn action_symbol(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Delete => "-",
        _ => " ",
    }
}

/// An attribute printed whole: scalars on one line, lists and maps one element a line.
fn block(out: &mut String, sign: &str, name: &str, v: &Value, suffix: &str) {
    if is_multiline(v) && !lines_of(v).is_empty() {
        let _ = writeln!(out, "      {sign} {name} = {}", open_of(v));
        for line in lines_of(v) {
            let _ = writeln!(out, "          {line},");
        }
        let _ = writeln!(out, "        {}{suffix}", close_of(v));
    } else {
        let _ = writeln!(out, "      {sign} {name} = {v}{suffix}");
    }
}

fn is_multiline(v: &Value) -> bool {
    matches!(v, Value::List(_) | Value::Map(_))
}

fn lines_of(v: &Value) -> Vec<String> {
    match v {
        Value::List(l) => l.iter().map(|e| e.to_string()).collect(),
        Value::Map(m) => m.iter().map(|(k, e)| format!("{k:?} = {e}")).collect(),
        other => vec![other.to_string()],
    }
}

fn open_of(v: &Value) -> &'static str {
    if matches!(v, Value::Map(_)) { "{" } else { "[" }
}

fn close_of(v: &Value) -> &'static str {
    if matches!(v, Value::Map(_)) { "}" } else { "]" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PLAN_FORMAT_VERSION, Plan};

    fn rule(cidr: &str) -> Value {
        let mut m = std::collections::BTreeMap::new();
        m.insert("cidr".into(), Value::str(cidr));
        m.insert("port".into(), Value::Int(5432));
        Value::Map(m)
    }

    #[test]
    fn list_change_is_a_line_diff_and_replacement_says_why() {
        let plan = Plan {
            format_version: PLAN_FORMAT_VERSION,
            cluster: "demo".into(),
            lineage: "l".into(),
            serial: 1,
            destroy: false,
            drift: vec![],
            prior: Default::default(),
            changes: vec![
                Change {
                    address: "aws_security_group.main".parse().unwrap(),
                    action: Action::Update,
                    reason: "ingress can change in place".into(),
                    id: Some("sg-1".into()),
                    attrs: vec![AttrChange {
                        name: "ingress".into(),
                        before: Some(Value::List(vec![rule("10.0.0.0/16"), rule("10.1.0.0/16")])),
                        after: Some(Value::List(vec![rule("10.0.0.0/16"), rule("10.2.0.0/16")])),
                        forces_replacement: false,
                    }],
                    desired: None,
                },
                Change {
                    address: "aws_instance.replica[1]".parse().unwrap(),
                    action: Action::Replace,
                    reason: "ami forces replacement".into(),
                    id: Some("i-1".into()),
                    attrs: vec![AttrChange {
                        name: "ami".into(),
                        before: Some(Value::str("ami-1")),
                        after: Some(Value::str("ami-2")),
                        forces_replacement: true,
                    }],
                    desired: None,
                },
            ],
        };
        let text = render(&plan);
        assert!(
            text.contains(
                "  # aws_security_group.main will be updated in place (ingress can change in place)"
            ),
            "{text}"
        );
        assert!(
            text.contains("- { \"cidr\" = \"10.1.0.0/16\", \"port\" = 5432 },"),
            "{text}"
        );
        assert!(
            text.contains("+ { \"cidr\" = \"10.2.0.0/16\", \"port\" = 5432 },"),
            "{text}"
        );
        assert!(
            text.contains("  { \"cidr\" = \"10.0.0.0/16\", \"port\" = 5432 },"),
            "{text}"
        );
        assert!(
            text.contains("-/+ resource \"aws_instance\" \"replica[1]\" {"),
            "{text}"
        );
        assert!(
            text.contains("~ ami = \"ami-1\" -> \"ami-2\" # forces replacement"),
            "{text}"
        );
        assert!(
            text.contains("Plan: 1 to add, 1 to change, 1 to destroy."),
            "{text}"
        );
    }
}
