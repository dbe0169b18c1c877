//! Partner endpoints: publish, tickets, sales records and demand hints, each for the partner
//! named in the path, which a partner token must be bound to.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::StreamExt;
use overlay::ContentId;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::operator::ErrorBody;
use crate::admin::AdminRequest;
use crate::auth::Scope;
use crate::server::{Coordinator, admin};

/// Largest file one upload may publish (the data directory must also have room for it while
/// it is encoded and pushed).
pub const MAX_UPLOAD: u64 = 1 << 40;

/// 404 unless `id` is one of `partner`'s contents (so a partner learns nothing about other
/// partners' contents, not even that they exist).
async fn owned(coord: &Coordinator, partner: &str, id: &str) -> Result<ContentId, ApiError> {
    let missing = || {
        ApiError::not_found(format!(
            "no content {id} among partner `{partner}`'s contents"
        ))
    };
    let content: ContentId = id.parse().map_err(|_| missing())?;
    match coord.db.content(&content).await? {
        Some(row) if row.partner == partner => Ok(content),
        _ => Err(missing()),
    }
}

/// The partner's contents, newest first.
#[utoipa::path(get, path = "/api/v1/partners/{partner}/contents", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name")),
    responses((status = 200, body = serde_json::Value), (status = 403, body = ErrorBody)),
    security(("token" = ["partner:read"])))]
pub async fn contents(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(partner): Path<String>,
) -> ApiResult {
    grant.require_partner(Scope::PartnerRead, &partner)?;
    Ok(Json(serde_json::to_value(
        coord.db.content_list(Some(&partner)).await?,
    )?))
}

/// One of the partner's contents: layout and redundancy health.
#[utoipa::path(get, path = "/api/v1/partners/{partner}/contents/{id}", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name"),
        ("id" = String, Path, description = "The content ID")),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)),
    security(("token" = ["partner:read"])))]
pub async fn content(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path((partner, id)): Path<(String, String)>,
) -> ApiResult {
    grant.require_partner(Scope::PartnerRead, &partner)?;
    owned(&coord, &partner, &id).await?;
    Ok(Json(admin(&coord, AdminRequest::Content { id }).await?))
}

/// How to encode an upload.
#[derive(Deserialize, IntoParams)]
pub struct PublishQuery {
    /// The file's name, kept with the content [default: "upload"].
    pub name: Option<String>,
    /// Data fragments per segment (k) [default: 8].
    pub data_shards: Option<u8>,
    /// Parity fragments per segment (m) [default: 4].
    pub parity_shards: Option<u8>,
    /// Further parity fragments placed only while demand is high [default: m, within 256].
    pub spare_shards: Option<u8>,
    /// Segment size in bytes [default: 8 MiB].
    pub segment_size: Option<u32>,
}

/// Deletes a partial upload however the request ends.
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Publishes the request body (the file's bytes, streamed): encrypts, encodes and places it;
/// answers with the content ID.
#[utoipa::path(post, path = "/api/v1/partners/{partner}/contents", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name"), PublishQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file's bytes"),
    responses((status = 201, body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 507, body = ErrorBody)),
    security(("token" = ["partner:publish"])))]
pub async fn publish(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(partner): Path<String>,
    Query(q): Query<PublishQuery>,
    body: Body,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    grant.require_partner(Scope::PartnerPublish, &partner)?;
    if coord.db.partner_cert(&partner).await?.is_none() {
        return Err(ApiError::not_found(format!("unknown partner `{partner}`")));
    }
    let data_shards = q.data_shards.unwrap_or(8);
    let parity_shards = q.parity_shards.unwrap_or(4);
    let spare_shards = q.spare_shards.unwrap_or_else(|| {
        crate::publish::PublishParams::default_spare_shards(data_shards, parity_shards)
    });
    let name = q.name.unwrap_or_else(|| "upload".into());
    if name.is_empty() || name.len() > 255 || name.contains(['/', '\0']) {
        return Err(ApiError::bad_request(
            "a content name is 1-255 bytes without `/`",
        ));
    }
    let uploads = coord.dir.root().join("uploads");
    tokio::fs::create_dir_all(&uploads).await.map_err(|e| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot create {}: {e}", uploads.display()),
        )
    })?;
    let upload = Upload(uploads.join(format!(
        "upload-{}.part",
        hex::encode(rand::random::<[u8; 8]>())
    )));
    let mut file = tokio::fs::File::create(&upload.0).await.map_err(|e| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot create {}: {e}", upload.0.display()),
        )
    })?;
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the upload broke off after {received} bytes: {e}"))
        })?;
        received += chunk.len() as u64;
        if received > MAX_UPLOAD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("uploads are at most {MAX_UPLOAD} bytes"),
            ));
        }
        file.write_all(&chunk).await.map_err(|e| {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot store the upload ({received} bytes so far): {e}"),
            )
        })?;
    }
    file.flush().await.map_err(|e| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot store the upload: {e}"),
        )
    })?;
    drop(file);
    tracing::info!(%partner, bytes = received, %name, "upload received; publishing");
    let answer = admin(
        &coord,
        AdminRequest::Publish {
            partner,
            path: upload.0.clone(),
            name: Some(name),
            data_shards,
            parity_shards,
            spare_shards,
            segment_size: q.segment_size.unwrap_or(8 << 20),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// A ticket to issue.
#[derive(Deserialize, ToSchema)]
pub struct TicketRequest {
    /// The content ID.
    pub content: String,
    /// The client's ID, as printed by `ccds-client keygen`.
    pub client: String,
    /// Seconds the ticket stays valid [default: 7 days].
    pub expires_secs: Option<u64>,
    /// Bytes the client may fetch in total [default: twice the encoded size].
    pub allowance: Option<u64>,
    /// What the client paid, credits [default: the coordinator's price per GB of allowance].
    pub price: Option<f64>,
}

/// Issues a ticket and answers with the ticket file (ticket, content key, coordinator).
#[utoipa::path(post, path = "/api/v1/partners/{partner}/tickets", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name")),
    request_body = TicketRequest,
    responses((status = 200, body = serde_json::Value, description = "The ticket file"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = ["partner:tickets"])))]
pub async fn ticket(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(partner): Path<String>,
    Json(req): Json<TicketRequest>,
) -> ApiResult {
    grant.require_partner(Scope::PartnerTickets, &partner)?;
    owned(&coord, &partner, &req.content).await?;
    let price = match req.price {
        Some(p) if !(p.is_finite() && p >= 0.0) => {
            return Err(ApiError::bad_request(format!(
                "price must be a non-negative number of credits, found {p}"
            )));
        }
        Some(p) => Some(crate::policy::micro(p) as u64),
        None => None,
    };
    Ok(Json(
        admin(
            &coord,
            AdminRequest::Ticket {
                partner,
                content: req.content,
                client: req.client,
                expires_secs: req.expires_secs.unwrap_or(7 * 24 * 3600).max(1),
                allowance: req.allowance,
                price,
            },
        )
        .await?,
    ))
}

/// Records tickets the partner signed offline as sold (a record seen before counts once).
#[utoipa::path(post, path = "/api/v1/partners/{partner}/sales", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name")),
    request_body(content = Vec<serde_json::Value>,
        description = "Sales records, as `ticket --offline --sales-record` writes them"),
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)),
    security(("token" = ["partner:sales"])))]
pub async fn sales(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(partner): Path<String>,
    Json(records): Json<Vec<crate::sales::SalesRecord>>,
) -> ApiResult {
    grant.require_partner(Scope::PartnerSales, &partner)?;
    for r in &records {
        owned(&coord, &partner, &r.ticket.signed.body.content.to_string()).await?;
    }
    Ok(Json(
        admin(&coord, AdminRequest::SalesImport { records }).await?,
    ))
}

/// A demand hint.
#[derive(Deserialize, ToSchema)]
pub struct DemandRequest {
    /// The content ID.
    pub content: String,
    /// Extra demand units, counted like tickets issued.
    pub level: u64,
    /// Seconds the hint holds [default: 1 hour, at most 30 days].
    pub for_secs: Option<u64>,
}

/// Tells the coordinator to expect more downloads of a content for a while: it places more
/// distinct fragments of it.
#[utoipa::path(post, path = "/api/v1/partners/{partner}/demand", tag = "partner",
    params(("partner" = String, Path, description = "The partner's name")),
    request_body = DemandRequest,
    responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)),
    security(("token" = ["partner:demand"])))]
pub async fn demand(
    State(coord): State<Arc<Coordinator>>,
    Caller(grant): Caller,
    Path(partner): Path<String>,
    Json(req): Json<DemandRequest>,
) -> ApiResult {
    grant.require_partner(Scope::PartnerDemand, &partner)?;
    owned(&coord, &partner, &req.content).await?;
    Ok(Json(
        admin(
            &coord,
            AdminRequest::Demand {
                content: req.content,
                level: req.level,
                for_secs: req.for_secs.unwrap_or(3600).clamp(1, 30 * 24 * 3600),
            },
        )
        .await?,
    ))
}
