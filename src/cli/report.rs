//! Shows engine events: one line per step, Terraform's wording, or JSON lines.

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

/// Shows task-list events: one line per task and host as it finishes (skipped tasks
/// stay quiet), the diff of files when `diffs`; or JSON lines.
pub fn task_reporter(style: Style, diffs: bool) -> crate::tasks::Sink {
    use crate::tasks::{TaskEvent, TaskStatus};
    Arc::new(move |e: &TaskEvent| {
        if style == Style::Json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["event"] = "task".into();
            println!("{v}");
            return;
        }
        let word = match e.status {
            TaskStatus::Skipped => return,
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
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}
