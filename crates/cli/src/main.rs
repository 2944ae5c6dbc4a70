//! The `caas` binary: parses the command line, runs one command, and maps its result to an exit
//! code. All the work is in the library crates; this file only wires them to a terminal.

mod access;
mod admin;
mod build;
mod dev;
mod errors;
mod import;
mod input_url;
mod new;
mod print;
mod prov;
mod prov_in_place;
mod publish;
mod reload;
mod remote;
mod run;
mod serve;
mod serve_config;
mod task;
mod user;

use std::process::ExitCode;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use errors::UserError;

/// caas — cloud analysis as a service.
///
/// Package a scientist's analysis once as an immutable container environment (`caas.toml` +
/// a Docker image) and run it on anyone's data, with results, logs and status in a store
/// (a local folder, or an S3 bucket) that stays compatible with NeuroCAAS' bucket protocol.
#[derive(Debug, Parser)]
#[command(name = "caas", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an analysis on one dataset exactly as the service runs it, on a local store.
    Run(run::RunArgs),
    /// Build the analysis' image from its Dockerfile.
    Build(build::BuildArgs),
    /// Put the analysis' active image into a store for cluster nodes (docker archive and root
    /// filesystem), once per digest.
    Publish(publish::PublishArgs),
    /// Scaffold a new analysis folder (caas.toml, Dockerfile, entry script, sample data).
    New(new::NewArgs),
    /// Open an interactive shell in the analysis' development container.
    Shell(dev::ShellArgs),
    /// Run one command in the analysis' development container.
    Exec(dev::ExecArgs),
    /// Commit the development container to a new image and make it the active one.
    Save(dev::SaveArgs),
    /// List every image built or saved for this analysis.
    History(dev::HistoryArgs),
    /// Remove the development container (refused when it holds unsaved changes).
    Reset(dev::ResetArgs),
    /// Remove this analysis' stopped containers and untagged images (nothing else).
    Prune(dev::PruneArgs),
    /// Run the job manager: watch a store's submissions and run them (the service).
    Serve(Box<serve::ServeArgs>),
    /// Put datasets (or configs) into a store.
    Upload(user::UploadArgs),
    /// Submit a job: write <group>/submissions/<timestamp>submit.json.
    Submit(user::SubmitArgs),
    /// Show jobs, or one job, from the store.
    Status(user::StatusArgs),
    /// Print a job's output (stdout, or --stderr), --follow while it runs.
    Logs(user::LogsArgs),
    /// Download a job's results and logs.
    Results(user::ResultsArgs),
    /// Ask the manager to cancel a job.
    Cancel(user::JobArg),
    /// Re-hash what a job's provenance crate names; exit 0 only when all match.
    Verify(prov::VerifyArgs),
    /// Run a job's analysis, image, datasets and config again; say whether each result is
    /// byte-identical.
    Rerun(prov::RerunArgs),
    /// The result cache: `caas cache explain JOB`.
    #[command(subcommand)]
    Cache(prov::CacheCmd),
    /// Report usage and cost per group from the ledger.
    Cost(user::CostArgs),
    /// Manage the HTTP API's users (kept in the store).
    #[command(subcommand)]
    Users(access::UsersCmd),
    /// Manage the HTTP API's tokens (kept in the store, hashed).
    #[command(subcommand)]
    Token(access::TokenCmd),
    /// Bring an analysis from another system (a NeuroCAAS blueprint) to caas.
    #[command(subcommand)]
    Import(import::ImportCmd),
    /// The operator's view of a store: every group's jobs, usage per group.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// Internal: what a cluster node runs (`caas task run`, submitted by `caas serve
    /// --executor slurm`).
    #[command(hide = true)]
    Task(task::TaskArgs),
}

/// The command line, with `caas serve --config FILE`'s keys read in as flags placed before the
/// command line's own (which therefore override them).
fn parse_cli(argv: Vec<OsString>) -> Result<Cli, ExitCode> {
    let matches = Cli::command().get_matches_from(argv.clone());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (Command::Serve(args), Some(("serve", given))) = (&cli.command, matches.subcommand())
    else {
        return Ok(cli);
    };
    let Some(path) = &args.config else {
        return Ok(cli);
    };
    match serve_config::file_args(path, given) {
        Ok(extra) => Ok(Cli::parse_from(serve_config::splice(&argv, extra))),
        Err(msg) => {
            eprintln!("caas: error: {msg}");
            Err(ExitCode::from(2))
        }
    }
}

fn init_tracing(verbose: u8, json: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info,caas=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if json {
        // One object a line; `span` and `spans` carry the job's and the task's ids.
        fmt.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        fmt.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Build(args) => build::build(args).await,
        Command::Publish(args) => publish::publish(args).await,
        Command::New(args) => new::new(args),
        Command::Shell(args) => dev::shell(args).await,
        Command::Exec(args) => dev::exec(args).await,
        Command::Save(args) => dev::save(args).await,
        Command::History(args) => dev::history(args).await,
        Command::Reset(args) => dev::reset(args).await,
        Command::Prune(args) => dev::prune(args).await,
        Command::Serve(args) => serve::serve(*args).await,
        Command::Upload(args) => user::upload(args).await,
        Command::Submit(args) => user::submit(args).await,
        Command::Status(args) => user::status(args).await,
        Command::Logs(args) => user::logs(args).await,
        Command::Results(args) => user::results(args).await,
        Command::Cancel(args) => user::cancel(args).await,
        Command::Cost(args) => user::cost(args).await,
        Command::Verify(args) => prov::verify(args).await,
        Command::Rerun(args) => prov::rerun(args).await,
        Command::Cache(cmd) => prov::cache(cmd).await,
        Command::Users(cmd) => access::users(cmd).await,
        Command::Token(cmd) => access::token(cmd).await,
        Command::Import(cmd) => import::import(cmd).await,
        Command::Admin(cmd) => admin::admin(cmd).await,
        Command::Task(args) => task::task(args).await,
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let json = matches!(&cli.command, Command::Serve(a) if a.log_format == serve::LogFormat::Json);
    init_tracing(cli.verbose, json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caas: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)),
        Err(e) => {
            eprintln!("caas: error: {e:#}");
            if e.downcast_ref::<UserError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
