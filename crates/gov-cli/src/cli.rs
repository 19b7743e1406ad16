//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Enforcement gates for AI agents: migrate the schema, verify the audit chain, run a demo.
#[derive(Debug, Parser)]
#[command(
    name = "governance",
    version,
    propagate_version = true,
    after_help = "Exit codes: 0 success, 1 audit chain tampered, 2 usage or configuration error, 3 storage unreachable.\nConfiguration: flags, then GOVERNANCE_* environment variables (see docs/configuration.md)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Database URL: postgres://user:password@host:5432/db or sqlite:///path/to/governance.db;
    /// default: a local SQLite file in your data directory
    #[arg(
        long,
        global = true,
        env = "GOVERNANCE_DATABASE_URL",
        hide_env_values = true
    )]
    pub(crate) database_url: Option<String>,
    /// Print machine-readable JSON on stdout
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Apply the database migrations (idempotent) and optionally create the application role
    #[command(
        after_help = "Examples:\n  governance migrate --database-url postgres://owner@db/app\n  GOVERNANCE_APP_ROLE_PASSWORD=… governance migrate --app-role governance_app"
    )]
    Migrate(MigrateArgs),
    /// Verify the audit chain: every chain, or the one named
    #[command(
        after_help = "Examples:\n  governance verify\n  governance verify --chain billing --json\n\nEach chain is judged on its own: clean, tampered, or not verifiable with the configured keys (written with another secret: stderr names the key its rows need). The worst wins, tampered before configuration.\nExit codes: 0 clean, 1 tampered (seq and reason on stderr), 2 configuration (including a chain the configured keys cannot check), 3 storage unreachable."
    )]
    Verify(VerifyArgs),
    /// Run a simulated agent through every gate, verify the chain, then serve the console
    #[command(
        after_help = "Examples:\n  governance demo\n  governance demo --events 1000 --sessions 8 --no-serve\n\nWithout GOVERNANCE_DATABASE_URL it uses the local SQLite database in your data directory (shown); without GOVERNANCE_AUDIT_SECRET it keeps a generated demo secret in a file (shown) so later runs verify too.\nIt listens on --bind before writing anything, so a second demo while one runs stops at once and changes nothing. The console user is demo; its password is kept in your data directory and printed each run. While the console is served, a simulated workload (labelled) keeps the agent working until Ctrl-C."
    )]
    Demo(DemoArgs),
    /// Follow audit events live, as any process appends them (Postgres: LISTEN/NOTIFY; SQLite: a
    /// short poll of the notification table)
    #[command(
        after_help = "Examples:\n  governance tail\n  governance tail --agent billing-agent --kind scope.denied --since 1h\n  governance tail --json --since 2026-11-25T09:00:00Z | jq .kind"
    )]
    Tail(TailArgs),
    /// Show an agent's spend against its caps, for a session and today, by model
    #[command(
        after_help = "Examples:\n  governance budget billing-agent\n  governance budget billing-agent --session s-42 --json"
    )]
    Budget(BudgetArgs),
    /// Write the EU AI Act Article 12 evidence report for a period (JSON, Markdown or HTML)
    #[command(
        after_help = "Examples:\n  governance report --from 2026-11-01 --to 2026-11-30 --output nov.md\n  governance report --chain billing --from 30d --as json > report.json\n  governance report --from 2026-10-01 --output q4.html\n\nThe period is from --from (included) to --to (excluded); a bare date as --to includes that whole day.\nThe chains covered are verified whole, whatever the period.\nExit codes: 0 written and the chains verify clean, 1 written but a chain is tampered (the report says where), 2 usage or configuration (bad dates, unknown chain, or no chain tampered but one the configured keys cannot check: nothing written), 3 storage unreachable."
    )]
    Report(ReportArgs),
    /// Rotate the audit secret: append a key-rotation marker, provable under the old and the new key
    #[command(
        name = "rotate-chain-key",
        after_help = "Examples:\n  GOVERNANCE_AUDIT_SECRET_NEW=$(cat new.key) governance rotate-chain-key --operator alice\n  openssl rand -hex 32 | tee new.key | governance rotate-chain-key --chain billing --reason \"yearly rotation\"\n\nThe old secret is the current one (GOVERNANCE_AUDIT_SECRET or --audit-secret-file); the new one comes from GOVERNANCE_AUDIT_SECRET_NEW, else the first line of standard input, never from the command line.\nEach chain is verified first and is not rotated when it is tampered. Afterwards, run every writer with GOVERNANCE_AUDIT_SECRET=<new> and GOVERNANCE_AUDIT_SECRET_PREVIOUS=<old>.\nExit codes: 0 rotated, 1 a chain is tampered (nothing rotated), 2 usage or configuration (including a chain the current secret cannot check: nothing rotated), 3 storage unreachable."
    )]
    RotateChainKey(RotateArgs),
    /// Archive a chain's oldest rows to a file and remove them from the database (retention);
    /// what remains still verifies
    #[command(
        after_help = "Examples:\n  governance archive --chain billing --output billing-2026h1.jsonl --reason \"retention: 2026 H1\" --operator alice\n  governance archive --chain billing --before 2026-06-01 --output a.jsonl --reason … --dry-run\n  governance archive --chain billing --through-seq 51200 --output a.jsonl --reason …\n\nRun as the schema owner. The segment is the rows after the chain's last cut that occurred before --before and at least --min-age-days ago (183 by default: Art. 19 and 26(6) ask for at least six months), ending at a multiple of 256 rows. The chain is verified first (nothing is done to a tampered chain); the archive is the export format (`governance import` reads it; archives of one chain import in order) and is written whole and synced before any row is removed; the cut records the archive's SHA-256, the last row's seal and the Merkle tree's frontier, so `governance verify` checks what remains from there.\nExit codes: 0 archived (or planned, with --dry-run), 1 the chain is tampered (nothing archived), 2 usage or configuration (nothing old enough, an existing --output, a role that may not remove rows), 3 storage unreachable."
    )]
    Archive(ArchiveArgs),
    /// Erase a data subject: destroy its keys, so its personal fields read as erased; record the erasure
    #[command(
        after_help = "Examples:\n  governance erase --subject 0f9c2a4e-user --reason \"GDPR Art. 17 request #1234\" --operator alice\n\nThe subject's personal fields stay in the chain as ciphertext nobody can read; the events, their seals, proofs and evidence bundles stay valid. The erasure is recorded as a subject.erased event, and no key is ever stored for the subject again.\nRun it with the schema owner's URL: the application role cannot delete keys.\nExit codes: 0 erased, 2 usage or configuration (including a role that may not erase), 3 storage unreachable."
    )]
    Erase(EraseArgs),
    /// Cedar policy sets (policy as code): validate, test against case files, diff, apply
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Sign each chain's head with Ed25519, store it and print it (keep the output away from the database)
    #[command(
        after_help = "Examples:\n  governance checkpoint --signing-key file:///etc/governance/operator.key --output heads.json\n  GOVERNANCE_SIGNING_KEY=env://OPERATOR_KEY governance checkpoint --chain billing\n\nLater, `governance verify --checkpoint heads.json` proves the chains still extend those heads:\na cut tail or a chain rebuilt without the signing key fails.\nExit codes: 0 signed, 2 usage or configuration (no key, unreadable key, no such chain), 3 storage unreachable."
    )]
    Checkpoint(CheckpointArgs),
    /// Prove from the chain's Merkle tree that a row is included (--seq) or that a tree extends
    /// an older one (--from, --to), or check such a proof offline (--verify FILE)
    #[command(
        after_help = "Examples:\n  governance prove --chain billing --seq 42\n  governance prove --seq 42 --size 1000 --json > proof.json\n  governance prove --from 1000 --to 2000 --json > consistency.json\n  governance prove --verify proof.json\n\nThe tree is RFC 9162's over the rows as sealed (docs/audit-chain.md, \"The Merkle tree\"); --size defaults to the head. --verify needs no database and no secret: it checks the file's hashes alone, so compare the root with one you hold (a signed checkpoint, an auditor's copy) to learn more than the file's own consistency.\nExit codes: 0 proved or the proof holds, 1 the proof does not hold, 2 usage or configuration (no such chain, a seq or size beyond the head, a file that is not a proof), 3 storage unreachable."
    )]
    Prove(ProveArgs),
    /// Write audit chains, their signer keys and checkpoints to a file (JSON Lines) that
    /// `governance import` reads into another database
    #[command(
        after_help = "Examples:\n  governance export --output chains.jsonl\n  governance export --chain billing --chain default > two-chains.jsonl\n  governance --database-url sqlite:///var/lib/governance.db export | governance --database-url postgres://owner@db/app import\n\nRows are copied as they were sealed (nothing is re-sealed), so no audit secret is needed. Each chain is exported up to the head it has when the export starts; rows appended meanwhile are left for the next export.\nThe file ends with a trailer that counts its lines, so `governance import` refuses a cut-off file.\nExit codes: 0 written, 1 a chain's rows do not link up (nothing usable written), 2 usage or configuration (no such chain, unwritable --output, schema not migrated), 3 storage unreachable."
    )]
    Export(ExportArgs),
    /// Read a file written by `governance export` into this database: signer keys, then the rows,
    /// verbatim, then the checkpoints
    #[command(
        after_help = "Examples:\n  governance migrate && governance import --input chains.jsonl --verify\n  governance --database-url sqlite:///var/lib/governance.db import -i chains.jsonl\n  governance --database-url postgres://a@old/app export | governance --database-url postgres://a@new/app import\n\nThe whole file is checked before anything is written: its header and version, every line, the links between rows, the trailer's counts, and that each chain is empty here or already holds the file's rows (those are skipped, so an interrupted import is resumed by running it again). Seals are checked by `governance verify` on the target, or at once with --verify (which needs the audit secret).\nExit codes: 0 imported, 1 --verify found a chain tampered, 2 --verify found a chain the configured keys cannot check, or usage or configuration (a damaged or cut-off file, an unknown version, a chain here that the file does not continue, schema not migrated), 3 storage unreachable."
    )]
    Import(ImportArgs),
    /// Serve the web console (serve) and manage its users, the operators who approve, deny, halt
    /// and resume (add-user, list-users, disable-user, reset-password, set-role)
    #[command(subcommand)]
    Console(ConsoleCommand),
    /// Approval workflows: quorum, approver groups, escalation and timeout (workflow), which
    /// requests follow which (route), operators' groups (groups)
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Notify people of approval requests (run): signed webhooks (JSON, Slack, CloudEvents) and
    /// email, with retries and a dead-letter record (list)
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Run the LLM gateway (serve) that puts every gate in front of OpenAI- and
    /// Anthropic-compatible providers for agents in any language, and manage the agents' gateway
    /// keys (add-key, list-keys, revoke-key)
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Run a C2SP tlog witness (serve) that cosigns the checkpoints of the logs it is given, only
    /// when each is consistent with the last one it cosigned
    #[command(subcommand)]
    Witness(WitnessCommand),
    /// Write an offline evidence bundle (export) of a period's events of a chain, proven in its
    /// Merkle tree under a signed checkpoint with its witness cosignatures, and the Article 12
    /// report, in one signed DSSE envelope; or check one with no database and no secret (verify)
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Send audit events to a SIEM: OCSF 1.9 or CloudEvents 1.0 JSON lines, to a file, stdout or
    /// an HTTP endpoint, resumable from a cursor file
    #[command(subcommand)]
    Siem(SiemCommand),
    /// Print shell completions
    #[command(
        after_help = "Example:\n  governance completions bash > /etc/bash_completion.d/governance"
    )]
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Also create (or update) this least-privilege application role: INSERT and SELECT on the
    /// audit rows, nothing more. Its password, if any, comes from GOVERNANCE_APP_ROLE_PASSWORD.
    #[arg(long, value_name = "ROLE", num_args = 0..=1, default_missing_value = "governance_app")]
    pub(crate) app_role: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// Read the audit secret from this file instead of GOVERNANCE_AUDIT_SECRET
    #[arg(long, value_name = "PATH")]
    pub(crate) audit_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Verify only this chain (default: every chain in the database)
    #[arg(long)]
    pub(crate) chain: Option<String>,
    /// Verify from this seq on, included (default 1); its row must link to the row before it
    #[arg(long, value_name = "SEQ", allow_negative_numbers = true)]
    pub(crate) from: Option<i64>,
    /// Verify up to this seq, included (default: the head); the head is checked only when the
    /// range reaches it
    #[arg(long, value_name = "SEQ", allow_negative_numbers = true)]
    pub(crate) to: Option<i64>,
    /// Also prove that each chain still extends the heads signed in this checkpoint file
    /// (from `governance checkpoint --output FILE`)
    #[arg(long, value_name = "FILE")]
    pub(crate) checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Events to log
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) events: u32,
    /// Concurrent agent sessions
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) sessions: u32,
    /// Chain to log the simulated sessions to
    #[arg(long, default_value = "default")]
    pub(crate) chain: String,
    /// Agent id of the simulated agent
    #[arg(long, default_value = "demo-agent")]
    pub(crate) agent: String,
    /// Exit after the simulation and the verification instead of serving the console (no approval
    /// request is left waiting then)
    #[arg(long)]
    pub(crate) no_serve: bool,
    /// Where the console listens
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub(crate) bind: std::net::SocketAddr,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct BudgetArgs {
    /// The agent
    pub(crate) agent: String,
    /// Also show this session's spend against its cap (default: today's totals only)
    #[arg(long)]
    pub(crate) session: Option<String>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum EvidenceCommand {
    /// Write the bundle of --chain's events in the period to --output
    #[command(
        after_help = "Examples:\n  governance evidence export --from 2026-11-01 --to 2026-11-30 --chain billing \\\n    --signing-key file:///etc/governance/log.key --log-name example.com/governance --output nov.dsse.json\n\nThe checkpoint is the largest tree size witnesses cosigned (stored by `checkpoint --witness`) that holds the period's last event, with those cosignatures; else the chain's head, signed now with --signing-key (the log key; the envelope is signed with it too). Nothing is written to the database.\nThe chain is verified whole first (for the report), so the audit secret is needed.\nExit codes: 0 written, 1 the chain is tampered (nothing written), 2 usage or configuration (no key, no log name, no event in the period, unknown chain), 3 storage unreachable."
    )]
    Export(EvidenceExportArgs),
    /// Check a bundle with no database and no secret, and say what it proves and what not
    #[command(
        after_help = "Examples:\n  governance evidence verify nov.dsse.json --log-key 'example.com/governance/billing+1a2b3c4d+AU…'\n  governance evidence verify nov.dsse.json --witness-key 'witness.example/w1+…' --json\n\nWithout --log-key the file is only shown to be internally consistent and signed by the key it carries. Each --witness-key must have cosigned the checkpoint. The HMAC seals are not re-checked (that needs the secret).\nExit codes: 0 the bundle verifies, 1 it does not (the reason is named), 2 usage or configuration (unreadable file, malformed key)."
    )]
    Verify(EvidenceVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct EvidenceExportArgs {
    /// Start of the period, included: RFC 3339, a date (2026-11-01, UTC) or an age (30d);
    /// default: the start of the record
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End of the period, excluded: RFC 3339, a date (the whole day is included) or an age;
    /// default: now
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// The chain
    #[arg(long, default_value = "default")]
    pub(crate) chain: String,
    /// The log's Ed25519 key, which signs the checkpoint note and the envelope: file:///path
    /// (hex seed or PKCS#8 PEM, mode 600), env://VAR or ephemeral
    #[arg(
        long,
        env = "GOVERNANCE_SIGNING_KEY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) signing_key: Option<String>,
    /// The log's name: the checkpoint's origin is `<log name>/<chain>` (as for `checkpoint
    /// --format note`)
    #[arg(long, env = "GOVERNANCE_LOG_NAME", value_name = "NAME")]
    pub(crate) log_name: Option<String>,
    /// Write the bundle to this file (replaced whole, never left half-written)
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: PathBuf,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EvidenceVerifyArgs {
    /// The bundle file
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The log's verifier key you hold (origin+keyid+base64(0x01 || key)): the envelope and the
    /// checkpoint must be signed by it
    #[arg(long, value_name = "VKEY")]
    pub(crate) log_key: Option<String>,
    /// A witness's verifier key (name+keyid+base64(0x04 || key)) that must have cosigned the
    /// checkpoint; repeat for several
    #[arg(long, value_name = "VKEY")]
    pub(crate) witness_key: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WitnessCommand {
    /// Serve POST /add-checkpoint (c2sp.org/tlog-witness) on --listen
    #[command(
        after_help = "Example:\n  governance witness serve --key file:///etc/witness.key --name witness.example/w1 \\\n    --state /var/lib/witness --listen 127.0.0.1:7380 \\\n    --log example.com/governance/default=<log vkey or hex public key>\n\nPrints `listening on http://ADDR` and the witness's vkey (give it to the log: `governance checkpoint --witness URL=VKEY`).\nExit codes: 0 stopped, 2 usage or configuration (bad key, state folder, log)."
    )]
    Serve(WitnessServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct WitnessServeArgs {
    /// The witness's Ed25519 key: file:///path (hex seed or PKCS#8 PEM, mode 600) or env://VAR
    #[arg(long, value_name = "URL")]
    pub(crate) key: String,
    /// The witness's name (its key name in cosignature lines), e.g. witness.example/w1
    #[arg(long, value_name = "NAME")]
    pub(crate) name: String,
    /// The folder holding one state file per log (the last checkpoint cosigned)
    #[arg(long, value_name = "DIR")]
    pub(crate) state: std::path::PathBuf,
    /// Address to listen on (port 0: any free port, printed)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7380")]
    pub(crate) listen: String,
    /// A log to witness: ORIGIN=PUBKEY, the key as the log's vkey or 64 hex digits (repeat)
    #[arg(long = "log", value_name = "ORIGIN=PUBKEY", required = true)]
    pub(crate) logs: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsoleCommand {
    /// Serve the web console (sign-in, dashboard, agents, approvals, live events, costs, chain)
    #[command(
        after_help = "Examples:\n  governance console serve\n  governance console serve --bind 0.0.0.0:8080 --secure-cookies   # behind HTTPS\n  governance console serve --chain-check-secs 60   # health re-verifies the chains at most once a minute\n  governance console serve --verify-every-secs 600   # verify every chain every 10 minutes in the background\n\nConnect with the schema owner's database URL, as for the other console commands; sign in with a user made by `governance console add-user`."
    )]
    Serve(ServeArgs),
    /// Add a user; the password is read from a prompt, or from standard input when it is not a
    /// terminal (never from the command line)
    #[command(
        after_help = "Examples:\n  governance console add-user --username alice --role operator\n  printf '%s\\n' \"$PASSWORD\" | governance console add-user --username ci --role viewer"
    )]
    AddUser(AddUserArgs),
    /// List users (never their password hashes)
    #[command(
        after_help = "Examples:\n  governance console list-users\n  governance console list-users --json | jq '.users[].username'"
    )]
    ListUsers,
    /// Disable a user (or enable it again with --enable); either ends the user's console sessions
    #[command(
        after_help = "Examples:\n  governance console disable-user --username bob\n  governance console disable-user --username bob --enable"
    )]
    DisableUser(DisableUserArgs),
    /// Set a new password, read like add-user's; ends the user's console sessions
    #[command(
        after_help = "Example:\n  governance console reset-password --username alice   # prompts twice on a terminal"
    )]
    ResetPassword(UserArgs),
    /// Change a user's role; ends the user's console sessions
    #[command(
        after_help = "Example:\n  governance console set-role --username alice --role viewer"
    )]
    SetRole(AddUserArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCommand {
    /// Serve the gateway: POST /v1/chat/completions, GET /v1/models, POST /v1/messages, /healthz
    #[command(
        after_help = "Examples:\n  OPENAI_API_KEY=sk-… governance gateway serve --config /etc/governance/gateway.toml\n  governance gateway serve --config gateway.toml --bind 0.0.0.0:8089\n\nConnect as the application role (GOVERNANCE_DATABASE_URL) with GOVERNANCE_AUDIT_SECRET set; provider API keys come from the environment variables the file names (docs/gateway.md). On Ctrl-C or SIGTERM it stops accepting, lets calls in flight finish and settles them.\nExit codes: 0 stopped, 2 usage or configuration, 3 storage unreachable."
    )]
    Serve(GatewayServeArgs),
    /// Make a gateway key for an agent; the key is printed once and stored only as a hash
    #[command(
        after_help = "Examples:\n  governance gateway add-key --agent billing-agent --label \"prod pod\"\n  governance gateway add-key --agent billing-agent --json | jq -r .key\n\nRun it with the schema owner's database URL: the application role cannot make keys."
    )]
    AddKey(GatewayAddKeyArgs),
    /// List gateway keys (ids, agents, labels, dates; never a key or a hash)
    #[command(
        after_help = "Examples:\n  governance gateway list-keys\n  governance gateway list-keys --agent billing-agent --json"
    )]
    ListKeys(GatewayListKeysArgs),
    /// Revoke a gateway key by its id: the gateway refuses it from then on
    #[command(
        after_help = "Example:\n  governance gateway revoke-key 3f2a…\n\nA running gateway trusts a key it accepted for at most key_cache_secs (default 5 s)."
    )]
    RevokeKey(GatewayRevokeKeyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GatewayServeArgs {
    /// The gateway's configuration file (TOML)
    #[arg(long, value_name = "PATH")]
    pub(crate) config: PathBuf,
    /// Listen here instead of the file's `listen`
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) bind: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayAddKeyArgs {
    /// The agent the key authenticates
    #[arg(long)]
    pub(crate) agent: String,
    /// A note for operators (where the key is used)
    #[arg(long, default_value = "")]
    pub(crate) label: String,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayListKeysArgs {
    /// Only this agent's keys
    #[arg(long)]
    pub(crate) agent: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayRevokeKeyArgs {
    /// The key's id (as list-keys shows it)
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct AddUserArgs {
    /// User name (letters, digits and -_.:@)
    #[arg(long)]
    pub(crate) username: String,
    /// What the user may do
    #[arg(long, value_enum)]
    pub(crate) role: RoleArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum RoleArg {
    /// Everything, including users
    Admin,
    /// Approve, deny, halt, resume
    Operator,
    /// Read only
    Viewer,
}

#[derive(Debug, Args)]
pub(crate) struct UserArgs {
    /// User name
    #[arg(long)]
    pub(crate) username: String,
}

#[derive(Debug, Args)]
pub(crate) struct DisableUserArgs {
    /// User name
    #[arg(long)]
    pub(crate) username: String,
    /// Enable the user again instead
    #[arg(long)]
    pub(crate) enable: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The chain to follow
    #[arg(long, default_value = "default")]
    pub(crate) chain: String,
    /// Only this agent
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// Only this session
    #[arg(long)]
    pub(crate) session: Option<String>,
    /// Only this kind (e.g. scope.denied)
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// Start from this time: RFC 3339 (2026-11-25T09:00:00Z), a date (2026-11-25, UTC) or an
    /// age (30s, 10m, 2h, 1d); default: only events appended from now on
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Exit after this many events
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Which report
    #[arg(long, value_enum, default_value = "article12")]
    pub(crate) format: ReportKind,
    /// Start of the period, included: RFC 3339, a date (2026-11-01, UTC) or an age (30d);
    /// default: the start of the record
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End of the period, excluded: RFC 3339, a date (the whole day is included) or an age;
    /// default: now
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Only this chain (default: every chain)
    #[arg(long)]
    pub(crate) chain: Option<String>,
    /// Write the report to this file (replaced whole, never left half-written) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Output form; default: from the --output extension (.json, .md, .html), else json with
    /// --json, else md
    #[arg(long = "as", value_enum, value_name = "FORM")]
    pub(crate) form: Option<ReportForm>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ReportKind {
    /// EU AI Act Article 12 evidence of what the SDK observed
    Article12,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportForm {
    /// Pretty-printed JSON, the complete record
    Json,
    /// Markdown
    Md,
    /// A self-contained HTML page
    Html,
}

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// Rotate only this chain (default: every chain)
    #[arg(long)]
    pub(crate) chain: Option<String>,
    /// Who rotates (recorded as the marker's actor)
    #[arg(long, default_value = "operator")]
    pub(crate) operator: String,
    /// Why (recorded in the marker)
    #[arg(long, default_value = "scheduled rotation")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct EraseArgs {
    /// The data subject (the pseudonymous id its events were marked with)
    #[arg(long)]
    pub(crate) subject: String,
    /// Why (recorded in the erasure event: the request or its legal basis)
    #[arg(long)]
    pub(crate) reason: String,
    /// Who erases (recorded in the erasure event)
    #[arg(long, default_value = "operator")]
    pub(crate) operator: String,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ArchiveArgs {
    /// The chain
    #[arg(long, default_value = "default")]
    pub(crate) chain: String,
    /// Archive rows that occurred before this time (RFC 3339, a date, or an age such as 200d;
    /// default: the minimum age)
    #[arg(long, value_name = "WHEN")]
    pub(crate) before: Option<String>,
    /// End the segment at this seq (a multiple of 256) instead of the last old enough
    #[arg(long, value_name = "N")]
    pub(crate) through_seq: Option<i64>,
    /// Rows younger than this many days are never archived
    #[arg(long, value_name = "DAYS", default_value_t = 183)]
    pub(crate) min_age_days: u32,
    /// Write the archive to this new file (an existing file is never replaced)
    #[arg(long, short, value_name = "FILE", required_unless_present = "dry_run")]
    pub(crate) output: Option<PathBuf>,
    /// Why (recorded with the cut)
    #[arg(long, required_unless_present = "dry_run")]
    pub(crate) reason: Option<String>,
    /// Who archives (recorded with the cut)
    #[arg(long, default_value = "operator")]
    pub(crate) operator: String,
    /// Only say what would be archived
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProveArgs {
    /// The chain
    #[arg(long, default_value = "default", conflicts_with = "verify")]
    pub(crate) chain: String,
    /// Prove that the row with this seq is in the tree
    #[arg(long, value_name = "N", allow_negative_numbers = true, required_unless_present_any = ["from", "verify"], conflicts_with_all = ["from", "to", "verify"])]
    pub(crate) seq: Option<i64>,
    /// The size of the tree to prove it in (default: the chain's head)
    #[arg(long, value_name = "S", requires = "seq")]
    pub(crate) size: Option<u64>,
    /// Prove that the tree of this size is a prefix of the tree of size --to
    #[arg(long, value_name = "S1", requires = "to", conflicts_with = "verify")]
    pub(crate) from: Option<u64>,
    /// The larger tree's size, for --from
    #[arg(long, value_name = "S2", requires = "from")]
    pub(crate) to: Option<u64>,
    /// Check a proof file written by `governance prove --json`, with no database
    #[arg(long, value_name = "FILE")]
    pub(crate) verify: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckpointArgs {
    /// Only this chain (default: every chain)
    #[arg(long)]
    pub(crate) chain: Option<String>,
    /// The Ed25519 key: file:///path (hex seed or PKCS#8 PEM, mode 600), env://VAR or ephemeral
    #[arg(
        long,
        env = "GOVERNANCE_SIGNING_KEY",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) signing_key: Option<String>,
    /// `json`: the v1 checkpoint file; `note`: C2SP checkpoint notes (origin
    /// `<log name>/<chain>`, root recomputed from the rows), which witnesses cosign. Both store
    /// the v1 checkpoint in the database
    #[arg(long, value_enum, default_value_t = CheckpointFormat::Json)]
    pub(crate) format: CheckpointFormat,
    /// The log's name, the first half of each checkpoint's origin `<log name>/<chain>` (a
    /// schema-less URL such as example.com/governance; needed with --format note)
    #[arg(long, env = "GOVERNANCE_LOG_NAME", value_name = "NAME")]
    pub(crate) log_name: Option<String>,
    /// A witness to send each checkpoint note to, with a consistency proof from the size it last
    /// cosigned; its cosignatures are checked and stored (repeat for several; implies --format
    /// note). `URL=VKEY`, the vkey being the witness's (name+keyid+base64(0x04 || key))
    #[arg(long, value_name = "URL=VKEY")]
    pub(crate) witness: Vec<String>,
    /// Write the checkpoints to this file (replaced whole) as well as stdout
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

/// The form `governance checkpoint` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CheckpointFormat {
    /// `governance.checkpoints.v1` JSON (what `verify --checkpoint` reads)
    Json,
    /// C2SP checkpoint notes (c2sp.org/tlog-checkpoint), one per chain
    Note,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Only this chain; repeat the flag for several (default: every chain)
    #[arg(long, value_name = "ID")]
    pub(crate) chain: Vec<String>,
    /// Write to this file (replaced whole, never left half-written) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The export file to read; - for standard input
    #[arg(long, short, value_name = "FILE", default_value = "-")]
    pub(crate) input: PathBuf,
    /// Verify the imported chains afterwards (needs the audit secret they were sealed with)
    #[arg(long)]
    pub(crate) verify: bool,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address and port to listen on
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub(crate) bind: std::net::SocketAddr,
    /// Mark the session cookie Secure (set this when the console is served over HTTPS)
    #[arg(long)]
    pub(crate) secure_cookies: bool,
    /// Reuse the chain status /health/governance reports for this many seconds before verifying
    /// every chain again (0: verify on every signed-in health request)
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub(crate) chain_check_secs: u64,
    /// Also verify every chain in the background every this many seconds, from the start (0:
    /// never); the dashboard, the chain page and health show the result
    #[arg(long, default_value_t = 0, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub(crate) verify_every_secs: u64,
    /// Also run the approval notifier in this process, with this configuration (TOML, as for
    /// `governance notify run`): escalation, expiry, webhooks and email
    #[arg(long, value_name = "FILE")]
    pub(crate) notify: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Add or replace a workflow: how many distinct approvers, from which group, escalated to
    /// which group after how long, denied after how long
    #[command(
        after_help = "Examples:\n  governance approvals workflow four-eyes --quorum 2 --group finance\n  governance approvals workflow refunds --group support --escalate-to managers --escalate-after 15m --timeout 1h\n\nRequests already asked keep the workflow they were asked under. Run it with the schema owner's URL: the application role (an agent's credentials) cannot read or change workflows.\nExit codes: 0 saved, 2 usage or configuration, 3 storage unreachable."
    )]
    Workflow(WorkflowArgs),
    /// Remove a workflow no route names
    #[command(after_help = "Example:\n  governance approvals remove-workflow four-eyes")]
    RemoveWorkflow(NameArg),
    /// Route an agent's (or every agent's, `*`) requests for a tool (or every tool, `*`) to a
    /// workflow; the most specific route wins
    #[command(
        after_help = "Examples:\n  governance approvals route --agent billing-agent --tool refund --workflow four-eyes\n  governance approvals route --agent '*' --tool wire_money --workflow four-eyes\n\nA request no route matches needs one approval from any operator."
    )]
    Route(RouteArgs),
    /// Remove a route
    #[command(
        after_help = "Example:\n  governance approvals unroute --agent billing-agent --tool refund"
    )]
    Unroute(UnrouteArgs),
    /// Set the groups an operator is in (replacing them; none: no group)
    #[command(
        after_help = "Examples:\n  governance approvals groups --username alice --group finance --group managers\n  governance approvals groups --username alice   # in no group"
    )]
    Groups(GroupsArgs),
    /// List workflows, routes and groups
    #[command(after_help = "Example:\n  governance approvals list --json")]
    List,
}

#[derive(Debug, Args)]
pub(crate) struct WorkflowArgs {
    /// The workflow's name
    pub(crate) name: String,
    /// Distinct approvers needed (2: four-eyes)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub(crate) quorum: u32,
    /// The group whose members may approve (default: any operator)
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// The group that may approve too once the request escalates
    #[arg(long, requires = "escalate_after")]
    pub(crate) escalate_to: Option<String>,
    /// How long a request waits before it escalates: 90s, 15m, 2h, 1d
    #[arg(long, requires = "escalate_to")]
    pub(crate) escalate_after: Option<String>,
    /// How long a request waits for a decision before it is denied: 30m, 4h
    #[arg(long)]
    pub(crate) timeout: Option<String>,
    /// Who changes it (recorded)
    #[arg(long, default_value = "operator")]
    pub(crate) operator: String,
}

#[derive(Debug, Args)]
pub(crate) struct NameArg {
    /// The name
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct RouteArgs {
    /// The agent, or `*`
    #[arg(long)]
    pub(crate) agent: String,
    /// The tool, or `*`
    #[arg(long)]
    pub(crate) tool: String,
    /// The workflow
    #[arg(long)]
    pub(crate) workflow: String,
}

#[derive(Debug, Args)]
pub(crate) struct UnrouteArgs {
    /// The agent, or `*`
    #[arg(long)]
    pub(crate) agent: String,
    /// The tool, or `*`
    #[arg(long)]
    pub(crate) tool: String,
}

#[derive(Debug, Args)]
pub(crate) struct GroupsArgs {
    /// The operator
    #[arg(long)]
    pub(crate) username: String,
    /// A group (repeat)
    #[arg(long = "group")]
    pub(crate) groups: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum NotifyCommand {
    /// Escalate and expire requests on time and deliver notifications, until Ctrl-C or SIGTERM
    #[command(
        after_help = "Examples:\n  OPS_WEBHOOK_SECRET=… governance notify run --config /etc/governance/notify.toml\n  governance notify run --config notify.toml --once\n\nRun it with the schema owner's URL and GOVERNANCE_AUDIT_SECRET, beside the console, never in an agent's process. The file names the console's address (for links), the webhooks and email recipients and which requests each hears of; secrets come from the environment variables it names (docs/approvals.md).\nExit codes: 0 stopped (or --once done), 2 usage or configuration, 3 storage unreachable."
    )]
    Run(NotifyRunArgs),
    /// List deliveries: the dead-letter record with --status dead
    #[command(
        after_help = "Examples:\n  governance notify list --status dead\n  governance notify list --json --limit 500"
    )]
    List(NotifyListArgs),
}

#[derive(Debug, Args)]
pub(crate) struct NotifyRunArgs {
    /// The configuration file (TOML)
    #[arg(long, value_name = "PATH")]
    pub(crate) config: PathBuf,
    /// One round (sweep, fan out, deliver what is due), then exit
    #[arg(long)]
    pub(crate) once: bool,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

#[derive(Debug, Args)]
pub(crate) struct NotifyListArgs {
    /// Only deliveries in this state
    #[arg(long, value_parser = ["pending", "delivered", "dead"])]
    pub(crate) status: Option<String>,
    /// At most this many, newest first
    #[arg(long, default_value_t = 100)]
    pub(crate) limit: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SiemCommand {
    /// Export a chain's events as OCSF or CloudEvents JSON lines
    #[command(
        after_help = "Examples:\n  governance siem export --format ocsf --output events.ocsf.jsonl\n  governance siem export --format cloudevents --from 1d --post https://siem.example/ingest --cursor /var/lib/governance/siem.cursor --follow\n\nWith --cursor, the last event delivered (chain and seq) is written to FILE after each acknowledged batch; a restart resumes right after it (at least once: the receiver de-duplicates by event id). --post retries 5xx, 429 and connection errors with exponential backoff and jitter (honouring Retry-After) and stops at any other 4xx. The bearer token for --post comes from GOVERNANCE_SIEM_TOKEN, never the command line.\nExit codes: 0 exported (or stopped with Ctrl-C), 2 usage or configuration (including an endpoint that refused a batch with a 4xx), 3 storage or the endpoint unreachable (retries exhausted; the cursor holds the last batch acknowledged)."
    )]
    Export(SiemExportArgs),
}

/// The form `governance siem export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SiemFormatArg {
    /// OCSF 1.9, class API Activity (6003), with the record_integrity attestation
    Ocsf,
    /// CloudEvents 1.0, JSON format, structured mode
    Cloudevents,
}

#[derive(Debug, Args)]
pub(crate) struct SiemExportArgs {
    /// The event form
    #[arg(long, value_enum)]
    pub(crate) format: SiemFormatArg,
    /// The chain to export
    #[arg(long, default_value = "default")]
    pub(crate) chain: String,
    /// Only events at or after this time: RFC 3339, a date (UTC) or an age (30m, 1d); default:
    /// the start of the chain
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Only events before this time (excluded; a bare date includes that day); default: the
    /// chain's head when the export starts
    #[arg(long, conflicts_with = "follow")]
    pub(crate) to: Option<String>,
    /// Write to this file (replaced whole when the export is complete; with --follow, appended
    /// line by line) instead of stdout
    #[arg(long, short, value_name = "FILE", conflicts_with = "post")]
    pub(crate) output: Option<PathBuf>,
    /// POST the events in batches of JSON lines (application/x-ndjson) to this URL
    #[arg(long, value_name = "URL")]
    pub(crate) post: Option<String>,
    /// Resume after the event recorded in FILE, and record there each batch delivered
    #[arg(long, value_name = "FILE")]
    pub(crate) cursor: Option<PathBuf>,
    /// Keep following new events until interrupted
    #[arg(long)]
    pub(crate) follow: bool,
    /// The CloudEvents `source` (a URI-reference); default: /governance/CHAIN (the chain id)
    #[arg(long, value_name = "URI")]
    pub(crate) source: Option<String>,
    /// Events per batch (per POST, and between cursor updates)
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch_size: u32,
    /// Retries of one batch before giving up (--post)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub(crate) retries: u32,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}

/// A policy set on disk: a directory of `*.cedar` files with an optional `settings.json`, or one
/// `.cedar` file.
#[derive(Debug, Args)]
pub(crate) struct PolicySource {
    /// The policy set: a directory (its `*.cedar` files, in name order, and `settings.json` if
    /// present) or one `.cedar` file
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,
    /// The settings (agents' attributes, declared arguments) instead of `settings.json` in the
    /// directory
    #[arg(long, value_name = "FILE")]
    pub(crate) settings: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Parse the set and validate it against governance's Cedar schema
    #[command(
        after_help = "Examples:\n  governance policy validate policies/\n  governance policy validate policies/billing.cedar --settings settings.json --json\n\nNo database is needed. Every policy needs a unique @id(\"...\"); @approval(\"why\") marks a permit that needs a person's approval (docs/policies.md).\nExit codes: 0 valid, 1 invalid (each problem named), 2 usage (an unreadable file)."
    )]
    Validate(PolicySource),
    /// Run test cases (permit, forbid, approval, and by which policies) against the set
    #[command(
        after_help = "Examples:\n  governance policy test policies/ --cases policies/cases.json\n  governance policy test policies/ --cases a.json --cases b.json --json\n\nNo database is needed: usable in CI. Each failing case is named with what it expected and what it got.\nExit codes: 0 every case passed, 1 a case failed or the set is invalid, 2 usage (an unreadable or malformed case file)."
    )]
    Test(PolicyTestArgs),
    /// Compare the set with the one in force (or another set): policies added, removed, changed,
    /// and the cases decided differently
    #[command(
        after_help = "Examples:\n  governance policy diff policies/\n  governance policy diff policies/ --shadow --cases policies/cases.json\n  governance policy diff policies/ --against old-policies/\n\nExit codes: 0 no difference, 1 a difference (listed), 2 usage or configuration (an invalid set, an unreadable file), 3 storage unreachable."
    )]
    Diff(PolicyDiffArgs),
    /// Apply the set as the next enforced (or shadow) version, after validating it and running
    /// its cases; every process reloads it
    #[command(
        after_help = "Examples:\n  governance policy apply policies/ --cases policies/cases.json --operator alice\n  governance policy apply candidate/ --shadow --operator alice\n  governance policy apply --off --shadow --operator alice\n\nRun it with the schema owner's URL: the application role may read policy sets, never write them. The version is recorded as a policy.applied event with the set's hash. A shadow set is evaluated beside the enforced one; its differences are logged as policy.shadow_diff events, never enforced.\nExit codes: 0 applied, 1 the set is invalid or a case failed (nothing applied), 2 usage or configuration (including a role that may not apply), 3 storage unreachable."
    )]
    Apply(PolicyApplyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PolicyTestArgs {
    #[command(flatten)]
    pub(crate) source: PolicySource,
    /// A case file (JSON, docs/policies.md); repeat for several
    #[arg(long = "cases", value_name = "FILE", required = true)]
    pub(crate) cases: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PolicyDiffArgs {
    #[command(flatten)]
    pub(crate) source: PolicySource,
    /// Compare with this set on disk instead of the database's
    #[arg(long, value_name = "PATH")]
    pub(crate) against: Option<PathBuf>,
    /// Compare with the database's shadow set instead of the enforced one
    #[arg(long, conflicts_with = "against")]
    pub(crate) shadow: bool,
    /// Case files whose decisions to compare
    #[arg(long = "cases", value_name = "FILE")]
    pub(crate) cases: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PolicyApplyArgs {
    /// The policy set (a directory or a `.cedar` file); omit with --off
    #[arg(
        value_name = "PATH",
        required_unless_present = "off",
        conflicts_with = "off"
    )]
    pub(crate) path: Option<PathBuf>,
    /// The settings instead of `settings.json` in the directory
    #[arg(long, value_name = "FILE")]
    pub(crate) settings: Option<PathBuf>,
    /// Apply as the shadow (candidate) set: evaluated and logged, never enforced
    #[arg(long)]
    pub(crate) shadow: bool,
    /// Turn the slot off (no Cedar set: scope alone decides, or no shadow)
    #[arg(long)]
    pub(crate) off: bool,
    /// Case files that must all pass before the set is applied
    #[arg(long = "cases", value_name = "FILE")]
    pub(crate) cases: Vec<PathBuf>,
    /// Who applies it (recorded in the policy.applied event)
    #[arg(long, default_value = "operator")]
    pub(crate) operator: String,
    #[command(flatten)]
    pub(crate) secret: SecretArgs,
}
