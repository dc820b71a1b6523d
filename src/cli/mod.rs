//! The command line: clap definitions, and one thin function per command over the
//! engine's operations. Errors become messages and exit codes here, and only here.

mod commands;
mod cost;
mod ha;
mod hosts;
mod report;
mod serve;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

/// pgform: a PostgreSQL primary with streaming replicas on EC2, local containers or
/// existing machines, from one desired-state file, through a reviewed plan. No
/// Terraform or Ansible needed.
#[derive(Debug, Parser)]
#[command(
    name = "pgform",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 success, 1 error, 2 usage error (plan --detailed-exitcode: 2 = changes).\n\
AWS credentials, region overrides and endpoints come from the standard AWS chain \
(AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...); the local provider's Docker daemon from DOCKER_HOST."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The desired-state file (TOML, JSON, or the old API's flat JSON payload).
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "cluster.toml",
        value_name = "PATH"
    )]
    pub file: PathBuf,
    /// The state file [default: beside the spec, <spec name>.pgstate.json], or a
    /// PostgreSQL store, postgres://USER@HOST:PORT/DB (the one `pgform serve --store`
    /// uses), to keep the state and its lock there, shared with the service; its
    /// password comes from PGPASSWORD or ~/.pgpass. The hosts' known keys and the default
    /// TLS folder stay beside the spec.
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub state: Option<PathBuf>,
    /// Keep each host's SSH master this many idle seconds after the command, for the next
    /// one to reuse (in a private directory: $XDG_RUNTIME_DIR/pgform-ssh or
    /// /tmp/pgform-ssh-<uid>); 0 closes them at the end of each command.
    #[arg(
        long,
        global = true,
        env = "PGFORM_SSH_PERSIST",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub ssh_persist: u64,
}

/// `path` as a PostgreSQL URL, when it is one.
fn store_url(path: &Path) -> Option<&str> {
    path.to_str()
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

impl Global {
    /// The state file, or where the local files beside it go when `--state` names a
    /// store.
    pub fn state_path(&self) -> PathBuf {
        match &self.state {
            Some(path) if store_url(path).is_none() => path.clone(),
            _ => self.file.with_extension("pgstate.json"),
        }
    }

    /// The PostgreSQL store `--state` names, if it names one.
    pub fn state_store(&self) -> anyhow::Result<Option<&str>> {
        let Some(url) = self.state.as_deref().and_then(store_url) else {
            return Ok(None);
        };
        if serve::store_url_has_password(url) {
            anyhow::bail!(
                "--state: the URL holds a password, and a process's arguments are visible \
                 to every user of the machine; give it in PGPASSWORD or ~/.pgpass instead"
            );
        }
        Ok(Some(url))
    }

    /// Where the state of `cluster` and its lock are kept.
    pub fn states(&self, cluster: &str) -> anyhow::Result<Arc<dyn crate::state::Backend>> {
        use crate::serve::store::Store as _;
        Ok(match self.state_store()? {
            Some(url) => crate::serve::pgstore::PgStore::open(url)?
                .states(cluster)
                .expect("the PostgreSQL store keeps states"),
            None => Arc::new(crate::state::FileStates::new(&self.state_path())),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter desired-state file.
    Init {
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Check the desired-state file; no cloud call is made.
    Validate {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the desired-state file.
    Schema,
    /// Show what apply would change: refresh, then diff the spec against the state.
    Plan(PlanArgs),
    /// Make the cloud match the spec (after showing the plan and asking), or run a saved plan.
    Apply(ApplyArgs),
    /// Delete everything the cluster has (after showing the plan and asking).
    Destroy(DestroyArgs),
    /// Show the cluster's outputs: addresses and connection strings (no passwords).
    Output {
        /// Only this output (primary, primary_connection, replicas, vpc_id, ...).
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Each node's role, WAL position, replication state and lag (asks the hosts).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write the cluster as Terraform and/or Ansible, from the same graph and task list
    /// pgform runs (for review, or for teams that keep those tools). No secret is written.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Inspect or rebuild the state.
    #[command(subcommand)]
    State(StateCommand),
    /// Remove the state lock left by a process that is gone.
    ForceUnlock,
    /// HA mode: the leader hands over to another member (checked by reading the new
    /// leader); refused with the reason when the target is not eligible.
    Switchover {
        /// The member to take over [default: an eligible replica].
        #[arg(long, value_name = "NODE")]
        to: Option<String>,
    },
    /// HA mode: promote NODE in a cluster without a healthy leader.
    Failover {
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// HA mode: restart PostgreSQL through Patroni, replicas first, the leader last.
    Restart {
        /// Only members with a pending restart (a changed parameter that needs one).
        #[arg(long)]
        pending: bool,
    },
    /// HA mode: rebuild a replica's data from the leader (Patroni's reinitialize), for a
    /// member that no longer follows it, such as one left on a diverged timeline.
    /// Waits until the leader sees it streaming.
    Reinit {
        /// The member to rebuild (never the leader).
        #[arg(value_name = "NODE")]
        node: String,
        /// Do not ask before removing NODE's data directory.
        #[arg(long)]
        auto_approve: bool,
    },
    /// What the spec's cluster costs per month: one line per billed item, from public
    /// on-demand prices (embedded, or a refreshed price file). No cloud call is made.
    Cost(CostArgs),
    /// Price files for `cost` and the plan.
    #[command(subcommand)]
    Pricing(PricingCommand),
    /// Run the HTTP service: clusters, runs (plan, confirm, apply, destroy), events.
    Serve(serve::ServeArgs),
    /// The service's bearer tokens.
    #[command(subcommand)]
    Token(serve::TokenCommand),
}

#[derive(Debug, Args)]
pub struct CostArgs {
    /// Print the estimate as JSON.
    #[arg(long)]
    pub json: bool,
    /// A price file (from `pgform pricing refresh`) overriding the embedded prices;
    /// replaces the spec's `[cost] prices`.
    #[arg(long, value_name = "FILE")]
    pub prices: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PricingCommand {
    /// Write a price file from AWS Price List bulk files: DIR holds <region>/index.csv
    /// (AmazonEC2's offers/v1.0/aws/AmazonEC2/current folder).
    Refresh {
        #[arg(long = "from", value_name = "DIR")]
        from: PathBuf,
        #[arg(long, value_name = "FILE", default_value = "aws-prices.tsv")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Save the plan to FILE, for `pgform apply FILE` (`-out FILE` works too).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Plan the destruction of everything instead.
    #[arg(long)]
    pub destroy: bool,
    /// Plan one layer only: `infra`, or `hosts` (the task list in check mode).
    #[arg(long, value_enum)]
    pub only: Option<Layer>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved by `pgform plan --out`: run exactly it (no question asked).
    pub plan_file: Option<PathBuf>,
    /// Run one layer only: `infra` (cloud or containers) or `hosts` (the task list over
    /// SSH, then the replication check).
    #[arg(long, value_enum)]
    pub only: Option<Layer>,
    /// Change nothing: show the infrastructure plan and what the task list would change
    /// on the hosts (with file diffs).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layer {
    Infra,
    Hosts,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// What apply and destroy share.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not ask for approval.
    #[arg(long)]
    pub auto_approve: bool,
    /// At most this many cloud operations at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallelism: u16,
    /// Print progress events as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// versions.tf, variables.tf, main.tf and outputs.tf (provider aws).
    Terraform { dir: PathBuf },
    /// An inventory, the playbook, its templates and variables; the password stays a
    /// variable for ansible-vault. The inventory lists the state's machines or the
    /// `hosts` list; before anything exists (provider aws) it is a script that reads
    /// Terraform's outputs.
    Ansible {
        dir: PathBuf,
        /// Where the inventory script finds the Terraform directory, relative to DIR
        /// (or absolute); used when the state has no machines yet.
        #[arg(long, default_value = "../terraform")]
        terraform_dir: PathBuf,
    },
    /// Both: DIR/terraform and DIR/ansible (whose inventory reads DIR/terraform's
    /// outputs until the state has the machines). Writes both or neither.
    All { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the addresses in the state.
    List,
    /// Show one resource's recorded attributes.
    Show { address: String },
    /// Rebuild the state from what is tagged with the cluster (for a lost state file).
    Rebuild {
        /// Replace an existing state file.
        #[arg(long)]
        force: bool,
    },
}

/// Outcomes a command can end with, beyond plain success.
pub enum Outcome {
    Ok,
    /// `plan --detailed-exitcode` found changes.
    Changes,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(terraform_style_flags(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging();
    crate::remote::set_keep_masters(
        (cli.global.ssh_persist > 0)
            .then(|| std::time::Duration::from_secs(cli.global.ssh_persist)),
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Changes) => ExitCode::from(2),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Accepts Terraform's single-dash `-out FILE` / `-out=FILE` as `--out`.
fn terraform_style_flags(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|a| match a.to_str() {
        Some("-out") => OsString::from("--out"),
        Some(s) if s.starts_with("-out=") => OsString::from(format!("-{s}")),
        _ => a,
    })
    .collect()
}

/// Diagnostics go to stderr, filtered by RUST_LOG (default: warnings only).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn out_flag_accepts_terraform_spelling() {
        let args = ["pgform", "plan", "-out", "p.json"].map(OsString::from);
        let cli = Cli::try_parse_from(terraform_style_flags(args.into_iter())).unwrap();
        match cli.command {
            Command::Plan(p) => assert_eq!(p.out, Some(PathBuf::from("p.json"))),
            other => panic!("{other:?}"),
        }
        let args = ["pgform", "plan", "-out=x.json"].map(OsString::from);
        let cli = Cli::try_parse_from(terraform_style_flags(args.into_iter())).unwrap();
        assert!(matches!(
            cli.command,
            Command::Plan(PlanArgs { out: Some(_), .. })
        ));
    }

    #[test]
    fn ssh_persist_takes_seconds_and_zero_turns_it_off() {
        let cli = Cli::try_parse_from(["pgform", "plan", "--ssh-persist", "0"]).unwrap();
        assert_eq!(cli.global.ssh_persist, 0);
        let cli = Cli::try_parse_from(["pgform", "--ssh-persist=5", "plan"]).unwrap();
        assert_eq!(cli.global.ssh_persist, 5);
        assert!(Cli::try_parse_from(["pgform", "plan", "--ssh-persist", "soon"]).is_err());
    }

    #[test]
    fn state_defaults_beside_the_spec() {
        let cli = Cli::try_parse_from(["pgform", "-f", "dir/prod.toml", "plan"]).unwrap();
        assert_eq!(
            cli.global.state_path(),
            PathBuf::from("dir/prod.pgstate.json")
        );
    }
}
