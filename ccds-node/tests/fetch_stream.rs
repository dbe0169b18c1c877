//! One `/ccds/fetch/1` stream carries a download's fetches from a node one after another, over
//! real QUIC on loopback: every fragment arrives intact and is receipted, an answer without
//! bytes does not end the stream, a bad ticket does, and the node ends a stream left idle.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ccds_node::Limits;
use common::fetching::{Client, Fixture, fragment_bytes};
use futures::AsyncReadExt;
use overlay::proto::{self, FetchRequest, FetchResponse, MAX_SMALL_MSG};
use overlay::ticket::Ticket;

const FRAGMENT: usize = 100_000;
const FRAGMENTS: u16 = 4;
const IDLE: Duration = Duration::from_millis(500);

async fn fixture() -> anyhow::Result<Fixture> {
    let limits = Limits {
        fetch_idle: IDLE,
        ..Limits::default()
    };
    Fixture::new(FRAGMENTS, FRAGMENT, limits).await
}

/// Asks for fragment `index` under `ticket` on an open stream and reads the answer.
async fn ask(
    stream: &mut libp2p::Stream,
    ticket: &Ticket,
    index: u16,
) -> anyhow::Result<FetchResponse> {
    let request = FetchRequest {
        ticket: ticket.clone(),
        content: ticket.body().content,
        segment: 0,
        index,
    };
    proto::write_msg(stream, &request).await?;
    Ok(proto::read_msg(stream, MAX_SMALL_MSG).await?)
}

/// Fetches fragment `index` on an open stream, checks its bytes and sends the receipt.
async fn fetch(client: &mut Client, stream: &mut libp2p::Stream, index: u16) -> anyhow::Result<()> {
    let ticket = client.ticket.clone();
    match ask(stream, &ticket, index).await? {
        FetchResponse::Ok { len, .. } => {
            let data = proto::read_bytes(stream, len as usize).await?;
            assert_eq!(data, fragment_bytes(index, FRAGMENT), "fragment {index}");
            let receipt = client.receipt(data.len() as u64);
            proto::write_msg(stream, &receipt).await?;
            Ok(())
        }
        other => bail!("fragment {index}: expected the bytes, got {other:?}"),
    }
}

/// Reads until the node closes the stream; returns how long that took.
async fn closed_by_node(stream: &mut libp2p::Stream) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut rest = Vec::new();
    // A reset is as good as a close here: either way the node is done with the stream.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .context("the node never ended the stream")?;
    assert!(rest.is_empty(), "no bytes after the last exchange");
    Ok(started.elapsed())
}

#[tokio::test]
async fn one_stream_carries_fetch_after_fetch_until_it_idles() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut client = fx.client(1, 1 << 30).await?;
    let mut stream = client.net.open(client.node, proto::FETCH).await?;
    for index in 0..FRAGMENTS {
        fetch(&mut client, &mut stream, index).await?;
    }
    // A fragment the node does not hold: answered, and the stream goes on.
    let ticket = client.ticket.clone();
    let answer = ask(&mut stream, &ticket, FRAGMENTS + 7).await?;
    assert!(matches!(answer, FetchResponse::NotFound), "{answer:?}");
    fetch(&mut client, &mut stream, 0).await?;

    // Every fragment on the stream was receipted: nothing served is left uncovered.
    let ticket_id = client.ticket.body().ticket_id;
    assert_eq!(fx.settled(&ticket_id).await, 0);
    assert_eq!(client.fragments, u64::from(FRAGMENTS) + 1);

    // Left idle, the stream is ended by the node, not held forever.
    let waited = closed_by_node(&mut stream).await?;
    assert!(
        waited >= IDLE / 2,
        "ended after {waited:?}, before it idled"
    );
    Ok(())
}

#[tokio::test]
async fn a_ticket_for_another_client_ends_the_stream() -> anyhow::Result<()> {
    let fx = fixture().await?;
    let mut client = fx.client(2, 1 << 30).await?;
    let other = fx.client(3, 1 << 30).await?;
    let mut stream = client.net.open(client.node, proto::FETCH).await?;
    fetch(&mut client, &mut stream, 1).await?;
    // The next request on the same stream carries someone else's ticket: refused, whatever
    // came before on the stream, and the stream ends.
    let answer = ask(&mut stream, &other.ticket, 2).await?;
    match answer {
        FetchResponse::Refused(reason) => assert!(reason.contains("client"), "{reason}"),
        other => bail!("expected a refusal, got {other:?}"),
    }
    let waited = closed_by_node(&mut stream).await?;
    assert!(
        waited < IDLE,
        "the refusal ended the stream at once, not after {waited:?}"
    );
    Ok(())
}
