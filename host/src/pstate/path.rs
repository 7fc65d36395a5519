//! Paths: navigators that select values inside a value, and transforms applied where a path
//! leads — the in-memory engine.
//!
//! This engine works on whole values; `engine` runs the same navigators over values stored
//! entry by entry (the top level and subindexed collections) and defers to this one inside
//! each stored value. Map entries are kept sorted by their key encoding, sets sorted and
//! unique, so `first`, `last`, `nth` and `sorted-range` follow key order.

use std::cmp::Ordering;

use crate::value::{as_i64, type_name, Value};

use super::key;

/// Bounds of a `sorted-range` over a map's keys or a set's elements.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub start: Option<Value>,
    pub end: Option<Value>,
    /// Whether `start` itself is included (default true).
    pub start_inclusive: bool,
    /// Whether `end` itself is included (default false).
    pub end_inclusive: bool,
    pub limit: Option<u64>,
    /// Descending order (the `limit` then keeps the highest keys).
    pub reverse: bool,
}

/// A comparison of a `filter` navigator.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Navigator {
    /// The value under this key of a map; an absent key selects nothing (a transform creates it).
    Key(Value),
    /// Like `key`, but a transform never creates the key.
    Must(Value),
    /// Every element of a list or set; every `[key, value]` entry of a map.
    All,
    MapKeys,
    MapVals,
    /// The first element (list/set) or entry (map, as `[key, value]`).
    First,
    Last,
    Nth(u64),
    /// The number of elements or entries (0 when absent).
    Count,
    /// The entries of a map (as a map) or elements of a set (as a list) within the range.
    SortedRange(Range),
    /// The value itself, or this one when it is absent or null.
    NullToVal(Value),
    /// Continue only when `value <cmp> operand` holds.
    Filter(Cmp, Value),
}

impl Navigator {
    pub fn name(&self) -> &'static str {
        match self {
            Navigator::Key(_) => "key",
            Navigator::Must(_) => "must",
            Navigator::All => "all",
            Navigator::MapKeys => "map-keys",
            Navigator::MapVals => "map-vals",
            Navigator::First => "first",
            Navigator::Last => "last",
            Navigator::Nth(_) => "nth",
            Navigator::Count => "count",
            Navigator::SortedRange(_) => "sorted-range",
            Navigator::NullToVal(_) => "null-to-val",
            Navigator::Filter(..) => "filter",
        }
    }
}

/// What a transform does where its path leads.
#[derive(Debug, Clone, PartialEq)]
pub enum TransformOp {
    Set(Value),
    /// Adds to an integer; an absent value counts as 0.
    Increment(i64),
    Remove,
    /// Adds an element to a set (absent: a new set).
    Insert(Value),
    /// Appends an element to a list (absent: a new list).
    Push(Value),
    /// Sets every entry of the given map in the target map (absent: a new map).
    Merge(Value),
}

/// A path that cannot be followed or a transform that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PathError {
    #[error("the path is empty; a path starts with the top-level key")]
    Empty,
    #[error("the path must start with `key` or `must` (or name a partition)")]
    NoLeadingKey,
    #[error("navigator {step} `{nav}` reached a {found}, which it cannot navigate")]
    Unnavigable {
        step: usize,
        nav: &'static str,
        found: &'static str,
    },
    #[error("navigator {step} `{nav}` cannot be used in a transform{why}")]
    NotTransformable {
        step: usize,
        nav: &'static str,
        why: &'static str,
    },
    #[error("`{op}` reached a {found}, not a {expected}")]
    WrongTarget {
        op: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("`increment` overflows i64")]
    Overflow,
    #[error("cannot compare a {0} in a filter or range")]
    Incomparable(&'static str),
    #[error("invalid key: {0}")]
    Key(#[from] key::KeyError),
}

fn unnavigable(step: usize, nav: &Navigator, v: &Value) -> PathError {
    PathError::Unnavigable {
        step,
        nav: nav.name(),
        found: type_name(v),
    }
}

fn pair(k: &Value, v: &Value) -> Value {
    Value::Array(vec![k.clone(), v.clone()])
}

/// Compares two values by key order (used by filters and ranges).
pub fn compare(a: &Value, b: &Value) -> Result<Ordering, PathError> {
    let ea = key::encode(a).map_err(|_| PathError::Incomparable(type_name(a)))?;
    let eb = key::encode(b).map_err(|_| PathError::Incomparable(type_name(b)))?;
    Ok(ea.cmp(&eb))
}

pub fn passes(cmp: Cmp, v: &Value, operand: &Value) -> Result<bool, PathError> {
    if matches!(cmp, Cmp::Eq | Cmp::Ne) {
        let eq = match compare(v, operand) {
            Ok(o) => o == Ordering::Equal,
            Err(_) => v == operand,
        };
        return Ok(eq == (cmp == Cmp::Eq));
    }
    let o = compare(v, operand)?;
    Ok(match cmp {
        Cmp::Lt => o == Ordering::Less,
        Cmp::Le => o != Ordering::Greater,
        Cmp::Gt => o == Ordering::Greater,
        Cmp::Ge => o != Ordering::Less,
        Cmp::Eq | Cmp::Ne => unreachable!(),
    })
}

/// Range bounds as encoded keys.
pub struct EncodedRange {
    pub start: Option<(Vec<u8>, bool)>,
    pub end: Option<(Vec<u8>, bool)>,
}

impl EncodedRange {
    pub fn new(r: &Range) -> Result<Self, PathError> {
        Ok(Self {
            start: r
                .start
                .as_ref()
                .map(|s| key::encode(s).map(|e| (e, r.start_inclusive)))
                .transpose()?,
            end: r
                .end
                .as_ref()
                .map(|s| key::encode(s).map(|e| (e, r.end_inclusive)))
                .transpose()?,
        })
    }

    pub fn contains(&self, enc: &[u8]) -> bool {
        let after_start = match &self.start {
            None => true,
            Some((s, incl)) => enc > s.as_slice() || (*incl && enc == s.as_slice()),
        };
        let before_end = match &self.end {
            None => true,
            Some((e, incl)) => enc < e.as_slice() || (*incl && enc == e.as_slice()),
        };
        after_start && before_end
    }
}

/// Indices of `keys` (sorted by encoding) inside the range, in the range's order, limited.
fn range_indices(keys: &[&Value], r: &Range) -> Result<Vec<usize>, PathError> {
    let er = EncodedRange::new(r)?;
    let mut idx: Vec<usize> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if er.contains(&key::encode(k)?) {
            idx.push(i);
        }
    }
    if r.reverse {
        idx.reverse();
    }
    if let Some(l) = r.limit {
        idx.truncate(l as usize);
    }
    Ok(idx)
}

/// Appends to `out` the values `path` selects inside `value`, stopping at `limit` values.
/// `step` is the index of `path[0]` in the full path, for error messages.
pub fn select(
    value: Option<&Value>,
    path: &[Navigator],
    step: usize,
    out: &mut Vec<Value>,
    limit: usize,
) -> Result<(), PathError> {
    if out.len() >= limit {
        return Ok(());
    }
    let Some((nav, rest)) = path.split_first() else {
        if let Some(v) = value {
            out.push(v.clone());
        }
        return Ok(());
    };
    let next = step + 1;
    match nav {
        Navigator::NullToVal(x) => {
            return match value {
                None | Some(Value::Null) => select(Some(x), rest, next, out, limit),
                v => select(v, rest, next, out, limit),
            }
        }
        Navigator::Count => {
            let n = match value {
                None | Some(Value::Null) => 0,
                Some(Value::Map(e)) => e.len(),
                Some(Value::Array(a)) => a.len(),
                Some(v) => return Err(unnavigable(step, nav, v)),
            };
            return select(
                Some(&Value::Integer((n as u64).into())),
                rest,
                next,
                out,
                limit,
            );
        }
        _ => {}
    }
    let Some(value) = value else {
        // `key` goes on through an absent value (so `null-to-val`/`count` can follow).
        if let Navigator::Key(_) = nav {
            return select(None, rest, next, out, limit);
        }
        return Ok(());
    };
    if matches!(value, Value::Null) && !matches!(nav, Navigator::Filter(..)) {
        if let Navigator::Key(_) = nav {
            return select(None, rest, next, out, limit);
        }
        return Ok(());
    }
    match (nav, value) {
        (Navigator::Key(k) | Navigator::Must(k), Value::Map(entries)) => match find(entries, k)? {
            Ok(i) => select(Some(&entries[i].1), rest, next, out, limit)?,
            Err(_) if matches!(nav, Navigator::Key(_)) => select(None, rest, next, out, limit)?,
            Err(_) => {}
        },
        (Navigator::All, Value::Array(items)) => {
            for i in items {
                select(Some(i), rest, next, out, limit)?;
            }
        }
        (Navigator::All, Value::Map(entries)) => {
            for (k, v) in entries {
                select(Some(&pair(k, v)), rest, next, out, limit)?;
            }
        }
        (Navigator::MapKeys, Value::Map(entries)) => {
            for (k, _) in entries {
                select(Some(k), rest, next, out, limit)?;
            }
        }
        (Navigator::MapVals, Value::Map(entries)) => {
            for (_, v) in entries {
                select(Some(v), rest, next, out, limit)?;
            }
        }
        (Navigator::First | Navigator::Last | Navigator::Nth(_), Value::Array(items)) => {
            let i = match nav {
                Navigator::First => 0,
                Navigator::Last => items.len().wrapping_sub(1),
                Navigator::Nth(n) => usize::try_from(*n).unwrap_or(usize::MAX),
                _ => unreachable!(),
            };
            if let Some(v) = items.get(i) {
                select(Some(v), rest, next, out, limit)?;
            }
        }
        (Navigator::First | Navigator::Last | Navigator::Nth(_), Value::Map(entries)) => {
            let i = match nav {
                Navigator::First => 0,
                Navigator::Last => entries.len().wrapping_sub(1),
                Navigator::Nth(n) => usize::try_from(*n).unwrap_or(usize::MAX),
                _ => unreachable!(),
            };
            if let Some((k, v)) = entries.get(i) {
                select(Some(&pair(k, v)), rest, next, out, limit)?;
            }
        }
        (Navigator::SortedRange(r), Value::Map(entries)) => {
            let keys: Vec<&Value> = entries.iter().map(|(k, _)| k).collect();
            let sub = range_indices(&keys, r)?
                .into_iter()
                .map(|i| entries[i].clone())
                .collect();
            select(Some(&Value::Map(sub)), rest, next, out, limit)?;
        }
        (Navigator::SortedRange(r), Value::Array(items)) => {
            let keys: Vec<&Value> = items.iter().collect();
            let sub = range_indices(&keys, r)?
                .into_iter()
                .map(|i| items[i].clone())
                .collect();
            select(Some(&Value::Array(sub)), rest, next, out, limit)?;
        }
        (Navigator::Filter(c, x), v) => {
            if passes(*c, v, x)? {
                select(Some(v), rest, next, out, limit)?;
            }
        }
        (nav, v) => return Err(unnavigable(step, nav, v)),
    }
    Ok(())
}

/// Applies `op` at `path` inside `value`; returns the new value (`None`: remove it).
pub fn transform(
    value: Option<Value>,
    path: &[Navigator],
    op: &TransformOp,
    step: usize,
) -> Result<Option<Value>, PathError> {
    let Some((nav, rest)) = path.split_first() else {
        return apply(value, op);
    };
    let next = step + 1;
    match nav {
        Navigator::Key(k) | Navigator::Must(k) => {
            let mut entries = match value {
                Some(Value::Map(entries)) => entries,
                None | Some(Value::Null) => {
                    if matches!(op, TransformOp::Remove) || matches!(nav, Navigator::Must(_)) {
                        return Ok(value);
                    }
                    Vec::new()
                }
                Some(other) => return Err(unnavigable(step, nav, &other)),
            };
            match find(&entries, k)? {
                Ok(i) => {
                    let old = std::mem::replace(&mut entries[i].1, Value::Null);
                    match transform(Some(old), rest, op, next)? {
                        Some(new) => entries[i].1 = new,
                        None => {
                            entries.remove(i);
                        }
                    }
                }
                Err(i) => {
                    if matches!(nav, Navigator::Key(_)) {
                        if let Some(new) = transform(None, rest, op, next)? {
                            entries.insert(i, (k.clone(), new));
                        }
                    }
                }
            }
            Ok(Some(Value::Map(entries)))
        }
        Navigator::NullToVal(x) => match value {
            None | Some(Value::Null) => transform(Some(x.clone()), rest, op, next),
            v => transform(v, rest, op, next),
        },
        Navigator::Filter(c, x) => match value {
            Some(v) if passes(*c, &v, x)? => transform(Some(v), rest, op, next),
            v => Ok(v),
        },
        Navigator::Count | Navigator::MapKeys => Err(PathError::NotTransformable {
            step,
            nav: nav.name(),
            why: "",
        }),
        _ => {
            let Some(value) = value else { return Ok(None) };
            let targets: Vec<usize> = match (nav, &value) {
                (Navigator::All, Value::Array(a)) => (0..a.len()).collect(),
                (Navigator::All | Navigator::MapVals, Value::Map(e)) => (0..e.len()).collect(),
                (Navigator::First, Value::Array(a)) if !a.is_empty() => vec![0],
                (Navigator::First, Value::Map(e)) if !e.is_empty() => vec![0],
                (Navigator::Last, Value::Array(a)) if !a.is_empty() => vec![a.len() - 1],
                (Navigator::Last, Value::Map(e)) if !e.is_empty() => vec![e.len() - 1],
                (Navigator::Nth(n), Value::Array(a)) => (*n < a.len() as u64)
                    .then_some(*n as usize)
                    .into_iter()
                    .collect(),
                (Navigator::Nth(n), Value::Map(e)) => (*n < e.len() as u64)
                    .then_some(*n as usize)
                    .into_iter()
                    .collect(),
                (Navigator::SortedRange(r), Value::Map(e)) => {
                    range_indices(&e.iter().map(|(k, _)| k).collect::<Vec<_>>(), r)?
                }
                (Navigator::SortedRange(r), Value::Array(a)) => {
                    range_indices(&a.iter().collect::<Vec<_>>(), r)?
                }
                (Navigator::First | Navigator::Last, Value::Array(_) | Value::Map(_)) => Vec::new(),
                (_, Value::Null) => return Ok(Some(Value::Null)),
                (nav, v) => return Err(unnavigable(step, nav, v)),
            };
            let mut targets = targets;
            targets.sort_unstable();
            match value {
                Value::Array(mut items) => {
                    for &i in targets.iter().rev() {
                        let old = std::mem::replace(&mut items[i], Value::Null);
                        match transform(Some(old), rest, op, next)? {
                            Some(new) => items[i] = new,
                            None => {
                                items.remove(i);
                            }
                        }
                    }
                    Ok(Some(Value::Array(items)))
                }
                Value::Map(mut entries) => {
                    for &i in targets.iter().rev() {
                        let old = std::mem::replace(&mut entries[i].1, Value::Null);
                        match transform(Some(old), rest, op, next)? {
                            Some(new) => entries[i].1 = new,
                            None => {
                                entries.remove(i);
                            }
                        }
                    }
                    Ok(Some(Value::Map(entries)))
                }
                other => Ok(Some(other)),
            }
        }
    }
}

/// Applies a terminal transform to the value at the end of a path.
pub fn apply(value: Option<Value>, op: &TransformOp) -> Result<Option<Value>, PathError> {
    let found = |v: &Option<Value>| v.as_ref().map_or("nothing", type_name);
    match op {
        TransformOp::Set(v) => Ok(Some(v.clone())),
        TransformOp::Remove => Ok(None),
        TransformOp::Increment(by) => {
            let current = match &value {
                None | Some(Value::Null) => 0,
                Some(v) => as_i64(v).ok_or(PathError::WrongTarget {
                    op: "increment",
                    expected: "int",
                    found: type_name(v),
                })?,
            };
            let n = current.checked_add(*by).ok_or(PathError::Overflow)?;
            Ok(Some(Value::Integer(n.into())))
        }
        TransformOp::Insert(x) => {
            let mut items = match value {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(a)) => a,
                other => {
                    return Err(PathError::WrongTarget {
                        op: "insert",
                        expected: "set",
                        found: found(&other),
                    })
                }
            };
            let enc = key::encode(x)?;
            let mut keyed: Vec<(Vec<u8>, Value)> = items
                .drain(..)
                .map(|e| Ok((key::encode(&e)?, e)))
                .collect::<Result<_, PathError>>()?;
            if let Err(pos) = keyed.binary_search_by(|(e, _)| e.cmp(&enc)) {
                keyed.insert(pos, (enc, x.clone()));
            }
            Ok(Some(Value::Array(
                keyed.into_iter().map(|(_, v)| v).collect(),
            )))
        }
        TransformOp::Push(x) => match value {
            None | Some(Value::Null) => Ok(Some(Value::Array(vec![x.clone()]))),
            Some(Value::Array(mut a)) => {
                a.push(x.clone());
                Ok(Some(Value::Array(a)))
            }
            other => Err(PathError::WrongTarget {
                op: "push",
                expected: "list",
                found: found(&other),
            }),
        },
        TransformOp::Merge(m) => {
            let Value::Map(add) = m else {
                return Err(PathError::WrongTarget {
                    op: "merge",
                    expected: "map argument",
                    found: type_name(m),
                });
            };
            let mut entries = match value {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Map(e)) => e,
                other => {
                    return Err(PathError::WrongTarget {
                        op: "merge",
                        expected: "map",
                        found: found(&other),
                    })
                }
            };
            for (k, v) in add {
                match find(&entries, k)? {
                    Ok(i) => entries[i].1 = v.clone(),
                    Err(i) => entries.insert(i, (k.clone(), v.clone())),
                }
            }
            Ok(Some(Value::Map(entries)))
        }
    }
}

/// Finds `k` in map entries sorted by key encoding: `Ok(index)` or `Err(insert position)`.
pub fn find(entries: &[(Value, Value)], k: &Value) -> Result<Result<usize, usize>, PathError> {
    let want = key::encode(k)?;
    Ok(entries.binary_search_by(|(ek, _)| match key::encode(ek) {
        Ok(e) => e.cmp(&want),
        Err(_) => Ordering::Less,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }
    fn i(n: i64) -> Value {
        Value::Integer(n.into())
    }
    fn sel(v: &Value, path: &[Navigator]) -> Vec<Value> {
        let mut out = Vec::new();
        select(Some(v), path, 0, &mut out, usize::MAX).unwrap();
        out
    }

    #[test]
    fn nested_set_increment_remove() {
        let p = [Navigator::Key(t("b")), Navigator::Key(t("x"))];
        let v = transform(None, &p, &TransformOp::Increment(2), 1).unwrap();
        let v = transform(v, &p, &TransformOp::Increment(3), 1).unwrap();
        assert_eq!(sel(v.as_ref().unwrap(), &p), vec![i(5)]);
        let v = transform(v, &[Navigator::Key(t("a"))], &TransformOp::Set(t("s")), 1).unwrap();
        let Some(Value::Map(entries)) = &v else {
            panic!()
        };
        assert_eq!(entries[0].0, t("a"), "keys stay sorted");
        let v = transform(v, &p, &TransformOp::Remove, 1).unwrap();
        assert_eq!(sel(v.as_ref().unwrap(), &p), Vec::<Value>::new());
        assert!(matches!(
            transform(Some(t("s")), &p, &TransformOp::Remove, 1),
            Err(PathError::Unnavigable {
                step: 1,
                nav: "key",
                found: "string"
            })
        ));
        assert!(matches!(
            transform(Some(t("s")), &[], &TransformOp::Increment(1), 1),
            Err(PathError::WrongTarget { .. })
        ));
    }

    #[test]
    fn navigators_select_in_key_order() {
        let mut v = None;
        for (k, n) in [(3, "c"), (-1, "a"), (7, "d"), (0, "b")] {
            v = transform(v, &[Navigator::Key(i(k))], &TransformOp::Set(t(n)), 0).unwrap();
        }
        let v = v.unwrap();
        assert_eq!(
            sel(&v, &[Navigator::MapKeys]),
            vec![i(-1), i(0), i(3), i(7)]
        );
        assert_eq!(
            sel(&v, &[Navigator::First]),
            vec![Value::Array(vec![i(-1), t("a")])]
        );
        assert_eq!(
            sel(&v, &[Navigator::Nth(2), Navigator::Nth(1)]),
            vec![t("c")]
        );
        assert_eq!(sel(&v, &[Navigator::Count]), vec![i(4)]);
        let r = Range {
            start: Some(i(0)),
            end: Some(i(7)),
            start_inclusive: true,
            end_inclusive: false,
            limit: None,
            reverse: true,
        };
        assert_eq!(
            sel(&v, &[Navigator::SortedRange(r), Navigator::MapVals]),
            vec![t("c"), t("b")]
        );
        assert_eq!(
            sel(
                &v,
                &[Navigator::MapVals, Navigator::Filter(Cmp::Ge, t("c"))]
            ),
            vec![t("c"), t("d")]
        );
        assert_eq!(
            sel(&v, &[Navigator::Key(i(99)), Navigator::NullToVal(i(0))]),
            vec![i(0)]
        );
        let v = transform(
            Some(v),
            &[Navigator::MapVals, Navigator::Filter(Cmp::Lt, t("c"))],
            &TransformOp::Remove,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(sel(&v, &[Navigator::MapKeys]), vec![i(3), i(7)]);
    }

    #[test]
    fn insert_push_merge() {
        let v = apply(None, &TransformOp::Insert(i(5))).unwrap();
        let v = apply(v, &TransformOp::Insert(i(-5))).unwrap();
        let v = apply(v, &TransformOp::Insert(i(5))).unwrap();
        assert_eq!(v, Some(Value::Array(vec![i(-5), i(5)])));
        let l = apply(None, &TransformOp::Push(i(5))).unwrap();
        let l = apply(l, &TransformOp::Push(i(-5))).unwrap();
        assert_eq!(l, Some(Value::Array(vec![i(5), i(-5)])));
        let m = apply(None, &TransformOp::Merge(Value::Map(vec![(t("b"), i(1))]))).unwrap();
        let m = apply(
            m,
            &TransformOp::Merge(Value::Map(vec![(t("a"), i(2)), (t("b"), i(3))])),
        )
        .unwrap();
        assert_eq!(m, Some(Value::Map(vec![(t("a"), i(2)), (t("b"), i(3))])));
        assert!(apply(Some(i(1)), &TransformOp::Push(i(1))).is_err());
    }
}
