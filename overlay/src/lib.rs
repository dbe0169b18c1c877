//! CCDS shared library: everything the coordinator, the node daemon and the client share.
//!
//! # Layout
//!
//! * [`audit`]: storage audits: BLAKE3 verified-streaming proofs of a random fragment range.
//! * [`identity`]: Ed25519 keys in files, peer IDs, domain-separated signatures, [`identity::Signed`].
//! * [`cert`]: CM-signed certificates binding a peer ID to a role and a validity window.
//! * [`ticket`]: partner-signed download rights, and the ticket file a client holds.
//! * [`manifest`]: the CM-signed description of a published content; its hash is the content ID.
//! * [`codec`]: encrypt → Reed-Solomon → fragments, and back, one segment at a time.
//! * [`store`]: the fragment store on a node's disk (atomic writes, quota, hash check, LRU cache).
//! * [`proto`]: the wire messages of every protocol and their length-checked framing (no I/O state).
//! * [`net`]: the libp2p swarm over QUIC, exposed as a cloneable [`net::Net`] handle.
//! * [`logging`]: the programs' shared `tracing` setup.
//! * [`receipt`]: client-signed receipts and completion reports.
//! * [`report`]: node-signed periodic reports of work, holdings and uptime; the account view.
//!
//! Signed objects are encoded with postcard (deterministic for the plain structs used here) and
//! signed over `domain || encoding`, so a signature for one kind of object never verifies as another.

pub mod audit;
pub mod cert;
pub mod codec;
pub mod config;
pub mod identity;
pub mod logging;
pub mod manifest;
pub mod net;
pub mod proto;
pub mod receipt;
pub mod report;
pub mod store;
pub mod ticket;
pub mod time;

pub use identity::{ContentId, Identity, Signed};
pub use libp2p::{Multiaddr, PeerId, multiaddr};
