//! `qk`: the Quorumkey administrators' CLI, on the nodes' HTTPS API.
#![forbid(unsafe_code)]

mod args;
mod audit_check;
mod audit_file;
mod audit_proof;
mod commands;
mod dev;
mod output;
mod settings;
mod spinner;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use qk_client::http::{ApiClient, HttpError};
use qk_types::ErrorKind;

use args::*;
use commands::Ctx;
use output::OutputFormat;

/// Exit code when the request waits for approvers.
const EXIT_APPROVAL_PENDING: u8 = 3;

/// The exit code for a request the cluster refused, by the error's kind;
/// the one place it is chosen (docs/API.md, "Exit codes"). 1 stays for
/// every other failure and 2 for a usage error.
fn exit_code_of(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Invalid | ErrorKind::TooLarge => 4,
        ErrorKind::Unauthenticated => 5,
        ErrorKind::Denied => 6,
        ErrorKind::NotFound => 7,
        ErrorKind::Conflict => 8,
        ErrorKind::Unavailable => 9,
        ErrorKind::Internal => 1,
    }
}

/// The kind of the first error in the chain that names one.
fn kind_of(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<HttpError>().and_then(HttpError::kind))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(HttpError::ApprovalPending(a)) = e.downcast_ref::<HttpError>() {
        let scope = if a.key.is_empty() {
            "under the cluster's access rule".to_string()
        } else {
            format!("on key {}", a.key)
        };
        let then = if a.permission == "decrypt" {
            format!("then run this command again with --approval {}", a.id)
        } else {
            "it takes effect when the last approver approves".to_string()
        };
        eprintln!(
            "waiting for approval {}: {} approver(s) must approve {} {scope}.\n  qk approval approve {}\n{then}.",
            a.id, a.required, a.permission, a.id
        );
        return ExitCode::from(EXIT_APPROVAL_PENDING);
    }
    eprintln!("error: {e:#}");
    kind_of(e).map_or(ExitCode::FAILURE, |kind| ExitCode::from(exit_code_of(kind)))
}

fn connect(global: &GlobalArgs) -> Result<Ctx> {
    connect_with(global, settings::Settings::api_config)
}

/// A context whose client is built by `config` from the resolved settings.
fn connect_with(
    global: &GlobalArgs,
    config: fn(&settings::Settings, u64) -> Result<qk_client::http::ApiConfig>,
) -> Result<Ctx> {
    let flags = settings::ConnFlags {
        addr: global.addr.clone(),
        token: global.token.clone(),
        ca_cert: global.ca_cert.clone(),
        client_cert: global.client_cert.clone(),
        client_key: global.client_key.clone(),
        profile: global.profile.clone(),
    };
    let home = std::env::var_os("HOME").map(Into::into);
    let s = settings::resolve(flags, &|name| std::env::var(name).ok(), home)?;
    let timeout_ms = util::parse_duration_ms(&global.timeout)?;
    let api = ApiClient::new(&config(&s, timeout_ms)?)?;
    Ok(Ctx {
        api,
        format: global.output,
        default_threshold: s.threshold,
        ca_cert: s.ca_cert.clone(),
    })
}

async fn run(cli: Cli) -> Result<()> {
    let format = cli.global.output;
    match cli.command {
        Command::Dev(cmd) => run_dev(cmd, format).await,
        Command::Node(NodeCommand::Start {
            config,
            bootstrap,
            join,
        }) => {
            qk_node::init_tracing();
            qk_node::run(&config, bootstrap, join).await
        }
        Command::Pki(cmd) => run_pki(cmd, format),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "qk", &mut std::io::stdout());
            Ok(())
        }
        Command::Cluster(cmd @ ClusterCommand::Ready) => {
            let ctx = connect_with(&cli.global, settings::Settings::probe_config)?;
            commands::cluster(&ctx, cmd).await
        }
        other => {
            let ctx = connect(&cli.global)?;
            let result = run_api(&ctx, other).await;
            warn_not_applied(&ctx.api);
            result
        }
    }
}

/// A revocation is acknowledged once every member applied it; if some had
/// not within the node's wait, say which (they still follow the old rule).
fn warn_not_applied(api: &ApiClient) {
    let lagging = api.not_applied_on();
    if !lagging.is_empty() {
        let nodes: Vec<String> = lagging.iter().map(u64::to_string).collect();
        eprintln!(
            "warning: the change is committed but node(s) {} had not applied it yet; \
             they follow the old rule until they catch up (check `qk cluster status`)",
            nodes.join(", ")
        );
    }
}

async fn run_api(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Cluster(cmd) => commands::cluster(ctx, cmd).await,
        Command::Key(cmd) => commands::key(ctx, cmd).await,
        Command::Encrypt(args) => commands::encrypt(ctx, args).await,
        Command::Decrypt(args) => commands::decrypt(ctx, args).await,
        Command::Datakey(args) => commands::datakey(ctx, args).await,
        Command::Rewrap(args) => commands::rewrap(ctx, args).await,
        Command::Principal(cmd) => commands::principal(ctx, cmd).await,
        Command::Token(cmd) => commands::token(ctx, cmd).await,
        Command::Kms(cmd) => commands::kms(ctx, cmd).await,
        Command::Policy(cmd) => commands::policy(ctx, cmd).await,
        Command::AccessRule(cmd) => commands::access_rule(ctx, cmd).await,
        Command::Approval(cmd) => commands::approval(ctx, cmd).await,
        Command::Audit(cmd) => commands::audit(ctx, cmd).await,
        Command::Dev(_) | Command::Node(_) | Command::Pki(_) | Command::Completions { .. } => {
            anyhow::bail!("internal: local command routed to the API")
        }
    }
}

async fn run_dev(cmd: DevCommand, format: OutputFormat) -> Result<()> {
    match cmd {
        DevCommand::Up(args) => dev::up(args, format).await,
        DevCommand::Status(dir) => dev::status(dir, format).await,
        DevCommand::Down(dir) => dev::down(dir, format).await,
        DevCommand::Node(DevNodeCommand::Stop { id, dir }) => dev::node_stop(id, dir, format).await,
        DevCommand::Node(DevNodeCommand::Start { id, dir }) => {
            dev::node_start(id, dir, format).await
        }
    }
}

fn run_pki(cmd: PkiCommand, format: OutputFormat) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Issued {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    }
    let issued = match cmd {
        PkiCommand::Init { dir } => {
            qk_node::pki::init(&dir)?;
            Issued {
                cert: dir.join("ca.pem"),
                key: dir.join("ca.key"),
            }
        }
        PkiCommand::Issue {
            dir,
            node: Some(id),
            hosts,
            ..
        } => {
            let (cert, key) = qk_node::pki::issue_node(&dir, id, &hosts)?;
            Issued { cert, key }
        }
        PkiCommand::Issue {
            dir,
            client: Some(name),
            ..
        } => {
            let (cert, key) = qk_node::pki::issue_client(&dir, &name)?;
            Issued { cert, key }
        }
        PkiCommand::Issue { .. } => anyhow::bail!("pass --node ID or --client NAME"),
    };
    output::emit(format, &issued, |i| {
        format!(
            "certificate: {}\nkey:         {} (keep it private)\n",
            i.cert.display(),
            i.key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_error_kind_has_its_own_exit_code_beside_the_fixed_ones() {
        let mut seen = std::collections::BTreeMap::new();
        for kind in ErrorKind::ALL {
            let code = exit_code_of(kind);
            assert!(code != 2 && code != EXIT_APPROVAL_PENDING, "{kind}");
            if let Some(other) = seen.insert(code, kind) {
                let shared = [ErrorKind::Invalid, ErrorKind::TooLarge];
                assert!(
                    shared.contains(&other) && shared.contains(&kind),
                    "{kind} and {other}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_anywhere_in_the_chain_names_its_kind() {
        let refused = HttpError::Api(qk_client::http::ApiError {
            status: 409,
            code: "conflict".into(),
            message: "version 1 of key \"k\" is destroyed".into(),
        });
        let e = anyhow::Error::new(refused).context("cannot enable k");
        assert_eq!(kind_of(&e), Some(ErrorKind::Conflict));
        assert_eq!(kind_of(&anyhow::anyhow!("a local failure")), None);
    }

    #[test]
    fn context_without_equals_is_a_usage_error() {
        let err = Cli::try_parse_from(["qk", "decrypt", "--context", "tenant"]).err();
        assert_eq!(err.map(|e| e.exit_code()), Some(2));
        let ok =
            Cli::try_parse_from(["qk", "encrypt", "k", "--context", "a=b", "--context", "c=d"]);
        assert!(ok.is_ok());
    }

    #[test]
    fn output_json_is_accepted_on_every_command() {
        for argv in [
            &["qk", "key", "list", "--output", "json"][..],
            &["qk", "-o", "json", "cluster", "status"],
            &["qk", "audit", "verify", "--file", "x", "-o", "table"],
            &["qk", "dev", "status", "--output", "json"],
        ] {
            let cli = Cli::try_parse_from(argv);
            assert!(cli.is_ok(), "{argv:?}: {:?}", cli.err());
        }
    }
}
