//! `governance witness serve`: a C2SP tlog witness (c2sp.org/tlog-witness `add-checkpoint`),
//! and the log side's client (`push`), used by `governance checkpoint --witness`.
//!
//! The decision is `gov_sdk::witness::decide` (pure); this module owns the HTTP server, the
//! state files (one per log, the last cosigned checkpoint with its cosignature, replaced
//! atomically) and the lock that makes check-and-persist atomic: one request at a time per
//! witness process, and one process per state folder (an exclusive lock on `DIR/.lock`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gov_sdk::note::{self, CheckpointText, Note, TYPE_COSIGNATURE_V1, TYPE_ED25519, Vkey};
use gov_sdk::witness::{AddCheckpoint, LogState, Refusal, decide, origin_of};
use gov_sdk::{CosignatureRow, Signer};

use crate::cli::{WitnessCommand, WitnessServeArgs};
use crate::output::Out;

fn config(message: String) -> anyhow::Error {
    anyhow::Error::new(gov_sdk::Error::Config(message))
}

pub(crate) async fn run(cmd: WitnessCommand, out: &Out) -> anyhow::Result<ExitCode> {
    match cmd {
        WitnessCommand::Serve(args) => serve(args, out).await,
    }
}

/// Parses `ORIGIN=PUBKEY`, the key a vkey of type 0x01 named ORIGIN, or 64 hex digits.
fn parse_log(s: &str) -> anyhow::Result<Vkey> {
    let (origin, key) = s
        .split_once('=')
        .ok_or_else(|| config(format!("--log {s}: expected ORIGIN=PUBKEY")))?;
    let vkey = if key.contains('+') {
        let v = Vkey::parse(key).map_err(|e| config(format!("--log {origin}: {e}")))?;
        if v.name != origin || v.sig_type != TYPE_ED25519 {
            return Err(config(format!(
                "--log {origin}: the vkey must be the log's Ed25519 key named {origin}"
            )));
        }
        v
    } else {
        let public: [u8; 32] = hex::decode(key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| config(format!("--log {origin}: the key is not 64 hex digits")))?;
        Vkey::new(origin, TYPE_ED25519, public).map_err(|e| config(format!("--log: {e}")))?
    };
    Ok(vkey)
}

struct Witness {
    signer: Signer,
    name: String,
    logs: HashMap<String, Vec<Vkey>>,
    dir: PathBuf,
    /// Held from reading a log's state until its new state is persisted.
    turn: tokio::sync::Mutex<()>,
}

impl Witness {
    fn state_path(&self, origin: &str) -> PathBuf {
        self.dir.join(format!("{}.checkpoint", hex::encode(origin)))
    }

    /// The last checkpoint cosigned for `origin`: the state file's note text.
    fn load(&self, origin: &str) -> Result<Option<LogState>, String> {
        let path = self.state_path(origin);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err("the witness cannot read its state".into()),
        };
        let n = Note::parse(&text).map_err(|_| "the witness's state is corrupt".to_owned())?;
        let c = CheckpointText::parse(&n.text)
            .map_err(|_| "the witness's state is corrupt".to_owned())?;
        Ok(Some(LogState {
            size: c.size,
            root: c.root,
        }))
    }

    async fn add_checkpoint(&self, body: &str) -> Result<String, Refusal> {
        let req = AddCheckpoint::parse(body)?;
        let origin = origin_of(&req)?;
        let keys = self
            .logs
            .get(&origin)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let _turn = self.turn.lock().await;
        let state = if keys.is_empty() {
            None
        } else {
            self.load(&origin).map_err(Refusal::BadRequest)?
        };
        let accepted = decide(&req, keys, state.as_ref())?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ts = u64::try_from(now).unwrap_or(1).max(1);
        let line = note::cosign(&accepted.text, &self.name, &self.signer, ts)
            .map_err(|e| Refusal::BadRequest(e.to_string()))?
            .to_line();
        // The state: the checkpoint as the log signed it, plus this cosignature.
        let kept = format!("{}{line}", req.checkpoint);
        super::write_atomically(&self.state_path(&origin), &kept, "the witness state")
            .map_err(|_| Refusal::BadRequest("the witness cannot write its state".into()))?;
        Ok(line)
    }
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: String) -> Response {
    match w.add_checkpoint(&body).await {
        Ok(line) => (StatusCode::OK, line).into_response(),
        Err(r) => {
            let status = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let ctype = if matches!(r, Refusal::Conflict(_)) {
                "text/x.tlog.size"
            } else {
                "text/plain; charset=utf-8"
            };
            tracing::info!(status = r.status(), "add-checkpoint refused");
            (status, [(header::CONTENT_TYPE, ctype)], r.body()).into_response()
        }
    }
}

async fn serve(args: WitnessServeArgs, out: &Out) -> anyhow::Result<ExitCode> {
    let signer = Signer::load(&args.key, "witness").map_err(|e| config(format!("{e}")))?;
    let vkey = Vkey::new(&args.name, TYPE_COSIGNATURE_V1, signer.public_key())
        .map_err(|e| config(format!("--name: {e}")))?;
    let mut logs: HashMap<String, Vec<Vkey>> = HashMap::new();
    for l in &args.logs {
        let k = parse_log(l)?;
        logs.entry(k.name.clone()).or_default().push(k);
    }
    std::fs::create_dir_all(&args.state).map_err(|e| {
        config(format!(
            "cannot create the state folder {}: {e}",
            args.state.display()
        ))
    })?;
    let lock = std::fs::File::create(args.state.join(".lock"))
        .map_err(|e| config(format!("cannot open {}/.lock: {e}", args.state.display())))?;
    lock.try_lock().map_err(|_| {
        config(format!(
            "another witness uses the state folder {}",
            args.state.display()
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| config(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr()?;
    let witness = Arc::new(Witness {
        signer,
        name: args.name,
        logs,
        dir: args.state,
        turn: tokio::sync::Mutex::new(()),
    });
    let app = axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(witness);
    out.line(format!("listening on http://{addr}"));
    out.line(format!("witness vkey {vkey}"));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    drop(lock);
    Ok(ExitCode::SUCCESS)
}

/// A witness the log sends its checkpoints to.
pub(crate) struct WitnessPeer {
    url: String,
    vkey: Vkey,
}

/// Parses `URL=VKEY` (split at the last `=`: an Ed25519 vkey holds none).
pub(crate) fn parse_peer(s: &str) -> anyhow::Result<WitnessPeer> {
    let (url, key) = s
        .rsplit_once('=')
        .ok_or_else(|| config(format!("--witness {s}: expected URL=VKEY")))?;
    let vkey = Vkey::parse(key).map_err(|e| config(format!("--witness {url}: {e}")))?;
    if vkey.sig_type != TYPE_COSIGNATURE_V1 {
        return Err(config(format!(
            "--witness {url}: the vkey must be a cosignature/v1 key (type 0x04)"
        )));
    }
    Ok(WitnessPeer {
        url: url.trim_end_matches('/').to_owned(),
        vkey,
    })
}

/// Sends `cp` to `peer` with a consistency proof from the size the witness last cosigned (as
/// stored; on 409 the witness's own size, once), checks and stores the cosignature, and appends
/// its line to the note.
pub(crate) async fn push(
    gov: &gov_sdk::Governance,
    peer: &WitnessPeer,
    cp: &mut gov_sdk::NoteCheckpoint,
) -> anyhow::Result<()> {
    let root: [u8; 32] = hex::decode(&cp.root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("the checkpoint's root is not 32 bytes"))?;
    let mut old = gov
        .audit()
        .cosignatures(&cp.chain_id)
        .await?
        .iter()
        .filter(|c| c.witness_name == peer.vkey.name && c.witness_key == peer.vkey.public)
        .map(|c| c.tree_size.unsigned_abs())
        .filter(|s| *s <= cp.size)
        .max()
        .unwrap_or(0);
    let client = reqwest::Client::new();
    let url = format!("{}/add-checkpoint", peer.url);
    for attempt in 0..2 {
        let proof = gov
            .audit()
            .consistency_for(&cp.chain_id, old, cp.size, &root)
            .await?;
        let body = AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: cp.note.clone(),
        }
        .render();
        let resp = client.post(&url).body(body).send().await.map_err(|e| {
            anyhow::anyhow!("witness {} at {url} is unreachable: {e}", peer.vkey.name)
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match status {
            200 => return store_cosignatures(gov, peer, cp, &text).await,
            409 if attempt == 0 => {
                old = text.trim().parse().map_err(|_| {
                    anyhow::anyhow!("witness {} answered 409 without a size", peer.vkey.name)
                })?;
                if old > cp.size {
                    break;
                }
            }
            422 => {
                return Err(gov_sdk::Error::ChainBroken(gov_sdk::Finding {
                    seq: i64::try_from(cp.size).unwrap_or(i64::MAX),
                    reason: gov_sdk::Reason::CosignatureMismatch,
                    detail: format!(
                        "witness {} refused the checkpoint of {} at size {}: it is not consistent with the checkpoint it cosigned before ({}); the chain was rewritten since",
                        peer.vkey.name,
                        cp.origin,
                        cp.size,
                        text.trim()
                    ),
                })
                .into());
            }
            _ => {
                return Err(anyhow::anyhow!(
                    "witness {} refused the checkpoint of {} ({status}): {}",
                    peer.vkey.name,
                    cp.origin,
                    text.trim()
                ));
            }
        }
    }
    Err(anyhow::anyhow!(
        "witness {} holds a larger checkpoint of {} than size {}: the log's tree went back",
        peer.vkey.name,
        cp.origin,
        cp.size
    ))
}

async fn store_cosignatures(
    gov: &gov_sdk::Governance,
    peer: &WitnessPeer,
    cp: &mut gov_sdk::NoteCheckpoint,
    body: &str,
) -> anyhow::Result<()> {
    let n = Note::parse(&cp.note)?;
    let root = hex::decode(&cp.root)?;
    let mut stored = 0;
    for l in body.lines() {
        let Ok(line) = note::SignatureLine::parse(l) else {
            continue;
        };
        let note::LineCheck::Valid(Some(ts)) = note::check_line(&n.text, &line, &peer.vkey) else {
            continue;
        };
        gov.audit()
            .store_cosignature(&CosignatureRow {
                chain_id: cp.chain_id.clone(),
                origin: cp.origin.clone(),
                tree_size: i64::try_from(cp.size)?,
                root_hash: root.clone(),
                witness_name: peer.vkey.name.clone(),
                witness_key: peer.vkey.public.to_vec(),
                cosigned_at: i64::try_from(ts)?,
                signature: line.signature[8..].to_vec(),
            })
            .await?;
        cp.note.push_str(&line.to_line());
        stored += 1;
    }
    if stored == 0 {
        return Err(anyhow::anyhow!(
            "witness {} answered without a cosignature that its key verifies",
            peer.vkey.name
        ));
    }
    Ok(())
}
