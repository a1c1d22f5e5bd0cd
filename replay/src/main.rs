//! The ghostmesh CLI (placeholder).
fn main() {}
