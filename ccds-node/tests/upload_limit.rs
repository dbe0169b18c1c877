//! The upload limit over real QUIC on loopback: two clients fetching at once from a node
//! limited to 2 MiB/s get 2 MiB/s between them once the bucket's initial burst is spent, so the
//! limit holds for the node as a whole rather than per stream; the same fetches from an
//! unlimited node take a fraction of the time.

mod common;

use std::num::NonZeroU32;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ccds_node::Limits;
use ccds_node::throttle::UploadLimit;
use common::fetching::{Client, Fixture, fetch_checked};
use overlay::proto::FetchResponse;

const FRAGMENT: usize = 1 << 20;
const FRAGMENTS: u16 = 6;
/// The limit: 2 MiB/s, so the 6 MiB take about 2 s beyond the 2 MiB burst.
const RATE: u32 = 2 << 20;

/// A node holding `FRAGMENTS` fragments of `FRAGMENT` bytes, uploading at most `upload_limit`.
async fn fixture(upload_limit: Option<NonZeroU32>) -> anyhow::Result<Fixture> {
    let limits = Limits {
        upload_limit,
        ..Limits::default()
    };
    Fixture::new(FRAGMENTS, FRAGMENT, limits).await
}

/// A client with its own ticket, already connected to the node.
async fn client(f: &Fixture, ticket_id: u8) -> anyhow::Result<Client> {
    let mut client = f.client(ticket_id, 1 << 30).await?;
    // Asking for a fragment the node lacks connects without taking any upload tokens, so the
    // timed fetches start with the bucket full and the connection up.
    let answer = fetch(&mut client, u16::MAX).await?;
    ensure!(answer == FetchResponse::NotFound, "{answer:?}");
    Ok(client)
}

/// Fetches fragment `index` on a stream of its own, checks its bytes and signs a receipt.
async fn fetch(c: &mut Client, index: u16) -> anyhow::Result<FetchResponse> {
    fetch_checked(c, index, FRAGMENT).await
}

/// Fetches `indices` one after the other.
async fn fetch_all(c: &mut Client, indices: Range<u16>) -> anyhow::Result<()> {
    for index in indices {
        let answer = fetch(c, index).await?;
        ensure!(
            matches!(answer, FetchResponse::Ok { len, .. } if len as usize == FRAGMENT),
            "fragment {index}: {answer:?}"
        );
    }
    Ok(())
}

/// Two clients at once, each fetching half of the fragments one after the other: the time from
/// the first request to the last receipt.
async fn two_clients_fetch_everything(f: &Fixture) -> anyhow::Result<Duration> {
    let (mut first, mut second) = (client(f, 1).await?, client(f, 2).await?);
    let half = FRAGMENTS / 2;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        fetch_all(&mut first, 0..half),
        fetch_all(&mut second, half..FRAGMENTS)
    );
    let took = started.elapsed();
    a.context("first client")?;
    b.context("second client")?;
    let stats = f.node.stats();
    assert_eq!(stats.served, u64::from(FRAGMENTS));
    assert_eq!(
        (f.settled(&[1; 16]).await, f.settled(&[2; 16]).await),
        (0, 0)
    );
    assert_eq!(f.node.stats().receipts_accepted, u64::from(FRAGMENTS));
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_limit_holds_across_streams_and_the_default_is_unlimited() -> anyhow::Result<()>
{
    let rate = NonZeroU32::new(RATE).unwrap();
    let total = u64::from(FRAGMENTS) * FRAGMENT as u64;
    // The bucket starts full: its burst goes at once, the rest at the rate.
    let burst = UploadLimit::new(rate).burst_bytes();
    assert!(total >= 3 * burst, "the test must go well past the burst");

    let limited = fixture(Some(rate)).await?;
    let took = two_clients_fetch_everything(&limited).await?;
    let measured = (total - burst) as f64 / took.as_secs_f64();
    let expected = Duration::from_secs_f64((total - burst) as f64 / f64::from(RATE));
    eprintln!(
        "limited node: {total} bytes in {took:?} (expected {expected:?} after a {burst}-byte \
         burst): {measured:.0} B/s against a limit of {RATE} B/s ({:.3}x)",
        measured / f64::from(RATE)
    );
    assert!(
        (0.9..=1.1).contains(&(measured / f64::from(RATE))),
        "measured {measured:.0} B/s, limit {RATE} B/s"
    );

    let unlimited = fixture(Limits::default().upload_limit).await?;
    let quick = two_clients_fetch_everything(&unlimited).await?;
    eprintln!("unlimited node: {total} bytes in {quick:?}");
    assert!(
        quick * 4 < took,
        "the unlimited node took {quick:?}, the limited one {took:?}"
    );
    Ok(())
}
