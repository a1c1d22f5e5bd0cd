//! `Filter::matches` against a second, deliberately simple implementation of MongoDB's matching
//! rules, on random documents and random filters (the reference evaluator).
//!
//! Goal: catch disagreements between the engine's matcher and the written rules on inputs no
//! one thought of. Method: proptest draws documents (nested documents, arrays, int32, int64 and
//! double numbers, null, strings, booleans) and filters built from `$eq $ne $gt $gte $lt $lte $in
//! $nin $exists $size $type $mod $all $elemMatch $not $and $or $nor` and implicit equality over
//! a few dotted paths; the reference below re-derives every rule from the README of the
//! semantics (paths, array elements, null for missing, type bracketing) with its own value
//! order, sharing no code with `docdb::query`. `Sort::compare` is checked the same way against
//! a reference sort value per key. NaN is left out (its rules are unit-tested).

use std::cmp::Ordering;

use bson::{Bson, Document, doc};
use docdb::query::{Filter, Sort};
use proptest::prelude::*;

// ---- The reference evaluator ----

fn rank(value: &Bson) -> u8 {
    match value {
        // Only as the sort value of an empty array.
        Bson::Undefined => 0,
        Bson::Null => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => 2,
        Bson::String(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Boolean(_) => 6,
        other => panic!("the model generates no {other:?}"),
    }
}

fn as_f64(value: &Bson) -> f64 {
    match value {
        Bson::Int32(x) => f64::from(*x),
        // The generated integers are small, so the conversion is exact.
        Bson::Int64(x) => *x as f64,
        Bson::Double(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}

fn order(a: &Bson, b: &Bson) -> Ordering {
    if rank(a) != rank(b) {
        return rank(a).cmp(&rank(b));
    }
    match (a, b) {
        (Bson::String(x), Bson::String(y)) => x.cmp(y),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::Array(x), Bson::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = order(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Bson::Document(x), Bson::Document(y)) => {
            let xs: Vec<_> = x.iter().collect();
            let ys: Vec<_> = y.iter().collect();
            for ((kx, vx), (ky, vy)) in xs.iter().zip(&ys) {
                let o = rank(vx).cmp(&rank(vy)).then(kx.cmp(ky)).then(order(vx, vy));
                if o != Ordering::Equal {
                    return o;
                }
            }
            xs.len().cmp(&ys.len())
        }
        (Bson::Null, Bson::Null) | (Bson::Undefined, Bson::Undefined) => Ordering::Equal,
        _ => as_f64(a).partial_cmp(&as_f64(b)).expect("no NaN"),
    }
}

/// A value a path reaches: `None` is missing; `true` marks an element of a leaf array.
type Reached = (Option<Bson>, bool);

fn reach(value: &Bson, parts: &[&str]) -> Vec<Reached> {
    let Some((first, rest)) = parts.split_first() else {
        let mut out = vec![(Some(value.clone()), false)];
        if let Bson::Array(items) = value {
            out.extend(items.iter().map(|item| (Some(item.clone()), true)));
        }
        return out;
    };
    match value {
        Bson::Document(document) => match document.get(*first) {
            Some(child) => reach(child, rest),
            None => vec![(None, false)],
        },
        Bson::Array(items) => {
            let mut out = Vec::new();
            let canonical = first.len() == 1 || !first.starts_with('0');
            if let Ok(index) = first.parse::<usize>()
                && canonical
                && index < items.len()
            {
                out.extend(reach(&items[index], rest));
            }
            for item in items {
                if matches!(item, Bson::Document(_)) {
                    out.extend(reach(item, parts));
                }
            }
            out
        }
        _ => vec![(None, false)],
    }
}

fn equals(reached: &Reached, wanted: &Bson) -> bool {
    match (&reached.0, wanted) {
        (None, Bson::Null) => true,
        (None, _) => false,
        (Some(value), _) => order(value, wanted) == Ordering::Equal,
    }
}

fn type_code(value: &Bson) -> i32 {
    match value {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Boolean(_) => 8,
        Bson::Null => 10,
        Bson::Int32(_) => 16,
        Bson::Int64(_) => 18,
        other => panic!("the model generates no {other:?}"),
    }
}

fn operator_holds(reached: &[Reached], operator: &str, operand: &Bson) -> bool {
    let compare = |keep: fn(Ordering) -> bool| {
        if matches!(operand, Bson::Null) {
            return keep(Ordering::Equal) && reached.iter().any(|r| equals(r, operand));
        }
        reached.iter().any(|(value, _)| {
            value.as_ref().is_some_and(|v| rank(v) == rank(operand) && keep(order(v, operand)))
        })
    };
    let list = || match operand {
        Bson::Array(items) => items.clone(),
        other => panic!("the model gives {operator} an array, not {other:?}"),
    };
    match operator {
        "$eq" => reached.iter().any(|r| equals(r, operand)),
        "$ne" => !reached.iter().any(|r| equals(r, operand)),
        "$gt" => compare(Ordering::is_gt),
        "$gte" => compare(Ordering::is_ge),
        "$lt" => compare(Ordering::is_lt),
        "$lte" => compare(Ordering::is_le),
        "$in" => list().iter().any(|wanted| reached.iter().any(|r| equals(r, wanted))),
        "$nin" => !list().iter().any(|wanted| reached.iter().any(|r| equals(r, wanted))),
        "$exists" => {
            let wanted = operand == &Bson::Boolean(true);
            reached.iter().any(|(value, _)| value.is_some()) == wanted
        }
        "$size" => reached.iter().any(|(value, element)| {
            let length = |items: &Vec<Bson>| Bson::Int32(items.len() as i32);
            !element && matches!(value, Some(Bson::Array(items)) if length(items) == *operand)
        }),
        "$type" => reached.iter().any(|(value, _)| match (value, operand) {
            (Some(v), Bson::String(alias)) if alias == "number" => rank(v) == 2,
            (Some(v), Bson::Int32(code)) => type_code(v) == *code,
            _ => false,
        }),
        "$mod" => {
            let items = list();
            let (divisor, remainder) = (as_f64(&items[0]) as i64, as_f64(&items[1]) as i64);
            reached.iter().any(|(value, _)| {
                let holds = |v: &Bson| (as_f64(v).trunc() as i64) % divisor == remainder;
                value.as_ref().is_some_and(|v| rank(v) == 2 && holds(v))
            })
        }
        "$all" => {
            let items = list();
            let present = |wanted: &Bson| reached.iter().any(|r| equals(r, wanted));
            !items.is_empty() && items.iter().all(present)
        }
        "$elemMatch" => reached.iter().any(|(value, element)| match value {
            Some(Bson::Array(items)) if !element => items.iter().any(|item| {
                operators_hold(&[(Some(item.clone()), false)], operand_document(operand))
            }),
            _ => false,
        }),
        "$not" => !operators_hold(reached, operand_document(operand)),
        other => panic!("the model generates no {other}"),
    }
}

fn operand_document(operand: &Bson) -> &Document {
    match operand {
        Bson::Document(document) => document,
        other => panic!("expected operators, found {other:?}"),
    }
}

fn operators_hold(reached: &[Reached], operators: &Document) -> bool {
    operators.iter().all(|(operator, operand)| operator_holds(reached, operator, operand))
}

fn reference_matches(filter: &Document, document: &Document) -> bool {
    filter.iter().all(|(key, condition)| {
        let clauses = || match condition {
            Bson::Array(items) => items
                .iter()
                .map(|item| reference_matches(operand_document(item), document))
                .collect::<Vec<_>>(),
            other => panic!("clauses are an array, not {other:?}"),
        };
        match key.as_str() {
            "$and" => clauses().into_iter().all(|x| x),
            "$or" => clauses().into_iter().any(|x| x),
            "$nor" => !clauses().into_iter().any(|x| x),
            path => {
                let parts: Vec<&str> = path.split('.').collect();
                let root = Bson::Document(document.clone());
                let reached = reach(&root, &parts);
                match condition {
                    Bson::Document(operators)
                        if operators.keys().next().is_some_and(|k| k.starts_with('$')) =>
                    {
                        operators_hold(&reached, operators)
                    }
                    value => reached.iter().any(|r| equals(r, value)),
                }
            }
        }
    })
}

/// The value one sort key gives a document: the smallest (ascending) or largest (descending)
/// value its path reaches, elements standing for a non-empty array, null for missing.
fn reference_sort_value(document: &Document, path: &str, descending: bool) -> Bson {
    let parts: Vec<&str> = path.split('.').collect();
    let mut values = Vec::new();
    for (value, element) in reach(&Bson::Document(document.clone()), &parts) {
        match value {
            None => values.push(Bson::Null),
            Some(Bson::Array(items)) if !element && items.is_empty() => {
                values.push(Bson::Undefined)
            }
            Some(Bson::Array(_)) if !element => {}
            Some(value) => values.push(value),
        }
    }
    let best = if descending {
        values.into_iter().max_by(order)
    } else {
        values.into_iter().min_by(order)
    };
    best.unwrap_or(Bson::Null)
}

fn reference_compare(keys: &[(String, bool)], a: &Document, b: &Document) -> Ordering {
    for (path, descending) in keys {
        let x = reference_sort_value(a, path, *descending);
        let y = reference_sort_value(b, path, *descending);
        let o = if *descending { order(&y, &x) } else { order(&x, &y) };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

// ---- Generators ----

fn scalar() -> impl Strategy<Value = Bson> {
    prop_oneof![
        (-3_i32..4).prop_map(Bson::Int32),
        (-3_i64..4).prop_map(Bson::Int64),
        prop_oneof![Just(-1.5), Just(0.0), Just(1.0), Just(2.5), Just(3.0)].prop_map(Bson::Double),
        prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")]
            .prop_map(|s| Bson::String(s.to_owned())),
        // Null twice: its rules (missing fields, scalars inside arrays) are the subtle ones.
        Just(Bson::Null),
        Just(Bson::Null),
        any::<bool>().prop_map(Bson::Boolean),
    ]
}

fn value() -> impl Strategy<Value = Bson> {
    scalar().prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            prop::collection::vec(
                (prop_oneof![Just("a"), Just("b"), Just("c"), Just("0"), Just("1")], inner),
                0..3
            )
            .prop_map(|fields| {
                let mut document = Document::new();
                for (name, value) in fields {
                    document.insert(name, value);
                }
                Bson::Document(document)
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = Document> {
    prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("c")], value()), 0..3).prop_map(
        |fields| {
            let mut document = Document::new();
            for (name, value) in fields {
                document.insert(name, value);
            }
            document
        },
    )
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("b"),
        Just("a.b"),
        Just("a.0"),
        Just("a.b.c"),
        Just("c.1"),
        Just("a.1.a")
    ]
    .prop_map(str::to_owned)
}

fn operator_document() -> impl Strategy<Value = Document> {
    let comparison =
        prop_oneof![Just("$eq"), Just("$ne"), Just("$gt"), Just("$gte"), Just("$lt"), Just("$lte")];
    let list = prop::collection::vec(value(), 0..3).prop_map(Bson::Array);
    let leaf = prop_oneof![
        (comparison, value()).prop_map(|(operator, operand)| doc! {operator: operand}),
        (prop_oneof![Just("$in"), Just("$nin"), Just("$all")], list)
            .prop_map(|(operator, operand)| doc! {operator: operand}),
        any::<bool>().prop_map(|flag| doc! {"$exists": flag}),
        (0_i32..3).prop_map(|size| doc! {"$size": size}),
        prop_oneof![Just(1), Just(2), Just(3), Just(4), Just(8), Just(10), Just(16), Just(18)]
            .prop_map(|code: i32| doc! {"$type": code}),
        Just(doc! {"$type": "number"}),
        (1_i32..4, 0_i32..3).prop_map(|(divisor, remainder)| doc! {"$mod": [divisor, remainder]}),
    ];
    leaf.prop_recursive(2, 8, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|operators| doc! {"$not": operators}),
            inner.clone().prop_map(|operators| doc! {"$elemMatch": operators}),
            (inner.clone(), inner).prop_map(|(mut first, second)| {
                for (key, value) in second {
                    first.insert(key, value);
                }
                first
            }),
        ]
    })
}

fn filter() -> impl Strategy<Value = Document> {
    let field = prop_oneof![
        (path(), operator_document()).prop_map(|(path, operators)| doc! {path: operators}),
        (path(), scalar()).prop_map(|(path, value)| doc! {path: value}),
    ];
    field.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            (
                prop_oneof![Just("$and"), Just("$or"), Just("$nor")],
                prop::collection::vec(inner.clone(), 1..3)
            )
                .prop_map(|(operator, clauses)| doc! {operator: clauses}),
            (inner.clone(), inner).prop_map(|(mut first, second)| {
                for (key, value) in second {
                    first.insert(key, value);
                }
                first
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn filter_agrees_with_the_reference(
        filter in filter(),
        documents in prop::collection::vec(document(), 1..6),
    ) {
        let parsed = Filter::parse(&filter).expect("generated filters are valid");
        for document in &documents {
            prop_assert_eq!(
                parsed.matches(document),
                reference_matches(&filter, document),
                "filter {} on {}", filter, document
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn sort_agrees_with_the_reference(
        keys in prop::collection::vec((path(), any::<bool>()), 1..3),
        documents in prop::collection::vec(document(), 2..6),
    ) {
        let mut spec = Document::new();
        for (path, descending) in &keys {
            spec.insert(path.clone(), if *descending { -1 } else { 1 });
        }
        // The reference takes the keys as the specification holds them (a repeated path once).
        let keys: Vec<(String, bool)> = spec
            .iter()
            .map(|(path, direction)| (path.clone(), direction == &Bson::Int32(-1)))
            .collect();
        let sort = Sort::parse(&spec).expect("generated sorts are valid");
        for a in &documents {
            for b in &documents {
                prop_assert_eq!(
                    sort.compare(a, b),
                    reference_compare(&keys, a, b),
                    "sort {} of {} and {}", spec, a, b
                );
            }
        }
    }
}

#[test]
fn reference_knows_the_surprising_rules() {
    let check = |filter: Document, document: Document, expected: bool| {
        assert_eq!(reference_matches(&filter, &document), expected, "{filter} on {document}");
        let parsed = Filter::parse(&filter).expect("valid");
        assert_eq!(parsed.matches(&document), expected, "{filter} on {document}");
    };
    check(doc! {"a.b": null}, doc! {"a": [1, 2]}, false);
    check(doc! {"a.b": null}, doc! {"a": [{"c": 1}]}, true);
    check(doc! {"a.b": null}, doc! {"a": [null]}, false);
    check(doc! {"a.b": null}, doc! {"a": null}, true);
    check(doc! {"a": {"$gt": 1}}, doc! {"a": "x"}, false);
    check(doc! {"a": [1]}, doc! {"a": [[1], 2]}, true);
    check(doc! {"a": {"$size": 1}}, doc! {"a": [[1, 2]]}, true);
}
