//! The benchmark's documents, the same content in each engine's form: BSON 3 for docdb, BSON 2
//! for PoloDB, JSON text for SQLite (stored there as JSONB).
//!
//! `{_id, name, age, city, address: {street, zip}, tags: [3 strings], score}`, about 200 bytes
//! as BSON. `name` is unique (the indexed equality), `score` is a permutation of `0..count`
//! (the indexed range of 100 returns exactly 100), `city` and `age` are not indexed (the scan).

/// Multiplier that turns `_id` into `score`: a prime, so `id * SCORE_PRIME % count` is a
/// permutation of `0..count` when `count` is not a multiple of it.
const SCORE_PRIME: i64 = 7_919;

/// The unindexed scan's filter: `city == SCAN_CITY && age >= SCAN_AGE_MIN` (about 0.2%).
pub const SCAN_CITY: &str = "city-07";
/// See `SCAN_CITY`.
pub const SCAN_AGE_MIN: i64 = 80;
/// Documents the indexed range returns.
pub const RANGE_WIDTH: i64 = 100;

/// One document's fields.
#[derive(Clone, Debug)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub age: i64,
    pub city: String,
    pub street: String,
    pub zip: String,
    pub tags: [String; 3],
    pub score: i64,
}

/// SplitMix64: a deterministic stream for the fields and the operations' arguments.
pub fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `count` values in `0..bound`, from `seed`.
pub fn draws(seed: u64, count: usize, bound: i64) -> Vec<i64> {
    assert!(bound > 0, "empty range");
    (0..count as u64).map(|index| (mix(seed ^ mix(index)) % bound as u64) as i64).collect()
}

/// The unique name of document `id`.
pub fn name(id: i64) -> String {
    format!("user-{id:08}")
}

/// Document `id` of a collection of `count`.
pub fn person(id: i64, count: i64) -> Person {
    assert!((0..count).contains(&id), "id {id} outside 0..{count}");
    assert!(count % SCORE_PRIME != 0, "the score would not be a permutation");
    let bits = mix(id as u64);
    let tag = |shift: u32| format!("tag-{:02}", (bits >> shift) % 20);
    Person {
        id,
        name: name(id),
        age: 18 + (bits % 70) as i64,
        city: format!("city-{:02}", (bits >> 8) % 50),
        street: format!("{} Long Lane", (bits >> 16) % 10_000),
        zip: format!("{:05}", (bits >> 30) % 100_000),
        tags: [tag(44), tag(50), tag(56)],
        score: id * SCORE_PRIME % count,
    }
}

impl Person {
    /// docdb's form.
    pub fn bson(&self) -> bson::Document {
        bson::doc! {
            "_id": self.id, "name": &self.name, "age": self.age, "city": &self.city,
            "address": {"street": &self.street, "zip": &self.zip},
            "tags": [&self.tags[0], &self.tags[1], &self.tags[2]], "score": self.score,
        }
    }

    /// PoloDB's form (its own BSON crate, 2.x).
    #[cfg(feature = "polodb")]
    pub fn polodb(&self) -> polodb_core::bson::Document {
        polodb_core::bson::doc! {
            "_id": self.id, "name": &self.name, "age": self.age, "city": &self.city,
            "address": {"street": &self.street, "zip": &self.zip},
            "tags": [&self.tags[0], &self.tags[1], &self.tags[2]], "score": self.score,
        }
    }

    /// SQLite's form: JSON text (turned into JSONB by the insert).
    pub fn json(&self) -> String {
        serde_json::json!({
            "_id": self.id, "name": &self.name, "age": self.age, "city": &self.city,
            "address": {"street": &self.street, "zip": &self.zip},
            "tags": [&self.tags[0], &self.tags[1], &self.tags[2]], "score": self.score,
        })
        .to_string()
    }
}

/// The street an update writes: different for every (round, position), so no update is a no-op.
pub fn updated_street(round: u64, position: usize) -> String {
    format!("{round}-{position} Updated Lane")
}
