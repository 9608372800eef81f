//! Command-line definitions (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::OutputFormat;
use crate::util::parse_context_pair;

#[derive(Parser, Debug)]
#[command(
    name = "qk",
    version,
    about = "Quorumkey administrators' CLI",
    long_about = "Quorumkey administrators' CLI: a local dev cluster, keys, encryption, access control and the audit trail, over the nodes' HTTPS API.",
    after_help = "Connection settings come from flags, then QK_ADDR, QK_TOKEN, QK_CA_CERT, QK_CLIENT_CERT, QK_CLIENT_KEY, then a profile file (--profile / QK_PROFILE, else ./.qk-dev/profile.toml, else ~/.config/quorumkey/profile.toml).\n\nGet started:\n  qk dev up                      # a local 3-node cluster; writes .qk-dev/profile.toml\n  qk key create payments\n  echo hello | qk encrypt payments | qk decrypt\n\nExit codes: 0 ok, 1 error, 2 usage, 3 waiting for approval."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Node API URL(s), comma-separated [env: QK_ADDR]
    #[arg(long, global = true, value_name = "URL")]
    pub addr: Option<String>,
    /// Bearer token (qkt.<id>.<secret>) [env: QK_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Cluster CA certificate (PEM) [env: QK_CA_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) issued by the cluster CA [env: QK_CLIENT_CERT]
    #[arg(long, global = true, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) [env: QK_CLIENT_KEY]
    #[arg(long, global = true, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Profile file (TOML: addr, nodes, ca_cert, client_cert, client_key, token) [env: QK_PROFILE]
    #[arg(long, global = true, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Upper bound on one request, e.g. 2m (quorum operations wait inside it)
    #[arg(long, global = true, default_value = "2m", value_name = "DUR")]
    pub timeout: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// A real local cluster of node processes on 127.0.0.1.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Run one node in this process.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Cluster CA and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Key lifecycle and the inventory.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypt stdin (or --in) under a key; prints the ciphertext text.
    #[command(
        after_help = "Examples:\n  echo -n secret | qk encrypt payments > secret.qk\n  qk encrypt payments --context tenant=acme --in card.bin --out card.qk"
    )]
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext; combines the holders' partials here by default.
    #[command(
        after_help = "Examples:\n  qk decrypt < secret.qk\n  qk decrypt --context tenant=acme --in card.qk --out card.bin\n  qk decrypt --server-side --approval 4f2a... < secret.qk"
    )]
    Decrypt(DecryptArgs),
    /// Generate a data key: its plaintext (base64) and its ciphertext.
    #[command(after_help = "Example:\n  qk datakey payments --bytes 32 -o json")]
    Datakey(DatakeyArgs),
    /// Re-encrypt a ciphertext under the key's primary version (or another key).
    #[command(
        after_help = "Examples:\n  qk rewrap < old.qk > new.qk\n  qk rewrap --to-key payments-2030 --in old.qk --out new.qk"
    )]
    Rewrap(RewrapArgs),
    /// Principals (who may authenticate) and their roles.
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// AWS KMS-compatible access (boto3, AWS SDKs, the AWS Encryption SDK).
    #[command(subcommand)]
    Kms(KmsCommand),
    /// Per-key access policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The cluster's access rule: M-of-N approval of principal and token
    /// management.
    #[command(subcommand)]
    AccessRule(AccessRuleCommand),
    /// Requests waiting for approvers.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// The hash-chained audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  qk completions bash > ~/.local/share/bash-completion/completions/qk\n  qk completions zsh > \"${fpath[1]}/_qk\"\n  qk completions fish > ~/.config/fish/completions/qk.fish"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Start a local cluster (fresh PKI, admin client certificate, profile) and leave it running.
    #[command(
        after_help = "Examples:\n  qk dev up\n  qk dev up --nodes 5 --threshold 3\n  qk dev up --dir /tmp/qk --base-port 9101\n\nNode N listens on 127.0.0.1:<base-port + N - 1> (QUIC) and https://127.0.0.1:<base-port + 100 + N - 1> (API).\nLater qk commands in this directory find the cluster through .qk-dev/profile.toml."
    )]
    Up(DevUpArgs),
    /// Show each node's process and readiness.
    #[command(after_help = "Example:\n  qk dev status")]
    Status(DevDirArgs),
    /// Stop every node (data is kept; `qk dev up` restarts them).
    #[command(after_help = "Examples:\n  qk dev down\n  rm -rf .qk-dev   # to start over")]
    Down(DevDirArgs),
    /// Stop or start one node (to watch the quorum at work).
    #[command(subcommand)]
    Node(DevNodeCommand),
}

#[derive(Args, Debug, Clone)]
pub struct DevDirArgs {
    /// The dev cluster directory.
    #[arg(long, default_value = ".qk-dev")]
    pub dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct DevUpArgs {
    /// Number of nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Default key threshold for `qk key create` with this profile (default: a majority).
    #[arg(long)]
    pub threshold: Option<u16>,
    #[command(flatten)]
    pub dir: DevDirArgs,
    /// QUIC port of node 1; the API ports start at base-port + 100.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
    /// How long to wait for every node's /api/v1/health/ready.
    #[arg(long, default_value = "60s", value_name = "DUR")]
    pub ready_timeout: String,
    /// Return as soon as the processes are started, without waiting for readiness.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum DevNodeCommand {
    /// Stop node ID (SIGTERM).
    #[command(after_help = "Example:\n  qk dev node stop 2")]
    Stop {
        id: u64,
        #[command(flatten)]
        dir: DevDirArgs,
    },
    /// Start node ID again.
    #[command(after_help = "Example:\n  qk dev node start 2")]
    Start {
        id: u64,
        #[command(flatten)]
        dir: DevDirArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Run a node from its config file until SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  qk node start --config node-1.toml --bootstrap\n  qk node start --config node-2.toml --join 127.0.0.1:7101"
    )]
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Initialize a new cluster with this node as its first member.
        #[arg(long, conflicts_with = "join")]
        bootstrap: bool,
        /// Ask the cluster at this QUIC address to add this node.
        #[arg(long, value_name = "ADDR")]
        join: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, leader, term, each node's health and live holders per key version.
    #[command(after_help = "Examples:\n  qk cluster status\n  qk cluster status -o json")]
    Status,
    /// Whether the node at --addr is ready (knows a leader, caught up); exits 0 if so, 1 if not.
    /// Needs no credential: a health check for containers and load balancers.
    #[command(
        after_help = "Example:\n  qk cluster ready --addr https://127.0.0.1:8200 --ca-cert /pki/ca.pem"
    )]
    Ready,
    /// Turn on each principal's share of the request memory, so that one
    /// principal (a compromised node too) flooding commands cannot stop the
    /// others. New clusters start with it on; a cluster created by an older
    /// release needs it once every node runs this release (an older node
    /// cannot read the entry).
    #[command(after_help = "Example:\n  qk cluster enable-request-shares")]
    EnableRequestShares,
    /// Refresh every enabled key version on a schedule: a new share epoch,
    /// the same public key, the old shares erased (as `qk key refresh`). A
    /// refresh that cannot finish (a holder down) is tried again after one
    /// period, at most an hour.
    #[command(
        after_help = "Examples:\n  qk cluster refresh-schedule --every 30d\n  qk cluster refresh-schedule --off"
    )]
    #[group(required = true, multiple = false)]
    RefreshSchedule {
        /// How often, e.g. 30d, 12h (at least 10s).
        #[arg(long)]
        every: Option<String>,
        /// Remove the schedule (refresh only by hand).
        #[arg(long)]
        off: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    #[command(after_help = "Example:\n  qk pki init --dir pki")]
    Init {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
    },
    /// Issue a node certificate (--node ID) or a client certificate (--client NAME).
    #[command(
        after_help = "Examples:\n  qk pki issue --dir pki --node 2 --host 10.0.0.2 --host node2.internal\n  qk pki issue --dir pki --client alice"
    )]
    Issue {
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        #[arg(
            long,
            conflicts_with = "client",
            required_unless_present = "client",
            value_name = "ID"
        )]
        node: Option<u64>,
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Host names or IPs the node is reached at (repeatable; nodes only).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct VersionArg {
    /// One version (default: every version the change applies to).
    #[arg(long)]
    pub version: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create a key; waits until its first version is generated by the quorum.
    #[command(
        after_help = "Examples:\n  qk key create payments\n  qk key create payments --description \"card data\" --threshold 2 --rotate-every 30d --expires 365d\n  qk key create archive --holders 1,2,3 --expires 2030-01-01T00:00:00Z"
    )]
    Create(KeyCreateArgs),
    /// The inventory: purpose, owner, created, rotation, expiry, state, holders.
    #[command(after_help = "Examples:\n  qk key list\n  qk key list -o json | jq '.[].name'")]
    List,
    /// One key with all its versions.
    #[command(after_help = "Example:\n  qk key show payments")]
    Show { name: String },
    /// Generate a new primary version (waits for the quorum).
    #[command(after_help = "Example:\n  qk key rotate payments")]
    Rotate { name: String },
    /// Refuse encryption and decryption with the key (or one version).
    #[command(
        after_help = "Examples:\n  qk key disable payments\n  qk key disable payments --version 1"
    )]
    Disable {
        name: String,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Give every holder a new share of the same key (a new share epoch; waits for the quorum):
    /// shares stolen before it no longer combine with shares taken after.
    /// With --all: every key that has an enabled version, one after another (after a node
    /// that lost its disk rejoined, this gives it its shares back).
    #[command(
        after_help = "Examples:\n  qk key refresh payments\n  qk key refresh payments --version 2\n  qk key refresh --all"
    )]
    Refresh {
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Refresh every key with an enabled version.
        #[arg(long, conflicts_with_all = ["name", "version"])]
        all: bool,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Allow a disabled key (or version) again.
    #[command(after_help = "Example:\n  qk key enable payments --version 1")]
    Enable {
        name: String,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Record that a version leaked: no more encryption, decryption only if allowed.
    #[command(
        after_help = "Example:\n  qk key mark-compromised payments --version 1 --reason \"laptop stolen\" --allow-decrypt"
    )]
    MarkCompromised {
        name: String,
        #[arg(long)]
        reason: String,
        /// Still allow decrypting existing ciphertexts (to rewrap them).
        #[arg(long)]
        allow_decrypt: bool,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Schedule quorum destruction of the key's shares after a grace period.
    #[command(
        after_help = "Examples:\n  qk key destroy payments --after 7d\n  qk key destroy payments --version 1 --after 24h\n  qk key cancel-destroy payments   # within the grace period"
    )]
    Destroy {
        name: String,
        /// Grace period, e.g. 24h or 7d.
        #[arg(long, value_name = "DUR")]
        after: String,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Cancel a scheduled destruction.
    #[command(after_help = "Example:\n  qk key cancel-destroy payments")]
    CancelDestroy {
        name: String,
        #[command(flatten)]
        version: VersionArg,
    },
    /// Change the rotation schedule, expiry or minimum decryption version.
    #[command(
        after_help = "Examples:\n  qk key config payments --rotate-every 90d\n  qk key config payments --expires 2031-01-01T00:00:00Z --min-decrypt-version 2"
    )]
    Config {
        name: String,
        #[arg(long, value_name = "DUR")]
        rotate_every: Option<String>,
        #[arg(long, value_name = "DUR|RFC3339")]
        expires: Option<String>,
        #[arg(long, value_name = "VERSION")]
        min_decrypt_version: Option<u32>,
    },
}

#[derive(Args, Debug, Clone)]
pub struct KeyCreateArgs {
    pub name: String,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub purpose: Option<String>,
    /// Holders needed to decrypt (default: the profile's, else the cluster's).
    #[arg(long)]
    pub threshold: Option<u16>,
    /// Node ids that hold shares, comma-separated (default: every voter).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub holders: Option<Vec<u64>>,
    /// Rotate automatically, e.g. 30d.
    #[arg(long, value_name = "DUR")]
    pub rotate_every: Option<String>,
    /// Expire after a duration (365d) or at a time (2030-01-01T00:00:00Z).
    #[arg(long, value_name = "DUR|RFC3339")]
    pub expires: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IoArgs {
    /// Read from this file instead of stdin.
    #[arg(long = "in", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write to this file instead of stdout.
    #[arg(long = "out", value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct ContextArgs {
    /// Encryption context entry (repeatable); decryption needs the same entries.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_context_pair)]
    pub context: Vec<(String, String)>,
}

#[derive(Args, Debug, Clone)]
pub struct EncryptArgs {
    pub key: String,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub io: IoArgs,
    /// Let a node combine the partials (it sees the plaintext).
    #[arg(long)]
    pub server_side: bool,
    /// An approved approval's id, when the key's policy requires approval.
    #[arg(long, value_name = "ID")]
    pub approval: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DatakeyArgs {
    pub key: String,
    /// Data key length in bytes.
    #[arg(long, default_value_t = 32)]
    pub bytes: u32,
    #[command(flatten)]
    pub context: ContextArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RewrapArgs {
    /// Re-encrypt under this key instead of the ciphertext's own key.
    #[arg(long, value_name = "NAME")]
    pub to_key: Option<String>,
    #[command(flatten)]
    pub context: ContextArgs,
    #[command(flatten)]
    pub io: IoArgs,
}

#[derive(Subcommand, Debug)]
pub enum PrincipalCommand {
    /// Every principal and its roles.
    #[command(after_help = "Example:\n  qk principal list")]
    List,
    /// Add a principal (a client certificate name or a token holder).
    #[command(
        after_help = "Examples:\n  qk principal create alice --role key-user\n  qk principal create bob --role operator --role approver\n\nRoles: admin, operator, approver, auditor, key-user."
    )]
    Create {
        name: String,
        #[arg(long = "role", required = true, value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// Replace a principal's roles, or disable/enable it.
    #[command(
        after_help = "Examples:\n  qk principal update alice --role key-user --role auditor\n  qk principal update alice --disable"
    )]
    Update {
        name: String,
        /// New roles (default: keep the current ones).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
    /// Remove a principal (its tokens are revoked).
    #[command(after_help = "Example:\n  qk principal delete alice")]
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token for a principal; prints the secret once.
    #[command(
        after_help = "Examples:\n  qk token create --principal alice --ttl 24h --description ci\n  export QK_TOKEN=$(qk token create --principal alice --ttl 1h -o json | jq -r .token)"
    )]
    Create {
        #[arg(long)]
        principal: String,
        #[arg(long, value_name = "DUR")]
        ttl: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Every token (never the secrets).
    #[command(after_help = "Example:\n  qk token list")]
    List,
    /// Revoke a token now.
    #[command(after_help = "Example:\n  qk token revoke 3f9c0a1b")]
    Revoke { id: String },
    /// Who the current credential authenticates as.
    #[command(after_help = "Example:\n  qk token whoami")]
    Whoami,
}

#[derive(Subcommand, Debug)]
pub enum KmsCommand {
    /// AWS access keys (SigV4) for the KMS endpoint.
    #[command(subcommand)]
    Credentials(KmsCredentialsCommand),
}

#[derive(Subcommand, Debug)]
pub enum KmsCredentialsCommand {
    /// Create an AWS access key for a principal, bound to one node; prints
    /// the environment an AWS SDK needs (the secret is shown only once).
    #[command(
        after_help = "Examples:\n  eval \"$(qk kms credentials create --principal app --ttl 30d)\"\n  python3 -c 'import boto3; print(boto3.client(\"kms\").list_keys())'\n\nThe key is accepted only by the node that issued it (the first address of\nthe profile, or --node-url): its secret is derived from that node's seal\nkey, so no other node can check or forge its signatures."
    )]
    Create {
        #[arg(long)]
        principal: String,
        #[arg(long, value_name = "DUR")]
        ttl: String,
        #[arg(long)]
        description: Option<String>,
        /// The node to bind the key to (its https:// API URL).
        #[arg(long, value_name = "URL")]
        node_url: Option<String>,
        /// The AWS region clients sign for (any name; ARNs carry it).
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
    /// Revoke an AWS access key now.
    #[command(after_help = "Example:\n  qk kms credentials revoke QK1X3F9C0A1B22334455")]
    Revoke { access_key_id: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print a key's policy (JSON).
    #[command(after_help = "Example:\n  qk policy show payments")]
    Show { key: String },
    /// Set a key's policy from a JSON file.
    #[command(
        after_help = "Example:\n  qk policy set payments --file policy.json\n\npolicy.json:\n  {\"rules\": [{\"principals\": [\"role:key-user\"], \"permissions\": [\"encrypt\", \"decrypt\"], \"context\": {\"tenant\": \"acme\"}}],\n   \"approval\": {\"required\": 2, \"approvers\": [\"role:approver\"], \"permissions\": [\"key-destroy\"]}}"
    )]
    Set {
        key: String,
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a key's policy (roles alone decide).
    #[command(after_help = "Example:\n  qk policy clear payments")]
    Clear { key: String },
}

#[derive(Subcommand, Debug)]
pub enum AccessRuleCommand {
    /// Print the cluster's access rule (JSON; `null` when none is set).
    #[command(after_help = "Example:\n  qk access-rule show")]
    Show,
    /// Set the cluster's access rule from a JSON file. While a rule is set,
    /// creating, changing or deleting principals and issuing tokens for
    /// others (what it covers) wait for its approvers, and so does any
    /// change to the rule itself.
    #[command(
        after_help = "Example:\n  qk access-rule set --file rule.json\n\nrule.json:\n  {\"required\": 2, \"approvers\": [\"role:approver\"], \"permissions\": [\"principal-manage\", \"token-manage\"]}"
    )]
    Set {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove the cluster's access rule (waits for its approvers).
    #[command(after_help = "Example:\n  qk access-rule clear")]
    Clear,
}

#[derive(Subcommand, Debug)]
pub enum ApprovalCommand {
    /// Approval requests.
    #[command(after_help = "Example:\n  qk approval list")]
    List,
    /// Approve a request (as an approver other than the requester).
    #[command(after_help = "Example:\n  qk approval approve 4f2a9c")]
    Approve { id: String },
    /// Deny a request.
    #[command(
        after_help = "Example:\n  qk approval deny 4f2a9c --reason \"not during the freeze\""
    )]
    Deny {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print audit records from a sequence number on.
    #[command(
        after_help = "Examples:\n  qk audit tail --limit 20\n  qk audit tail --from 1200 --limit 1000\n  qk audit tail --follow"
    )]
    Tail {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Keep printing new records.
        #[arg(long)]
        follow: bool,
    },
    /// Verify the hash chain: on the cluster, or locally on an exported file.
    #[command(
        after_help = "Examples:\n  qk audit verify\n  qk audit verify --cross-check\n  qk audit export --out audit.jsonl && qk audit verify --file audit.jsonl\n  qk audit verify --file audit.jsonl --cross-check\n\n--cross-check asks every member for the last record checked: a trail rewritten on one node, or in an export, however consistent in itself, disagrees with the other nodes' copies. It passes when a majority of voters hold the same hash and none holds another."
    )]
    Verify {
        /// JSON lines written by `qk audit export`; verified here, offline.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Also compare the last record with every member's own copy.
        #[arg(long)]
        cross_check: bool,
        /// Signed checkpoints (`qk audit checkpoint`) to check the file
        /// against, offline, with the cluster CA certificate (--ca-cert).
        #[arg(long, value_name = "FILE", requires = "file")]
        checkpoints: Option<PathBuf>,
        /// Distinct nodes whose checkpoints must vouch for the file.
        #[arg(long, default_value_t = 2, requires = "checkpoints")]
        min_signers: usize,
    },
    /// Ask every member to sign its audit head (JSON lines): with an export
    /// taken just before, proof the trail is what the nodes recorded.
    #[command(
        after_help = "Example:\n  qk audit export --out audit.jsonl\n  qk audit checkpoint --file audit.jsonl --out audit.checkpoints\n  qk audit verify --file audit.jsonl --checkpoints audit.checkpoints --ca-cert ca.pem"
    )]
    Checkpoint {
        /// Sign the last record of this export (default: each node's last record).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write every record as JSON lines.
    #[command(after_help = "Example:\n  qk audit export --out audit.jsonl")]
    Export {
        #[arg(long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
    },
}
