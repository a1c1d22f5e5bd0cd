//! The deterministic world (placeholder while the executor lands).
pub mod disk;
