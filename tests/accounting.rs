//! Accounting end to end, with real processes: nodes report their receipted work and holdings
//! over QUIC, the coordinator reconciles and pays by its policy, and cheaters — armed only with
//! their own keys — are caught, cut, and left worse off than honest nodes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::adversary;
use common::{Collective, now_secs, wait_for};
use overlay::proto::ControlResponse;
use overlay::receipt::Receipt;
use overlay::report::{HeldContent, NodeReportBody, ServedClaim};

/// Rates high enough that a few megabytes and seconds earn whole micro-credits.
const PAY: &str = r#"
reconcile_interval = "0s"
ticket_price_per_gb = 1000.0

[pay]
served_per_gb = 500.0
stored_per_gb_month = 1000.0
repair_per_gb = 400.0

[reconcile]
sales_grace_secs = 0
collusion_min_bytes = 100000
"#;

const GB: u128 = 1_000_000_000;
const MONTH: u128 = 30 * 24 * 3600;

fn ips(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("127.0.{}.1", i + 1)).collect()
}

/// Starts `n` nodes reporting every second, under `config` (TOML) plus `cm_args`.
fn collective(n: usize, config: &str, cm_args: &[&str]) -> Collective {
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), config).unwrap();
    let mut args = vec!["--config", conf.path().to_str().unwrap()];
    args.extend_from_slice(cm_args);
    let c = Collective::start_full(&ips(n), &args, &["--report-interval", "1s"]);
    drop(conf);
    c
}

/// The newest receipt per ticket in node `i`'s receipt log: what the client signed for it.
fn receipts(c: &Collective, i: usize) -> BTreeMap<[u8; 16], Receipt> {
    let log = std::fs::read_to_string(c.nodes[i].dir.join("receipts.jsonl")).unwrap_or_default();
    let mut newest: BTreeMap<[u8; 16], Receipt> = BTreeMap::new();
    for line in log.lines() {
        let r: Receipt = serde_json::from_str(line).unwrap();
        let keep = newest
            .get(&r.body.ticket_id)
            .is_none_or(|k| k.body.seq < r.body.seq);
        if keep {
            newest.insert(r.body.ticket_id, r);
        }
    }
    newest
}

/// Bytes of `content` in node `i`'s store.
fn held_bytes(c: &Collective, i: usize, content: &str) -> u128 {
    let dir = c.nodes[i].dir.join("fragments").join(content);
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| u128::from(e.metadata().unwrap().len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Waits until every running node has had a report accepted that it sent after `since`.
fn wait_all_reported(c: &Collective, since: u64) {
    for i in 0..c.nodes.len() {
        if c.nodes[i].child.is_some() {
            c.wait_reported(i, since + 1);
        }
    }
}

fn u(v: &serde_json::Value) -> u128 {
    v.as_u64()
        .map(u128::from)
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn honest_nodes_earn_exactly_what_the_policy_gives_for_receipted_work_and_storage() {
    let c = collective(6, PAY, &["--audit-interval", "0s"]);
    let file = c.make_file("film.bin", 3_000_000, 11);
    let content = c.publish(&file, 2, 2, "256KiB");
    // Run 1 settles the storage from publication on; what follows starts from its end.
    wait_all_reported(&c, now_secs());
    let first = c.reconcile();
    assert_eq!(first["conflict"], 0, "{first}");
    let before: Vec<i64> = (0..6).map(|i| c.earnings(i)).collect();

    let (key, client) = c.client("alice");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("film.out"), &file);
    // The same client downloads again under its ticket: its receipts continue from the ones the
    // nodes kept, and its second completion report contradicts nothing it signed before.
    c.get_verified(&key, &ticket, &c.path("film-again.out"), &file);
    wait_all_reported(&c, now_secs());
    let run = c.reconcile();
    assert_eq!(run["conflict"], 0, "{run}");
    assert_eq!(run["suspected_collusion"], 0, "{run}");
    let period = u(&run["period_to"]) - u(&run["period_from"]);
    assert!(period > 0);

    let mut served_total = 0u128;
    for (i, before) in before.iter().enumerate() {
        // What the client signed for this node, and what the node holds on disk: witnesses the
        // coordinator does not control.
        let served: u128 = receipts(&c, i)
            .values()
            .map(|r| u128::from(r.body.bytes))
            .sum();
        served_total += served;
        let stored = held_bytes(&c, i, &content) * period;
        let expected =
            (served * 500_000_000 / GB) as i64 + (stored * 1_000_000_000 / (GB * MONTH)) as i64;
        assert_eq!(
            c.earnings(i) - before,
            expected,
            "node {i}: {served} bytes served, {stored} byte-seconds stored"
        );
        let show = c.node_show(i);
        assert_eq!(show["level"], "new");
        assert!(show["verdicts"].as_array().unwrap().is_empty());
        let status = c.node_status(i);
        assert_eq!(status["online"], true);
        assert!(status["last_report_seq"].as_u64() > Some(0));
    }
    assert!(
        served_total >= 2 * 3_000_000,
        "both downloads were receipted: {served_total} bytes"
    );
    // A new identity has three quarters held back.
    let show = c.node_show(0);
    assert!(show["held"].as_i64().unwrap() > show["balance"].as_i64().unwrap());
    // Nothing new: a second run pays only storage, and nothing twice.
    let ledger = serde_json::from_str::<serde_json::Value>(&common::run_ok(
        "cm-coordinator",
        &["ledger", "--data-dir", c.cm(), "--json"],
    ))
    .unwrap();
    assert_eq!(ledger["sum"], 0, "double entry sums to zero: {ledger}");
    assert_eq!(ledger["nodes"].as_array().unwrap().len(), 6);

    // Payout: every positive balance once per period, with a statement.
    let statement = c.path("payout.csv");
    let payout = || {
        common::run(
            "cm-coordinator",
            &[
                "payout",
                "--data-dir",
                c.cm(),
                "--period",
                "2026-11",
                "--out",
                statement.to_str().unwrap(),
            ],
        )
    };
    assert!(payout().status.success());
    let csv = std::fs::read_to_string(&statement).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert_eq!(c.node_show(0)["balance"], 0);
    let again = payout();
    assert!(!again.status.success(), "a period is paid once");
    // The API lists the same payouts the statement holds.
    let (status, listed) = c.http_get("/api/v1/payouts?limit=100");
    assert_eq!(status, 200);
    let paid: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["period"] == "2026-11")
        .collect();
    let paid_in_csv = csv
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(2).is_some_and(|a| a != "0"))
        .count();
    assert_eq!(paid.len(), paid_in_csv, "{listed}\n{csv}");
}

/// The node that served the most under the client's ticket, and its newest receipt.
fn busiest(c: &Collective) -> (usize, Receipt) {
    (0..c.nodes.len())
        .filter_map(|i| receipts(c, i).into_values().next().map(|r| (i, r)))
        .max_by_key(|(_, r)| r.body.bytes)
        .expect("some node served the download")
}

fn report(
    node: &str,
    seq: u64,
    served: Vec<ServedClaim>,
    held: Option<Vec<HeldContent>>,
) -> NodeReportBody {
    let now = now_secs();
    NodeReportBody {
        node: node.parse().unwrap(),
        seq,
        from: now - 10,
        to: now,
        served,
        held,
        sessions: vec![],
        upload_bps: 0,
    }
}

fn last_seq(c: &Collective, i: usize) -> u64 {
    c.node_show(i)["last_report_seq"].as_u64().unwrap()
}

#[test]
fn over_claiming_nodes_are_caught_cut_forfeit_and_then_owe() {
    let mut c = collective(6, PAY, &["--audit-interval", "0s"]);
    let file = c.make_file("song.bin", 1_500_000, 3);
    let content = c.publish(&file, 2, 2, "256KiB");
    let (key, client) = c.client("bob");
    let ticket = c.ticket(&content, &client, "1h");
    c.get_verified(&key, &ticket, &c.path("song.out"), &file);
    wait_all_reported(&c, now_secs());
    c.reconcile();
    let (cheat, receipt) = busiest(&c);
    let held_before = c.node_show(cheat)["held"].as_i64().unwrap();
    assert!(held_before > 0);

    // The cheater stops its honest daemon and speaks for itself.
    c.terminate_node(cheat);
    let id = c.nodes[cheat].id.clone();
    let me = adversary::identity(&c.node_key(cheat));
    let content_id: overlay::ContentId = content.parse().unwrap();
    let seq = last_seq(&c, cheat) + 1;
    let body = report(
        &id,
        seq,
        vec![
            // Ten times what the client signed.
            ServedClaim {
                ticket_id: receipt.body.ticket_id,
                content: content_id,
                fragments: receipt.body.fragments * 10,
                bytes: receipt.body.bytes * 10,
                receipt: Some(receipt.clone()),
            },
            // A ticket nobody sold.
            ServedClaim {
                ticket_id: [0x5a; 16],
                content: content_id,
                fragments: 3,
                bytes: 300_000,
                receipt: None,
            },
        ],
        // Fragments it was never given.
        Some(vec![HeldContent {
            content: content_id,
            fragments: (0..6).map(|s| (s, 3)).collect(),
        }]),
    );
    let answer = adversary::send_report(&c.cm_addr, &me, body.clone());
    assert!(
        matches!(answer, ControlResponse::ReportAccepted { .. }),
        "{answer:?}"
    );
    // Sent again, the same report is a replay: refused, counted nowhere.
    let replay = adversary::send_report(&c.cm_addr, &me, body);
    assert!(
        matches!(replay, ControlResponse::StaleReport { last_seq } if last_seq == seq),
        "{replay:?}"
    );

    let run = c.reconcile();
    assert_eq!(run["by_kind"]["beyond_receipts"], 1, "{run}");
    assert_eq!(run["by_kind"]["unsold"], 1, "{run}");
    assert!(
        run["by_kind"]["storage_never_assigned"].as_u64() >= Some(1),
        "{run}"
    );
    assert_eq!(run["offenders"], 1, "{run}");
    let show = c.node_show(cheat);
    assert_eq!(show["level_index"], 0);
    assert_eq!(show["offences"], 1);
    assert_eq!(
        show["ledger"]["forfeit"].as_i64(),
        Some(held_before),
        "everything held was forfeited: {show}"
    );
    assert!(
        show["balance"].as_i64().unwrap() >= 0,
        "no debt on a first offence"
    );
    let verdicts = show["verdicts"].as_array().unwrap();
    assert!(verdicts.iter().all(|v| v["offence"] == true));
    assert!(
        verdicts.iter().any(
            |v| v["kind"] == "beyond_receipts" && v["evidence"].to_string().contains("receipt")
        ),
        "{verdicts:?}"
    );

    // Caught again: the fine is booked in full and the node owes.
    let body = report(
        &id,
        seq + 1,
        vec![ServedClaim {
            ticket_id: receipt.body.ticket_id,
            content: content_id,
            fragments: receipt.body.fragments * 20,
            bytes: receipt.body.bytes * 20,
            receipt: Some(receipt),
        }],
        None,
    );
    let answer = adversary::send_report(&c.cm_addr, &me, body);
    assert!(
        matches!(answer, ControlResponse::ReportAccepted { .. }),
        "{answer:?}"
    );
    c.reconcile();
    let show = c.node_show(cheat);
    assert_eq!(show["offences"], 2);
    assert!(
        show["balance"].as_i64().unwrap() < 0,
        "a repeat offender owes: {show}"
    );
    // The honest nodes were not touched.
    for i in (0..6).filter(|&i| i != cheat) {
        let show = c.node_show(i);
        assert_eq!(show["offences"], 0);
        assert!(show["verdicts"].as_array().unwrap().is_empty(), "{show}");
    }
}

#[test]
fn a_colluding_client_and_node_are_flagged_and_lose_money() {
    let mut c = collective(6, PAY, &["--audit-interval", "0s"]);
    let file = c.make_file("show.bin", 2_000_000, 5);
    let content = c.publish(&file, 2, 2, "256KiB");
    let (key, client) = c.client("mallory");
    let ticket_path = c.ticket(&content, &client, "1h");
    let ticket = overlay::ticket::TicketFile::load(&ticket_path)
        .unwrap()
        .ticket;
    let colluder = (0..6).max_by_key(|&i| c.fragments_on(i, &content)).unwrap();
    let held = held_bytes(&c, colluder, &content) as u64;
    wait_all_reported(&c, now_secs());
    c.reconcile();
    let before = c.earnings(colluder);

    // No download at all: the client signs the node receipts for traffic that never happened,
    // as much as the node's fragments could explain, all under one real ticket.
    c.terminate_node(colluder);
    let id = c.nodes[colluder].id.clone();
    let node = adversary::identity(&c.node_key(colluder));
    let client_key = adversary::identity(Path::new(&key));
    let fake = adversary::receipt(&client_key, &ticket, &id, 40, 2 * held, 1);
    let body = report(
        &id,
        last_seq(&c, colluder) + 1,
        vec![ServedClaim {
            ticket_id: ticket.body().ticket_id,
            content: ticket.body().content,
            fragments: 40,
            bytes: 2 * held,
            receipt: Some(fake),
        }],
        None,
    );
    assert!(matches!(
        adversary::send_report(&c.cm_addr, &node, body),
        ControlResponse::ReportAccepted { .. }
    ));
    let run = c.reconcile();
    assert_eq!(run["suspected_collusion"], 1, "{run}");
    let show = c.node_show(colluder);
    let flagged = show["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "concentration")
        .unwrap_or_else(|| panic!("no concentration verdict: {show}"));
    assert_eq!(flagged["outcome"], "suspected_collusion");
    assert_eq!(flagged["client"], client.as_str());
    assert_eq!(
        show["pay_last_run"]["served"], 0,
        "the fake traffic was not paid: {show}"
    );
    assert!(c.earnings(colluder) - before < 1_000);
    // And even had it been paid in full, the pair paid more for the ticket than the node can
    // earn from it: 1000 credits per GB of allowance against at most 840 per GB earned.
    let allowance = u128::from(ticket.body().allowance);
    let price = allowance * 1_000_000_000 / GB;
    let most = allowance * 840_000_000 / GB;
    assert!(price > most);
}

#[test]
fn a_node_that_drops_fragments_fails_audits_and_a_slow_one_is_not_punished() {
    let mut c = collective(6, PAY, &["--audit-interval", "1s", "--node-timeout", "60s"]);
    let file = c.make_file("doc.bin", 1_000_000, 9);
    let content = c.publish(&file, 2, 2, "128KiB");
    let mut by_holdings: Vec<usize> = (0..6).collect();
    by_holdings.sort_by_key(|&i| std::cmp::Reverse(c.fragments_on(i, &content)));
    let (dropper, sleeper) = (by_holdings[0], by_holdings[1]);
    wait_all_reported(&c, now_secs());
    c.reconcile();
    let first_run = now_secs();

    // The sleeper stops answering for a few seconds (SIGSTOP), then carries on: audits that
    // time out are re-checked, and pass.
    let pid = c.nodes[sleeper].child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // An audit times out only if one was sent early enough in the stop, before liveness marks
    // the node offline (audits of offline nodes wait): stop again, up to three times, until a
    // timed-out audit was contained.
    let mut resumed = now_secs();
    for _ in 0..3 {
        signal("-STOP");
        std::thread::sleep(Duration::from_secs(7));
        signal("-CONT");
        resumed = now_secs();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while c.node_show(sleeper)["audits_contained"].as_u64() < Some(1)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        if c.node_show(sleeper)["audits_contained"].as_u64() >= Some(1) {
            break;
        }
    }

    // The dropper deletes what it is paid to store.
    let dir = c.nodes[dropper].dir.join("fragments").join(&content);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    wait_for(
        "the dropper to fail an audit",
        Duration::from_secs(180),
        || c.node_show(dropper)["audits_failed"].as_u64() >= Some(1),
    );
    wait_for(
        "the sleeper to pass audits again",
        Duration::from_secs(60),
        || {
            let show = c.node_show(sleeper);
            show["audits_contained"].as_u64() >= Some(1)
                && show["audits_passed"].as_u64() >= Some(3)
        },
    );
    let sleeper_show = c.node_show(sleeper);
    assert_eq!(
        sleeper_show["audits_failed"], 0,
        "slow once is not a failure: {sleeper_show}"
    );
    // Storage is settled when a node lists its holdings: wait for the sleeper's next listing,
    // and for a period long enough that a third of a megabyte earns whole micro-credits.
    c.wait_reported(sleeper, resumed);
    while now_secs() < first_run + 30 {
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_reported(sleeper, first_run + 30);
    let run = c.reconcile();
    let dropper_show = c.node_show(dropper);
    assert_eq!(
        dropper_show["pay_last_run"]["stored"], 0,
        "no storage pay in the period of a failed audit: {dropper_show}"
    );
    let sleeper_show = c.node_show(sleeper);
    assert!(
        sleeper_show["pay_last_run"]["stored"].as_i64() > Some(0),
        "{sleeper_show} {run}"
    );
    assert_eq!(sleeper_show["offences"], 0);
    c.kill_node(dropper);
}

#[test]
fn a_node_online_and_clean_climbs_a_level_and_a_flapping_one_does_not() {
    let config = r#"
reconcile_interval = "0s"

[pay]
raise_after = "6s"
availability_window = "15s"

[[pay.levels]]
name = "new"
multiplier = 1.0

[[pay.levels]]
name = "steady"
multiplier = 1.2
min_availability = 0.8
"#;
    let mut c = collective(3, config, &["--audit-interval", "0s"]);
    let flapper = 2;
    let start = now_secs();
    // Off about 60% of the time for 18 s; the others stay online.
    while now_secs() < start + 18 {
        c.terminate_node(flapper);
        wait_for("the flapper to be offline", Duration::from_secs(10), || {
            !c.is_online(flapper)
        });
        std::thread::sleep(Duration::from_secs(3));
        c.restart_node(flapper);
        std::thread::sleep(Duration::from_secs(2));
    }
    let run = c.reconcile();
    assert_eq!(c.node_show(0)["level"], "steady", "{run}");
    assert_eq!(c.node_show(1)["level"], "steady");
    assert_eq!(c.node_show(flapper)["level"], "new");
}
