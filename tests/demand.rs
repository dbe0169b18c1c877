//! Reactive scheduling end to end: a spike of tickets for one content adds distinct spare
//! parity fragments on more nodes, downloads use them, and when demand cools they are removed.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Collective, wait_for};

#[test]
fn a_ticket_spike_adds_holders_downloads_use_them_and_cooling_removes_them() {
    let c = Collective::start_with(
        8,
        &[
            "--repair-interval",
            "300ms",
            "--demand-window",
            "20s",
            "--demand-per-fragment",
            "4",
        ],
    );
    // One segment, k=2, m=2, two spares: 4 holders normally, up to 6 under demand.
    let file = c.make_file("hit.bin", 60_000, 11);
    let content = c.publish(&file, 2, 2, "64KiB");
    let show = c.content_show(&content);
    assert_eq!(show["spare"], 2);
    assert_eq!(show["desired_fragments"], 4);
    let holders_before: usize = (0..8).filter(|&i| c.fragments_on(i, &content) > 0).count();
    assert_eq!(holders_before, 4);

    // The spike: ten tickets, 10 / 4 = two extra fragments per segment.
    let mut clients = Vec::new();
    for i in 0..10 {
        let (key, id) = c.client(&format!("fan{i}"));
        let ticket = c.ticket(&content, &id, "1h");
        clients.push((key, ticket));
    }
    wait_for(
        "the spare fragments to be placed",
        Duration::from_secs(30),
        || {
            let show = c.content_show(&content);
            show["desired_fragments"] == 6 && show["min_live_fragments"] == 6
        },
    );
    let holders: Vec<usize> = (0..8)
        .filter(|&i| c.fragments_on(i, &content) > 0)
        .collect();
    assert_eq!(holders.len(), 6, "every new holder holds distinct data");
    let repairs = c.repairs();
    let added: HashSet<String> = repairs["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "expand")
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(added.len(), 2);

    // Downloads spread over the new holders too.
    let mut from_new = 0u64;
    for (i, (key, ticket)) in clients.iter().enumerate() {
        let summary = c.get_verified(key, ticket, &c.path(&format!("hit{i}.out")), &file);
        println!("{summary}");
        let per_node = summary["per_node"].as_object().unwrap();
        from_new += added
            .iter()
            .filter_map(|n| per_node.get(n).and_then(|b| b.as_u64()))
            .sum::<u64>();
    }
    assert!(from_new > 0, "no download used the added holders {added:?}");

    // Once the tickets fall out of the demand window, the spares go.
    wait_for("demand to cool", Duration::from_secs(90), || {
        let show = c.content_show(&content);
        show["desired_fragments"] == 4
            && (0..8).filter(|&i| c.fragments_on(i, &content) > 0).count() == 4
    });
    assert_eq!(c.content_show(&content)["min_live_fragments"], 4);
}
