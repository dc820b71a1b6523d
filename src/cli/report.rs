//! Shows engine events: one line per step, Terraform's wording, or JSON lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use crate::engine::{Event, EventSink};

/// Where progress goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Human lines on stdout.
    Human,
    /// Human lines on stderr (when stdout carries JSON).
    HumanToStderr,
    /// One JSON object per event on stdout.
    Json,
}

pub fn reporter(style: Style) -> EventSink {
    Arc::new(move |event: &Event| {
        let line = match style {
            Style::Json => serde_json::to_string(event).unwrap_or_default(),
            _ => human(event),
        };
        if style == Style::HumanToStderr
            || matches!(event, Event::Failed { .. }) && style == Style::Human
        {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    })
}

fn human(event: &Event) -> String {
    match event {
        Event::Refreshing { resources } => {
            format!("Refreshing the state of {resources} resource(s)...")
        }
        Event::Started { address, op } => format!("{address}: {}...", op.progressive()),
        Event::StillRunning {
            address,
            op,
            elapsed_secs,
        } => format!(
            "{address}: Still {}... [{elapsed_secs}s elapsed]",
            op.progressive().to_lowercase()
        ),
        Event::Finished {
            address,
            op,
            elapsed_secs,
            id,
        } => {
            let id = id
                .as_deref()
                .map(|i| format!(" [id={i}]"))
                .unwrap_or_default();
            format!(
                "{address}: {} complete after {elapsed_secs}s{id}",
                op.noun()
            )
        }
        Event::Failed { address, op, error } => {
            format!("{address}: {} failed: {error}", op.noun())
        }
        Event::Skipped { address, op } => {
            format!(
                "{address}: {} not attempted: a resource it depends on failed",
                op.noun()
            )
        }
    }
}

/// Shows an operation's events: resources as [`reporter`] does, each task as it
/// finishes on a host (file diffs when `diffs`), the recap, the verification; or JSON
/// lines.
pub fn ops_reporter(style: Style, diffs: bool) -> crate::ops::Sink {
    use crate::ops::Event as E;
    let resources = reporter(style);
    Arc::new(move |event: &E| {
        if style == Style::Json {
            // A resource event is printed as the engine's reporter prints it.
            match event {
                E::Resource(e) => resources(e),
                // Human progress only: the hosts appear in every task line.
                E::HostsStarted { .. } => {}
                _ => println!("{}", serde_json::to_value(event).unwrap_or_default()),
            }
            return;
        }
        let text = match event {
            E::Resource(e) => return resources(e),
            E::InfraDone {
                destroy,
                report,
                outputs,
            } => {
                let mut text = format!(
                    "\n{} complete! Resources: {} added, {} changed, {} destroyed.",
                    if *destroy { "Destroy" } else { "Apply" },
                    report.created,
                    report.updated,
                    report.deleted
                );
                if let Some(outputs) = outputs {
                    text.push_str("\n\nOutputs:\n\n");
                    text.push_str(outputs_text(outputs).trim_end());
                }
                text
            }
            E::HostsStarted { check, hosts } => format!(
                "\n{} {} host(s): {}",
                if *check { "Checking" } else { "Configuring" },
                hosts.len(),
                hosts
                    .iter()
                    .map(|(name, address)| format!("{name} ({address})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            E::Task(t) => match task_line(t, diffs) {
                Some(line) => line,
                None => return,
            },
            E::Recap { check, recap } => {
                let mut text = String::from("\nRecap:");
                for (host, c) in &recap.hosts {
                    text.push_str(&format!(
                        "\n  {host:<11} ok={} {}={} failed={} skipped={}",
                        c.ok,
                        if *check { "would_change" } else { "changed" },
                        c.changed,
                        c.failed,
                        c.skipped
                    ));
                }
                text
            }
            E::Verified(v) => {
                let mut text = format!(
                    "\nVerified: every replica streams; a row written on the primary reached them in {:.1}s.",
                    v.row_seconds
                );
                for (name, state, sync) in &v.replicas {
                    text.push_str(&format!("\n  {name:<11} {state} ({sync})"));
                }
                if let Some(app) = &v.application {
                    text.push_str(&format!(
                        "\n  user {} wrote in database {} on the primary; user {} read it on every replica.",
                        app.writer, app.database, app.reader
                    ));
                }
                text
            }
        };
        if style == Style::HumanToStderr {
            let _ = writeln!(std::io::stderr(), "{text}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    })
}

/// One task on one host as it finished (skipped tasks stay quiet).
fn task_line(e: &crate::tasks::TaskEvent, diffs: bool) -> Option<String> {
    use crate::tasks::TaskStatus;
    let word = match e.status {
        TaskStatus::Skipped => return None,
        TaskStatus::Ok => "ok",
        TaskStatus::Changed => "changed",
        TaskStatus::WouldChange => "would change",
        TaskStatus::Failed => "FAILED",
    };
    let mut line = format!(
        "  {:<11} {:<13} {} ({:.1}s)",
        e.host, word, e.task, e.seconds
    );
    if let Some(s) = &e.summary {
        line.push_str(&format!(": {s}"));
    }
    if let Some(err) = &e.error {
        line.push_str(&format!("\n      {}", err.replace('\n', "\n      ")));
    }
    if diffs && let Some(d) = &e.diff {
        for l in d.lines() {
            line.push_str(&format!("\n      {l}"));
        }
    }
    Some(line)
}

/// `name = "value"` lines, values that are not strings as pretty JSON.
pub fn outputs_text(outputs: &BTreeMap<String, serde_json::Value>) -> String {
    let mut text = String::new();
    for (k, v) in outputs {
        match v.as_str() {
            Some(s) => text.push_str(&format!("{k} = {s:?}\n")),
            None => text.push_str(&format!(
                "{k} = {}\n",
                serde_json::to_string_pretty(v).unwrap_or_default()
            )),
        }
    }
    text
}

pub fn print_outputs(outputs: &BTreeMap<String, serde_json::Value>) {
    print!("{}", outputs_text(outputs));
}
