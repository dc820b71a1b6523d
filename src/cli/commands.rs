//! One function per command: load, call the engine, print. No logic of their own.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::report::Style;
use super::{
    ApplyArgs, Cli, Command, DestroyArgs, ExportCommand, Global, Layer, Outcome, PlanArgs, RunArgs,
    StateCommand,
};
use crate::engine::{self, Interrupt};
use crate::ops::{self, Approval, Cluster, Layer as OpsLayer};
use crate::plan::{self, Plan};
use crate::spec;
use crate::state;

pub async fn run(cli: Cli) -> Result<Outcome> {
    let g = &cli.global;
    match cli.command {
        Command::Init { force } => init(g, force),
        Command::Validate { json } => validate(g, json),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&spec::json_schema())?);
            Ok(Outcome::Ok)
        }
        Command::Plan(args) => plan(g, args).await,
        Command::Apply(args) => apply(g, args).await,
        Command::Destroy(args) => destroy(g, args).await,
        Command::Output { name, json } => output(g, name.as_deref(), json),
        Command::Status { json } => {
            super::hosts::status(&load(g)?, json).await?;
            Ok(Outcome::Ok)
        }
        Command::State(cmd) => state_command(g, cmd).await,
        op @ (Command::Switchover { .. }
        | Command::Failover { .. }
        | Command::Restart { .. }
        | Command::Reinit { .. }) => {
            super::ha::operation(&load(g)?, op).await?;
            Ok(Outcome::Ok)
        }
        Command::Export(cmd) => export(g, cmd),
        Command::Cost(args) => super::cost::cost(&load(g)?, args),
        Command::Pricing(super::PricingCommand::Refresh { from, out }) => {
            super::cost::refresh(&from, &out)
        }
        Command::Serve(args) => super::serve::serve(args).await,
        Command::Token(cmd) => super::serve::token(cmd),
        Command::ForceUnlock => {
            match states_of(g)?.force_unlock()? {
                Some(holder) => println!("Removed the lock held by {holder}."),
                None => println!("The state was not locked."),
            }
            Ok(Outcome::Ok)
        }
    }
}

fn init(g: &Global, force: bool) -> Result<Outcome> {
    if g.file.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", g.file.display());
    }
    std::fs::write(&g.file, spec::STARTER)
        .with_context(|| format!("cannot write {}", g.file.display()))?;
    println!(
        "Wrote {}. Edit it, then run `pgform validate` and `pgform plan`.",
        g.file.display()
    );
    Ok(Outcome::Ok)
}

fn validate(g: &Global, json: bool) -> Result<Outcome> {
    let result = spec::load_file(&g.file);
    if json {
        let report = match &result {
            Ok(l) => serde_json::json!({"valid": true, "warnings": l.warnings, "problems": []}),
            Err(e) => serde_json::json!({
                "valid": false,
                "warnings": [],
                "problems": if e.problems().is_empty() {
                    vec![serde_json::json!({"message": e.to_string()})]
                } else {
                    e.problems().iter().map(|p| serde_json::json!({
                        "field": p.field,
                        "message": p.message,
                        "fix": p.fix,
                        "line": p.location.map(|l| l.line),
                        "column": p.location.map(|l| l.column),
                    })).collect()
                },
            }),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return match result {
            Ok(_) => Ok(Outcome::Ok),
            Err(_) => bail!("{} is not valid", g.file.display()),
        };
    }
    let loaded = result?;
    print_warnings(&loaded.warnings);
    println!(
        "{} is valid ({:?} format).",
        g.file.display(),
        loaded.format
    );
    Ok(Outcome::Ok)
}

/// The spec file and the state file, loaded; warnings go to stderr.
pub(super) fn load(g: &Global) -> Result<Cluster> {
    let (cluster, warnings) = Cluster::load(&g.file, &g.state_path())?;
    print_warnings(&warnings);
    let states = g.states(&cluster.spec.name)?;
    Ok(cluster.with_states(states))
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

impl From<Layer> for OpsLayer {
    fn from(layer: Layer) -> OpsLayer {
        match layer {
            Layer::Infra => OpsLayer::Infra,
            Layer::Hosts => OpsLayer::Hosts,
        }
    }
}

async fn plan(g: &Global, args: PlanArgs) -> Result<Outcome> {
    let cluster = load(g)?;
    let options = ops::Options {
        only: args.only.map(Into::into),
        events: super::report::ops_reporter(Style::HumanToStderr, false),
        ..ops::Options::default()
    };
    let plan = ops::plan(&cluster, args.destroy, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
    } else {
        print!("{}", plan.render());
    }
    // A plan that could not look at some hosts cannot say "no changes" for them.
    if !plan.not_checked().is_empty() {
        let why = plan.hosts.as_ref().and_then(|h| h.unchecked_reason());
        // A refusal names its own fix; otherwise the hosts did not answer.
        let fix = match why {
            Some(why) if why.contains("fix:") => format!("    {}", why.replace('\n', "\n    ")),
            _ => "    fix: make them reachable over SSH (or `--only infra` to plan the \
                  infrastructure alone)"
                .to_string(),
        };
        bail!(
            "the plan is incomplete: could not check the host(s) {} (see above){}\n{fix}",
            plan.not_checked().join(", "),
            if args.out.is_some() {
                "; the plan was not saved"
            } else {
                ""
            }
        );
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&plan.infra)?)
            .with_context(|| format!("cannot write the plan to {}", out.display()))?;
        if !args.json {
            println!(
                "\nSaved the plan to {0}. To perform exactly these actions, run: pgform apply {0}",
                out.display()
            );
        }
    }
    Ok(if args.detailed_exitcode && plan.has_changes() {
        Outcome::Changes
    } else {
        Outcome::Ok
    })
}

/// Infrastructure first (unless `--only hosts`), then the hosts layer (unless
/// `--only infra`); `--check` changes neither.
async fn apply(g: &Global, args: ApplyArgs) -> Result<Outcome> {
    if args.check && args.plan_file.is_some() {
        bail!("--check shows what would change; it cannot run a saved plan (drop one of them)");
    }
    let cluster = load(g)?;
    if args.check {
        // Listed machines have no infrastructure layer.
        if args.only != Some(Layer::Hosts) && cluster.spec.provider != spec::ProviderKind::Hosts {
            plan(
                g,
                PlanArgs {
                    out: None,
                    detailed_exitcode: false,
                    json: args.run.json,
                    destroy: false,
                    only: Some(Layer::Infra),
                },
            )
            .await?;
        }
        if args.only != Some(Layer::Infra) {
            let options = run_options(&args.run, args.only, true);
            ops::configure(&cluster, true, &options).await?;
        }
        return Ok(Outcome::Ok);
    }
    let approval = match &args.plan_file {
        Some(file) => Approval::Saved(read_plan(file)?),
        None => ask(&args.run, "apply"),
    };
    run_watched(&args.run, args.only, |options| async move {
        ops::apply(&cluster, approval, &options).await.map(drop)
    })
    .await
}

async fn destroy(g: &Global, args: DestroyArgs) -> Result<Outcome> {
    let cluster = load(g)?;
    let approval = ask(&args.run, "destroy");
    run_watched(&args.run, None, |options| async move {
        ops::destroy(&cluster, approval, &options).await.map(drop)
    })
    .await
}

fn run_options(args: &RunArgs, only: Option<Layer>, check: bool) -> ops::Options {
    ops::Options {
        only: only.map(Into::into),
        parallelism: args.parallelism.into(),
        interrupt: Interrupt::default(),
        events: super::report::ops_reporter(
            if args.json { Style::Json } else { Style::Human },
            check,
        ),
    }
}

/// Runs an apply or a destroy while Ctrl-C is watched.
async fn run_watched<F, Fut>(args: &RunArgs, only: Option<Layer>, run: F) -> Result<Outcome>
where
    F: FnOnce(ops::Options) -> Fut,
    Fut: std::future::Future<Output = Result<(), ops::OpsError>>,
{
    let options = run_options(args, only, false);
    let watcher = tokio::spawn(stop_on_ctrl_c(options.interrupt.clone()));
    let result = run(options).await;
    watcher.abort();
    result?;
    Ok(Outcome::Ok)
}

/// First Ctrl-C: start nothing new, let running operations finish and be recorded.
/// Second: stop at once (the state already records every id the cloud returned).
async fn stop_on_ctrl_c(interrupt: Interrupt) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupt.trigger();
    eprintln!(
        "\nInterrupt received: waiting for running operations to finish; nothing new starts.\n\
         Press Ctrl-C again to stop at once (a rerun converges either way)."
    );
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("Stopped.");
        std::process::exit(130);
    }
}

/// The approval of `apply`/`destroy` without a saved plan: show the plan, then go
/// ahead when there is something to do and the answer is yes (or --auto-approve).
fn ask(args: &RunArgs, verb: &'static str) -> Approval {
    let (auto_approve, json) = (args.auto_approve, args.json);
    Approval::Ask(Box::new(move |plan: &Plan| {
        confirm(plan, auto_approve, json, verb).map_err(|e| e.to_string())
    }))
}

fn confirm(plan: &Plan, auto_approve: bool, json: bool, verb: &str) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "plan", "summary": plan.summary(), "changes": plan.changes.len()})
        );
    } else {
        print!("{}", plan::render(plan));
    }
    if !plan.has_changes() || auto_approve {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "{verb} needs approval, and standard input is not a terminal: review the plan and pass --auto-approve, or save it with `pgform plan --out FILE` and run `pgform apply FILE`"
        );
    }
    print!(
        "\nDo you want to perform these actions? Only 'yes' will be accepted.\n  Enter a value: "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        // An error, as in Terraform: a pipeline must not go on as if it had applied.
        bail!("{verb} cancelled; nothing was changed");
    }
    Ok(())
}

fn read_plan(file: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the plan {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a plan saved by `pgform plan --out`",
            file.display()
        )
    })
}

fn output(g: &Global, name: Option<&str>, json: bool) -> Result<Outcome> {
    // The state alone has the outputs when the spec cannot be read.
    let outputs = match load(g) {
        Ok(cluster) => ops::outputs(&cluster)?,
        Err(_) => ops::outputs_at(None, &*states_of(g)?)?,
    };
    match name {
        Some(name) => {
            let value = outputs.get(name).with_context(|| {
                let names: Vec<&str> = outputs.keys().map(String::as_str).collect();
                format!(
                    "no output named `{name}`; the outputs are: {}",
                    names.join(", ")
                )
            })?;
            match (json, value.as_str()) {
                (false, Some(s)) => println!("{s}"),
                _ => println!("{}", serde_json::to_string_pretty(value)?),
            }
        }
        None if json => println!("{}", serde_json::to_string_pretty(&outputs)?),
        None => super::report::print_outputs(&outputs),
    }
    Ok(Outcome::Ok)
}

/// Where the state is kept. A state file needs no spec (it is read when the spec
/// cannot be); a store's state is found by the spec's cluster name.
fn states_of(g: &Global) -> Result<Arc<dyn state::Backend>> {
    match Cluster::load(&g.file, &g.state_path()) {
        Ok((cluster, _)) => g.states(&cluster.spec.name),
        Err(_) if g.state_store()?.is_none() => {
            Ok(Arc::new(state::FileStates::new(&g.state_path())))
        }
        Err(e) => Err(e.into()),
    }
}

async fn state_command(g: &Global, cmd: StateCommand) -> Result<Outcome> {
    let states = &states_of(g)?;
    match cmd {
        StateCommand::List => {
            if let Some(state) = states.read()? {
                for (address, r) in &state.resources {
                    println!(
                        "{address}\t{}",
                        r.id.as_deref().unwrap_or("(being created)")
                    );
                }
            }
        }
        StateCommand::Show { address } => {
            let address: crate::graph::Address = address.parse().map_err(anyhow::Error::msg)?;
            let state = states
                .read()?
                .with_context(|| format!("{} does not exist yet", states.place()))?;
            let r = state.resources.get(&address).with_context(|| {
                format!("{address} is not in the state; `pgform state list` shows what is")
            })?;
            println!("{}", serde_json::to_string_pretty(r)?);
        }
        StateCommand::Rebuild { force } => {
            let spec = load(g)?.spec;
            let mut store = states.lock("state rebuild")?;
            let existing = store.load_or_new(&spec.name)?;
            if !existing.resources.is_empty() && !force {
                bail!(
                    "{} already records {} resource(s); pass --force to replace it",
                    states.place(),
                    existing.resources.len()
                );
            }
            let provider = ops::provider(&spec).await?;
            let mut rebuilt = engine::rebuild(&*provider, &spec).await?;
            rebuilt.lineage = existing.lineage;
            rebuilt.serial = existing.serial;
            store.save(&mut rebuilt)?;
            println!(
                "Rebuilt {} from tags: {} resource(s).",
                states.place(),
                rebuilt.resources.len()
            );
            for a in rebuilt.resources.keys() {
                println!("  {a}");
            }
        }
    }
    Ok(Outcome::Ok)
}

/// `pgform export terraform|ansible|all DIR`: everything is rendered first, then
/// written all at once, so a failed export writes nothing.
fn export(g: &Global, cmd: ExportCommand) -> Result<Outcome> {
    use crate::export::{self, Files, ansible};
    let cluster = load(g)?;
    let spec = &cluster.spec;
    let ansible_files = |terraform_dir: &str| -> Result<Files> {
        let state = cluster.read_state()?;
        let inventory = ansible::choose_inventory(spec, &state, terraform_dir)?;
        println!("Inventory: {}", inventory.describe());
        // The playbook copies the certificates from pgform's TLS folder: make them now
        // for the machines known (keys stay there, never in the export).
        if let ansible::Inventory::Hosts(nodes) = &inventory {
            crate::hosts::prepare_tls(spec, nodes)?;
        }
        Ok(ansible::export(spec, &inventory)?)
    };
    let sets: Vec<(PathBuf, Files)> = match cmd {
        ExportCommand::Terraform { dir } => vec![(dir, export::terraform::export(spec)?)],
        ExportCommand::Ansible { dir, terraform_dir } => {
            let tf = terraform_dir.to_string_lossy().into_owned();
            vec![(dir, ansible_files(&tf)?)]
        }
        ExportCommand::All { dir } => vec![
            (dir.join("terraform"), export::terraform::export(spec)?),
            (dir.join("ansible"), ansible_files("../terraform")?),
        ],
    };
    let refs: Vec<(&Path, &Files)> = sets.iter().map(|(d, f)| (d.as_path(), f)).collect();
    export::write_sets(&refs)?;
    for (dir, files) in &sets {
        println!("Wrote {} file(s) to {}:", files.len(), dir.display());
        for name in files.keys() {
            println!("  {}", name.display());
        }
    }
    Ok(Outcome::Ok)
}
