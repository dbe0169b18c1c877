//! The admin socket: how `publish`, `ticket`, `nodes` and `reports` reach the running
//! coordinator of a data directory. One JSON request line, one JSON response line, over a Unix
//! socket in the data directory that only its owner can open.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Largest request or response line.
pub const MAX_LINE: usize = 16 << 20;

/// A command for the running coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    Nodes,
    Publish {
        partner: String,
        path: PathBuf,
        data_shards: u8,
        parity_shards: u8,
        #[serde(default)]
        spare_shards: u8,
        segment_size: u32,
    },
    Ticket {
        partner: String,
        content: String,
        client: String,
        expires_secs: u64,
        allowance: Option<u64>,
        /// What the client paid, micro-credits (default: the configured price per GB).
        #[serde(default)]
        price: Option<u64>,
    },
    Reports,
    /// Repair records and counters.
    Repairs,
    /// A partner's demand hint: `level` extra demand units for `content` during `for_secs`.
    Demand {
        content: String,
        level: u64,
        for_secs: u64,
    },
    /// Liveness counters.
    Liveness,
    /// A content's layout and health.
    Content {
        id: String,
    },
    /// Run a reconciliation now.
    Reconcile,
    /// A node's account, audits and verdicts.
    NodeShow {
        id: String,
    },
    /// Every node's balances.
    Ledger,
    /// Pay out every positive balance for a period (once).
    Payout {
        period: String,
    },
    /// Partner-uploaded sales records.
    SalesImport {
        records: Vec<crate::sales::SalesRecord>,
    },
    /// The newest verdicts.
    Verdicts {
        limit: i64,
    },
}

/// The coordinator's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    Ok(serde_json::Value),
    Error(String),
}

/// Sends one request to the coordinator running on `data_dir`.
pub async fn call(
    data_dir: &Path,
    socket: &Path,
    req: &AdminRequest,
) -> anyhow::Result<serde_json::Value> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "no coordinator is running for {} ({e}); start one with `cm-coordinator run --data-dir {}`",
            data_dir.display(),
            data_dir.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut reader = BufReader::new(read).take(MAX_LINE as u64);
    let mut answer = String::new();
    reader.read_line(&mut answer).await?;
    if answer.is_empty() {
        anyhow::bail!(
            "the coordinator closed the admin connection without answering (see its log)"
        );
    }
    match serde_json::from_str(&answer)? {
        AdminResponse::Ok(v) => Ok(v),
        AdminResponse::Error(e) => Err(anyhow::anyhow!(e)),
    }
}

use tokio::io::AsyncReadExt as _;
