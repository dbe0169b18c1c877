//! The storage tests' databases: the same test body runs against SQLite and PostgreSQL (like
//! iroh-blobs `tests/blobs.rs` runs one body against its memory and file stores).
//!
//! PostgreSQL needs a server: `CCDS_TEST_POSTGRES_URL` names one where the tests may create
//! databases (e.g. `postgres://ccds_test:ccds_test@127.0.0.1:5432/postgres`; `.ci/run` sets one
//! up). Each test creates a database of its own and drops it afterwards. Without the variable the
//! PostgreSQL variants say they were skipped and pass — unless `CI` is set, where they fail, so
//! that CI cannot skip them silently.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::Db;

/// The server URL the PostgreSQL variants use.
pub const POSTGRES_URL_VAR: &str = "CCDS_TEST_POSTGRES_URL";

/// A test's database, removed when dropped (the SQLite file with its directory; the PostgreSQL
/// database with `DROP DATABASE`).
pub struct TestDb {
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(PgConnectOptions, String)>,
}

impl TestDb {
    /// A fresh SQLite database in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("cm.db")).await.unwrap();
        Self {
            db,
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database on the server `CCDS_TEST_POSTGRES_URL` names; `None` (after
    /// saying so) when the variable is unset outside CI. Panics in CI without it.
    pub async fn postgres(test: &str) -> Option<Self> {
        let Some(url) = std::env::var(POSTGRES_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())
        else {
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {POSTGRES_URL_VAR} is not set; CI must run the PostgreSQL tests");
            }
            eprintln!("{test}: skipped on PostgreSQL ({POSTGRES_URL_VAR} is not set)");
            return None;
        };
        let server = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is not a PostgreSQL URL: {e}"));
        let name = format!("ccds_test_{:016x}", rand::random::<u64>());
        let mut admin = server
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let _ = admin.close().await;
        let db = Db::open_postgres(server.clone().database(&name))
            .await
            .unwrap();
        Some(Self {
            db,
            _dir: None,
            postgres: Some((server, name)),
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // On a thread of its own: drop may run inside the test's runtime (or while it unwinds,
        // a transaction still open: `FORCE` ends the test's connections).
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut admin = server.connect().await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database: {e}");
        }
    }
}

/// Runs one test body against each engine: `both_engines! { async fn name(db) { … } }` makes
/// the tests `name::sqlite` and `name::postgres`, each calling the body with a fresh [`Db`].
macro_rules! both_engines {
    ($(#[doc = $doc:literal])* async fn $name:ident($db:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($db: $crate::db::Db) $body

            #[tokio::test]
            async fn sqlite() {
                let t = $crate::db::testing::TestDb::sqlite().await;
                body(t.db.clone()).await;
            }

            #[tokio::test]
            async fn postgres() {
                let test = concat!(module_path!(), "::postgres");
                let Some(t) = $crate::db::testing::TestDb::postgres(test).await else {
                    return;
                };
                body(t.db.clone()).await;
            }
        }
    };
}
pub(crate) use both_engines;
