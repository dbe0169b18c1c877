//! A PostgreSQL database per end-to-end test, on the server `CCDS_TEST_POSTGRES_URL` names
//! (`.ci/run` sets one up). Without the variable a test says it was skipped — and fails under
//! `CI`, which must not skip it silently.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// A database of the test's own on the server `CCDS_TEST_POSTGRES_URL` names, dropped at the end.
pub struct Database {
    server: PgConnectOptions,
    name: String,
    /// The database's URL.
    pub url: String,
}

impl Database {
    /// A new database; `None` (after saying so) when `CCDS_TEST_POSTGRES_URL` is unset outside
    /// CI. Panics in CI without it.
    pub fn create() -> Option<Self> {
        let Some(server_url) = std::env::var("CCDS_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CCDS_TEST_POSTGRES_URL is not set; CI must run the PostgreSQL tests"
            );
            eprintln!("skipped: CCDS_TEST_POSTGRES_URL is not set");
            return None;
        };
        let server = PgConnectOptions::from_str(&server_url).expect("a PostgreSQL URL");
        let name = format!("ccds_e2e_{:016x}", rand::random::<u64>());
        block_on(async {
            let mut admin = server.connect().await.expect("the test PostgreSQL server");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        });
        // The server URL with the database replaced (its query, if any, kept).
        let (base, query) = server_url
            .split_once('?')
            .map_or((server_url.as_str(), None), |(b, q)| (b, Some(q)));
        let authority_end = base.find("://").unwrap() + 3;
        let path_start = base[authority_end..]
            .find('/')
            .map_or(base.len(), |i| authority_end + i);
        let mut url = format!("{}/{name}", &base[..path_start]);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Some(Self { server, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        block_on(async move {
            if let Ok(mut admin) = server.connect().await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await;
                let _ = admin.close().await;
            }
        });
    }
}

/// Runs a future to completion on a runtime of its own.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
