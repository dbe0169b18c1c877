//! The coordinator's commands, and how the CLI sends them to the running coordinator of a data
//! directory: over its HTTP API (address in `DIR/http.addr`), with the `admin` token the
//! coordinator keeps in `DIR/operator.token` (readable by its owner only).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::Scope;
use crate::datadir::DataDir;
use crate::server::Coordinator;

/// Largest answer the CLI reads.
pub const MAX_ANSWER: usize = 64 << 20;

/// A command for the running coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    Nodes,
    Publish {
        partner: String,
        path: PathBuf,
        /// The name kept with the content [default: the file's name].
        #[serde(default)]
        name: Option<String>,
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
    /// The coordinators sharing the database, and which runs repairs and audits.
    Cluster,
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

/// The data directory's `admin` token file.
pub fn operator_token_file(dir: &DataDir) -> PathBuf {
    dir.root().join("operator.token")
}

/// Makes sure `DIR/operator.token` holds a live `admin` token, creating one (mode 0600) when
/// the file is missing or its token unknown (a fresh database, or a revoked token).
pub async fn ensure_operator_token(coord: &Coordinator) -> anyhow::Result<()> {
    let path = operator_token_file(&coord.dir);
    if let Ok(secret) = std::fs::read_to_string(&path)
        && crate::auth::check(&coord.db, secret.trim())
            .await?
            .is_some_and(|g| g.has(Scope::Admin))
    {
        return Ok(());
    }
    let made = crate::auth::create(
        &coord.db,
        &format!("operator.token of {}", coord.dir.root().display()),
        None,
        &[Scope::Admin],
        overlay::time::now_secs() as i64,
    )
    .await?;
    overlay::store::write_atomic(&path, format!("{}\n", made.secret).as_bytes(), true)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    tracing::info!(id = %made.row.id, path = %path.display(), "admin API token for the CLI written");
    Ok(())
}

/// A client of a running coordinator's HTTP API.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
    /// For error messages.
    data_dir: PathBuf,
}

impl ApiClient {
    /// The client of the coordinator running on `data_dir`.
    pub fn for_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = DataDir::new(data_dir);
        let not_running = || {
            anyhow::anyhow!(
                "no coordinator is running for {}; start one with `cm-coordinator run --data-dir {}`",
                data_dir.display(),
                data_dir.display()
            )
        };
        let addr = std::fs::read_to_string(dir.http_addr_file()).map_err(|_| not_running())?;
        let token = std::fs::read_to_string(operator_token_file(&dir)).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the API token {}: {e}",
                operator_token_file(&dir).display()
            )
        })?;
        Ok(Self {
            base: format!("http://{}/api/v1", addr.trim()),
            token: token.trim().to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot set up an HTTP client: {e}"))?,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Sends a request and reads its JSON answer; an error answer becomes its message.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "no coordinator is running for {} ({e}); start one with `cm-coordinator run --data-dir {}`",
                    self.data_dir.display(),
                    self.data_dir.display()
                )
            } else {
                anyhow::anyhow!("the coordinator's API failed: {e}")
            }
        })?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER as u64)
        {
            anyhow::bail!("the coordinator's answer is larger than {MAX_ANSWER} bytes");
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("the coordinator's answer broke off: {e}"))?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            anyhow::anyhow!("the coordinator answered {status} with a body that is not JSON: {e}")
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            match value["error"].as_str() {
                Some(message) => Err(anyhow::anyhow!("{message}")),
                None => Err(anyhow::anyhow!("the coordinator answered {status}")),
            }
        }
    }

    /// GETs `path` (under `/api/v1`).
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// DELETEs `path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// The partner that published `content`.
    async fn partner_of(&self, content: &str) -> anyhow::Result<String> {
        let list = self.get("/contents").await?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["id"] == content)
            .and_then(|c| c["partner"].as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("unknown content {content}"))
    }

    /// Runs one command on the coordinator.
    pub async fn call(&self, req: AdminRequest) -> anyhow::Result<serde_json::Value> {
        match req {
            AdminRequest::Nodes => self.get("/nodes").await,
            AdminRequest::Reports => self.get("/reports").await,
            AdminRequest::Repairs => self.get("/repairs").await,
            AdminRequest::Liveness => self.get("/liveness").await,
            AdminRequest::Cluster => self.get("/cluster").await,
            AdminRequest::Ledger => self.get("/ledger").await,
            AdminRequest::Content { id } => self.get(&format!("/contents/{id}")).await,
            AdminRequest::NodeShow { id } => self.get(&format!("/nodes/{id}")).await,
            AdminRequest::Verdicts { limit } => self.get(&format!("/verdicts?limit={limit}")).await,
            AdminRequest::Reconcile => self.post("/reconcile", &serde_json::json!({})).await,
            AdminRequest::Payout { period } => {
                self.post("/payouts", &serde_json::json!({ "period": period }))
                    .await
            }
            AdminRequest::SalesImport { records } => self.post("/sales", &records).await,
            AdminRequest::Demand {
                content,
                level,
                for_secs,
            } => {
                let partner = self.partner_of(&content).await?;
                self.post(
                    &format!("/partners/{partner}/demand"),
                    &serde_json::json!({ "content": content, "level": level, "for_secs": for_secs }),
                )
                .await
            }
            AdminRequest::Ticket {
                partner,
                content,
                client,
                expires_secs,
                allowance,
                price,
            } => {
                self.post(
                    &format!("/partners/{partner}/tickets"),
                    &serde_json::json!({
                        "content": content,
                        "client": client,
                        "expires_secs": expires_secs,
                        "allowance": allowance,
                        "price": price.map(|p| p as f64 / 1e6),
                    }),
                )
                .await
            }
            AdminRequest::Publish {
                partner,
                path,
                name,
                data_shards,
                parity_shards,
                spare_shards,
                segment_size,
            } => {
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                let len = file.metadata().await?.len();
                let name = name.unwrap_or_else(|| {
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "upload".into())
                });
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    file,
                    256 << 10,
                ));
                let request = self
                    .http
                    .post(format!("{}/partners/{partner}/contents", self.base))
                    .query(&[
                        ("name", name),
                        ("data_shards", data_shards.to_string()),
                        ("parity_shards", parity_shards.to_string()),
                        ("spare_shards", spare_shards.to_string()),
                        ("segment_size", segment_size.to_string()),
                    ])
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body);
                self.send(request).await
            }
        }
    }
}
