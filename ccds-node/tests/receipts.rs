//! Receipt enforcement over real QUIC on loopback: a client that takes fragments without
//! signing receipts is cut off after the credit, one that signs them is served throughout (also
//! when it starts again under the same ticket), and no ticket gets more from the node than its
//! allowance.

mod common;

use std::time::Duration;

use anyhow::{Context as _, bail};
use ccds_node::Limits;
use common::fetching::{Client, Fixture};
use overlay::proto::{self, FetchResponse};
use overlay::receipt::Receipt;

const FRAGMENT: usize = 100_000;
const FRAGMENTS: u16 = 8;
const CREDIT: u64 = 250_000;

/// A node holding `FRAGMENTS` fragments of `FRAGMENT` bytes, with a credit of `CREDIT` bytes.
async fn fixture() -> anyhow::Result<Fixture> {
    let limits = Limits {
        receipt_credit: CREDIT,
        ..Limits::default()
    };
    Fixture::new(FRAGMENTS, FRAGMENT, limits).await
}

/// The fetch exchange as these tests drive it.
trait Fetch {
    async fn fetch(
        &mut self,
        index: u16,
        sign: bool,
        catch_up: Option<&Receipt>,
    ) -> anyhow::Result<FetchResponse>;
}

impl Fetch for Client {
    /// Fetches fragment `index`, signing a receipt for its bytes if `sign`; returns the answer.
    /// After a refusal, `catch_up` (if any) is sent on the same stream.
    async fn fetch(
        &mut self,
        index: u16,
        sign: bool,
        catch_up: Option<&Receipt>,
    ) -> anyhow::Result<FetchResponse> {
        let (mut stream, response) = self.ask(index).await?;
        match &response {
            FetchResponse::Ok { len, receipt } => {
                if let Some(kept) = receipt
                    .as_deref()
                    .filter(|r| self.adopt && r.body.seq > self.seq)
                {
                    let body = kept.verify_by(&self.identity.peer_id())?;
                    (self.fragments, self.bytes, self.seq) = (body.fragments, body.bytes, body.seq);
                }
                let data = proto::read_bytes(&mut stream, *len as usize).await?;
                assert_eq!(data, vec![index as u8; FRAGMENT]);
                if sign {
                    let receipt = self.receipt(data.len() as u64);
                    proto::write_msg(&mut stream, &receipt).await?;
                }
            }
            _ => {
                if let Some(receipt) = catch_up {
                    proto::write_msg(&mut stream, receipt).await?;
                }
            }
        }
        common::fetching::close_and_wait(&mut stream).await?;
        Ok(response)
    }
}

fn refused_with(response: &FetchResponse, starting: &str) -> anyhow::Result<String> {
    match response {
        FetchResponse::Refused(reason) if reason.starts_with(starting) => Ok(reason.clone()),
        other => bail!("expected a refusal starting with {starting:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_without_receipts_is_cut_off_after_the_credit() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut freeloader = f.client(1, 1 << 30).await?;
    let ticket_id = [1; 16];
    let ok = FetchResponse::Ok {
        len: FRAGMENT as u32,
        receipt: None,
    };

    // 100 kB, then 200 kB outstanding: both within the 250 kB credit.
    assert_eq!(freeloader.fetch(0, false, None).await?, ok);
    assert_eq!(freeloader.fetch(1, false, None).await?, ok);
    // A third would make 300 kB.
    let answer = freeloader.fetch(2, false, None).await?;
    let reason = refused_with(&answer, "receipts lag")?;
    assert_eq!(
        reason,
        format!(
            "receipts lag: {} bytes delivered without a receipt (credit {CREDIT}); send receipts to continue",
            2 * FRAGMENT
        )
    );
    // Every fragment, however often asked for.
    for index in 0..FRAGMENTS {
        let answer = freeloader.fetch(index, false, None).await?;
        refused_with(&answer, "receipts lag")?;
    }
    let stats = f.node.stats();
    assert_eq!(stats.served, 2);
    assert_eq!(stats.receipts_lag_refused, 1 + u64::from(FRAGMENTS));
    assert_eq!(stats.allowance_refused, 0);
    let count = f.node.ticket_count(&ticket_id);
    assert_eq!((count.served, count.outstanding), (200_000, 200_000));

    // Sending its receipt after a refusal brings it back.
    let catch_up = freeloader.receipt(200_000);
    let answer = freeloader.fetch(2, false, Some(&catch_up)).await?;
    refused_with(&answer, "receipts lag")?;
    assert_eq!(f.node.ticket_count(&ticket_id).outstanding, 0);
    assert_eq!(f.node.latest_receipt(&ticket_id), Some(catch_up.clone()));
    assert_eq!(
        freeloader.fetch(2, true, None).await?,
        FetchResponse::Ok {
            len: FRAGMENT as u32,
            receipt: Some(Box::new(catch_up)),
        }
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_signs_receipts_is_served_throughout() -> anyhow::Result<()> {
    let f = fixture().await?;
    let mut honest = f.client(2, 1 << 30).await?;
    let rounds = 3;
    for _ in 0..rounds {
        for index in 0..FRAGMENTS {
            let answer = honest.fetch(index, true, None).await?;
            assert!(
                matches!(answer, FetchResponse::Ok { len, .. } if len == FRAGMENT as u32),
                "{answer:?}"
            );
        }
    }
    let total = u64::from(FRAGMENTS) * rounds * FRAGMENT as u64;
    assert!(total > 5 * CREDIT, "the test must go well past the credit");
    // The node's receipt arrives after the client closes; wait for it to be kept.
    let ticket_id = [2; 16];
    for _ in 0..100 {
        if f.node.ticket_count(&ticket_id).outstanding == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = f.node.ticket_count(&ticket_id);
    assert_eq!((count.served, count.outstanding), (total, 0));
    let stats = f.node.stats();
    assert_eq!(stats.served, u64::from(FRAGMENTS) * rounds);
    assert_eq!(stats.receipts_accepted, u64::from(FRAGMENTS) * rounds);
    assert_eq!(
        (stats.receipts_lag_refused, stats.allowance_refused),
        (0, 0)
    );
    assert_eq!(f.node.latest_receipt(&ticket_id).unwrap().body.bytes, total);
    Ok(())
}

#[tokio::test]
async fn a_client_starting_again_under_its_ticket_continues_from_the_nodes_receipt()
-> anyhow::Result<()> {
    let f = fixture().await?;
    let ticket_id = [4; 16];
    let mut first = f.client(4, 1 << 30).await?;
    for index in 0..3 {
        let answer = first.fetch(index, true, None).await?;
        assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    }
    assert_eq!(f.settled(&ticket_id).await, 0);

    // The same client downloads again, its counters starting from zero: the node's answer
    // carries the receipt it kept, and the client's totals continue from it.
    let mut second = first.restarted(true);
    for round in 0..2 {
        for index in 0..FRAGMENTS {
            let answer = second.fetch(index, true, None).await?;
            assert!(
                matches!(answer, FetchResponse::Ok { .. }),
                "round {round}, fragment {index}: {answer:?}"
            );
        }
    }
    assert_eq!(f.settled(&ticket_id).await, 0);
    let total = (3 + 2 * u64::from(FRAGMENTS)) * FRAGMENT as u64;
    assert!(total > 5 * CREDIT, "the test must go well past the credit");
    let kept = f.node.latest_receipt(&ticket_id).unwrap();
    assert_eq!(kept.body.bytes, total);
    assert_eq!(f.node.stats().receipts_lag_refused, 0);

    // Counting from zero instead, its receipts are stale to the node, which cuts it off after
    // the credit: the reason the node sends its receipt back.
    let mut forgetful = first.restarted(false);
    let mut refused = None;
    for index in 0..FRAGMENTS {
        if let FetchResponse::Refused(reason) = forgetful.fetch(index, true, None).await? {
            refused = Some((index, reason));
            break;
        }
    }
    let (index, reason) = refused.context("a client restarting its totals is cut off")?;
    assert!(reason.starts_with("receipts lag"), "{reason}");
    assert_eq!(u64::from(index), CREDIT / FRAGMENT as u64);
    Ok(())
}

#[tokio::test]
async fn no_ticket_gets_more_than_its_allowance_from_a_node() -> anyhow::Result<()> {
    let f = fixture().await?;
    let allowance = 2 * FRAGMENT as u64 + 1;
    let mut buyer = f.client(3, allowance).await?;
    for index in 0..2 {
        let answer = buyer.fetch(index, true, None).await?;
        assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    }
    let answer = buyer.fetch(2, true, None).await?;
    let reason = refused_with(&answer, "ticket allowance exhausted")?;
    assert!(reason.contains(&format!("{allowance}")), "{reason}");
    let stats = f.node.stats();
    assert_eq!((stats.served, stats.allowance_refused), (2, 1));
    assert_eq!(stats.receipts_lag_refused, 0);
    assert_eq!(f.node.ticket_count(&[3; 16]).served, 2 * FRAGMENT as u64);
    Ok(())
}
