//! The owner's limits over real QUIC on loopback: a daemon whose upload schedule has a window
//! covering now uploads at that window's rate (measured within 10 %), and shows it in its
//! status and metrics; a node at its cap of clients refuses one more as busy, and a paused
//! node refuses everyone, each with a reason the client can show.

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ccds_node::owner::{self, OwnerRequest};
use ccds_node::schedule::{Schedule, TimeOfDay, Window};
use ccds_node::throttle::UploadLimit;
use ccds_node::{Limits, RunOptions};
use common::fetching::{Client, Fixture, fetch_checked, fragment, fragment_bytes};
use common::processes::http;
use common::{loopback, scripted_cm, wait_for_file};
use overlay::cert::{self, Role};
use overlay::codec::fragment_hash;
use overlay::net::Net;
use overlay::proto::{self, FetchResponse, MAX_SMALL_MSG};
use overlay::store::FragmentStore;
use overlay::ticket::{Ticket, TicketBody};
use overlay::time::now_secs;
use overlay::{Identity, Multiaddr, PeerId};
use tokio::sync::oneshot;

const FRAGMENT: usize = 1 << 20;
const FRAGMENTS: u16 = 6;
/// The window's rate: the 6 MiB take about 5 s beyond the 1 MiB burst.
const WINDOW_RATE: u32 = 1 << 20;

/// A window of local time from two hours ago to two hours from now: it covers the whole test
/// whenever it runs (overnight windows included).
fn window_around_now(rate: u32) -> Window {
    let now = i32::from(ccds_node::daemon::local_minute());
    let at = |m: i32| {
        let m = m.rem_euclid(24 * 60) as u16;
        TimeOfDay::new(m / 60, m % 60).unwrap()
    };
    Window {
        start: at(now - 120),
        end: at(now + 120),
        rate: NonZeroU32::new(rate),
    }
}

/// A client of the daemon `node` at `addr`, with a ticket from a partner of `cm`.
async fn client(cm: &Identity, node: PeerId, addr: &Multiaddr, id: u8) -> anyhow::Result<Client> {
    let partner = Identity::generate();
    let partner_cert = cert::issue(cm, partner.peer_id(), Role::Partner, 7, now_secs(), 3600);
    let identity = Identity::generate();
    let net = Net::start(&identity, &[loopback()]).await?;
    net.add_addresses(node, vec![addr.clone()]);
    let ticket = Ticket::issue(
        &partner,
        partner_cert,
        TicketBody {
            ticket_id: [id; 16],
            content: fragment(0).content,
            client: identity.peer_id(),
            not_after: now_secs() + 600,
            allowance: 1 << 30,
        },
    );
    let mut client = Client {
        identity,
        net,
        ticket,
        node,
        fragments: 0,
        bytes: 0,
        seq: 0,
        adopt: true,
    };
    // Connect without taking upload tokens, so the timed fetches start with the bucket full.
    let answer = fetch_checked(&mut client, u16::MAX, FRAGMENT).await?;
    ensure!(answer == FetchResponse::NotFound, "{answer:?}");
    Ok(client)
}

async fn fetch_all(c: &mut Client, indices: std::ops::Range<u16>) -> anyhow::Result<()> {
    for index in indices {
        let answer = fetch_checked(c, index, FRAGMENT).await?;
        ensure!(
            matches!(answer, FetchResponse::Ok { len, .. } if len as usize == FRAGMENT),
            "fragment {index}: {answer:?}"
        );
    }
    Ok(())
}

/// `GET` on the status page, in a blocking task.
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || http(&addr, "GET", &path, &addr, &[])).await?
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_window_covering_now_sets_the_upload_rate() -> anyhow::Result<()> {
    let cm = Identity::generate();
    let (cm_net, _requests) = scripted_cm(cm.clone()).await?;
    let tmp = tempfile::tempdir()?;
    let (data_dir, dir, node_id) = common::node_dir(tmp.path(), &cm, &cm_net, 1 << 30)?;
    {
        let store = FragmentStore::open(&dir.fragments(), 1 << 30, 16 << 20)?;
        for index in 0..FRAGMENTS {
            let data = fragment_bytes(index, FRAGMENT);
            store.put(&fragment(index), &fragment_hash(&data), &data)?;
        }
    }
    let window = window_around_now(WINDOW_RATE);
    let schedule = Schedule::new(None, vec![window])?;
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(ccds_node::run(
        RunOptions {
            schedule,
            status_page: Some("127.0.0.1:0".parse()?),
            ..RunOptions::new(&data_dir)
        },
        async move {
            let _ = stopped.await;
        },
    ));
    wait_for_file(&dir.addr(), true).await?;
    let addr: Multiaddr = std::fs::read_to_string(dir.addr())?.trim().parse()?;

    let status = owner::request(&dir, OwnerRequest::Status).await?;
    let live = status.live.context("a running daemon shows its limits")?;
    assert_eq!(live.upload_limit, u64::from(WINDOW_RATE));
    assert!(
        live.upload_schedule.contains(&window.to_string()),
        "{}",
        live.upload_schedule
    );
    assert_eq!(live.fragments, u64::from(FRAGMENTS));
    let page = live.status_page.context("the status page is on")?;
    let page = page
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (code, before) = get(&page, "/metrics").await?;
    assert_eq!(code, 200, "{before}");
    assert_eq!(
        metric(&before, "ccds_node_served_bytes_total"),
        Some(0),
        "{before}"
    );
    assert_eq!(
        metric(&before, "ccds_node_upload_limit_bytes_per_second"),
        Some(u64::from(WINDOW_RATE))
    );
    assert_eq!(
        metric(&before, "ccds_node_stored_fragments"),
        Some(u64::from(FRAGMENTS))
    );
    assert_eq!(metric(&before, "ccds_node_online"), Some(1));

    let (mut first, mut second) = (
        client(&cm, node_id, &addr, 1).await?,
        client(&cm, node_id, &addr, 2).await?,
    );
    let total = u64::from(FRAGMENTS) * FRAGMENT as u64;
    let burst = UploadLimit::new(NonZeroU32::new(WINDOW_RATE).unwrap()).burst_bytes();
    assert!(total >= 5 * burst, "the test must go well past the burst");
    let started = Instant::now();
    let (a, b) = tokio::join!(
        fetch_all(&mut first, 0..FRAGMENTS / 2),
        fetch_all(&mut second, FRAGMENTS / 2..FRAGMENTS)
    );
    let took = started.elapsed();
    a.context("first client")?;
    b.context("second client")?;
    let measured = (total - burst) as f64 / took.as_secs_f64();
    eprintln!(
        "window {window}: {total} bytes in {took:?} after a {burst}-byte burst: {measured:.0} B/s \
         against {WINDOW_RATE} B/s ({:.3}x)",
        measured / f64::from(WINDOW_RATE)
    );
    assert!(
        (0.9..=1.1).contains(&(measured / f64::from(WINDOW_RATE))),
        "measured {measured:.0} B/s, window rate {WINDOW_RATE} B/s"
    );

    let (_, after) = get(&page, "/metrics").await?;
    assert_eq!(
        metric(&after, "ccds_node_served_bytes_total"),
        Some(total),
        "{after}"
    );
    assert_eq!(
        metric(&after, "ccds_node_served_fragments_total"),
        Some(u64::from(FRAGMENTS))
    );
    assert!(
        after.contains("ccds_node_fetches_refused_total{reason=\"busy\"} 0"),
        "{after}"
    );
    let status = owner::request(&dir, OwnerRequest::Status).await?;
    let live = status.live.unwrap();
    assert_eq!(live.bytes_served, total);
    assert_eq!(
        live.traffic.total, total,
        "all of it within the last minutes"
    );

    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(30), node)
        .await
        .context("the node did not stop")???;
    Ok(())
}

#[tokio::test]
async fn a_client_beyond_the_cap_is_refused_as_busy_and_served_once_one_leaves()
-> anyhow::Result<()> {
    let limits = Limits {
        max_clients: 1,
        ..Limits::default()
    };
    let f = Fixture::new(2, 1024, limits).await?;
    let first = f.client(1, 1 << 20).await?;
    let mut second = f.client(2, 1 << 20).await?;

    // The first client's stream stays open: it is being served.
    let (mut open, answer) = first.ask(0).await?;
    assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    let _ = proto::read_bytes(&mut open, 1024).await?;
    // A second stream of the same client is not one more client.
    let (mut again, answer) = first.ask(1).await?;
    assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    let _ = proto::read_bytes(&mut again, 1024).await?;
    assert_eq!(f.node.clients(), 1);

    let (_, answer) = second.ask(0).await?;
    match answer {
        FetchResponse::Refused(reason) => {
            assert!(reason.starts_with("busy"), "{reason}");
            assert!(reason.contains("maximum of 1 clients"), "{reason}");
        }
        other => panic!("expected a busy refusal, got {other:?}"),
    }
    assert_eq!(f.node.stats().busy_refused, 1);

    // Once the first client is done, the second is served.
    common::fetching::close_and_wait(&mut open).await?;
    common::fetching::close_and_wait(&mut again).await?;
    for _ in 0..100 {
        if f.node.clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.node.clients(), 0);
    let answer = fetch_checked(&mut second, 0, 1024).await?;
    assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn a_paused_node_refuses_every_fetch_with_the_reason() -> anyhow::Result<()> {
    let f = Fixture::new(1, 1024, Limits::default()).await?;
    let mut client = f.client(1, 1 << 20).await?;
    f.node.set_paused(true);
    let (mut stream, answer) = client.ask(0).await?;
    match answer {
        FetchResponse::Refused(reason) => assert!(reason.starts_with("paused"), "{reason}"),
        other => panic!("expected a paused refusal, got {other:?}"),
    }
    // The node ends the stream after the refusal.
    let end = proto::read_msg::<_, FetchResponse>(&mut stream, MAX_SMALL_MSG).await;
    assert!(end.is_err(), "{end:?}");
    assert_eq!(
        (f.node.stats().paused_refused, f.node.stats().served),
        (1, 0)
    );
    f.node.set_paused(false);
    let answer = fetch_checked(&mut client, 0, 1024).await?;
    assert!(matches!(answer, FetchResponse::Ok { .. }), "{answer:?}");
    Ok(())
}
