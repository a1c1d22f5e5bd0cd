//! Seeded scenarios (placeholder while the world lands).
