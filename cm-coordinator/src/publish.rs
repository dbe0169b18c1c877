//! Publishing: a partner's file → encrypted segments → Reed-Solomon fragments → placement on
//! distinct online nodes → CM-signed store orders pushed over `/ccds/store/1`.
//!
//! The content ID is the hash of the manifest, which lists every fragment hash, and every
//! store order names the content ID: so the file is encoded twice, once to hash and once to
//! push. Encoding is deterministic (fresh key, nonce = segment index), memory stays bounded by
//! a couple of segments whatever the file size, and nothing needs spooling to disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::AsyncWriteExt;
use overlay::codec::{SegmentCodec, fragment_hash};
use overlay::manifest::{Cipher, MAX_SEGMENT_SIZE, Manifest};
use overlay::net::Net;
use overlay::proto::{self, StoreOrder, StoreRequest, StoreResponse};
use overlay::store::FragmentId;
use overlay::{ContentId, Identity, PeerId, Signed};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::db::Placement;
use crate::placement::{self, PlacementRules, Placer, SegmentPlan, WeightedCandidate};

/// Publishing errors.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} changed while it was being published")]
    Changed { path: PathBuf },
    #[error("invalid parameters: {0}")]
    Params(String),
    #[error(
        "placing {needed} fragments per segment needs {needed} online nodes on distinct networks (/24), but only {available} are available ({online} nodes online)"
    )]
    NotEnoughNodes {
        needed: usize,
        available: usize,
        online: usize,
    },
    #[error("could not place fragment {fragment} on any node; last error: {last}")]
    Unplaced { fragment: FragmentId, last: String },
}

/// Parameters of a publication.
#[derive(Clone, Debug)]
pub struct PublishParams {
    pub data_shards: u8,
    pub parity_shards: u8,
    /// Parity fragments hashed into the manifest beyond `k + m`, placed only under demand.
    pub spare_shards: u8,
    pub segment_size: u32,
}

impl PublishParams {
    /// The spare parity fragments a content gets when its publisher names none: as many as
    /// its parity fragments, within 256 fragments in all.
    pub fn default_spare_shards(data_shards: u8, parity_shards: u8) -> u8 {
        let room = 256 - (data_shards as usize + parity_shards as usize).min(256);
        parity_shards.min(room.min(255) as u8)
    }

    fn check(&self) -> Result<(), PublishError> {
        let n =
            self.data_shards as usize + self.parity_shards as usize + self.spare_shards as usize;
        if self.data_shards == 0 || n > overlay::manifest::MAX_SHARDS {
            return Err(PublishError::Params(format!(
                "need 1 ≤ data shards and data + parity + spare ≤ 256, got {} + {} + {}",
                self.data_shards, self.parity_shards, self.spare_shards
            )));
        }
        if self.segment_size < 4096 || self.segment_size > MAX_SEGMENT_SIZE {
            return Err(PublishError::Params(format!(
                "segment size must be between 4 KiB and {} MiB, got {}",
                MAX_SEGMENT_SIZE >> 20,
                self.segment_size
            )));
        }
        Ok(())
    }
}

/// The outcome of a publication, for the caller to record.
pub struct Published {
    pub content: ContentId,
    pub manifest: Signed<Manifest>,
    pub content_key: [u8; 32],
    pub placements: Vec<Placement>,
}

/// Reads `path` one segment at a time, sending each encoded segment down `tx`
/// (or only hashing when `tx` is `None`). Blocking: run on a blocking thread.
fn encode_file(
    path: &Path,
    size: u64,
    codec: &SegmentCodec,
    segment_size: u32,
    tx: Option<&mpsc::Sender<(u32, Vec<Bytes>)>>,
) -> Result<Vec<[u8; 32]>, PublishError> {
    let read_err = |source| PublishError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; segment_size as usize];
    let segments = size.div_ceil(segment_size as u64);
    for segment in 0..segments {
        let len = (size - segment * segment_size as u64).min(segment_size as u64) as usize;
        file.read_exact(&mut buf[..len]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                PublishError::Changed {
                    path: path.to_path_buf(),
                }
            } else {
                read_err(e)
            }
        })?;
        let fragments = codec.encode(segment, &buf[..len]);
        hashes.extend(fragments.iter().map(|f| fragment_hash(f)));
        if let Some(tx) = tx
            && tx.blocking_send((segment as u32, fragments)).is_err()
        {
            break; // the pusher failed and reports why
        }
    }
    Ok(hashes)
}

/// Publishes `path`: encodes it, pushes every fragment to a distinct online node per segment.
pub async fn publish(
    root: &Identity,
    net: &Net,
    online: Vec<WeightedCandidate>,
    rules: PlacementRules,
    path: &Path,
    params: &PublishParams,
) -> Result<Published, PublishError> {
    params.check()?;
    let shards = params.data_shards as usize + params.parity_shards as usize;
    let available = placement::capacity(&online, rules);
    if available < shards {
        return Err(PublishError::NotEnoughNodes {
            needed: shards,
            available,
            online: online.len(),
        });
    }
    let size = std::fs::metadata(path)
        .map_err(|source| PublishError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let content_key: [u8; 32] = rand::random();
    let codec = std::sync::Arc::new(
        SegmentCodec::new(
            &content_key,
            params.data_shards as usize,
            params.parity_shards as usize + params.spare_shards as usize,
        )
        .map_err(|e| PublishError::Params(e.to_string()))?,
    );

    // Pass 1: hash every fragment to build the manifest and learn the content ID.
    let hashes = {
        let (path, codec, seg) = (path.to_path_buf(), codec.clone(), params.segment_size);
        tokio::task::spawn_blocking(move || encode_file(&path, size, &codec, seg, None))
            .await
            .expect("encoder thread panicked")?
    };
    let manifest = Manifest {
        size,
        segment_size: params.segment_size,
        data_shards: params.data_shards,
        parity_shards: params.parity_shards,
        spare_shards: params.spare_shards,
        cipher: Cipher::Aes256Gcm,
        created: overlay::time::now_secs(),
        hashes,
    };
    let content = manifest.content_id();
    info!(%content, size, segments = manifest.segments(), "encoded; placing fragments");

    // Pass 2: encode again on a blocking thread, push segment by segment.
    // Weights and vetting prepared once for every segment.
    let placer = Placer::new(&online, rules);
    let (tx, mut rx) = mpsc::channel(2);
    let encoder = {
        let (path, codec, seg) = (path.to_path_buf(), codec.clone(), params.segment_size);
        tokio::task::spawn_blocking(move || encode_file(&path, size, &codec, seg, Some(&tx)))
    };
    let mut placements = Vec::with_capacity(manifest.hashes.len());
    let mut failure = None;
    while let Some((segment, mut fragments)) = rx.recv().await {
        // The spares stay unplaced until demand calls for them.
        fragments.truncate(shards);
        let Some((holders, plan)) = placer.segment(fragments.len()) else {
            failure = Some(PublishError::NotEnoughNodes {
                needed: shards,
                available,
                online: online.len(),
            });
            break;
        };
        match place_segment(
            root, net, content, segment, &fragments, &manifest, &holders, plan,
        )
        .await
        {
            Ok(placed) => placements.extend(placed),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(rx);
    let second = encoder.await.expect("encoder thread panicked");
    if let Some(e) = failure {
        return Err(e);
    }
    if second? != manifest.hashes {
        return Err(PublishError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok(Published {
        content,
        manifest: Signed::sign(root, manifest),
        content_key,
        placements,
    })
}

/// Pushes the fragments of one segment to their planned holders; a failed push moves on to a
/// replacement that still obeys the placement rules.
#[allow(clippy::too_many_arguments)]
async fn place_segment(
    root: &Identity,
    net: &Net,
    content: ContentId,
    segment: u32,
    fragments: &[Bytes],
    manifest: &Manifest,
    holders: &[PeerId],
    plan: SegmentPlan,
) -> Result<Vec<Placement>, PublishError> {
    let plan = std::sync::Mutex::new(plan);
    let jobs = fragments.iter().enumerate().map(|(index, data)| {
        let plan = &plan;
        let first = holders[index];
        async move {
            let fragment = FragmentId {
                content,
                segment,
                index: index as u16,
            };
            let hash = *manifest
                .hash(segment as u64, index)
                .expect("manifest covers every fragment");
            let mut node = first;
            loop {
                match push(root, net, node, fragment, hash, data.clone()).await {
                    Ok(()) => {
                        return Ok(Placement {
                            segment,
                            index: index as u16,
                            node,
                        });
                    }
                    Err(last) => {
                        warn!(%node, %fragment, error = %last, "push failed; trying another node");
                        let next = plan.lock().unwrap_or_else(|p| p.into_inner()).replacement();
                        match next {
                            Some(n) => node = n,
                            None => return Err(PublishError::Unplaced { fragment, last }),
                        }
                    }
                }
            }
        }
    });
    futures::future::try_join_all(jobs).await
}

/// Pushes one fragment with a CM-signed store order.
pub async fn push(
    root: &Identity,
    net: &Net,
    node: PeerId,
    fragment: FragmentId,
    hash: [u8; 32],
    data: Bytes,
) -> Result<(), String> {
    let order = Signed::sign(
        root,
        StoreOrder {
            node,
            fragment,
            hash,
            len: data.len() as u32,
            issued: overlay::time::now_secs(),
        },
    );
    store_request(net, node, StoreRequest::Store(order), Some(&data)).await
}

/// One request over `/ccds/store/1` (a store order with its bytes, or a delete order) and the
/// node's answer.
pub async fn store_request(
    net: &Net,
    node: PeerId,
    request: StoreRequest,
    data: Option<&Bytes>,
) -> Result<(), String> {
    let mut stream = net
        .open(node, proto::STORE)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        proto::write_msg(&mut stream, &request).await?;
        if let Some(data) = data {
            stream.write_all(data).await?;
            stream.flush().await?;
        }
        proto::read_msg::<_, StoreResponse>(&mut stream, proto::MAX_SMALL_MSG).await
    }
    .await;
    let _ = stream.close().await;
    match result {
        Ok(StoreResponse::Ok) => Ok(()),
        Ok(StoreResponse::Refused(reason)) => Err(format!("node refused: {reason}")),
        Err(e) => Err(e.to_string()),
    }
}
