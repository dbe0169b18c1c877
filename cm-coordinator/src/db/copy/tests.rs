//! `db copy` over real databases: a SQLite database filled through the coordinator's own storage
//! API (every table), copied into PostgreSQL, reads back the same through that API and goes on
//! the same; a target holding data is refused, and a copy failing midway leaves the target empty.

use overlay::{ContentId, Identity, PeerId};

use super::*;
use crate::accounting::tests::{NODES, T0, World};
use crate::db::testing::TestDb;
use crate::db::{AuditRow, ClaimRow, ProblemRow, RepairRow, StateTable, TicketRow, TokenRow};

#[test]
fn values_convert_only_where_nothing_is_lost() {
    use PgType as T;
    let ok = |s: Stored, t: PgType| convert(s, t).unwrap();
    assert_eq!(ok(Stored::Integer(-5), T::Int8), Value::Int8(-5));
    assert_eq!(ok(Stored::Integer(7), T::Int4), Value::Int4(7));
    assert_eq!(ok(Stored::Integer(1), T::Bool), Value::Bool(true));
    assert_eq!(ok(Stored::Integer(2), T::Float8), Value::Float8(2.0));
    assert_eq!(ok(Stored::Real(3.0), T::Int8), Value::Int8(3));
    assert_eq!(ok(Stored::Null, T::Bytea), Value::Null(T::Bytea));
    assert_eq!(
        ok(Stored::Text(b"abc".to_vec()), T::Text),
        Value::Text("abc".into())
    );
    assert_eq!(
        ok(Stored::Text(b"abc".to_vec()), T::Bytea),
        Value::Bytea(b"abc".to_vec())
    );
    assert_eq!(
        ok(Stored::Blob(b"xyz".to_vec()), T::Text),
        Value::Text("xyz".into())
    );
    for (stored, ty) in [
        (Stored::Integer(1 << 40), T::Int4),
        (Stored::Integer(70_000), T::Int2),
        (Stored::Integer(2), T::Bool),
        (Stored::Integer(1), T::Text),
        (Stored::Real(0.5), T::Int8),
        (Stored::Real(1e19), T::Int8),
        (Stored::Text(b"12".to_vec()), T::Int8),
        (Stored::Text(b"a\0b".to_vec()), T::Text),
        (Stored::Blob(vec![0xff, 0xfe]), T::Text),
    ] {
        let found = convert(stored.clone(), ty).unwrap_err();
        assert_eq!(found, stored, "{ty:?}");
    }
    assert_eq!(
        Stored::Text(b"soon".to_vec()).describe(),
        "the text \"soon\""
    );
}

#[test]
fn tables_are_copied_after_the_tables_they_refer_to() {
    let table = |name: &str, parents: &[&str]| Table {
        name: name.into(),
        columns: Vec::new(),
        parents: parents.iter().map(|p| p.to_string()).collect(),
    };
    let names = |tables: Vec<Table>| tables.into_iter().map(|t| t.name).collect::<Vec<_>>();
    let ordered = order(vec![
        table("a_placements", &["contents", "nodes"]),
        table("contents", &["partners"]),
        table("nodes", &[]),
        table("partners", &[]),
    ])
    .unwrap();
    assert_eq!(
        names(ordered),
        ["nodes", "partners", "contents", "a_placements"]
    );
    let cycle = order(vec![table("x", &["y"]), table("y", &["x"])]);
    assert!(matches!(cycle, Err(CopyError::Schema(_))), "{cycle:?}");
}

fn sqlite_pool(db: &Db) -> &sqlx::SqlitePool {
    match &db.pool {
        Pool::Sqlite(pool) => pool,
        Pool::Postgres(_) => panic!("not SQLite"),
    }
}

fn postgres_pool(db: &Db) -> &sqlx::PgPool {
    match &db.pool {
        Pool::Postgres(pool) => pool,
        Pool::Sqlite(_) => panic!("not PostgreSQL"),
    }
}

/// Rows in every table of a PostgreSQL database, and the sequences ever used.
async fn postgres_rows(db: &Db) -> (BTreeMap<String, i64>, i64) {
    let pool = postgres_pool(db);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
           AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut rows = BTreeMap::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", ident(&t)))
            .fetch_one(pool)
            .await
            .unwrap();
        rows.insert(t, n);
    }
    let used: i64 = sqlx::query_scalar(
        "SELECT COUNT(last_value) FROM pg_sequences WHERE schemaname = current_schema()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (rows, used)
}

/// What the coordinator's storage API reads from a database filled by [`fill`], as text:
/// equal for two databases that hold the same. Lists the API leaves unordered are sorted.
async fn view(db: &Db, nodes: &[PeerId], content: &ContentId) -> Vec<(&'static str, String)> {
    fn sorted<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> String {
        let mut items: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
        items.sort();
        items.join("\n")
    }
    let mut v = vec![
        ("nodes", format!("{:?}", db.nodes().await.unwrap())),
        ("contents", sorted(db.all_contents().await.unwrap())),
        (
            "content",
            format!("{:?}", db.content(content).await.unwrap()),
        ),
        ("placements", sorted(db.placements(content).await.unwrap())),
        (
            "partner",
            format!("{:?}", db.partner_cert("p").await.unwrap()),
        ),
        ("problems", format!("{:?}", db.problems().await.unwrap())),
        ("repairs", format!("{:?}", db.repairs().await.unwrap())),
        (
            "completions",
            db.completions(content).await.unwrap().to_string(),
        ),
        (
            "demand",
            format!("{:?}", db.demand(0, T0 + 10).await.unwrap()),
        ),
        (
            "sessions",
            format!("{:?}", db.sessions_since(0).await.unwrap()),
        ),
        ("balances", sorted(db.balances().await.unwrap())),
        (
            "verdicts",
            format!("{:?}", db.verdicts(None, 1000).await.unwrap()),
        ),
        ("runs", format!("{:?}", db.runs(1000).await.unwrap())),
        ("last run", format!("{:?}", db.last_run_id().await.unwrap())),
        ("tokens", sorted(db.tokens().await.unwrap())),
        (
            "coordinators",
            format!("{:?}", db.coordinators().await.unwrap()),
        ),
        (
            "lease",
            format!("{:?}", db.lease("maintenance").await.unwrap()),
        ),
        (
            "pay states",
            sorted(db.node_states(StateTable::Pay).await.unwrap()),
        ),
        (
            "audit states",
            sorted(db.node_states(StateTable::Audit).await.unwrap()),
        ),
    ];
    let mark = db.dirty_mark().await.unwrap();
    let mut dirty = Vec::new();
    db.dirty_claims(mark, |t| dirty.push(t)).await.unwrap();
    v.push(("dirty mark", mark.to_string()));
    // Claims as reconciliation unpacks them: the engines pack them in their own dialects.
    let dirty = dirty.iter().map(|t| {
        let claims = ClaimRow::unpack_settled(&t.packed, t.paid.as_deref()).unwrap();
        let claims: Vec<String> = claims
            .iter()
            .map(|c| {
                let receipt = c.receipt.as_ref().map(|r| {
                    let (s, b, f) = (r.signer, r.bytes, r.fragments);
                    format!("{s} {b} {f} {} {} {:?}", r.seq, r.time, r.signature())
                });
                format!(
                    "{} {} {} {} {} {} {} {receipt:?} {}",
                    c.rowid,
                    c.node,
                    c.content,
                    c.bytes,
                    c.fragments,
                    c.report_seq,
                    c.first_seen,
                    c.paid_bytes
                )
            })
            .collect();
        format!("{} {:?} {claims:?}", t.hex, t.sale)
    });
    v.push(("dirty claims", sorted(dirty)));
    for node in nodes {
        let id = node.to_string();
        v.push(("ledger", format!("{:?}", db.ledger_of(&id).await.unwrap())));
        v.push(("holdings", format!("{:?}", db.holdings(&id).await.unwrap())));
        v.push((
            "audits",
            format!("{:?}", db.audit_counts(&id).await.unwrap()),
        ));
        v.push(("undeleted", sorted(db.undeleted(node).await.unwrap())));
        v.push((
            "report seq",
            db.last_report_seq(node).await.unwrap().to_string(),
        ));
    }
    v
}

/// Asserts two views are equal, naming the first read that differs.
fn assert_same(a: &[(&str, String)], b: &[(&str, String)]) {
    assert_eq!(a.len(), b.len());
    for ((what, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x, y, "{what} differ");
    }
}

/// Fills `db` through the storage API with rows in every table; returns the world's nodes and
/// content.
async fn fill(db: &Db) -> (World, Vec<PeerId>, ContentId) {
    let mut w = World::new(db.clone()).await;
    let nodes: Vec<PeerId> = w.nodes.iter().map(Identity::peer_id).collect();
    let content = w.content;
    for (i, node) in nodes.iter().enumerate() {
        db.next_cert_serial(node, "node", T0, T0 + 1000)
            .await
            .unwrap();
        let addrs = [format!("/ip4/127.0.{i}.1/udp/9/quic-v1")];
        db.node_joined(node, "one", &addrs, 1 << 30, 1 << 20, T0 + 1)
            .await
            .unwrap();
        db.node_measures(node, Some(T0 - 5), 1000 + i as u64)
            .await
            .unwrap();
        db.observe_bps(node, 2000).await.unwrap();
    }
    db.node_left(&nodes[2], T0 + 50, "left").await.unwrap();

    // Reports, two reconciliation runs (the second with an over-claim: a conflict), and a
    // report after them: claims, holdings, settlements, verdicts, pay states, the ledger, and a
    // dirty ticket.
    let t1 = T0 + 100_000;
    for n in 0..NODES {
        let r = w.report(n, 2, 2 * w.flen, t1);
        w.ingest(&r, t1).await;
    }
    w.reconcile(t1).await;
    let t2 = t1 + 1_000;
    let r = w.report(3, 3, 30 * w.flen, t2);
    w.ingest(&r, t2).await;
    w.reconcile(t2).await;
    let r = w.report(1, 3, 3 * w.flen, t2 + 10);
    w.ingest(&r, t2 + 10).await;

    db.remove_placement(&content, 0, 0, &nodes[0], T0 + 60)
        .await
        .unwrap();
    db.record_repairs(
        &content,
        &[RepairRow {
            segment: 0,
            index: 0,
            kind: "repair",
            previous: Some(nodes[0]),
            node: nodes[2],
            rebuilt_by: nodes[1],
            ticket: "ab".repeat(16),
            bytes_fetched: 300,
            bytes_stored: 100,
            at: T0 + 70,
        }],
        None,
    )
    .await
    .unwrap();
    db.add_ticket(&TicketRow {
        id: "cd".repeat(16),
        content: content.to_string(),
        client: nodes[1].to_string(),
        partner: "p".into(),
        not_after: (T0 + 1000) as i64,
        allowance: 500,
        issued_at: T0 as i64,
        price: 0,
        source: "repair",
    })
    .await
    .unwrap();
    for i in 0..3 {
        db.add_problem(&ProblemRow {
            reporter: nodes[1].to_string(),
            node: nodes[3].to_string(),
            content: content.to_string(),
            kind: "corrupt".into(),
            segment: Some(i),
            index: None,
            detail: format!("problem {i}"),
            at: (T0 + 80) as i64,
            coordinator: Some("a".into()),
        })
        .await
        .unwrap();
    }
    db.add_completion(&"ef".repeat(16), &nodes[0], &content, b"report", T0 + 90)
        .await
        .unwrap();
    db.add_demand_hint(&content, 3, T0 + 3600, T0)
        .await
        .unwrap();
    db.add_audit(&AuditRow {
        node: nodes[2].to_string(),
        content: content.to_string(),
        segment: 1,
        index: 2,
        outcome: "fail".into(),
        failed: true,
        offence: false,
        detail: "wrong proof".into(),
        at: (T0 + 95) as i64,
    })
    .await
    .unwrap();
    db.save_node_state(StateTable::Audit, &nodes[2].to_string(), "{\"score\":0.5}")
        .await
        .unwrap();
    db.add_token(
        "00ff",
        &TokenRow {
            id: "00ff00ff00ff00ff".into(),
            label: "pipeline".into(),
            partner: Some("p".into()),
            scopes: "partner:read".into(),
            created_at: T0 as i64,
            revoked_at: None,
        },
    )
    .await
    .unwrap();
    db.coordinator_started(
        "one",
        "run1",
        "/ip4/127.0.0.1/udp/1/quic-v1",
        "127.0.0.1:1",
        T0,
    )
    .await
    .unwrap();
    assert!(
        db.acquire_lease("maintenance", "one", T0, T0 + 30)
            .await
            .unwrap()
    );
    (w, nodes, content)
}

#[tokio::test]
async fn a_sqlite_database_copied_to_postgres_reads_back_the_same_and_goes_on_the_same() {
    let test = "db::copy::tests::a_sqlite_database_copied_to_postgres";
    let Some(target) = TestDb::postgres(test).await else {
        return;
    };
    let source = TestDb::sqlite().await;
    let (src, dst) = (&source.db, &target.db);
    let (mut w, nodes, content) = fill(src).await;
    let sqlite = sqlite_pool(src);
    // A problem report deleted: SQLite's AUTOINCREMENT never gives its ID again, nor may
    // PostgreSQL after the copy.
    sqlx::query("DELETE FROM problem_reports WHERE id = (SELECT MAX(id) FROM problem_reports)")
        .execute(sqlite)
        .await
        .unwrap();
    let empty = postgres_rows(dst).await;
    assert!(empty.0.values().all(|&n| n == 0) && empty.1 == 0);

    // Either engine alone is refused as the other.
    assert!(matches!(
        copy(dst, dst).await,
        Err(CopyError::SourceEngine("PostgreSQL"))
    ));
    assert!(matches!(
        copy(src, src).await,
        Err(CopyError::TargetEngine("SQLite"))
    ));

    // A value PostgreSQL cannot hold, in a table copied after others: the whole copy fails,
    // naming it, and the target stays empty (its sequences untouched).
    sqlx::query("INSERT INTO leases (name, holder, expires_at) VALUES ('x', 'one', 'soon')")
        .execute(sqlite)
        .await
        .unwrap();
    let failed = copy_in_batches(src, dst, 3).await.unwrap_err();
    assert!(
        matches!(&failed, CopyError::Value { table, column, .. }
            if table == "leases" && column == "expires_at"),
        "{failed}"
    );
    assert!(failed.to_string().contains("\"soon\""), "{failed}");
    assert_eq!(postgres_rows(dst).await, empty, "{failed}");
    sqlx::query("DELETE FROM leases WHERE name = 'x'")
        .execute(sqlite)
        .await
        .unwrap();

    // A row PostgreSQL refuses (a placement of no content, written while SQLite did not check
    // foreign keys): the same.
    let mut conn = sqlite.acquire().await.unwrap();
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO placements (content, segment, idx, node, placed_at) VALUES ('gone', 0, 0, $1, 1)",
    )
    .bind(nodes[0].to_string())
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("PRAGMA foreign_keys = ON")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let failed = copy_in_batches(src, dst, 3).await.unwrap_err();
    assert!(
        matches!(&failed, CopyError::Write { table, .. } if table == "placements"),
        "{failed}"
    );
    assert_eq!(postgres_rows(dst).await, empty, "{failed}");
    sqlx::query("DELETE FROM placements WHERE content = 'gone'")
        .execute(sqlite)
        .await
        .unwrap();

    // The copy, in small batches: every table has rows, PostgreSQL reads back the same, and
    // the source is as it was.
    let before = view(src, &nodes, &content).await;
    let summary = copy_in_batches(src, dst, 3).await.unwrap();
    let (copied, _) = postgres_rows(dst).await;
    assert_eq!(summary.tables.len(), copied.len(), "{summary}");
    for t in &summary.tables {
        let in_source: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", ident(&t.table)))
                .fetch_one(sqlite)
                .await
                .unwrap();
        assert!(t.rows > 0, "table {} was not filled: {summary}", t.table);
        assert_eq!(
            (t.rows as i64, copied[&t.table]),
            (in_source, in_source),
            "{}",
            t.table
        );
    }
    assert_eq!(
        summary.rows,
        summary.tables.iter().map(|t| t.rows).sum::<u64>()
    );
    let position = |name: &str| summary.tables.iter().position(|t| t.table == name).unwrap();
    assert!(position("partners") < position("contents"));
    assert!(position("contents") < position("placements"));
    assert!(position("recon_runs") < position("verdicts"));
    assert_same(&before, &view(src, &nodes, &content).await);
    assert_same(&before, &view(dst, &nodes, &content).await);

    // A second copy into the now filled target is refused, and changes nothing.
    let (rows, _) = postgres_rows(dst).await;
    let refused = copy(src, dst).await.unwrap_err();
    assert!(matches!(refused, CopyError::TargetNotEmpty(_)), "{refused}");
    assert!(!refused.to_string().contains('\n'), "one line: {refused}");
    assert_eq!(postgres_rows(dst).await.0, rows);
    assert_same(&view(dst, &nodes, &content).await, &before);

    // Both go on alike: identities continue past what was copied (certificate serials, report
    // rowids as dirty marks, ledger and verdict IDs, the deleted problem's ID skipped).
    let mut worlds = Vec::new();
    for db in [src, dst] {
        let serial = db
            .next_cert_serial(&nodes[0], "node", T0, T0 + 1)
            .await
            .unwrap();
        db.add_problem(&ProblemRow {
            reporter: nodes[0].to_string(),
            node: nodes[1].to_string(),
            content: content.to_string(),
            kind: "unreachable".into(),
            segment: None,
            index: None,
            detail: String::new(),
            at: (T0 + 99) as i64,
            coordinator: None,
        })
        .await
        .unwrap();
        let problem: i64 = match &db.pool {
            Pool::Sqlite(p) => sqlx::query_scalar("SELECT MAX(id) FROM problem_reports")
                .fetch_one(p)
                .await
                .unwrap(),
            Pool::Postgres(p) => sqlx::query_scalar("SELECT MAX(id) FROM problem_reports")
                .fetch_one(p)
                .await
                .unwrap(),
        };
        worlds.push((serial, problem));
    }
    assert_eq!(worlds[0], worlds[1]);
    assert_eq!(
        worlds[0].1, 4,
        "the deleted problem's ID is not given again"
    );
    // A report and a run on each: the same report rowid (a ticket's dirty mark), the same run,
    // verdict and ledger IDs, the same balances.
    let t3 = T0 + 200_000;
    let r = w.report(0, 4, 4 * w.flen, t3);
    let mut marks = Vec::new();
    for db in [src, dst] {
        w.db = db.clone();
        w.ingest(&r, t3).await;
        marks.push(db.dirty_mark().await.unwrap());
        w.reconcile(t3).await;
    }
    assert_eq!(marks[0], marks[1]);
    assert_same(
        &view(src, &nodes, &content).await,
        &view(dst, &nodes, &content).await,
    );
}
