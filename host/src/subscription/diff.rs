//! Diffs between two selections of a path: what a subscriber is sent after a commit.
//!
//! A selection is the list of values a `select` returns. [`diff`] turns the step from one
//! selection to the next into [`Change`]s that are as fine as the shapes allow: a map entry
//! put or deleted, list elements pushed or spliced (a set is a sorted list, so an element
//! added or removed is a one-element splice), an integer incremented, anything else replaced.
//! Invariant: `apply(old, diff(old, new)) == new` for every pair (checked on random values and
//! on random PState histories in `pstate/tests.rs`). The JSON form of each change is in
//! `docs/subscriptions.md`; [`apply`] is the reference implementation clients mirror.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::pstate::key;
use crate::value::{to_json, Value};

/// One step into a value: an index into a list, or a key of a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Index(usize),
    Key(Value),
}

/// One change to a selection; `path` leads from the selection (a list) to the value changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The value at `path` becomes `value` (an empty path replaces the whole selection).
    Replace { path: Vec<Step>, value: Value },
    /// The map at `path` gets entry `key` → `value`: its value replaced, or, when new,
    /// inserted as the map's `index`-th entry (a selection keeps a map's entries in key order,
    /// or reversed by a reverse `sorted-range`; deletes come first, so the index is final).
    Put {
        path: Vec<Step>,
        key: Value,
        value: Value,
        index: usize,
    },
    /// The map at `path` loses entry `key`.
    Delete { path: Vec<Step>, key: Value },
    /// The list at `path` gets `values` appended.
    Push { path: Vec<Step>, values: Vec<Value> },
    /// In the list at `path`, `remove` elements from `index` on are replaced by `insert`.
    Splice {
        path: Vec<Step>,
        index: usize,
        remove: usize,
        insert: Vec<Value>,
    },
    /// The integer at `path` changes by `by`.
    Increment { path: Vec<Step>, by: i64 },
}

/// More changes than this in one diff: the whole selection is replaced instead.
pub const CHANGES_MAX: usize = 256;
/// How far a list diff looks for elements shifted by an insert or removal at its front.
const SHIFT_SEARCH_MAX: usize = 64;

/// The changes that turn selection `old` into `new` (empty when they are equal).
pub fn diff(old: &[Value], new: &[Value]) -> Vec<Change> {
    let mut out = Vec::new();
    lists(old, new, &mut Vec::new(), &mut out);
    if out.len() > CHANGES_MAX {
        return vec![Change::Replace {
            path: Vec::new(),
            value: Value::Array(new.to_vec()),
        }];
    }
    out
}

fn value(old: &Value, new: &Value, path: &mut Vec<Step>, out: &mut Vec<Change>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Map(a), Value::Map(b)) if text_keyed(a) == text_keyed(b) => maps(a, b, path, out),
        (Value::Array(a), Value::Array(b)) => lists(a, b, path, out),
        (Value::Integer(a), Value::Integer(b)) => {
            match i64::try_from(i128::from(*b) - i128::from(*a)) {
                Ok(by) => out.push(Change::Increment {
                    path: path.clone(),
                    by,
                }),
                Err(_) => replace(new, path, out),
            }
        }
        _ => replace(new, path, out),
    }
}

fn replace(new: &Value, path: &[Step], out: &mut Vec<Change>) {
    out.push(Change::Replace {
        path: path.to_vec(),
        value: new.clone(),
    });
}

/// Whether a map's JSON form is an object (every key a string); a diff never crosses forms.
fn text_keyed(entries: &[(Value, Value)]) -> bool {
    entries.iter().all(|(k, _)| matches!(k, Value::Text(_)))
}

fn maps(a: &[(Value, Value)], b: &[(Value, Value)], path: &mut Vec<Step>, out: &mut Vec<Change>) {
    let (ka, kb): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (
        a.iter().map(|(k, _)| key_bytes(k)).collect(),
        b.iter().map(|(k, _)| key_bytes(k)).collect(),
    );
    let old: HashMap<&[u8], &Value> = ka
        .iter()
        .map(Vec::as_slice)
        .zip(a.iter().map(|(_, v)| v))
        .collect();
    let new: HashSet<&[u8]> = kb.iter().map(Vec::as_slice).collect();
    // Entries kept must keep their order (they do in selections); otherwise put it whole.
    let kept_a = ka.iter().filter(|k| new.contains(k.as_slice()));
    let kept_b = kb.iter().filter(|k| old.contains_key(k.as_slice()));
    if !kept_a.eq(kept_b) {
        return replace(&Value::Map(b.to_vec()), path, out);
    }
    for ((k, _), bytes) in a.iter().zip(&ka) {
        if !new.contains(bytes.as_slice()) {
            out.push(Change::Delete {
                path: path.clone(),
                key: k.clone(),
            });
        }
    }
    for (index, ((k, v), bytes)) in b.iter().zip(&kb).enumerate() {
        match old.get(bytes.as_slice()) {
            Some(old) if *old == v => {}
            Some(old) if same_kind(old, v) => {
                path.push(Step::Key(k.clone()));
                value(old, v, path, out);
                path.pop();
            }
            _ => out.push(Change::Put {
                path: path.clone(),
                key: k.clone(),
                value: v.clone(),
                index,
            }),
        }
        if out.len() > CHANGES_MAX {
            return;
        }
    }
}

/// A map key as bytes to compare by (its key encoding; its CBOR when it has none).
fn key_bytes(k: &Value) -> Vec<u8> {
    key::encode(k).unwrap_or_else(|_| crate::value::to_cbor(k))
}

/// Whether a changed entry is better described from inside than by putting it whole.
fn same_kind(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Map(_), Value::Map(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Integer(_), Value::Integer(_))
    )
}

fn lists(a: &[Value], b: &[Value], path: &mut Vec<Step>, out: &mut Vec<Change>) {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let room = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(room)
        .take_while(|(x, y)| x == y)
        .count();
    let (mid_a, mid_b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    if mid_a.is_empty() && mid_b.is_empty() {
        return;
    }
    if mid_a.is_empty() || mid_b.is_empty() {
        splice(out, path, prefix, mid_a.len(), mid_b, a.len());
        return;
    }
    // Newest first, trimmed at the end: elements put in front, the old ones shifted back.
    if let Some(k) = shift(mid_b, mid_a) {
        let kept = (mid_a.len()).min(mid_b.len() - k);
        splice(out, path, prefix, 0, &mid_b[..k], a.len());
        let len = a.len() + k;
        splice(
            out,
            path,
            prefix + k + kept,
            mid_a.len() - kept,
            &mid_b[k + kept..],
            len,
        );
        return;
    }
    // Oldest first, trimmed at the front: elements dropped in front, new ones after.
    if let Some(k) = shift(mid_a, mid_b) {
        let kept = (mid_b.len()).min(mid_a.len() - k);
        splice(out, path, prefix, k, &[], a.len());
        let len = a.len() - k;
        splice(
            out,
            path,
            prefix + kept,
            mid_a.len() - k - kept,
            &mid_b[kept..],
            len,
        );
        return;
    }
    if mid_a.len() == mid_b.len() {
        for (i, (x, y)) in mid_a.iter().zip(mid_b).enumerate() {
            if x != y {
                path.push(Step::Index(prefix + i));
                value(x, y, path, out);
                path.pop();
            }
        }
        return;
    }
    splice(out, path, prefix, mid_a.len(), mid_b, a.len());
}

/// Pushes a splice of the list at `path` (a push when it only appends to a list of `len`).
fn splice(
    out: &mut Vec<Change>,
    path: &[Step],
    index: usize,
    remove: usize,
    insert: &[Value],
    len: usize,
) {
    if remove == 0 && insert.is_empty() {
        return;
    }
    out.push(if remove == 0 && index == len {
        Change::Push {
            path: path.to_vec(),
            values: insert.to_vec(),
        }
    } else {
        Change::Splice {
            path: path.to_vec(),
            index,
            remove,
            insert: insert.to_vec(),
        }
    });
}

/// The smallest `k` ≥ 1 such that `long[k..]` starts with as much of `short` as fits (at
/// least one element).
fn shift(long: &[Value], short: &[Value]) -> Option<usize> {
    (1..long.len().min(SHIFT_SEARCH_MAX + 1)).find(|&k| {
        let m = short.len().min(long.len() - k);
        m > 0 && long[k..k + m] == short[..m]
    })
}

/// Why a change could not be applied (the selection it was made for is not the one given).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("cannot apply change: {0}")]
pub struct ApplyError(String);

/// Applies `changes` to `selection` (what a client does with each diff event).
pub fn apply(selection: &mut Vec<Value>, changes: &[Change]) -> Result<(), ApplyError> {
    let mut doc = Value::Array(std::mem::take(selection));
    let r = changes.iter().try_for_each(|c| apply_one(&mut doc, c));
    let Value::Array(items) = doc else {
        return Err(ApplyError("the selection is no longer a list".into()));
    };
    *selection = items;
    r
}

fn apply_one(doc: &mut Value, change: &Change) -> Result<(), ApplyError> {
    let path = match change {
        Change::Replace { path, .. }
        | Change::Put { path, .. }
        | Change::Delete { path, .. }
        | Change::Push { path, .. }
        | Change::Splice { path, .. }
        | Change::Increment { path, .. } => path,
    };
    let at = locate(doc, path)?;
    let bad = |what: &str| ApplyError(format!("{what} at {path:?}"));
    match (change, at) {
        (Change::Replace { value, .. }, at) => *at = value.clone(),
        (
            Change::Put {
                key, value, index, ..
            },
            Value::Map(entries),
        ) => match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.clone(),
            None => entries.insert((*index).min(entries.len()), (key.clone(), value.clone())),
        },
        (Change::Delete { key, .. }, Value::Map(entries)) => {
            let i = entries
                .iter()
                .position(|(k, _)| k == key)
                .ok_or_else(|| bad("no such key"))?;
            entries.remove(i);
        }
        (Change::Push { values, .. }, Value::Array(items)) => items.extend(values.iter().cloned()),
        (
            Change::Splice {
                index,
                remove,
                insert,
                ..
            },
            Value::Array(items),
        ) => {
            if index + remove > items.len() {
                return Err(bad("splice out of range"));
            }
            items.splice(*index..index + remove, insert.iter().cloned());
        }
        (Change::Increment { by, .. }, Value::Integer(i)) => {
            let n = i128::from(*i) + i128::from(*by);
            *i = ciborium::value::Integer::try_from(n).map_err(|_| bad("increment overflows"))?;
        }
        _ => return Err(bad("the change does not fit the value")),
    }
    Ok(())
}

fn locate<'v>(doc: &'v mut Value, path: &[Step]) -> Result<&'v mut Value, ApplyError> {
    let mut at = doc;
    for step in path {
        at = match (step, at) {
            (Step::Index(i), Value::Array(items)) => items
                .get_mut(*i)
                .ok_or_else(|| ApplyError(format!("no index {i}")))?,
            (Step::Key(k), Value::Map(entries)) => entries
                .iter_mut()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v)
                .ok_or_else(|| ApplyError(format!("no key {k:?}")))?,
            (s, _) => return Err(ApplyError(format!("step {s:?} does not fit the value"))),
        };
    }
    Ok(at)
}

fn path_json(path: &[Step]) -> serde_json::Value {
    path.iter()
        .map(|s| match s {
            Step::Index(i) => json!(i),
            Step::Key(k) => to_json(k),
        })
        .collect()
}

/// The JSON form of a change (`docs/subscriptions.md`).
pub fn change_json(c: &Change) -> serde_json::Value {
    match c {
        Change::Replace { path, value } => {
            json!({"op": "replace", "path": path_json(path), "value": to_json(value)})
        }
        Change::Put {
            path,
            key,
            value,
            index,
        } => {
            json!({"op": "put", "path": path_json(path), "key": to_json(key), "value": to_json(value), "index": index})
        }
        Change::Delete { path, key } => {
            json!({"op": "delete", "path": path_json(path), "key": to_json(key)})
        }
        Change::Push { path, values } => json!({
            "op": "push", "path": path_json(path),
            "values": values.iter().map(to_json).collect::<Vec<_>>(),
        }),
        Change::Splice {
            path,
            index,
            remove,
            insert,
        } => json!({
            "op": "splice", "path": path_json(path), "index": index, "remove": remove,
            "insert": insert.iter().map(to_json).collect::<Vec<_>>(),
        }),
        Change::Increment { path, by } => {
            json!({"op": "increment", "path": path_json(path), "by": by})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(n: i64) -> Value {
        Value::Integer(n.into())
    }
    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }
    fn check(old: Vec<Value>, new: Vec<Value>) -> Vec<Change> {
        let changes = diff(&old, &new);
        let mut got = old.clone();
        apply(&mut got, &changes).unwrap();
        assert_eq!(got, new, "{old:?} -> {new:?} via {changes:?}");
        changes
    }

    #[test]
    fn shapes_get_fine_grained_changes() {
        let m = |es: &[(&str, i64)]| Value::Map(es.iter().map(|(k, v)| (t(k), i(*v))).collect());
        // A counter.
        assert_eq!(
            check(vec![i(3)], vec![i(5)]),
            vec![Change::Increment {
                path: vec![Step::Index(0)],
                by: 2
            }]
        );
        // A map entry added, one changed, one removed.
        let c = check(
            vec![m(&[("a", 1), ("b", 2)])],
            vec![m(&[("a", 1), ("b", 4), ("c", 3)])],
        );
        assert!(c.contains(&Change::Put {
            path: vec![Step::Index(0)],
            key: t("c"),
            value: i(3),
            index: 2
        }));
        check(vec![m(&[("a", 1), ("b", 2)])], vec![m(&[("b", 2)])]);
        // A list pushed.
        assert_eq!(
            check(vec![i(1), i(2)], vec![i(1), i(2), i(3)]),
            vec![Change::Push {
                path: vec![],
                values: vec![i(3)]
            }]
        );
        // Newest first, trimmed to 4: one insert in front, one removal at the end.
        let c = check(vec![i(4), i(3), i(2), i(1)], vec![i(5), i(4), i(3), i(2)]);
        assert_eq!(c.len(), 2, "{c:?}");
        // Oldest first, trimmed to 3 at the front.
        let c = check(vec![i(1), i(2), i(3)], vec![i(2), i(3), i(4)]);
        assert_eq!(c.len(), 2, "{c:?}");
        // A set element added (a sorted list): one splice.
        assert_eq!(
            check(vec![t("a"), t("c")], vec![t("a"), t("b"), t("c")]).len(),
            1
        );
        // Different kinds: replaced.
        check(vec![i(1)], vec![t("x")]);
        check(vec![m(&[("a", 1)])], vec![Value::Map(vec![(i(1), i(1))])]);
        assert!(check(vec![i(1)], vec![i(1)]).is_empty());
    }

    /// xorshift64*.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn rand_value(r: &mut Rng, depth: u32) -> Value {
        match r.below(if depth > 2 { 3 } else { 6 }) {
            0 => i(r.below(5) as i64 - 2),
            1 => t(["a", "b", "c", ""][r.below(4) as usize]),
            2 => Value::Null,
            3 => Value::Array((0..r.below(5)).map(|_| rand_value(r, depth + 1)).collect()),
            _ => {
                let mut es: Vec<(Value, Value)> = Vec::new();
                for _ in 0..r.below(5) {
                    let k = if r.below(4) == 0 {
                        i(r.below(3) as i64)
                    } else {
                        t(["a", "b", "c", "d"][r.below(4) as usize])
                    };
                    if !es.iter().any(|(e, _)| *e == k) {
                        es.push((k, rand_value(r, depth + 1)));
                    }
                }
                es.sort_by_key(|(k, _)| key::encode(k).unwrap());
                Value::Map(es)
            }
        }
    }

    /// A random edit somewhere inside `v`.
    fn mutate(r: &mut Rng, v: &mut Value, depth: u32) {
        match v {
            Value::Array(items) if !items.is_empty() && r.below(3) > 0 => match r.below(4) {
                0 => items.insert(
                    r.below(items.len() as u64 + 1) as usize,
                    rand_value(r, depth),
                ),
                1 => {
                    items.remove(r.below(items.len() as u64) as usize);
                }
                _ => {
                    let n = r.below(items.len() as u64) as usize;
                    mutate(r, &mut items[n], depth + 1)
                }
            },
            Value::Map(es) if !es.is_empty() && r.below(3) > 0 => match r.below(4) {
                0 => {
                    es.remove(r.below(es.len() as u64) as usize);
                }
                1 => {
                    // A new key anywhere: selections keep maps ascending or reversed.
                    let k = t(["e", "f", "g", "a"][r.below(4) as usize]);
                    if !es.iter().any(|(e, _)| *e == k) {
                        let at = r.below(es.len() as u64 + 1) as usize;
                        es.insert(at, (k, rand_value(r, depth + 1)));
                    }
                }
                _ => {
                    let n = r.below(es.len() as u64) as usize;
                    mutate(r, &mut es[n].1, depth + 1)
                }
            },
            Value::Integer(n) => *n = (i128::from(*n) as i64 + r.below(7) as i64 - 3).into(),
            _ => *v = rand_value(r, depth),
        }
    }

    #[test]
    fn applying_a_diff_gives_the_new_selection_on_random_values() {
        for seed in 1..=2000u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut sel: Vec<Value> = (0..r.below(4)).map(|_| rand_value(&mut r, 0)).collect();
            for _ in 0..20 {
                let mut doc = Value::Array(sel.clone());
                for _ in 0..=r.below(3) {
                    mutate(&mut r, &mut doc, 0);
                }
                let Value::Array(next) = doc else {
                    continue;
                };
                check(sel, next.clone());
                sel = next;
            }
        }
    }
}
