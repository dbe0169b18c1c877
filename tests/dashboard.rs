//! The operator's web dashboard in a real browser: headless Chromium (Debian's `chromium`)
//! loads the page from a running coordinator with three nodes, after a publish, a download and
//! a reconciliation, and the test reads what the page shows (its DOM after the scripts ran).
//!
//! Chromium missing: the test says so and passes, except under CI (`CI` set), where `.ci/run`
//! installs it and its absence fails the test.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Collective;

/// The browser, if installed.
fn chromium() -> Option<PathBuf> {
    let from_env = std::env::var_os("CCDS_CHROMIUM").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.exists())
}

/// Loads `url` headless and returns the DOM once the page's scripts have settled.
fn dump_dom(browser: &PathBuf, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("cannot start chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Saves a full-page picture of `url` (`CCDS_DASHBOARD_SCREENSHOT=page.png`, to look at).
fn screenshot(browser: &PathBuf, url: &str, png: &std::path::Path) {
    let profile = tempfile::tempdir().unwrap();
    let status = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--window-size=1400,2200",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The text of the element with `id` (its inner markup, tags removed).
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open_end = start + dom[start..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find("</").unwrap();
    dom[open_end..close].trim().to_string()
}

/// The markup of `<table id="{id}">`.
fn table<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table #{id}"));
    let end = start + dom[start..].find("</table>").unwrap();
    &dom[start..end]
}

#[test]
fn dashboard_shows_the_collective_in_a_browser() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (`.ci/run` installs Debian's package)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium, or set CCDS_CHROMIUM)");
        return;
    };
    let ips: Vec<String> = (1..=3).map(|i| format!("127.0.{i}.1")).collect();
    let c = Collective::start_full(&ips, &[], &["--report-interval", "1s"]);
    let file = c.make_file("show.bin", 600_000, 11);
    let content = c.publish(&file, 2, 1, "256KiB");
    let (key, client) = c.client("viewer");
    let ticket = c.ticket(&content, &client, "1h");
    let since = common::now_secs();
    c.get_verified(&key, &ticket, &c.path("show.out"), &file);
    // Every node reports the work it did, and a reconciliation confirms and pays it.
    for i in 0..c.nodes.len() {
        c.wait_reported(i, since + 1);
    }
    let run = c.reconcile();
    assert!(run["confirmed"].as_u64().unwrap() > 0, "{run}");
    let base = format!("http://{}/", c.http_addr());

    let url = format!("{base}#token={}", c.operator_token());
    if let Some(png) = std::env::var_os("CCDS_DASHBOARD_SCREENSHOT") {
        screenshot(&browser, &url, &PathBuf::from(png));
    }
    let dom = dump_dom(&browser, &url);
    assert!(
        dom.contains("data-loaded="),
        "the page's scripts did not finish:\n{dom}"
    );
    assert_eq!(text_of(&dom, "error"), "", "the page reported errors");
    // Overview: the cards and the online chart end at the nodes online now.
    assert_eq!(text_of(&dom, "nodes-online"), "3");
    assert_eq!(text_of(&dom, "nodes-registered"), "3");
    assert_eq!(text_of(&dom, "contents-count"), "1");
    assert_eq!(text_of(&dom, "downloads"), "1");
    let online_chart = &dom[dom.find("id=\"chart-online\"").unwrap()..];
    assert!(
        online_chart[..online_chart.find("</svg>").unwrap()].contains("data-last=\"3\""),
        "the online chart does not end at 3 nodes"
    );
    // Nodes: every node, online.
    let nodes = table(&dom, "nodes-table");
    for node in &c.nodes {
        assert!(
            nodes.contains(&format!("data-node=\"{}\"", node.id)),
            "{} missing",
            node.id
        );
    }
    assert_eq!(nodes.matches(">online<").count(), 3);
    // Content: the published file, its name, fully redundant (3 of 3 live).
    let contents = table(&dom, "contents-table");
    assert!(contents.contains(&format!("data-content=\"{content}\"")));
    assert!(contents.contains(">show.bin<"));
    assert!(contents.contains(">3 of 3<"), "{contents}");
    // Accounting: every verdict the API holds (an honest run confirms claims without any), each
    // with its evidence, and the nodes credited in the ledger.
    let verdicts = table(&dom, "verdicts-table");
    let held = c.http_get("/api/v1/verdicts").1;
    let held = held.as_array().unwrap().len();
    assert_eq!(
        verdicts.matches("data-outcome=").count(),
        held,
        "{verdicts}"
    );
    assert_eq!(
        verdicts.matches("<summary>evidence</summary>").count(),
        held
    );
    if held == 0 {
        assert!(verdicts.contains("No reconciliation verdict yet."));
    }
    let ledger = table(&dom, "ledger-table");
    let credited = c
        .nodes
        .iter()
        .filter(|n| ledger.contains(&format!("data-node=\"{}\"", n.id)))
        .count();
    assert!(credited > 0, "no node in the ledger:\n{ledger}");

    // A wrong token gets the sign-in form with the reason, and no data.
    let dom = dump_dom(&browser, &format!("{base}#token=ccds_wrong"));
    assert!(
        dom.contains("<div id=\"login\">"),
        "no sign-in form:\n{dom}"
    );
    assert!(text_of(&dom, "login-error").contains("unknown or revoked"));
    assert!(!dom.contains(&c.nodes[0].id));
}
