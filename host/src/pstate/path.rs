//! Paths: navigators that select values inside one PState partition, and the transforms
//! applied where a path leads.
//!
//! A path's first navigator picks the top-level entry (its key partitions the PState); the rest
//! navigate inside that entry's value, which is stored whole. Invariant: a transform returns the
//! entry's complete new value, which the caller validates against the schema before storing.

use crate::value::{as_i64, type_name, Value};

use super::key;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Navigator {
    /// The value under this key of a map; an absent key selects nothing.
    Key(Value),
}

/// What a transform does where its path leads.
#[derive(Debug, Clone, PartialEq)]
pub enum TransformOp {
    Set(Value),
    /// Adds to an integer; an absent value counts as 0.
    Increment(i64),
    Remove,
}

/// A path that cannot be followed or a transform that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PathError {
    #[error("the path is empty; a path starts with the top-level key")]
    Empty,
    #[error("the path must start with a `key` navigator")]
    NoLeadingKey,
    #[error("navigator {step} `key` reached a {found}, not a map")]
    NotAMap { step: usize, found: &'static str },
    #[error("`increment` reached a {0}, not an int")]
    NotAnInt(&'static str),
    #[error("`increment` overflows i64")]
    Overflow,
    #[error("invalid key: {0}")]
    Key(#[from] key::KeyError),
}

/// The values `path` selects inside `value` (the top-level entry, if present).
/// `first_step` is the index of `path[0]` in the full path, for error messages.
pub fn select(
    value: Option<&Value>,
    path: &[Navigator],
    first_step: usize,
) -> Result<Vec<Value>, PathError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Some((nav, rest)) = path.split_first() else {
        return Ok(vec![value.clone()]);
    };
    match nav {
        Navigator::Key(k) => match value {
            Value::Map(entries) => {
                let i = find(entries, k)?;
                select(i.ok().map(|i| &entries[i].1), rest, first_step + 1)
            }
            Value::Null => Ok(Vec::new()),
            other => Err(PathError::NotAMap {
                step: first_step,
                found: type_name(other),
            }),
        },
    }
}

/// Applies `op` at `path` inside `value`; returns the new value (`None`: remove the entry).
pub fn transform(
    value: Option<Value>,
    path: &[Navigator],
    op: &TransformOp,
    first_step: usize,
) -> Result<Option<Value>, PathError> {
    let Some((nav, rest)) = path.split_first() else {
        return apply(value, op);
    };
    match nav {
        Navigator::Key(k) => {
            let mut entries = match value {
                Some(Value::Map(entries)) => entries,
                None | Some(Value::Null) => {
                    if matches!(op, TransformOp::Remove) {
                        return Ok(value);
                    }
                    Vec::new()
                }
                Some(other) => {
                    return Err(PathError::NotAMap {
                        step: first_step,
                        found: type_name(&other),
                    })
                }
            };
            match find(&entries, k)? {
                Ok(i) => {
                    let old = std::mem::replace(&mut entries[i].1, Value::Null);
                    match transform(Some(old), rest, op, first_step + 1)? {
                        Some(new) => entries[i].1 = new,
                        None => {
                            entries.remove(i);
                        }
                    }
                }
                Err(i) => {
                    if let Some(new) = transform(None, rest, op, first_step + 1)? {
                        entries.insert(i, (k.clone(), new));
                    }
                }
            }
            Ok(Some(Value::Map(entries)))
        }
    }
}

fn apply(value: Option<Value>, op: &TransformOp) -> Result<Option<Value>, PathError> {
    match op {
        TransformOp::Set(v) => Ok(Some(v.clone())),
        TransformOp::Remove => Ok(None),
        TransformOp::Increment(by) => {
            let current = match &value {
                None | Some(Value::Null) => 0,
                Some(v) => as_i64(v).ok_or(PathError::NotAnInt(type_name(v)))?,
            };
            let n = current.checked_add(*by).ok_or(PathError::Overflow)?;
            Ok(Some(Value::Integer(n.into())))
        }
    }
}

/// Finds `k` in map entries kept sorted by key encoding: `Ok(index)` or `Err(insert position)`.
fn find(entries: &[(Value, Value)], k: &Value) -> Result<Result<usize, usize>, PathError> {
    let want = key::encode(k)?;
    // Entries written by the host are sorted; values written whole by a guest may not be.
    let mut sorted = true;
    let mut prev: Option<Vec<u8>> = None;
    for (i, (ek, _)) in entries.iter().enumerate() {
        let Ok(e) = key::encode(ek) else {
            sorted = false;
            continue;
        };
        if e == want {
            return Ok(Ok(i));
        }
        if prev.as_ref().is_some_and(|p| *p > e) {
            sorted = false;
        }
        prev = Some(e);
    }
    if !sorted {
        return Ok(Err(entries.len()));
    }
    let pos = entries
        .iter()
        .position(|(ek, _)| key::encode(ek).is_ok_and(|e| e > want))
        .unwrap_or(entries.len());
    Ok(Err(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn nested_set_increment_remove() {
        let p = [Navigator::Key(t("b")), Navigator::Key(t("x"))];
        let v = transform(None, &p, &TransformOp::Increment(2), 1).unwrap();
        let v = transform(v, &p, &TransformOp::Increment(3), 1).unwrap();
        assert_eq!(
            select(v.as_ref(), &p, 1).unwrap(),
            vec![Value::Integer(5.into())]
        );
        let v = transform(v, &[Navigator::Key(t("a"))], &TransformOp::Set(t("s")), 1).unwrap();
        let Some(Value::Map(entries)) = &v else {
            panic!()
        };
        assert_eq!(entries[0].0, t("a"), "keys stay sorted");
        let v = transform(v, &p, &TransformOp::Remove, 1).unwrap();
        assert_eq!(select(v.as_ref(), &p, 1).unwrap(), vec![]);
        assert_eq!(
            transform(Some(t("s")), &p, &TransformOp::Remove, 1),
            Err(PathError::NotAMap {
                step: 1,
                found: "string"
            })
        );
        assert_eq!(
            transform(Some(t("s")), &[], &TransformOp::Increment(1), 1),
            Err(PathError::NotAnInt("string"))
        );
    }
}
