//! Gossip: eventually consistent replicated state for the mesh (the MerkleFlow design):
//! membership and failure detection, an overlay with tree broadcast, and a key-value store of
//! CRDTs kept in sync by Merkle Search Tree anti-entropy.
//!
//! Map:
//! - `faults`: BUGGIFY hooks and planted bugs the driver hands the sans-IO node.
//! - `hash`: the 128-bit content digest used by the Merkle Search Tree.
//! - `hlc`: hybrid logical clock timestamps for last-writer-wins.
//! - `crdt`: LWW-register, G-Counter, PN-Counter, OR-Set, with delta mutators.
//! - `mst`: Merkle Search Tree and the pull session that diffs two trees.
//! - `store`: the node's key-value state (LWW registers, tombstones with a TTL) and its MST.
//! - `swim`: SWIM + Lifeguard membership and failure detection (sans-IO).
//! - `hyparview`: HyParView active/passive overlay (sans-IO).
//! - `plumtree`: Plumtree eager/lazy push broadcast over the active view (sans-IO).
//! - `idindex`: the compact digest -> ticket table behind Plumtree's duplicate check.
//! - `wire`: the versioned, length-checked datagram format (`docs/formats.md`).
//! - `sync`: anti-entropy pull sessions over datagrams (sans-IO).
//! - `node`: one sans-IO node: membership, overlay, store, hot-key push, anti-entropy, all on
//!   one socket; `Node::step(now, rng, input, &mut effects)` and `Node::deadline()`.
//! - `driver`: the thin async loop that runs a node over `Env` UDP (`start`,
//!   `start_persistent`, `Handle`).
//! - `persist`: snapshot + WAL of the node state on the `Env` disk (`docs/formats.md`).
//!
//! Data flow: a write stamps an HLC time, lands in the store and its MST, and is broadcast
//! through the Plumtree (hot keys are pushed). Every anti-entropy interval each node pulls from
//! a random live member whatever their MSTs say differs (cold keys are pulled). SWIM tells the
//! overlay which neighbours failed; the overlay tells the tree which links exist.
//!
//! Invariant: nothing outside `driver` and `persist` performs I/O, and nothing at all reads a
//! clock or OS randomness; time, randomness and bytes come in as arguments and go out as data.

pub mod crdt;
pub mod driver;
pub mod faults;
pub mod hash;
pub mod hlc;
pub mod hyparview;
pub mod idindex;
pub mod mst;
pub mod node;
pub mod persist;
pub mod plumtree;
pub mod store;
pub mod swim;
pub mod sync;
pub mod wire;

#[cfg(test)]
mod swim_tests;

#[cfg(test)]
mod overlay_tests;
