//! The CCDS download client: fetch a ticketed content from many participating nodes at once,
//! verify every fragment, decode, decrypt, and write it resumably.
//!
//! # Layout
//!
//! * [`scheduler`]: the sans-I/O heart — which fragment to fetch next from which node, retries,
//!   node health, spare fetches beside slow ones, slow-node reports, fresh contact lists when
//!   too few holders answer, and when to give up.
//! * [`download`]: the async driver around the scheduler (`ccds-client get`).
//! * [`fetch`]: `/ccds/fetch/1` client side — one verified, receipted fragment.
//! * [`coordinator`]: `/ccds/client/1` client side — manifest and contacts, fresh contacts,
//!   problem and completion reports.
//! * [`output`] and [`resume`]: `PATH.part`, its resume state, and the final rename.
//! * [`accounting`]: per-node counters behind receipts and the completion report.
//! * [`rate`]: the `--limit-rate` token bucket.
//! * [`summary`]: what a finished download prints.
//! * [`error`]: [`ClientError`], one sentence per failure.

pub mod accounting;
pub mod coordinator;
pub mod download;
pub mod error;
pub mod fetch;
pub mod output;
pub mod pool;
pub mod rate;
pub mod resume;
pub mod scheduler;
pub mod summary;

use std::path::Path;

use libp2p::PeerId;
use overlay::Identity;

pub use download::{GetOptions, get, get_until};
pub use error::ClientError;
pub use summary::Summary;

/// Creates a new client key at `path` (never overwriting one) and returns its peer ID.
pub fn keygen(path: &Path) -> Result<PeerId, ClientError> {
    let id = Identity::generate();
    id.save(path).map_err(ClientError::Key)?;
    Ok(id.peer_id())
}

/// Parses a `--limit-rate` value: bytes per second, with an optional unit (`500k`, `2MiB`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let rate = s
        .trim()
        .trim_end_matches("/s")
        .parse::<bytesize::ByteSize>()
        .map_err(|_| format!("`{s}` is not a rate such as 500KiB or 2MiB"))?
        .as_u64();
    if rate == 0 {
        return Err("the rate must be above zero".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_like_curl() {
        assert_eq!(parse_rate("2MiB"), Ok(2 << 20));
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("1.5 KiB/s"), Ok(1536));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn keygen_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.key");
        let peer = keygen(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().peer_id(), peer);
        let err = keygen(&path).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }
}
