//! pgform: a PostgreSQL primary with streaming replicas, from one desired-state file,
//! through a reviewed plan, with no Terraform or Ansible binary.
//!
//! # Code map (the pipeline, in order)
//! - [`spec`]: the desired-state file (TOML, JSON, the old API's flat JSON), defaults,
//!   validation with located errors, secrets. No I/O beyond reading the file.
//! - [`graph`]: addresses, attribute values, the resource graph built from a spec, and
//!   the dependency walker. Pure.
//! - [`state`]: what was made, as last seen; the on-disk file, its lock and backups.
//! - [`plan`]: the diff of graph against refreshed state (pure), and its rendering.
//! - [`provider`]: the [`provider::Provider`] trait; `aws` (EC2), `docker` (local
//!   containers) and `memory`.
//! - [`engine`]: the operations — refresh, plan, apply, destroy, rebuild — with progress
//!   [`engine::Event`]s. Apply executes a plan and nothing else.
//! - [`hosts`]: the hosts layer — inventory, per-host variables, [`hosts::configure`]
//!   (the embedded task list), [`hosts::verify`] and [`hosts::status`].
//! - [`tasks`]: the task-list interpreter (query, then act; check mode; handlers).
//! - [`tls`]: the cluster CA and node certificates kept beside the state (set
//!   `spec.tls.dir` before [`hosts::configure`] when TLS is on; the CLI does).
//! - [`remote`]: SSH sessions and the one place that builds shell text.
//! - [`cost`]: the monthly cost of a graph, a state or a plan, from the embedded AWS
//!   price table (or a refreshed price file). Pure.
//! - [`ops`]: the cluster operations every front end calls — plan (both layers and the
//!   cost), apply (infrastructure, then the hosts), destroy, status, outputs — over a
//!   spec, its state file, options and an event sink.
//! - [`serve`]: `pgform serve`, the HTTP service: runs (plan, confirm, apply,
//!   destroy) kept in SQLite with their events, executed over [`ops`].
//! - [`cli`]: the command line, a thin front end over [`ops`].
//!
//! # Embedding
//! A service runs the same operations as the CLI: plan both layers, show the plan, have
//! it approved, apply it (infrastructure, then PostgreSQL on the hosts, then the check
//! that every replica streams), with every step as an [`ops::Event`]:
//!
//! ```no_run
//! use std::path::Path;
//! use std::sync::Arc;
//! use pgform::ops::{self, Approval, Cluster, Event, Options};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (cluster, warnings) = Cluster::load(Path::new("cluster.toml"), Path::new("cluster.pgstate.json"))?;
//! let options = Options {
//!     // One JSON object per event: resources, tasks per host, the recap, the check.
//!     events: Arc::new(|e: &Event| println!("{}", serde_json::to_string(e).unwrap_or_default())),
//!     ..Options::default()
//! };
//! let plan = ops::plan(&cluster, false, &options).await?;
//! print!("{}", plan.render());
//! if plan.has_changes() {
//!     // Approve exactly this infrastructure plan: refused if the state moved since.
//!     let applied = ops::apply(&cluster, Approval::Saved(plan.infra), &options).await?;
//!     println!("{}", serde_json::to_string_pretty(&applied)?);
//!     println!("{}", serde_json::to_string_pretty(&ops::outputs(&cluster)?)?);
//! }
//! # let _ = warnings;
//! # Ok(())
//! # }
//! ```
//!
//! The engine alone (the infrastructure layer) can be driven step by step. This example
//! runs on the in-memory provider; with AWS, use
//! `pgform::provider::aws::AwsProvider::from_env(&spec.region).await` instead.
//!
//! ```
//! use std::sync::Arc;
//! use pgform::engine::{self, ApplyOptions, Event};
//! use pgform::plan::Action;
//! use pgform::provider::memory::MemoryProvider;
//! use pgform::state::StateStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let spec_path = dir.path().join("cluster.toml");
//! # std::fs::write(&spec_path, "name = \"demo\"\nregion = \"us-east-1\"\n[ssh]\nkey_name = \"ops\"\n")?;
//! let spec = pgform::spec::load_file(&spec_path)?.spec;
//! let provider = MemoryProvider::new();
//!
//! let mut store = StateStore::lock(&dir.path().join("demo.pgstate.json"), "apply")?;
//! let state = store.load_or_new(&spec.name)?;
//! let plan = engine::plan(&provider, &spec, &state, &engine::no_events()).await?;
//! assert!(plan.changes.iter().all(|c| c.action == Action::Create));
//! println!("{}", pgform::plan::render(&plan));
//!
//! // Progress arrives as events; `options.interrupt.trigger()` (from another task, e.g.
//! // on shutdown) stops the apply cleanly: running steps finish and are recorded.
//! let options = ApplyOptions {
//!     parallelism: 10,
//!     events: Arc::new(|event: &Event| eprintln!("{event:?}")),
//!     ..ApplyOptions::default()
//! };
//! let (state, report) = engine::apply(&provider, &plan, &mut store, state, &options).await?;
//! assert_eq!(report.created, plan.changes.len());
//! println!("{}", serde_json::to_string_pretty(&engine::outputs(&state, Some(&spec)))?);
//! # Ok(())
//! # }
//! ```
//!
//! [`ops::configure`] then runs the hosts layer on what the state records.

pub mod cli;
pub mod cost;
pub mod engine;
pub mod export;
pub mod graph;
pub mod hosts;
pub mod ops;
pub mod plan;
pub mod provider;
pub mod remote;
pub mod serve;
pub mod spec;
pub mod state;
pub mod tasks;
pub mod tls;
