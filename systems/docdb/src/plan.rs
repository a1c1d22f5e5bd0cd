//! The query planner: from a filter's top-level predicates and a sort, pick `_id` lookups, an
//! index scan (equality prefix, then a range or an `$in` list, or a sort prefix) or a
//! collection scan, and say why (`explain`).
//!
//! An index scan only narrows: every fetched document is checked against the whole filter
//! again, so a plan may return a superset of keys, never miss one. What it must never do is
//! leave out a matching document; the rules for that are at `usable_predicate`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document, doc};

use crate::catalog::{CollectionInfo, IndexInfo};
use crate::keycode;
use crate::layout;
use crate::query::filter::Predicate;

/// Largest number of key intervals one plan scans (a product of `$in` lists).
pub const INTERVAL_COUNT_MAX: usize = 1024;

/// How a query reads the collection.
#[derive(Clone, Debug, PartialEq)]
pub enum Access {
    /// Point reads of documents by encoded `_id`.
    Ids(Vec<Vec<u8>>),
    /// Scans of one index over key intervals `[start, end)`, in order.
    Index {
        /// The index.
        index: IndexInfo,
        /// Byte intervals over the LSM key space.
        intervals: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Every document, in `_id` order.
    Collection,
}

/// A chosen plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// How documents are found.
    pub access: Access,
    /// Whether the access order already is the requested sort (no sort in memory).
    pub sorted: bool,
}

impl Plan {
    /// The plan's name as `explain` gives it: `IDHACK`, `IXSCAN a_1` or `COLLSCAN`.
    pub fn name(&self) -> String {
        match &self.access {
            Access::Ids(_) => "IDHACK".to_string(),
            Access::Index { index, .. } => format!("IXSCAN {}", index.name),
            Access::Collection => "COLLSCAN".to_string(),
        }
    }
}

/// What a query did, as `explain` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutionStats {
    /// Index keys read.
    pub keys_examined: u64,
    /// Documents fetched and tested against the filter.
    pub documents_examined: u64,
    /// Documents returned.
    pub returned: u64,
}

/// The `explain` output: the plan and what it cost.
pub fn explain_document(plan: &Plan, stats: &ExecutionStats) -> Document {
    let intervals = match &plan.access {
        Access::Ids(ids) => ids.len(),
        Access::Index { intervals, .. } => intervals.len(),
        Access::Collection => 1,
    };
    doc! {
        "plan": plan.name(),
        "intervals": intervals as i64,
        "sortedInMemory": !plan.sorted,
        "keysExamined": stats.keys_examined as i64,
        "docsExamined": stats.documents_examined as i64,
        "nReturned": stats.returned as i64,
    }
}

/// Picks a plan. `usable` says whether an index's entries are complete in the reader's
/// snapshot (an index built after it is not).
pub fn choose(
    info: &CollectionInfo,
    predicates: &[(String, Predicate)],
    sort: Option<&[(String, bool)]>,
    usable: impl Fn(&IndexInfo) -> bool,
) -> Plan {
    let by_path = merge_predicates(predicates);
    if let Some(predicate) = by_path.get("_id")
        && let Some(ids) = id_points(predicate)
    {
        return Plan { access: Access::Ids(ids), sorted: sort.is_none_or(<[_]>::is_empty) };
    }
    let mut best: Option<(usize, Plan)> = None;
    for index in info.indexes.iter().filter(|index| usable(index)) {
        if let Some((score, plan)) = index_plan(info.id, index, &by_path, sort)
            && best.as_ref().is_none_or(|(best_score, _)| score > *best_score)
        {
            best = Some((score, plan));
        }
    }
    if let Some((_, plan)) = best {
        return plan;
    }
    let sorted = sort.is_none_or(|keys| keys.is_empty() || is_id_sort(keys));
    Plan { access: Access::Collection, sorted }
}

/// One predicate per path: an equality beats an `$in` list, which beats a range; two ranges on
/// one path become one with the tighter bound on each side. (An index scan may use only one
/// side of a merged range on a multikey index: two conditions may be met by two elements.)
fn merge_predicates(predicates: &[(String, Predicate)]) -> BTreeMap<&str, Predicate> {
    let rank = |predicate: &Predicate| match predicate {
        Predicate::Eq(_) => 0,
        Predicate::In(_) => 1,
        Predicate::Range { .. } => 2,
    };
    let mut by_path: BTreeMap<&str, Predicate> = BTreeMap::new();
    for (path, predicate) in predicates {
        let merged = match by_path.remove(path.as_str()) {
            None => predicate.clone(),
            Some(Predicate::Range { lower, upper }) if rank(predicate) == 2 => {
                let Predicate::Range { lower: other_lower, upper: other_upper } = predicate else {
                    unreachable!("rank 2 is a range")
                };
                Predicate::Range {
                    lower: tighter(lower, other_lower.clone(), Ordering::Greater),
                    upper: tighter(upper, other_upper.clone(), Ordering::Less),
                }
            }
            Some(kept) if rank(&kept) <= rank(predicate) => kept,
            Some(_) => predicate.clone(),
        };
        by_path.insert(path.as_str(), merged);
    }
    by_path
}

/// Of two bounds, the one further in direction `inward` (`Greater` for lower bounds); on a
/// tie the exclusive one.
fn tighter(
    a: Option<(Bson, bool)>,
    b: Option<(Bson, bool)>,
    inward: Ordering,
) -> Option<(Bson, bool)> {
    match (a, b) {
        (None, other) | (other, None) => other,
        (Some(a), Some(b)) => match crate::value::compare(&a.0, &b.0) {
            Ordering::Equal => Some((a.0, a.1 && b.1)),
            order if order == inward => Some(a),
            _ => Some(b),
        },
    }
}

fn is_id_sort(keys: &[(String, bool)]) -> bool {
    keys.len() == 1 && keys[0].0 == "_id" && keys[0].1
}

fn id_points(predicate: &Predicate) -> Option<Vec<Vec<u8>>> {
    let values: Vec<&Bson> = match predicate {
        Predicate::Eq(value) => vec![value],
        Predicate::In(values) if values.len() <= INTERVAL_COUNT_MAX => values.iter().collect(),
        _ => return None,
    };
    let mut ids = Vec::with_capacity(values.len());
    for value in values {
        match value {
            // An array or regular expression is never an `_id`; such a filter needs a scan.
            Bson::Array(_) | Bson::RegularExpression(_) | Bson::Null | Bson::Undefined => {
                return None;
            }
            other => ids.push(keycode::encode(other)),
        }
    }
    ids.sort();
    ids.dedup();
    Some(ids)
}

/// Whether a predicate can bound an index scan without losing a matching document.
/// Equality on an array or a regular expression matches documents that have no index key
/// equal to it (an array equals a whole field, a pattern matches strings), so it cannot;
/// equality on null also matches missing fields, which a sparse index leaves out.
fn usable_predicate(predicate: &Predicate, sparse: bool) -> bool {
    let plain = |value: &Bson| match value {
        Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined => false,
        Bson::Null => !sparse,
        _ => true,
    };
    match predicate {
        Predicate::Eq(value) => plain(value),
        Predicate::In(values) => !values.is_empty() && values.iter().all(plain),
        Predicate::Range { lower, upper } => {
            let bounds = [lower, upper];
            bounds.iter().any(|bound| bound.is_some())
                && bounds.iter().all(|bound| {
                    bound.as_ref().is_none_or(|(value, _)| plain(value) && *value != Bson::Null)
                })
        }
    }
}

fn index_plan(
    collection_id: u32,
    index: &IndexInfo,
    by_path: &BTreeMap<&str, Predicate>,
    sort: Option<&[(String, bool)]>,
) -> Option<(usize, Plan)> {
    let prefix = layout::index_prefix(collection_id, index.id);
    let mut intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![(prefix.clone(), None)];
    let mut used = 0;
    for (path, up) in &index.keys {
        let Some(predicate) = by_path.get(path.as_str()) else { break };
        if !usable_predicate(predicate, index.sparse) {
            break;
        }
        match predicate {
            Predicate::Eq(value) => extend_points(&mut intervals, std::slice::from_ref(value), *up),
            Predicate::In(values) => {
                if intervals.len() * values.len() > INTERVAL_COUNT_MAX {
                    break;
                }
                extend_points(&mut intervals, values, *up);
            }
            Predicate::Range { lower, upper } => {
                // On a multikey index two bounds may be met by two different elements.
                let upper = if index.multikey && lower.is_some() { None } else { upper.as_ref() };
                extend_range(&mut intervals, lower.as_ref(), upper, *up);
                used += 1;
                break;
            }
        }
        used += 1;
    }
    let sorted = sort_served(index, sort, used);
    if used == 0 && !(sorted && sort.is_some_and(|keys| !keys.is_empty())) {
        return None;
    }
    if used == 0 && index.sparse {
        // A sparse index lacks documents without the field; it cannot serve a whole sort.
        return None;
    }
    let intervals = intervals
        .into_iter()
        .map(|(start, end)| {
            let end = end.unwrap_or_else(|| {
                keycode::prefix_successor(&start).expect("index keys have a prefix")
            });
            (start, end)
        })
        .collect();
    let score = used * 2 + usize::from(sorted);
    Some((score, Plan { access: Access::Index { index: index.clone(), intervals }, sorted }))
}

/// Whether scanning `index` (with `used` leading components bound) yields the sort's order.
fn sort_served(index: &IndexInfo, sort: Option<&[(String, bool)]>, used: usize) -> bool {
    let Some(sort) = sort.filter(|keys| !keys.is_empty()) else { return true };
    if index.multikey || used > 1 {
        // Several intervals of points come out one interval at a time, not merged in order.
        return false;
    }
    if sort.len() > index.keys.len() {
        return false;
    }
    sort.iter()
        .zip(&index.keys)
        .all(|((sort_path, sort_up), (path, up))| sort_path == path && sort_up == up)
}

/// Each interval (still open: `end` unset means "the prefix's successor") gets one point per
/// value appended.
fn extend_points(intervals: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>, values: &[Bson], up: bool) {
    let mut next = Vec::with_capacity(intervals.len() * values.len());
    for (start, _) in intervals.iter() {
        let mut points: Vec<Vec<u8>> = values
            .iter()
            .map(|value| {
                let mut key = start.clone();
                encode_component(value, up, &mut key);
                key
            })
            .collect();
        points.sort();
        points.dedup();
        next.extend(points.into_iter().map(|key| (key, None)));
    }
    *intervals = next;
}

fn encode_component(value: &Bson, up: bool, key: &mut Vec<u8>) {
    if up {
        keycode::encode_into(value, key);
    } else {
        keycode::encode_descending_into(value, key);
    }
}

/// Each interval gets the range component: MongoDB's type bracketing keeps a range inside the
/// type of its bound (`$gt: 5` never matches a string).
fn extend_range(
    intervals: &mut [(Vec<u8>, Option<Vec<u8>>)],
    lower: Option<&(Bson, bool)>,
    upper: Option<&(Bson, bool)>,
    up: bool,
) {
    let bracket = lower.or(upper).map(|(value, _)| keycode::type_bounds(value)).expect("a bound");
    for (start, end) in intervals.iter_mut() {
        let prefix = start.clone();
        let bound_key = |value: &Bson| {
            let mut key = prefix.clone();
            encode_component(value, up, &mut key);
            key
        };
        let after =
            |key: Vec<u8>| keycode::prefix_successor(&key).expect("index keys have a prefix");
        let with_byte = |byte: u8| [prefix.as_slice(), &[byte]].concat();
        // In ascending byte order the low end comes from the lower bound when `up`, from the
        // upper bound when the component is stored inverted.
        let (low, high) = if up { (lower, upper) } else { (upper, lower) };
        let (type_low, type_high) =
            if up { (bracket.0, bracket.1) } else { (!bracket.0, !bracket.0) };
        *start = match low {
            Some((value, true)) => bound_key(value),
            Some((value, false)) => after(bound_key(value)),
            None => with_byte(type_low),
        };
        *end = Some(match high {
            Some((value, true)) => after(bound_key(value)),
            Some((value, false)) => bound_key(value),
            None if up => with_byte(type_high),
            None => after(with_byte(type_high)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collection(indexes: Vec<IndexInfo>) -> CollectionInfo {
        CollectionInfo {
            id: 1,
            database: "d".into(),
            name: "c".into(),
            epoch: 1,
            next_index_id: 9,
            indexes,
            validator: None,
        }
    }

    fn index(id: u32, keys: &[(&str, bool)]) -> IndexInfo {
        IndexInfo {
            id,
            name: crate::catalog::default_index_name(
                &keys.iter().map(|(path, up)| (path.to_string(), *up)).collect::<Vec<_>>(),
            ),
            keys: keys.iter().map(|(path, up)| (path.to_string(), *up)).collect(),
            unique: false,
            sparse: false,
            multikey: false,
        }
    }

    #[track_caller]
    fn check(
        indexes: Vec<IndexInfo>,
        predicates: Vec<(&str, Predicate)>,
        sort: &[(&str, bool)],
        expected: &str,
    ) {
        let predicates: Vec<(String, Predicate)> =
            predicates.into_iter().map(|(path, predicate)| (path.to_string(), predicate)).collect();
        let sort: Vec<(String, bool)> =
            sort.iter().map(|(path, up)| (path.to_string(), *up)).collect();
        let plan = choose(&collection(indexes), &predicates, Some(&sort), |_| true);
        assert_eq!(format!("{} sorted={}", plan.name(), plan.sorted), expected);
    }

    #[test]
    fn planner_prefers_ids_then_longest_prefix() {
        let a = index(1, &[("a", true)]);
        let ab = index(2, &[("a", true), ("b", true)]);
        check(vec![a.clone()], vec![("_id", Predicate::Eq(5.into()))], &[], "IDHACK sorted=true");
        check(
            vec![a.clone(), ab.clone()],
            vec![("a", Predicate::Eq(1.into())), ("b", Predicate::Eq(2.into()))],
            &[],
            "IXSCAN a_1_b_1 sorted=true",
        );
        check(vec![a.clone()], vec![("b", Predicate::Eq(1.into()))], &[], "COLLSCAN sorted=true");
        check(vec![a.clone()], vec![], &[("a", true)], "IXSCAN a_1 sorted=true");
        check(
            vec![a.clone()],
            vec![("a", Predicate::Eq(Bson::Array(vec![])))],
            &[],
            "COLLSCAN sorted=true",
        );
        // Points of one `$in` come out in key order, so they serve a sort on that key.
        check(
            vec![a],
            vec![("a", Predicate::In(vec![2.into(), 1.into()]))],
            &[("a", true)],
            "IXSCAN a_1 sorted=true",
        );
        check(
            vec![ab],
            vec![("a", Predicate::In(vec![1.into(), 2.into()]))],
            &[("b", true)],
            "IXSCAN a_1_b_1 sorted=false",
        );
    }

    #[test]
    fn ranges_stay_inside_their_type() {
        let a = index(1, &[("a", true)]);
        let plan = choose(
            &collection(vec![a]),
            &[("a".into(), Predicate::Range { lower: Some((5.into(), false)), upper: None })],
            None,
            |_| true,
        );
        let Access::Index { intervals, .. } = plan.access else { panic!("index plan expected") };
        let (start, end) = &intervals[0];
        let inside = [layout::index_prefix(1, 1), keycode::encode(&Bson::Double(5.5))].concat();
        let string =
            [layout::index_prefix(1, 1), keycode::encode(&Bson::String("x".into()))].concat();
        let five =
            [layout::index_prefix(1, 1), keycode::encode(&Bson::Int32(5)), vec![0x20]].concat();
        assert!(start <= &inside && &inside < end);
        assert!(&string >= end);
        assert!(&five < start);
    }
}
