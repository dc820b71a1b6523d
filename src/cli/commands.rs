//! One function per command: load, call the engine, print. No logic of their own.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::report::{Style, reporter};
use super::{
    ApplyArgs, Cli, Command, DestroyArgs, ExportCommand, Global, Layer, Outcome, PlanArgs, RunArgs,
    StateCommand,
};
use crate::engine::{self, ApplyOptions, Interrupt};
use crate::graph::Kind;
use crate::plan::{self, Plan};
use crate::provider::Provider;
use crate::provider::aws::AwsProvider;
use crate::provider::docker::DockerProvider;
use crate::provider::memory::MemoryProvider;
use crate::spec::{self, ClusterSpec, ProviderKind};
use crate::state::{self, State, StateStore};

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
            let spec = load_spec(g)?;
            let state = read_state(&g.state_path(), &spec.name)?;
            super::hosts::status(&spec, &state, &g.state_path(), json).await?;
            Ok(Outcome::Ok)
        }
        Command::State(cmd) => state_command(g, cmd).await,
        op @ (Command::Switchover { .. } | Command::Failover { .. } | Command::Restart { .. }) => {
            let spec = load_spec(g)?;
            let state = read_state(&g.state_path(), &spec.name)?;
            super::ha::operation(&spec, &state, &g.state_path(), op).await?;
            Ok(Outcome::Ok)
        }
        Command::Export(cmd) => export(g, cmd),
        Command::Cost(args) => super::cost::cost(g, &load_spec(g)?, args),
        Command::Pricing(super::PricingCommand::Refresh { from, out }) => {
            super::cost::refresh(&from, &out)
        }
        Command::Serve(args) => super::serve::serve(args).await,
        Command::Token(cmd) => super::serve::token(cmd),
        Command::ForceUnlock => {
            match state::force_unlock(&g.state_path())? {
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

pub(super) fn load_spec(g: &Global) -> Result<ClusterSpec> {
    let loaded = spec::load_file(&g.file)?;
    print_warnings(&loaded.warnings);
    Ok(with_tls_dir(g, loaded.spec))
}

/// The spec with its TLS folder as an absolute path (outputs hand it to clients that
/// run elsewhere): the one it names, relative to the spec file, else `<cluster>.tls`
/// beside the state.
fn with_tls_dir(g: &Global, mut spec: ClusterSpec) -> ClusterSpec {
    let dir = match spec.tls.dir.take() {
        Some(d) => {
            let d = crate::spec::expand_home(&d);
            match g.file.parent() {
                Some(base) if d.is_relative() => base.join(d),
                _ => d,
            }
        }
        None => crate::tls::default_dir(&g.state_path(), &spec.name),
    };
    spec.tls.dir = Some(std::path::absolute(&dir).unwrap_or(dir));
    spec
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

/// The provider the spec names. Listed hosts need none: their graph is empty, and an
/// in-memory provider answers its (empty) refresh.
async fn provider(spec: &ClusterSpec) -> Result<Box<dyn Provider>> {
    Ok(match spec.provider {
        ProviderKind::Aws => Box::new(AwsProvider::from_env(&spec.region).await),
        ProviderKind::Docker => Box::new(DockerProvider::from_env().await?),
        ProviderKind::Hosts => Box::new(MemoryProvider::new()),
    })
}

/// The state as it is on disk (no lock: reading is safe, writes are atomic).
fn read_state(path: &Path, cluster: &str) -> Result<State> {
    match state::read(path)? {
        Some(s) if s.cluster != cluster => bail!(
            "{} belongs to cluster `{}`, but the spec is for `{cluster}`; pass --state to pick another file",
            path.display(),
            s.cluster
        ),
        Some(s) => Ok(s),
        None => Ok(State::new(cluster)),
    }
}

async fn plan(g: &Global, args: PlanArgs) -> Result<Outcome> {
    let spec = load_spec(g)?;
    let state = read_state(&g.state_path(), &spec.name)?;
    let provider = provider(&spec).await?;
    let events = reporter(Style::HumanToStderr);
    let plan = if args.destroy {
        engine::plan_destroy(&*provider, &state, &events).await?
    } else {
        engine::plan(&*provider, &spec, &state, &events).await?
    };
    // The hosts layer joins the plan: the task list in check mode, where hosts exist and
    // the plan leaves their machines as they are (new ones are reported as not made).
    let machines: Vec<String> = plan
        .changes
        .iter()
        .filter(|c| matches!(c.address.kind, Kind::Instance | Kind::DockerContainer))
        .filter(|c| matches!(c.action, plan::Action::Update | plan::Action::Replace))
        .map(|c| c.address.to_string())
        .collect();
    let hosts = if args.destroy || args.only == Some(Layer::Infra) {
        None
    } else if !machines.is_empty() && args.only != Some(Layer::Hosts) {
        Some(super::hosts::HostPlan::AfterMachines(machines))
    } else {
        Some(super::hosts::plan_hosts(&spec, &state, &g.state_path()).await)
    };
    // The monthly cost before and after (cloud providers only; spec and state only).
    let cost = super::cost::plan_cost(g, &spec, &plan)?;
    if args.json {
        let mut doc = serde_json::to_value(&plan)?;
        if let Some(h) = &hosts {
            doc["hosts"] = h.to_json();
        }
        if let Some(c) = &cost {
            doc["cost"] = serde_json::to_value(c)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        if args.only != Some(Layer::Hosts) {
            print!("{}", plan::render(&plan));
            if let Some(c) = &cost {
                print!("{}", crate::cost::render_plan_cost(c));
            }
        }
        if let Some(h) = &hosts {
            print!("{}", h.render());
        }
    }
    // A plan that could not look at some hosts cannot say "no changes" for them.
    if let Some(unchecked) = hosts
        .as_ref()
        .map(|h| h.not_checked())
        .filter(|u| !u.is_empty())
    {
        bail!(
            "the plan is incomplete: could not check the host(s) {} (see above){}\n    \
             fix: make them reachable over SSH (or `--only infra` to plan the infrastructure alone)",
            unchecked.join(", "),
            if args.out.is_some() {
                "; the plan was not saved"
            } else {
                ""
            }
        );
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&plan)?)
            .with_context(|| format!("cannot write the plan to {}", out.display()))?;
        if !args.json {
            println!(
                "\nSaved the plan to {0}. To perform exactly these actions, run: pgform apply {0}",
                out.display()
            );
        }
    }
    let host_changes = hosts.as_ref().is_some_and(|h| h.has_changes());
    Ok(
        if args.detailed_exitcode && (plan.has_changes() || host_changes) {
            Outcome::Changes
        } else {
            Outcome::Ok
        },
    )
}

/// Infrastructure first (unless `--only hosts`), then the hosts layer (unless
/// `--only infra`); `--check` changes neither.
async fn apply(g: &Global, args: ApplyArgs) -> Result<Outcome> {
    if args.check && args.plan_file.is_some() {
        bail!("--check shows what would change; it cannot run a saved plan (drop one of them)");
    }
    let spec = load_spec(g)?;
    let before = read_state(&g.state_path(), &spec.name)?;
    // Listed machines have no infrastructure layer.
    if args.only != Some(Layer::Hosts) && spec.provider != ProviderKind::Hosts {
        if args.check {
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
        } else {
            apply_or_destroy(g, false, args.plan_file.as_deref(), &args.run).await?;
        }
    }
    if args.only != Some(Layer::Infra) {
        let state = read_state(&g.state_path(), &spec.name)?;
        super::hosts::forget_replaced_hosts(&spec, &before, &state, &g.state_path()).await;
        super::hosts::configure(&spec, &state, &g.state_path(), args.check, args.run.json).await?;
    }
    Ok(Outcome::Ok)
}

async fn destroy(g: &Global, args: DestroyArgs) -> Result<Outcome> {
    apply_or_destroy(g, true, None, &args.run).await
}

/// Apply or destroy: plan (or read the saved plan), ask, then apply it while Ctrl-C is
/// watched, and report.
async fn apply_or_destroy(
    g: &Global,
    destroy: bool,
    plan_file: Option<&Path>,
    args: &RunArgs,
) -> Result<Outcome> {
    let spec = load_spec(g)?;
    let events = reporter(if args.json { Style::Json } else { Style::Human });
    let verb = if destroy { "destroy" } else { "apply" };
    let mut store = StateStore::lock(&g.state_path(), verb)?;
    let state = store.load_or_new(&spec.name)?;
    let provider = provider(&spec).await?;
    let plan = match plan_file {
        Some(file) => read_plan(file, &spec)?,
        None => {
            let plan = if destroy {
                engine::plan_destroy(&*provider, &state, &events).await?
            } else {
                engine::plan(&*provider, &spec, &state, &events).await?
            };
            if !confirm(&plan, args.auto_approve, args.json, verb)? {
                return Ok(Outcome::Ok);
            }
            plan
        }
    };
    let options = ApplyOptions {
        parallelism: args.parallelism.into(),
        events,
        interrupt: Interrupt::default(),
    };
    let watcher = tokio::spawn(stop_on_ctrl_c(options.interrupt.clone()));
    let result = engine::apply(&*provider, &plan, &mut store, state, &options).await;
    watcher.abort();
    let (state, report) = result?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "complete", "report": report})
        );
    } else {
        println!(
            "\n{} complete! Resources: {} added, {} changed, {} destroyed.",
            if plan.destroy { "Destroy" } else { "Apply" },
            report.created,
            report.updated,
            report.deleted
        );
        if !plan.destroy && !state.resources.is_empty() {
            println!("\nOutputs:\n");
            print_outputs(&engine::outputs(&state, Some(&spec)));
        }
    }
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

/// Shows the plan and asks; `false` when there is nothing to do or the answer is no.
fn confirm(plan: &Plan, auto_approve: bool, json: bool, verb: &str) -> Result<bool> {
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "plan", "summary": plan.summary(), "changes": plan.changes.len()})
        );
    } else {
        print!("{}", plan::render(plan));
    }
    if !plan.has_changes() {
        return Ok(false);
    }
    if auto_approve {
        return Ok(true);
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
    Ok(true)
}

fn read_plan(file: &Path, spec: &ClusterSpec) -> Result<Plan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the plan {}", file.display()))?;
    let plan: Plan = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a plan saved by `pgform plan --out`",
            file.display()
        )
    })?;
    if plan.format_version != plan::PLAN_FORMAT_VERSION {
        bail!(
            "{} has plan format {}, this pgform reads {}",
            file.display(),
            plan.format_version,
            plan::PLAN_FORMAT_VERSION
        );
    }
    if plan.cluster != spec.name {
        bail!(
            "{} is a plan for cluster `{}`, but the spec is for `{}`",
            file.display(),
            plan.cluster,
            spec.name
        );
    }
    Ok(plan)
}

fn output(g: &Global, name: Option<&str>, json: bool) -> Result<Outcome> {
    let spec = spec::load_file(&g.file)
        .ok()
        .map(|l| with_tls_dir(g, l.spec));
    let path = g.state_path();
    let state = match (state::read(&path)?, &spec) {
        (Some(state), _) => state,
        // Listed hosts have no machines to record: their outputs come from the spec.
        (None, Some(spec)) if spec.provider == spec::ProviderKind::Hosts => {
            state::State::new(&spec.name)
        }
        (None, _) => bail!("no state at {}: run `pgform apply` first", path.display()),
    };
    let outputs = engine::outputs(&state, spec.as_ref());
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
        None => print_outputs(&outputs),
    }
    Ok(Outcome::Ok)
}

fn print_outputs(outputs: &std::collections::BTreeMap<String, serde_json::Value>) {
    for (k, v) in outputs {
        match v.as_str() {
            Some(s) => println!("{k} = {s:?}"),
            None => println!(
                "{k} = {}",
                serde_json::to_string_pretty(v).unwrap_or_default()
            ),
        }
    }
}

async fn state_command(g: &Global, cmd: StateCommand) -> Result<Outcome> {
    let path = g.state_path();
    match cmd {
        StateCommand::List => {
            if let Some(state) = state::read(&path)? {
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
            let state =
                state::read(&path)?.with_context(|| format!("no state at {}", path.display()))?;
            let r = state.resources.get(&address).with_context(|| {
                format!("{address} is not in the state; `pgform state list` shows what is")
            })?;
            println!("{}", serde_json::to_string_pretty(r)?);
        }
        StateCommand::Rebuild { force } => {
            let spec = load_spec(g)?;
            let mut store = StateStore::lock(&path, "state rebuild")?;
            let existing = store.load_or_new(&spec.name)?;
            if !existing.resources.is_empty() && !force {
                bail!(
                    "{} already records {} resource(s); pass --force to replace it",
                    path.display(),
                    existing.resources.len()
                );
            }
            let provider = provider(&spec).await?;
            let mut rebuilt = engine::rebuild(&*provider, &spec).await?;
            rebuilt.lineage = existing.lineage;
            rebuilt.serial = existing.serial;
            store.save(&mut rebuilt)?;
            println!(
                "Rebuilt {} from tags: {} resource(s).",
                path.display(),
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
    let spec = load_spec(g)?;
    let ansible_files = |terraform_dir: &str| -> Result<Files> {
        let state = read_state(&g.state_path(), &spec.name)?;
        let inventory = ansible::choose_inventory(&spec, &state, terraform_dir)?;
        println!("Inventory: {}", inventory.describe());
        // The playbook copies the certificates from pgform's TLS folder: make them now
        // for the machines known (keys stay there, never in the export).
        if let ansible::Inventory::Hosts(nodes) = &inventory {
            crate::hosts::prepare_tls(&spec, nodes)?;
        }
        Ok(ansible::export(&spec, &inventory)?)
    };
    let sets: Vec<(PathBuf, Files)> = match cmd {
        ExportCommand::Terraform { dir } => vec![(dir, export::terraform::export(&spec)?)],
        ExportCommand::Ansible { dir, terraform_dir } => {
            let tf = terraform_dir.to_string_lossy().into_owned();
            vec![(dir, ansible_files(&tf)?)]
        }
        ExportCommand::All { dir } => vec![
            (dir.join("terraform"), export::terraform::export(&spec)?),
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
