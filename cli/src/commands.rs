//! The commands that talk to a cluster's HTTPS API.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_client::http::{ApiClient, HttpError};

use crate::audit_check;
use qk_client::views::*;
use zeroize::Zeroizing;

use crate::args::*;
use crate::output::{self, emit, fields, OutputFormat};
use crate::spinner::with_spinner;
use crate::util::{context_map, format_time_ms, now_ms, parse_duration_ms, parse_expiry_ms};

/// A connected client, the output format and profile defaults.
#[derive(Debug)]
pub struct Ctx {
    pub api: ApiClient,
    pub format: OutputFormat,
    pub default_threshold: Option<u16>,
    /// The cluster CA certificate, for the environment printed for other
    /// clients (`qk kms credentials create`).
    pub ca_cert: Option<std::path::PathBuf>,
}

fn key_out(ctx: &Ctx, key: &KeyView) -> Result<()> {
    emit(ctx.format, key, output::key_detail)
}

pub async fn cluster(ctx: &Ctx, cmd: ClusterCommand) -> Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let health = ctx.api.cluster().await?;
            emit(ctx.format, &health, output::cluster_text)
        }
        ClusterCommand::Ready => {
            let base = ctx.api.base_url().to_owned();
            let health = ctx.api.ready_at(&base).await.with_context(|| {
                format!("node {base} is not ready; `qk cluster status` shows why")
            })?;
            emit(ctx.format, &health, |h| {
                format!("node {} at {base} is {}\n", h.node_id, h.status)
            })
        }
        ClusterCommand::EnableRequestShares => {
            let health = ctx.api.enable_request_shares().await?;
            emit(ctx.format, &health, output::cluster_text)
        }
        ClusterCommand::RefreshSchedule { every, off: _ } => {
            let every_ms = every.as_deref().map(parse_duration_ms).transpose()?;
            let health = ctx.api.set_refresh_schedule(every_ms).await?;
            emit(ctx.format, &health, output::cluster_text)
        }
    }
}

/// What `qk key refresh --all` did to one key.
#[derive(serde::Serialize)]
struct RefreshOutcome {
    name: String,
    /// The share epoch of each enabled version afterwards.
    epochs: Vec<(u32, u64)>,
    error: Option<String>,
}

fn refresh_table(outcomes: &[RefreshOutcome]) -> String {
    let mut t = output::Table::new(&["key", "epochs (version:epoch)", "outcome"]);
    for o in outcomes {
        let epochs: Vec<String> = o.epochs.iter().map(|(v, e)| format!("v{v}:{e}")).collect();
        t.row(vec![
            o.name.clone(),
            epochs.join(" "),
            o.error.clone().unwrap_or_else(|| "refreshed".into()),
        ]);
    }
    t.render()
}

/// A key's refresh succeeded only if every version enabled before it moved
/// to a later epoch (the call also returns when a refresh was abandoned).
fn refresh_outcome(before: &KeyView, after: &KeyView) -> RefreshOutcome {
    let enabled = |k: &KeyView| -> Vec<(u32, u64)> {
        k.versions
            .iter()
            .filter(|v| v.state == "enabled")
            .map(|v| (v.version, v.epoch))
            .collect()
    };
    let epochs = enabled(after);
    let behind: Vec<u32> = enabled(before)
        .iter()
        .filter(|(v, e)| !epochs.iter().any(|(v2, e2)| v2 == v && e2 > e))
        .map(|(v, _)| *v)
        .collect();
    let error = (!behind.is_empty()).then(|| {
        let why = after
            .versions
            .iter()
            .filter(|v| behind.contains(&v.version))
            .find_map(|v| v.refresh_failure.clone())
            .unwrap_or_else(|| "every holder must take part".into());
        let names: Vec<String> = behind.iter().map(|v| format!("v{v}")).collect();
        format!("{} kept the old epoch ({why})", names.join(", "))
    });
    RefreshOutcome {
        name: after.name.clone(),
        epochs,
        error,
    }
}

/// `qk key refresh --all`: every key with an enabled version, one after
/// another; a key that fails is reported and the others go on.
async fn refresh_all(ctx: &Ctx) -> Result<()> {
    let keys = ctx.api.list_keys().await?;
    let due: Vec<&KeyView> = keys
        .iter()
        .filter(|k| k.versions.iter().any(|v| v.state == "enabled"))
        .collect();
    let mut outcomes = Vec::with_capacity(due.len());
    for (i, key) in due.iter().enumerate() {
        let message = format!("refreshing {} ({} of {})", key.name, i + 1, due.len());
        let result = with_spinner(&message, ctx.api.refresh_key(&key.name, None)).await;
        outcomes.push(match result {
            Ok(after) => refresh_outcome(key, &after),
            Err(e) => RefreshOutcome {
                name: key.name.clone(),
                epochs: Vec::new(),
                error: Some(e.to_string()),
            },
        });
    }
    emit(ctx.format, &outcomes, |list| refresh_table(list))?;
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} keys were not refreshed (listed above); retry each with `qk key refresh NAME` once `qk cluster status` shows its holders up",
            outcomes.len()
        );
    }
    Ok(())
}

pub async fn key(ctx: &Ctx, cmd: KeyCommand) -> Result<()> {
    let api = &ctx.api;
    let key = match cmd {
        KeyCommand::Create(args) => create_key(ctx, args).await?,
        KeyCommand::List => {
            let keys = api.list_keys().await?;
            return emit(ctx.format, &keys, |k| output::keys_table(k));
        }
        KeyCommand::Show { name } => api.key(&name).await?,
        KeyCommand::Rotate { name } => {
            with_spinner(
                "generating a new version with the quorum",
                api.rotate_key(&name),
            )
            .await?
        }
        KeyCommand::Disable { name, version } => api.disable_key(&name, version.version).await?,
        KeyCommand::Enable { name, version } => api.enable_key(&name, version.version).await?,
        KeyCommand::Refresh { name: None, .. } => return refresh_all(ctx).await,
        KeyCommand::Refresh {
            name: Some(name),
            version,
            ..
        } => {
            with_spinner(
                "refreshing the shares (every holder takes part)",
                api.refresh_key(&name, version.version),
            )
            .await?
        }
        KeyCommand::MarkCompromised {
            name,
            reason,
            allow_decrypt,
            version,
        } => {
            api.mark_compromised(&name, version.version, &reason, allow_decrypt)
                .await?
        }
        KeyCommand::Destroy {
            name,
            after,
            version,
        } => {
            let after_ms = parse_duration_ms(&after)?;
            let fut = api.destroy_key(&name, version.version, after_ms);
            with_spinner("scheduling destruction with the quorum", fut).await?
        }
        KeyCommand::CancelDestroy { name, version } => {
            api.cancel_destroy(&name, version.version).await?
        }
        KeyCommand::Config {
            name,
            rotate_every,
            expires,
            min_decrypt_version,
        } => {
            let req = KeyConfigRequest {
                rotation_period_ms: rotate_every.as_deref().map(parse_duration_ms).transpose()?,
                expires_at_ms: expires
                    .as_deref()
                    .map(|e| parse_expiry_ms(e, now_ms()))
                    .transpose()?,
                min_decrypt_version,
            };
            if req == KeyConfigRequest::default() {
                bail!("nothing to change; pass --rotate-every, --expires or --min-decrypt-version");
            }
            api.configure_key(&name, &req).await?
        }
    };
    key_out(ctx, &key)
}

async fn create_key(ctx: &Ctx, args: KeyCreateArgs) -> Result<KeyView> {
    let req = CreateKeyRequest {
        name: args.name,
        description: args.description,
        owner: args.owner,
        purpose: args.purpose,
        threshold: args.threshold.or(ctx.default_threshold),
        holders: args.holders,
        rotation_period_ms: args
            .rotate_every
            .as_deref()
            .map(parse_duration_ms)
            .transpose()?,
        expires_at_ms: args
            .expires
            .as_deref()
            .map(|e| parse_expiry_ms(e, now_ms()))
            .transpose()?,
    };
    let key = with_spinner(
        "generating the key with the quorum",
        ctx.api.create_key(&req),
    )
    .await?;
    if key.state == "failed" {
        let why = key
            .versions
            .last()
            .and_then(|v| v.failure.clone())
            .unwrap_or_default();
        bail!("key {:?} was created but its generation failed: {why}; check `qk cluster status` and retry with `qk key rotate {}`", key.name, key.name);
    }
    Ok(key)
}

/// Reads `--in FILE` or stdin.
fn read_input(io: &IoArgs) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    match &io.input {
        Some(p) => {
            let mut f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            f.read_to_end(&mut buf)
                .with_context(|| format!("cannot read {}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
        }
    }
    Ok(buf)
}

fn read_text_input(io: &IoArgs) -> Result<String> {
    let bytes = read_input(io)?;
    let text = std::str::from_utf8(&bytes)
        .context("the ciphertext is not text; pass the qk:v1:... line encrypt printed")?;
    let text = text.trim();
    if text.is_empty() {
        bail!("no ciphertext on stdin; pipe one in or pass --in FILE");
    }
    Ok(text.to_string())
}

/// Writes to `--out FILE` (mode 0600 on Unix) or stdout.
fn write_output(path: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match path {
        Some(p) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?;
            f.write_all(bytes)
                .with_context(|| format!("cannot write {}", p.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|_| out.flush())
                .context("cannot write to stdout")
        }
    }
}

pub async fn encrypt(ctx: &Ctx, args: EncryptArgs) -> Result<()> {
    let plaintext = read_input(&args.io)?;
    let context = context_map(&args.context.context);
    let out = ctx.api.encrypt(&args.key, &plaintext, &context).await?;
    let text = match ctx.format {
        OutputFormat::Json => output::to_json(&out)?,
        OutputFormat::Table => format!("{}\n", out.ciphertext),
    };
    write_output(args.io.output_file.as_deref(), text.as_bytes())
}

pub async fn decrypt(ctx: &Ctx, args: DecryptArgs) -> Result<()> {
    let ciphertext = read_text_input(&args.io)?;
    let context = context_map(&args.context.context);
    let approval = args.approval.as_deref();
    let (plaintext, key, version) = if args.server_side {
        let fut = ctx.api.decrypt(&ciphertext, &context, approval);
        let out = with_spinner("decrypting with the quorum", fut).await?;
        let bytes = Zeroizing::new(
            B64.decode(&out.plaintext)
                .context("the node sent a plaintext that is not base64")?,
        );
        (bytes, out.key.clone(), out.version)
    } else {
        let fut = ctx.api.decrypt_client_side(&ciphertext, &context, approval);
        let out = with_spinner("gathering partial decryptions from the holders", fut).await?;
        (out.plaintext, out.key, out.version)
    };
    match ctx.format {
        OutputFormat::Table => write_output(args.io.output_file.as_deref(), &plaintext),
        OutputFormat::Json => {
            let view = Decrypted {
                plaintext: B64.encode(&*plaintext),
                key,
                version,
            };
            let text = Zeroizing::new(output::to_json(&view)?);
            write_output(args.io.output_file.as_deref(), text.as_bytes())
        }
    }
}

pub async fn datakey(ctx: &Ctx, args: DatakeyArgs) -> Result<()> {
    let context = context_map(&args.context.context);
    let key = ctx.api.datakey(&args.key, args.bytes, &context).await?;
    let text = Zeroizing::new(match ctx.format {
        OutputFormat::Json => output::to_json(&key)?,
        OutputFormat::Table => fields(&[
            ("plaintext", key.plaintext.clone()),
            ("ciphertext", key.ciphertext.clone()),
            ("version", format!("v{}", key.version)),
        ]),
    });
    write_output(None, text.as_bytes())
}

pub async fn rewrap(ctx: &Ctx, args: RewrapArgs) -> Result<()> {
    let ciphertext = read_text_input(&args.io)?;
    let context = context_map(&args.context.context);
    let fut = ctx
        .api
        .rewrap(&ciphertext, &context, args.to_key.as_deref());
    let out = with_spinner("re-encrypting with the quorum", fut).await?;
    let text = match ctx.format {
        OutputFormat::Json => output::to_json(&out)?,
        OutputFormat::Table => format!("{}\n", out.ciphertext),
    };
    write_output(args.io.output_file.as_deref(), text.as_bytes())
}

pub async fn principal(ctx: &Ctx, cmd: PrincipalCommand) -> Result<()> {
    let api = &ctx.api;
    let one = match cmd {
        PrincipalCommand::List => {
            let all = api.principals().await?;
            return emit(ctx.format, &all, |p| output::principals_table(p));
        }
        PrincipalCommand::Create { name, roles } => api.create_principal(&name, &roles).await?,
        PrincipalCommand::Update {
            name,
            roles,
            disable,
            enable,
        } => {
            let roles = if roles.is_empty() {
                current_roles(api, &name).await?
            } else {
                roles
            };
            let disabled = (disable || enable).then_some(disable);
            api.update_principal(&name, &roles, disabled).await?
        }
        PrincipalCommand::Delete { name } => {
            api.delete_principal(&name).await?;
            return done(
                ctx,
                &format!("principal {name} deleted; its tokens are revoked"),
            );
        }
    };
    emit(ctx.format, &one, |p| {
        output::principals_table(std::slice::from_ref(p))
    })
}

async fn current_roles(api: &ApiClient, name: &str) -> Result<Vec<String>> {
    let all = api.principals().await?;
    all.into_iter()
        .find(|p| p.name == name)
        .map(|p| p.roles)
        .with_context(|| format!("no principal {name:?}; see `qk principal list`"))
}

/// A confirmation: a line in table mode, `{"ok": true, "message"}` in JSON.
fn done(ctx: &Ctx, message: &str) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Done<'a> {
        ok: bool,
        message: &'a str,
    }
    emit(ctx.format, &Done { ok: true, message }, |d| {
        format!("{}\n", d.message)
    })
}

/// What an AWS SDK needs to reach the KMS endpoint of `endpoint` with `key`.
fn aws_environment(
    key: &CreatedAwsCredential,
    endpoint: &str,
    region: &str,
    ca_cert: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AWS_ACCESS_KEY_ID", key.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", key.secret_access_key.clone()),
        ("AWS_DEFAULT_REGION", region.to_owned()),
        (
            "AWS_ENDPOINT_URL_KMS",
            endpoint.trim_end_matches('/').to_owned(),
        ),
    ];
    if let Some(ca) = ca_cert {
        env.push(("AWS_CA_BUNDLE", ca.display().to_string()));
    }
    env
}

pub async fn kms(ctx: &Ctx, cmd: KmsCommand) -> Result<()> {
    let KmsCommand::Credentials(cmd) = cmd;
    match cmd {
        KmsCredentialsCommand::Create {
            principal,
            ttl,
            description,
            node_url,
            region,
        } => {
            let ttl_ms = parse_duration_ms(&ttl)?;
            let endpoint = match node_url {
                Some(url) => url,
                None => ctx
                    .api
                    .base_urls()
                    .into_iter()
                    .next()
                    .context("no node address; pass --node-url https://HOST:PORT or --addr")?,
            };
            let api = ctx.api.at(&endpoint)?;
            let created = api
                .create_aws_credential(&principal, ttl_ms, description.as_deref())
                .await
                .with_context(|| {
                    format!(
                        "could not create the access key at {endpoint} (it is bound to the node \
                         that issues it; pass --node-url to choose a reachable node)"
                    )
                })?;
            let env = aws_environment(&created, &endpoint, &region, ctx.ca_cert.as_deref());
            let text = Zeroizing::new(match ctx.format {
                OutputFormat::Json => {
                    let env: std::collections::BTreeMap<_, _> = env.iter().cloned().collect();
                    let mut value = serde_json::to_value(&created)?;
                    value["env"] = serde_json::to_value(env)?;
                    format!("{}\n", serde_json::to_string_pretty(&value)?)
                }
                OutputFormat::Table => env
                    .iter()
                    .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
                    .collect(),
            });
            write_output(None, text.as_bytes())?;
            eprintln!(
                "AWS access key {} for {} is accepted by node {} only and expires {}; the secret \
                 above is shown only once",
                created.access_key_id,
                created.record.principal,
                created.node,
                format_time_ms(created.record.expires_at_ms)
            );
            match created.approval.clone() {
                Some(approval) => Err(HttpError::ApprovalPending(Box::new(approval)).into()),
                None => Ok(()),
            }
        }
        KmsCredentialsCommand::Revoke { access_key_id } => {
            let token_id = qk_client::views::parse_aws_access_key_id(&access_key_id)
                .map(|(_, id)| id)
                .with_context(|| {
                    format!(
                        "{access_key_id} is not a Quorumkey AWS access key id (QK<node>X<id>); \
                         list them with `qk token list`"
                    )
                })?;
            ctx.api.revoke_token(&token_id).await?;
            done(ctx, &format!("AWS access key {access_key_id} revoked"))
        }
    }
}

/// `value` quoted for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

pub async fn token(ctx: &Ctx, cmd: TokenCommand) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        TokenCommand::Create {
            principal,
            ttl,
            description,
        } => {
            let ttl_ms = parse_duration_ms(&ttl)?;
            let created = api
                .create_token(&principal, ttl_ms, description.as_deref())
                .await?;
            let text = Zeroizing::new(match ctx.format {
                OutputFormat::Json => output::to_json(&created)?,
                OutputFormat::Table => format!("{}\n", created.token),
            });
            write_output(None, text.as_bytes())?;
            if ctx.format == OutputFormat::Table {
                eprintln!(
                    "token {} for {} expires {}; the secret above is shown only once",
                    created.record.id,
                    created.record.principal,
                    format_time_ms(created.record.expires_at_ms)
                );
            }
            match created.approval.clone() {
                // The token works once approved; exit as any pending write.
                Some(approval) => Err(HttpError::ApprovalPending(Box::new(approval)).into()),
                None => Ok(()),
            }
        }
        TokenCommand::List => {
            let all = api.tokens().await?;
            emit(ctx.format, &all, |t| output::tokens_table(t))
        }
        TokenCommand::Revoke { id } => {
            api.revoke_token(&id).await?;
            done(ctx, &format!("token {id} revoked"))
        }
        TokenCommand::Whoami => {
            let me = api.whoami().await?;
            emit(ctx.format, &me, |m| {
                let via = m
                    .token
                    .as_ref()
                    .map(|t| format!("token {}", t.id))
                    .unwrap_or_else(|| "client certificate".into());
                fields(&[
                    ("principal", m.principal.name.clone()),
                    ("roles", m.principal.roles.join(",")),
                    ("via", via),
                ])
            })
        }
    }
}

pub async fn policy(ctx: &Ctx, cmd: PolicyCommand) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        PolicyCommand::Show { key } => {
            let policy = api.policy(&key).await?;
            // A policy is JSON in both formats: it is what `policy set` reads.
            write_output(None, output::to_json(&policy)?.as_bytes())
        }
        PolicyCommand::Set { key, file } => {
            let policy: KeyPolicy = read_json(&file, "a key policy", "qk policy set")?;
            let view = api.set_policy(&key, Some(&policy)).await?;
            key_out(ctx, &view)
        }
        PolicyCommand::Clear { key } => {
            let view = api.set_policy(&key, None).await?;
            key_out(ctx, &view)
        }
    }
}

/// A JSON document from `file`; the error names what it should have been
/// and the command whose help shows the format.
fn read_json<T: serde::de::DeserializeOwned>(file: &Path, what: &str, command: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not {what}; see `{command} --help` for the format",
            file.display()
        )
    })
}

pub async fn access_rule(ctx: &Ctx, cmd: AccessRuleCommand) -> Result<()> {
    let api = &ctx.api;
    let rule = match cmd {
        AccessRuleCommand::Show => api.access_rule().await?,
        AccessRuleCommand::Set { file } => {
            let rule: ApprovalRule = read_json(&file, "an approval rule", "qk access-rule set")?;
            api.set_access_rule(Some(&rule)).await?
        }
        AccessRuleCommand::Clear => api.set_access_rule(None).await?,
    };
    // JSON in both formats: it is what `access-rule set` reads.
    write_output(None, output::to_json(&rule)?.as_bytes())
}

pub async fn approval(ctx: &Ctx, cmd: ApprovalCommand) -> Result<()> {
    let api = &ctx.api;
    let one = match cmd {
        ApprovalCommand::List => {
            let all = api.approvals().await?;
            return emit(ctx.format, &all, |a| output::approvals_table(a));
        }
        ApprovalCommand::Approve { id } => api.approve(&id).await?,
        ApprovalCommand::Deny { id, reason } => api.deny(&id, reason.as_deref()).await?,
    };
    emit(ctx.format, &one, |a| {
        output::approvals_table(std::slice::from_ref(a))
    })
}

pub async fn audit(ctx: &Ctx, cmd: AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Tail {
            from,
            limit,
            follow,
        } => audit_tail(ctx, from, limit, follow).await,
        AuditCommand::Verify {
            file: Some(file),
            checkpoints: Some(checkpoints),
            min_signers,
            ..
        } => {
            let views = crate::audit_file::read_jsonl(&file)?;
            let result = crate::audit_file::verify_views(&views)?;
            let ca = ctx.ca_cert.as_deref().context(
                "checking checkpoints needs the cluster CA certificate; pass --ca-cert FILE",
            )?;
            let signed = crate::audit_proof::read_checkpoints(&checkpoints)?;
            let verdict = crate::audit_proof::verify(&views, &signed, ca, min_signers)?;
            let both = serde_json::json!({ "file": result, "checkpoints": verdict });
            emit(ctx.format, &both, |_| {
                format!(
                    "ok: {} records verify; head hash {}\n{}",
                    result.records,
                    result.head_hash.clone().unwrap_or_else(|| "-".into()),
                    crate::audit_proof::text(&verdict)
                )
            })?;
            crate::audit_proof::require(&verdict)
        }
        AuditCommand::Checkpoint { file, out } => {
            let seq = match &file {
                Some(f) => crate::audit_file::read_jsonl(f)?
                    .last()
                    .map(|r| r.seq)
                    .with_context(|| format!("{} holds no audit record", f.display()))?,
                None => 0,
            };
            let (signed, failed) = crate::audit_proof::gather(&ctx.api, seq).await?;
            let mut text = String::new();
            for cp in &signed {
                text.push_str(&serde_json::to_string(cp)?);
                text.push('\n');
            }
            write_output(out.as_deref(), text.as_bytes())?;
            for cp in &signed {
                eprintln!(
                    "node {} signed record {} (hash {})",
                    cp.node, cp.seq, cp.hash
                );
            }
            for f in &failed {
                eprintln!("warning: no checkpoint from {f}");
            }
            Ok(())
        }
        AuditCommand::Verify {
            file: Some(file),
            cross_check,
            ..
        } => {
            let views = crate::audit_file::read_jsonl(&file)?;
            let result = crate::audit_file::verify_views(&views)?;
            let local = |r: &crate::audit_file::LocalVerification| {
                format!(
                    "ok: {} records from seq {} verify; head hash {}\n",
                    r.records,
                    r.first_seq.unwrap_or(0),
                    r.head_hash.clone().unwrap_or_else(|| "-".into())
                )
            };
            let head = views.last().map(|v| (v.seq, v.hash.clone()));
            match head.filter(|_| cross_check) {
                None if cross_check => {
                    bail!("{} holds no record to cross-check; export the trail again (`qk audit export`)", file.display())
                }
                None => emit(ctx.format, &result, local),
                Some((seq, hash)) => {
                    let check = audit_check::cross_check(&ctx.api, seq, &hash).await?;
                    let both = serde_json::json!({ "file": result, "cross_check": check });
                    emit(ctx.format, &both, |_| {
                        local(&result) + &audit_check::text(&check)
                    })?;
                    audit_check::require(&check)
                }
            }
        }
        AuditCommand::Verify {
            file: None,
            cross_check,
            ..
        } => {
            let result = ctx.api.audit_verify().await?;
            let local = |r: &AuditVerified| {
                format!(
                    "ok: {} records verify; head hash {}\n",
                    r.records, r.head_hash
                )
            };
            if !cross_check {
                return emit(ctx.format, &result, local);
            }
            if result.records == 0 {
                bail!(
                    "{} reports an empty audit trail, so there is nothing to cross-check; \
                     ask another node (--addr)",
                    ctx.api.base_url()
                );
            }
            let check =
                audit_check::cross_check(&ctx.api, result.records, &result.head_hash).await?;
            let both = serde_json::json!({ "cluster": result, "cross_check": check });
            emit(ctx.format, &both, |_| {
                local(&result) + &audit_check::text(&check)
            })?;
            audit_check::require(&check)
        }
        AuditCommand::Export { out } => audit_export(ctx, out.as_deref()).await,
    }
}

async fn audit_tail(ctx: &Ctx, from: u64, limit: u32, follow: bool) -> Result<()> {
    let mut next = from;
    let mut first = true;
    loop {
        let records = ctx.api.audit(next, limit.clamp(1, 1000)).await?;
        if let Some(last) = records.last() {
            next = last.seq + 1;
        }
        match ctx.format {
            OutputFormat::Json if follow => {
                for r in &records {
                    write_output(None, format!("{}\n", serde_json::to_string(r)?).as_bytes())?;
                }
            }
            OutputFormat::Json => emit(ctx.format, &records, |_| String::new())?,
            OutputFormat::Table if first || !records.is_empty() => {
                let mut text = output::audit_table(&records);
                if !first {
                    text = text
                        .split_once('\n')
                        .map(|(_, rows)| rows.to_string())
                        .unwrap_or_default();
                }
                write_output(None, text.as_bytes())?;
            }
            OutputFormat::Table => {}
        }
        first = false;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn audit_export(ctx: &Ctx, out: Option<&Path>) -> Result<()> {
    let mut lines = String::new();
    let mut next = 1;
    let mut count = 0u64;
    loop {
        let page = ctx.api.audit(next, 1000).await?;
        let Some(last) = page.last() else { break };
        next = last.seq + 1;
        for r in &page {
            lines.push_str(&serde_json::to_string(r)?);
            lines.push('\n');
            count += 1;
        }
    }
    write_output(out, lines.as_bytes())?;
    if let Some(p) = out {
        eprintln!(
            "{count} audit records written to {}; check them with `qk audit verify --file {}`",
            p.display(),
            p.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An abandoned refresh is reported with its own reason, not with an
    /// older version's failed generation.
    #[test]
    fn a_refresh_that_kept_the_old_epoch_names_its_own_reason() {
        let mut before = crate::output::tests::sample_key();
        let mut failed = before.versions[0].clone();
        failed.version = 2;
        failed.state = "failed".into();
        failed.failure = Some("a dealer timed out in 2028".into());
        before.versions.push(failed);
        let mut after = before.clone();
        after.versions[0].refresh_failure = Some("node 3 dealt nothing".into());
        let outcome = refresh_outcome(&before, &after);
        let error = outcome.error.expect("v1 kept its epoch");
        assert!(error.contains("v1 kept the old epoch"), "{error}");
        assert!(error.contains("node 3 dealt nothing"), "{error}");
        assert!(!error.contains("2028"), "{error}");

        after.versions[0].epoch = 1;
        after.versions[0].refresh_failure = None;
        assert_eq!(refresh_outcome(&before, &after).error, None);
    }
}
