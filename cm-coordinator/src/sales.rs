//! Sales records: tickets issued through the coordinator, tickets a partner signs offline, and
//! the sales records partners upload for them. Reconciliation pays work only under sold tickets.

use std::str::FromStr;

use overlay::cert::Certificate;
use overlay::manifest::SignedManifest;
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{ContentId, PeerId};
use serde::{Deserialize, Serialize};

use crate::accounting::AccountingConfig;
use crate::datadir::DataDir;
use crate::db::{Db, TicketRow};
use crate::server::Coordinator;

/// What to sell.
#[derive(Clone, Debug)]
pub struct TicketOrder {
    pub partner: String,
    pub content: String,
    pub client: String,
    pub expires_secs: u64,
    /// Bytes the client may fetch (default: twice the encoded size).
    pub allowance: Option<u64>,
    /// What the client pays, micro-credits (default: the configured price per GB).
    pub price: Option<u64>,
}

/// A signed ticket with its price, ready to be recorded as sold.
#[derive(Clone, Debug)]
pub struct Sold {
    pub ticket: Ticket,
    pub content_key: [u8; 32],
    pub partner: String,
    pub price: i64,
    pub issued_at: u64,
}

impl Sold {
    /// The ticket as a sales record of `source` (`issued` or `uploaded`).
    pub fn row(&self, source: &'static str) -> TicketRow {
        let body = self.ticket.body();
        TicketRow {
            id: hex::encode(body.ticket_id),
            content: body.content.to_string(),
            client: body.client.to_string(),
            partner: self.partner.clone(),
            not_after: body.not_after as i64,
            allowance: body.allowance.min(i64::MAX as u64) as i64,
            issued_at: self.issued_at as i64,
            price: self.price,
            source,
        }
    }

    /// The sales record a partner uploads for this ticket.
    pub fn record(&self) -> SalesRecord {
        SalesRecord {
            ticket: self.ticket.clone(),
            price: self.price as f64 / crate::policy::MICRO as f64,
        }
    }
}

/// Signs a ticket with the partner's key from the data directory, refusing a price that would
/// let a node profit from buying tickets to download from itself.
pub async fn sign_ticket(
    dir: &DataDir,
    db: &Db,
    accounting: &AccountingConfig,
    order: TicketOrder,
) -> anyhow::Result<Sold> {
    let content: ContentId = order
        .content
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let client = PeerId::from_str(&order.client)
        .map_err(|e| anyhow::anyhow!("`{}` is not a client ID: {e}", order.client))?;
    overlay::identity::verifying_key_of(&client)
        .map_err(|_| anyhow::anyhow!("client ID {client} is not an Ed25519 key"))?;
    let Some(cert) = db.partner_cert(&order.partner).await? else {
        anyhow::bail!("unknown partner `{}`", order.partner);
    };
    let partner_cert: Certificate = postcard::from_bytes(&cert)?;
    let partner_key = overlay::Identity::load(&dir.partner_key(&order.partner))?;
    let Some(row) = db.content(&content).await? else {
        anyhow::bail!("unknown content {content}");
    };
    if row.partner != order.partner {
        anyhow::bail!(
            "content {content} belongs to partner `{}`, not `{}`",
            row.partner,
            order.partner
        );
    }
    let manifest: SignedManifest = postcard::from_bytes(&row.manifest)?;
    let now = now_secs();
    // Room for the encoded size twice over: retries and resumed downloads.
    let encoded: u64 = (0..manifest.body.segments())
        .map(|s| (manifest.body.fragment_len(s) * manifest.body.k()) as u64)
        .sum();
    let body = TicketBody {
        ticket_id: rand::random(),
        content,
        client,
        not_after: now + order.expires_secs,
        // At least a mebibyte, so even an empty content's ticket allows the request.
        allowance: order.allowance.unwrap_or((encoded * 2).max(1 << 20)),
    };
    let price = match order.price {
        Some(p) => i64::try_from(p).map_err(|_| anyhow::anyhow!("price {p} µcr is too large"))?,
        None => accounting.default_price(body.allowance),
    };
    accounting
        .pay
        .check_ticket_price(price, body.allowance)
        .map_err(|e| anyhow::anyhow!("ticket refused: {e}"))?;
    Ok(Sold {
        ticket: Ticket::issue(&partner_key, partner_cert, body),
        content_key: row.content_key,
        partner: order.partner,
        price,
        issued_at: now,
    })
}

/// One partner-uploaded sales record: a ticket the partner signed offline and its price.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SalesRecord {
    pub ticket: Ticket,
    /// What the client paid, credits.
    pub price: f64,
}

/// Records partner-signed tickets as sold. Each ticket must chain to the CM root through the
/// certificate of the partner that published the content; a record seen before counts once.
pub async fn import(
    coord: &Coordinator,
    records: Vec<SalesRecord>,
) -> anyhow::Result<serde_json::Value> {
    let root = coord.root.peer_id();
    let (mut added, mut duplicate) = (0u64, 0u64);
    let mut refused = Vec::new();
    for (i, record) in records.into_iter().enumerate() {
        let body = record.ticket.body().clone();
        let checked = async {
            record
                .ticket
                .verify(&root, body.not_after)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let partner = coord
                .db
                .content_partner(&body.content)
                .await?
                .ok_or_else(|| anyhow::anyhow!("unknown content {}", body.content))?;
            let cert = coord
                .db
                .partner_cert(&partner)
                .await?
                .ok_or_else(|| anyhow::anyhow!("partner {partner} is gone"))?;
            let cert: Certificate = postcard::from_bytes(&cert)?;
            if cert.body.subject != record.ticket.signed.signer {
                anyhow::bail!(
                    "signed by {}, but content {} belongs to partner {partner}",
                    record.ticket.signed.signer,
                    body.content
                );
            }
            if !(record.price.is_finite() && record.price >= 0.0) {
                anyhow::bail!("price must be a non-negative number of credits");
            }
            let price = crate::policy::micro(record.price);
            coord
                .accounting
                .pay
                .check_ticket_price(price, body.allowance)?;
            Ok::<_, anyhow::Error>((partner, price))
        }
        .await;
        let (partner, price) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                refused.push(format!("record {}: {e}", i + 1));
                continue;
            }
        };
        let sold = Sold {
            ticket: record.ticket,
            content_key: [0; 32],
            partner,
            price,
            issued_at: now_secs(),
        };
        if coord.db.add_ticket(&sold.row("uploaded")).await? {
            added += 1;
        } else {
            duplicate += 1;
        }
    }
    Ok(serde_json::json!({ "added": added, "duplicate": duplicate, "refused": refused }))
}
