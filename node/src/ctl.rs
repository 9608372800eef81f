//! `qk-node ctl`: a small client for operators and scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use qk_raft::{ClientRequest, ClientResponse};
use qk_state::{verify_chain, Command, CreateKey, Operation, RequestId, GENESIS_HASH};
use qk_types::NodeId;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// A directory made by `qk-node dev` (finds address and credentials there).
    #[arg(long, env = "QK_DEV_DIR", default_value = ".qk-dev")]
    pub dir: PathBuf,
    /// Node address; defaults to the first node of `--dir`.
    #[arg(long, env = "QK_ADDR")]
    pub addr: Option<String>,
    #[arg(long, env = "QK_CA_CERT")]
    pub ca: Option<PathBuf>,
    #[arg(long, env = "QK_CLIENT_CERT")]
    pub cert: Option<PathBuf>,
    #[arg(long, env = "QK_CLIENT_KEY")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// The node's view of the cluster.
    Status,
    /// Register a key in the replicated inventory.
    CreateKey {
        name: String,
        #[arg(long, default_value_t = 2)]
        threshold: u16,
        /// Holder node ids (repeatable; default: every voter).
        #[arg(long = "holder")]
        holders: Vec<u64>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Set a metadata tag on a key.
    SetTag {
        name: String,
        tag: String,
        value: String,
    },
    /// Show one key's record.
    GetKey { name: String },
    /// List key names.
    ListKeys,
    /// Encrypt TEXT (or stdin) under the key's newest enabled version.
    Encrypt {
        name: String,
        text: Option<String>,
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
    },
    /// Decrypt a `qk:v1:` ciphertext (server-side combining by default).
    Decrypt {
        ciphertext: String,
        #[arg(long = "context", value_parser = parse_kv)]
        context: Vec<(String, String)>,
        /// Gather partials from the holders and combine here: no node sees
        /// the plaintext.
        #[arg(long)]
        client_side: bool,
    },
    /// Start a new version of the key (a new DKG).
    Rotate {
        name: String,
        /// Holder node ids (repeatable; default: every voter).
        #[arg(long = "holder")]
        holders: Vec<u64>,
    },
    /// Schedule destruction of a version after a waiting period (ms).
    ScheduleDestroy {
        name: String,
        version: u32,
        #[arg(long, default_value_t = 0)]
        after_ms: u64,
    },
    /// Commit the destruction of a version whose waiting period has passed.
    Destroy { name: String, version: u32 },
    /// Cancel a scheduled destruction (the version stays disabled).
    CancelDestroy { name: String, version: u32 },
    /// Stop a version from encrypting and decrypting.
    Disable { name: String, version: u32 },
    /// Re-enable a disabled version (not a compromised one).
    Enable { name: String, version: u32 },
    /// Disable a version at once and record why.
    MarkCompromised {
        name: String,
        version: u32,
        #[arg(long)]
        reason: String,
        /// Keep decryption possible (to re-encrypt data under a new version).
        #[arg(long)]
        allow_decrypt: bool,
    },
    /// Proactive refresh: every holder's share changes, the key does not.
    Refresh { name: String, version: u32 },
    /// Refuse decryption with versions below VERSION.
    MinDecryptVersion { name: String, version: u32 },
    /// Print audit records and verify their hash chain.
    Audit {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub type Target = qk_client::Client;

pub fn connect(args: &CtlArgs) -> Result<Target> {
    let pki = args.dir.join("pki");
    let ca = args.ca.clone().unwrap_or_else(|| pki.join("ca.pem"));
    let cert = args
        .cert
        .clone()
        .unwrap_or_else(|| pki.join("client-admin.pem"));
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| pki.join("client-admin.key"));
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => crate::dev::first_addr(&args.dir)?,
    };
    qk_client::Client::connect(&ca, &cert, &key, &addr, Duration::from_secs(10))
        .context("pass --ca/--cert/--key, or --dir of a dev cluster")
}

pub async fn call(target: &Target, req: ClientRequest) -> Result<ClientResponse> {
    Ok(target.call(req).await?)
}

pub fn write_cmd(op: Operation) -> ClientRequest {
    ClientRequest::Write(Command {
        request_id: RequestId(rand::random()),
        time_ms: 0,
        principal: String::new(),
        op,
    })
}

pub async fn run(args: CtlArgs) -> Result<()> {
    let target = connect(&args)?;
    let req = match args.command {
        CtlCommand::Status => ClientRequest::Status,
        CtlCommand::CreateKey {
            name,
            threshold,
            holders,
            description,
        } => write_cmd(Operation::CreateKey(CreateKey {
            name,
            description,
            owner: String::new(),
            purpose: "encrypt".into(),
            rotation_period_ms: None,
            expires_at_ms: None,
            threshold,
            holders: holders.into_iter().map(NodeId).collect(),
        })),
        CtlCommand::SetTag { name, tag, value } => write_cmd(Operation::SetTag {
            name,
            tag,
            value: Some(value.into_bytes()),
        }),
        CtlCommand::GetKey { name } => ClientRequest::GetKey { name },
        CtlCommand::Encrypt {
            name,
            text,
            context,
        } => {
            let plaintext = match text {
                Some(t) => t.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    buf
                }
            };
            ClientRequest::Encrypt {
                name,
                context: context.into_iter().collect(),
                plaintext: qk_raft::Redacted(plaintext),
            }
        }
        CtlCommand::Decrypt {
            ciphertext,
            context,
            client_side: true,
        } => {
            let plain = target
                .decrypt_client_side(&ciphertext, context.into_iter().collect())
                .await?;
            std::io::Write::write_all(&mut std::io::stdout(), &plain)?;
            println!();
            return Ok(());
        }
        CtlCommand::Decrypt {
            ciphertext,
            context,
            ..
        } => ClientRequest::Decrypt {
            approval: None,
            ciphertext,
            context: context.into_iter().collect(),
        },
        CtlCommand::Rotate { name, holders } => write_cmd(Operation::Rotate {
            name,
            holders: holders.into_iter().map(NodeId).collect(),
            generation_timeout_ms: None,
        }),
        CtlCommand::ScheduleDestroy {
            name,
            version,
            after_ms,
        } => write_cmd(Operation::ScheduleDestruction {
            name,
            version: qk_types::KeyVersion(version),
            after_ms,
        }),
        CtlCommand::Destroy { name, version } => write_cmd(Operation::Destroy {
            name,
            version: qk_types::KeyVersion(version),
        }),
        CtlCommand::CancelDestroy { name, version } => write_cmd(Operation::CancelDestruction {
            name,
            version: qk_types::KeyVersion(version),
        }),
        CtlCommand::Disable { name, version } => write_cmd(Operation::Disable {
            name,
            version: qk_types::KeyVersion(version),
        }),
        CtlCommand::Enable { name, version } => write_cmd(Operation::Enable {
            name,
            version: qk_types::KeyVersion(version),
        }),
        CtlCommand::MarkCompromised {
            name,
            version,
            reason,
            allow_decrypt,
        } => write_cmd(Operation::MarkCompromised {
            name,
            version: qk_types::KeyVersion(version),
            reason,
            allow_decrypt,
        }),
        CtlCommand::Refresh { name, version } => write_cmd(Operation::Refresh {
            name,
            version: qk_types::KeyVersion(version),
            timeout_ms: None,
        }),
        CtlCommand::MinDecryptVersion { name, version } => {
            write_cmd(Operation::SetMinDecryptVersion {
                name,
                version: qk_types::KeyVersion(version),
            })
        }
        CtlCommand::ListKeys => ClientRequest::ListKeys,
        CtlCommand::Audit { from, limit } => ClientRequest::Audit {
            from_seq: from,
            limit,
        },
    };
    let resp = call(&target, req).await?;
    if let ClientResponse::Audit(records) = &resp {
        let prev = records.first().map(|r| r.prev_hash).unwrap_or(GENESIS_HASH);
        verify_chain(records, prev).context("audit chain does not verify")?;
        eprintln!("audit chain verified ({} records)", records.len());
    }
    println!("{}", render(&resp));
    Ok(())
}

fn render(resp: &ClientResponse) -> String {
    match resp {
        ClientResponse::Ciphertext { text, .. } => text.clone(),
        ClientResponse::Plaintext(p) => String::from_utf8_lossy(&p.0).into_owned(),
        other => format!("{other:#?}"),
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("context entries are KEY=VALUE, got {s:?}"))
}
