//! The path engine over stored PStates: navigators and transforms across values stored entry
//! by entry — the top-level map (one entry per key) and subindexed collections (one entry per
//! element) — deferring to the in-memory engine ([`super::path`]) inside each stored value.
//!
//! Storage, per PState, three tables reached through a [`View`]:
//! - `Main`: `enc(top key)` → the entry's value, with each subindexed collection inside it
//!   replaced by a `null` marker (present iff the collection exists);
//! - `Sub`: `prefix ‖ enc(element key)` → element value (`null` for set elements), where a
//!   collection's prefix is `enc(top key)` followed by `enc(field)` for each record field on
//!   the way (list elements are keyed by their index);
//! - `Size`: `prefix` → element count, so `count` is O(1).
//!
//! Prefixes are prefix-free because the key encoding is self-delimiting and subindexed
//! collections never nest. Invariant: what a select returns equals what the in-memory engine
//! returns on the fully materialized value (checked by the model test in `tests.rs`).

use super::key;
use super::path::{self, EncodedRange, Navigator, PathError, TransformOp};
use super::schema::Schema;
use super::AccessError;
use crate::value::{type_name, Value};

/// Which table of a PState an entry lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Main,
    Sub,
    Size,
}

/// Elements read per storage scan while streaming a collection.
const SCAN_CHUNK: usize = 256;
/// Elements one transform may touch through `all`/`sorted-range`/… on a stored collection.
pub const TRANSFORM_TARGETS_MAX: usize = 100_000;
/// The furthest `nth` walks into a map or set (see `nth_walk`).
pub const NTH_WALK_MAX: u64 = 100_000;

/// A callback over stored elements: `(engine, key suffix, stored value) -> go on?`.
type ElemFn<'f, E> = dyn FnMut(&mut E, &[u8], Value) -> Result<bool, AccessError> + 'f;

/// Reads of one PState partition's tables.
pub trait View {
    fn get(&mut self, pstate: &str, t: Table, key: &[u8]) -> Result<Option<Value>, AccessError>;
    /// Entries whose key is `prefix ‖ suffix` with `suffix` inside `range`, in key order (or
    /// reversed), at most `limit`; returns `(suffix, value)`.
    fn scan(
        &mut self,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, AccessError>;
    /// Whether stored entries may still be in an older shape (a migration is rewriting
    /// them): then every read must go through the entry that holds a value's shape.
    fn migrating(&self) -> bool {
        false
    }
}

/// Writes, on top of reads.
pub trait ViewMut: View {
    /// `None` removes the entry.
    fn put(&mut self, pstate: &str, t: Table, key: Vec<u8>, value: Option<Value>);
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(a.len() + b.len());
    v.extend_from_slice(a);
    v.extend_from_slice(b);
    v
}

fn full_range() -> EncodedRange {
    EncodedRange {
        start: None,
        end: None,
    }
}

fn too_large(limit: usize) -> AccessError {
    AccessError::new(
        "result-too-large",
        format!("the selection has more than the select_values_max limit of {limit} values; narrow it with sorted-range and limit"),
    )
}

/// A collection stored entry by entry.
#[derive(Clone, Copy)]
struct Coll<'a> {
    table: Table,
    prefix: &'a [u8],
    /// The collection's schema (the PState schema for the top level).
    schema: &'a Schema,
}

impl Coll<'_> {
    fn elem_key(&self, suffix: &[u8]) -> Vec<u8> {
        cat(self.prefix, suffix)
    }
    fn is_set(&self) -> bool {
        matches!(self.schema, Schema::Set { .. })
    }
    fn is_list(&self) -> bool {
        matches!(self.schema, Schema::List { .. })
    }
    fn element_schema(&self) -> &Schema {
        self.schema.element().unwrap_or(&Schema::Any)
    }
    fn kind(&self) -> &'static str {
        match self.schema {
            Schema::Set { .. } => "set",
            Schema::List { .. } => "list",
            _ => "map",
        }
    }
}

/// One select or transform over one PState partition.
pub struct Engine<'v, V> {
    pub view: &'v mut V,
    pub pstate: &'v str,
    pub schema: &'v Schema,
    /// The most values a select may return (and a collection may materialize).
    pub limit: usize,
}

impl<V: View> Engine<'_, V> {
    /// Selects `path` from the whole partition (`path` may start with any navigator).
    pub fn select(&mut self, path: &[Navigator]) -> Result<Vec<Value>, AccessError> {
        let mut out = Vec::new();
        let top = Coll {
            table: Table::Main,
            prefix: &[],
            schema: self.schema,
        };
        self.select_coll(top, path, 0, &mut out)?;
        Ok(out)
    }

    fn decode_suffix(suffix: &[u8]) -> Result<Value, AccessError> {
        key::decode(suffix)
            .map_err(|e| AccessError::new("storage", format!("corrupt stored key: {e}")))
    }

    /// The stored entry of `coll` under element key `suffix`, as a value (materialized).
    fn elem_value(
        &mut self,
        coll: Coll<'_>,
        suffix: &[u8],
        stored: Value,
    ) -> Result<Value, AccessError> {
        if coll.is_set() {
            return Self::decode_suffix(suffix);
        }
        let prefix = coll.elem_key(suffix);
        self.materialize(&prefix, stored, coll.element_schema())
    }

    /// Re-attaches the subindexed collections inside a stored value.
    fn materialize(
        &mut self,
        prefix: &[u8],
        stored: Value,
        schema: &Schema,
    ) -> Result<Value, AccessError> {
        if schema.is_subindexed() {
            let coll = Coll {
                table: Table::Sub,
                prefix,
                schema,
            };
            return self.materialize_coll(coll);
        }
        match (schema, stored) {
            (Schema::Record(fields), Value::Map(entries)) if schema.has_subindexed() => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let fs = match &k {
                        Value::Text(name) => fields.iter().find(|(n, _)| n == name).map(|(_, s)| s),
                        _ => None,
                    };
                    let v = match fs {
                        Some(fs) if fs.has_subindexed() => {
                            let p = cat(
                                prefix,
                                &key::encode(&k)
                                    .map_err(|e| AccessError::new("storage", e.to_string()))?,
                            );
                            self.materialize(&p, v, fs)?
                        }
                        _ => v,
                    };
                    out.push((k, v));
                }
                Ok(Value::Map(out))
            }
            (_, v) => Ok(v),
        }
    }

    fn materialize_coll(&mut self, coll: Coll<'_>) -> Result<Value, AccessError> {
        let entries = self.view.scan(
            self.pstate,
            coll.table,
            coll.prefix,
            &full_range(),
            false,
            self.limit + 1,
        )?;
        if entries.len() > self.limit {
            return Err(too_large(self.limit));
        }
        if coll.is_set() || coll.is_list() {
            let mut items = Vec::with_capacity(entries.len());
            for (suffix, v) in entries {
                items.push(if coll.is_set() {
                    Self::decode_suffix(&suffix)?
                } else {
                    v
                });
            }
            Ok(Value::Array(items))
        } else {
            let mut out = Vec::with_capacity(entries.len());
            for (suffix, v) in entries {
                let k = Self::decode_suffix(&suffix)?;
                let v = self.elem_value(coll, &suffix, v)?;
                out.push((k, v));
            }
            Ok(Value::Map(out))
        }
    }

    /// The number of elements of `coll`: its entry in the size table (the top level's is
    /// under the empty key), so counting is O(1) at every level.
    fn size(&mut self, coll: Coll<'_>) -> Result<u64, AccessError> {
        Ok(self
            .view
            .get(self.pstate, Table::Size, coll.prefix)?
            .and_then(|v| crate::value::as_i64(&v))
            .unwrap_or(0) as u64)
    }

    /// Refuses an `nth` that would walk further than [`NTH_WALK_MAX`] elements of a map or
    /// set (lists are indexed directly); an index past the end selects nothing, at once.
    fn nth_walk(&mut self, coll: Coll<'_>, n: u64) -> Result<Option<usize>, AccessError> {
        if n >= self.size(coll)? {
            return Ok(None);
        }
        if n >= NTH_WALK_MAX {
            return Err(AccessError::new(
                "invalid-path",
                format!("`nth` {n} on a map or set walks over more than {NTH_WALK_MAX} elements; page with `sorted-range` instead"),
            ));
        }
        Ok(Some(n as usize))
    }

    /// Calls `f(suffix, stored)` for the elements of `coll` in `range` (in order or reversed)
    /// until it returns false, reading `SCAN_CHUNK` entries at a time.
    /// `wanted` is how many elements the caller expects to need (the first read asks for
    /// that many, plus one).
    fn for_each(
        &mut self,
        coll: Coll<'_>,
        range: &EncodedRange,
        reverse: bool,
        wanted: usize,
        f: &mut ElemFn<'_, Self>,
    ) -> Result<(), AccessError> {
        let mut chunk_len = wanted.saturating_add(1).clamp(1, SCAN_CHUNK);
        let mut cursor = EncodedRange {
            start: range.start.clone(),
            end: range.end.clone(),
        };
        loop {
            let chunk = self.view.scan(
                self.pstate,
                coll.table,
                coll.prefix,
                &cursor,
                reverse,
                SCAN_CHUNK,
            )?;
            let n = chunk.len();
            let mut last = None;
            for (suffix, v) in chunk {
                if !f(self, &suffix, v)? {
                    return Ok(());
                }
                last = Some(suffix);
            }
            if n < chunk_len {
                return Ok(());
            }
            chunk_len = SCAN_CHUNK;
            let last = last.expect("chunk not empty");
            if reverse {
                cursor.end = Some((last, false));
            } else {
                cursor.start = Some((last, false));
            }
        }
    }

    /// Whether `nav` (at `coll`, followed by `rest`) may skip reading the entry it names:
    /// a `key` (not `must`) whose element is a subindexed map, followed by another `key`,
    /// with no migration reshaping entries.
    fn straight_into_subindexed_map(
        &self,
        coll: Coll<'_>,
        nav: &Navigator,
        rest: &[Navigator],
    ) -> bool {
        matches!(nav, Navigator::Key(_))
            && matches!(rest.first(), Some(Navigator::Key(_)))
            && matches!(coll.element_schema(), Schema::Map { .. })
            && coll.element_schema().is_subindexed()
            && !self.view.migrating()
    }

    fn select_coll(
        &mut self,
        coll: Coll<'_>,
        path: &[Navigator],
        step: usize,
        out: &mut Vec<Value>,
    ) -> Result<(), AccessError> {
        if out.len() >= self.limit {
            return Ok(());
        }
        let Some((nav, rest)) = path.split_first() else {
            let v = self.materialize_coll(coll)?;
            out.push(v);
            return Ok(());
        };
        let next = step + 1;
        let unnavigable = |found: &'static str| -> AccessError {
            PathError::Unnavigable {
                step,
                nav: nav.name(),
                found,
            }
            .into()
        };
        match nav {
            Navigator::Key(k) | Navigator::Must(k) => {
                if coll.is_set() || coll.is_list() {
                    return Err(unnavigable("list"));
                }
                let suffix = key::encode(k).map_err(PathError::from)?;
                let prefix = coll.elem_key(&suffix);
                if self.straight_into_subindexed_map(coll, nav, rest) {
                    // `key` into a subindexed map: its elements exist only while the entry
                    // does, and `key` goes on through an absent one, so reading the
                    // entry first could not change the answer.
                    let sub = Coll {
                        table: Table::Sub,
                        prefix: &prefix,
                        schema: coll.element_schema(),
                    };
                    return self.select_coll(sub, rest, next, out);
                }
                let stored = self.view.get(self.pstate, coll.table, &prefix)?;
                if stored.is_none() && matches!(nav, Navigator::Must(_)) {
                    return Ok(());
                }
                self.select_value(&prefix, stored, coll.element_schema(), rest, next, out)
            }
            Navigator::Nth(n) if coll.is_list() => {
                let suffix =
                    key::encode(&Value::Integer((*n as i64).into())).map_err(PathError::from)?;
                let stored = self
                    .view
                    .get(self.pstate, coll.table, &coll.elem_key(&suffix))?;
                self.select_value(&[], stored, coll.element_schema(), rest, next, out)
            }
            Navigator::First | Navigator::Last | Navigator::Nth(_) => {
                let (reverse, skip) = match nav {
                    Navigator::First => (false, 0),
                    Navigator::Last => (true, 0),
                    Navigator::Nth(n) => match self.nth_walk(coll, *n)? {
                        Some(n) => (false, n),
                        None => return Ok(()),
                    },
                    _ => unreachable!(),
                };
                let mut found = None;
                let mut seen = 0usize;
                self.for_each(
                    coll,
                    &full_range(),
                    reverse,
                    skip + 1,
                    &mut |_, suffix, v| {
                        if seen == skip {
                            found = Some((suffix.to_vec(), v));
                            return Ok(false);
                        }
                        seen += 1;
                        Ok(true)
                    },
                )?;
                if let Some((suffix, stored)) = found {
                    let v = self.item(coll, &suffix, stored)?;
                    path::select(Some(&v), rest, next, out, self.limit)?;
                }
                Ok(())
            }
            Navigator::Count => {
                let n = self.size(coll)?;
                path::select(Some(&Value::Integer(n.into())), rest, next, out, self.limit)?;
                Ok(())
            }
            Navigator::All | Navigator::MapKeys | Navigator::MapVals => {
                if !matches!(nav, Navigator::All) && (coll.is_set() || coll.is_list()) {
                    return Err(unnavigable("list"));
                }
                let limit = self.limit;
                self.for_each(
                    coll,
                    &full_range(),
                    false,
                    limit,
                    &mut |this, suffix, stored| {
                        let v = match nav {
                            Navigator::MapKeys => Self::decode_suffix(suffix)?,
                            Navigator::MapVals => this.elem_value(coll, suffix, stored)?,
                            _ => this.item(coll, suffix, stored)?,
                        };
                        path::select(Some(&v), rest, next, out, limit)?;
                        Ok(out.len() < limit)
                    },
                )
            }
            Navigator::SortedRange(r) => {
                if coll.is_list() {
                    return Err(unnavigable("list"));
                }
                let er = EncodedRange::new(r).map_err(AccessError::from)?;
                let cap = r.limit.map_or(self.limit, |l| (l as usize).min(self.limit));
                let mut picked: Vec<(Vec<u8>, Value)> = Vec::new();
                let mut over = false;
                self.for_each(coll, &er, r.reverse, cap, &mut |_, suffix, v| {
                    if picked.len() >= cap {
                        over = r.limit.is_none_or(|l| l as usize > cap);
                        return Ok(false);
                    }
                    picked.push((suffix.to_vec(), v));
                    Ok(true)
                })?;
                if over {
                    return Err(too_large(self.limit));
                }
                let sub = if coll.is_set() {
                    Value::Array(
                        picked
                            .iter()
                            .map(|(s, _)| Self::decode_suffix(s))
                            .collect::<Result<_, _>>()?,
                    )
                } else {
                    let mut entries = Vec::with_capacity(picked.len());
                    for (s, v) in picked {
                        let k = Self::decode_suffix(&s)?;
                        let v = self.elem_value(coll, &s, v)?;
                        entries.push((k, v));
                    }
                    Value::Map(entries)
                };
                if rest.is_empty() {
                    out.push(sub);
                } else {
                    path::select(Some(&sub), rest, next, out, self.limit)?;
                }
                Ok(())
            }
            Navigator::NullToVal(_) | Navigator::Filter(..) => {
                let v = self.materialize_coll(coll)?;
                path::select(Some(&v), path, step, out, self.limit)?;
                Ok(())
            }
        }
    }

    /// What `all`/`first`/`last`/`nth` yield for one element: the element (set, list) or the
    /// `[key, value]` entry (map).
    fn item(&mut self, coll: Coll<'_>, suffix: &[u8], stored: Value) -> Result<Value, AccessError> {
        if coll.is_set() {
            return Self::decode_suffix(suffix);
        }
        if coll.is_list() {
            return Ok(stored);
        }
        let k = Self::decode_suffix(suffix)?;
        let v = self.elem_value(coll, suffix, stored)?;
        Ok(Value::Array(vec![k, v]))
    }

    /// Selects inside a stored value (`stored`; `None` if absent) whose schema is `schema` and
    /// whose subindexed parts live under `prefix`.
    fn select_value(
        &mut self,
        prefix: &[u8],
        stored: Option<Value>,
        schema: &Schema,
        path: &[Navigator],
        step: usize,
        out: &mut Vec<Value>,
    ) -> Result<(), AccessError> {
        if schema.is_subindexed() {
            if stored.is_none() {
                return Ok(path::select(None, path, step, out, self.limit)?);
            }
            let coll = Coll {
                table: Table::Sub,
                prefix,
                schema,
            };
            return self.select_coll(coll, path, step, out);
        }
        if !schema.has_subindexed() {
            return Ok(path::select(stored.as_ref(), path, step, out, self.limit)?);
        }
        if let (Some((Navigator::Key(f) | Navigator::Must(f), rest)), Some(Value::Map(entries))) =
            (path.split_first(), &stored)
        {
            // Descend field by field, so reading a plain field never loads a subindexed sibling.
            if let Some(fs) = schema.child(f) {
                let child = path::find(entries, f)
                    .map_err(AccessError::from)?
                    .ok()
                    .map(|i| entries[i].1.clone());
                if child.is_none() && matches!(path[0], Navigator::Must(_)) {
                    return Ok(());
                }
                let p = cat(prefix, &key::encode(f).map_err(PathError::from)?);
                return self.select_value(&p, child, fs, rest, step + 1, out);
            }
        }
        let v = match stored {
            Some(v) => Some(self.materialize(prefix, v, schema)?),
            None => None,
        };
        Ok(path::select(v.as_ref(), path, step, out, self.limit)?)
    }
}

impl<V: ViewMut> Engine<'_, V> {
    /// Applies `op` at `path`, which must start with `key`/`must` (the top-level key).
    pub fn transform(&mut self, path: &[Navigator], op: &TransformOp) -> Result<(), AccessError> {
        let top = Coll {
            table: Table::Main,
            prefix: &[],
            schema: self.schema,
        };
        match path.first() {
            Some(Navigator::Key(_) | Navigator::Must(_)) => self.transform_coll(top, path, op, 0),
            Some(_) => Err(PathError::NoLeadingKey.into()),
            None => Err(PathError::Empty.into()),
        }
    }

    fn put_size(&mut self, prefix: &[u8], n: u64) {
        self.view.put(
            self.pstate,
            Table::Size,
            prefix.to_vec(),
            Some(Value::Integer(n.into())),
        );
    }

    /// Removes every stored entry under `prefix` (nested collections and their sizes).
    fn clear_under(&mut self, prefix: &[u8]) -> Result<(), AccessError> {
        for t in [Table::Sub, Table::Size] {
            let keys = self
                .view
                .scan(self.pstate, t, prefix, &full_range(), false, usize::MAX)?;
            for (suffix, _) in keys {
                self.view.put(self.pstate, t, cat(prefix, &suffix), None);
            }
        }
        Ok(())
    }

    /// Stores a normalized value under `prefix`, splitting out its subindexed collections;
    /// returns what goes into the parent entry.
    fn write_value(
        &mut self,
        prefix: &[u8],
        value: Value,
        schema: &Schema,
    ) -> Result<Value, AccessError> {
        if schema.is_subindexed() {
            let items: Vec<(Value, Value)> = match (schema, value) {
                (Schema::Map { .. }, Value::Map(entries)) => entries,
                (Schema::Set { .. }, Value::Array(items)) => {
                    items.into_iter().map(|e| (e, Value::Null)).collect()
                }
                (Schema::List { .. }, Value::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (Value::Integer((i as i64).into()), v))
                    .collect(),
                (_, v) => {
                    return Err(AccessError::new(
                        "schema-mismatch",
                        format!("expected {schema}, found {}", type_name(&v)),
                    ))
                }
            };
            let n = items.len() as u64;
            for (k, v) in items {
                let suffix = key::encode(&k).map_err(PathError::from)?;
                self.view
                    .put(self.pstate, Table::Sub, cat(prefix, &suffix), Some(v));
            }
            self.put_size(prefix, n);
            return Ok(Value::Null);
        }
        match (schema, value) {
            (Schema::Record(fields), Value::Map(entries)) if schema.has_subindexed() => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let fs = match &k {
                        Value::Text(name) => fields.iter().find(|(n, _)| n == name).map(|(_, s)| s),
                        _ => None,
                    };
                    let v = match fs {
                        Some(fs) if fs.has_subindexed() => {
                            let p = cat(prefix, &key::encode(&k).map_err(PathError::from)?);
                            self.write_value(&p, v, fs)?
                        }
                        _ => v,
                    };
                    out.push((k, v));
                }
                Ok(Value::Map(out))
            }
            (_, v) => Ok(v),
        }
    }

    fn normalize(&self, schema: &Schema, v: Value) -> Result<Value, AccessError> {
        schema
            .normalize(v, self.pstate)
            .map_err(|e| AccessError::new("schema-mismatch", e.to_string()))
    }

    fn transform_coll(
        &mut self,
        coll: Coll<'_>,
        path: &[Navigator],
        op: &TransformOp,
        step: usize,
    ) -> Result<(), AccessError> {
        let Some((nav, rest)) = path.split_first() else {
            return self.apply_coll(coll, op);
        };
        let next = step + 1;
        let not_here = |why: &'static str| -> AccessError {
            PathError::NotTransformable {
                step,
                nav: nav.name(),
                why,
            }
            .into()
        };
        let targets: Vec<Vec<u8>> = match nav {
            Navigator::Key(k) | Navigator::Must(k) => {
                if coll.is_set() || coll.is_list() {
                    return Err(PathError::Unnavigable {
                        step,
                        nav: nav.name(),
                        found: "list",
                    }
                    .into());
                }
                let suffix = key::encode(k).map_err(PathError::from)?;
                if matches!(nav, Navigator::Must(_))
                    && self
                        .view
                        .get(self.pstate, coll.table, &coll.elem_key(&suffix))?
                        .is_none()
                {
                    return Ok(());
                }
                vec![suffix]
            }
            Navigator::Nth(n) if coll.is_list() => {
                if *n >= self.size(coll)? {
                    return Ok(());
                }
                vec![key::encode(&Value::Integer((*n as i64).into())).map_err(PathError::from)?]
            }
            Navigator::All
            | Navigator::MapVals
            | Navigator::First
            | Navigator::Last
            | Navigator::Nth(_)
            | Navigator::SortedRange(_) => {
                if matches!(nav, Navigator::MapVals) && (coll.is_set() || coll.is_list()) {
                    return Err(PathError::Unnavigable {
                        step,
                        nav: nav.name(),
                        found: "list",
                    }
                    .into());
                }
                let (range, reverse, skip, take) = match nav {
                    Navigator::First => (full_range(), false, 0, 1),
                    Navigator::Last => (full_range(), true, 0, 1),
                    Navigator::Nth(n) => match self.nth_walk(coll, *n)? {
                        Some(n) => (full_range(), false, n, 1),
                        None => return Ok(()),
                    },
                    Navigator::SortedRange(r) => (
                        EncodedRange::new(r).map_err(AccessError::from)?,
                        r.reverse,
                        0,
                        r.limit.map_or(usize::MAX, |l| l as usize),
                    ),
                    _ => (full_range(), false, 0, usize::MAX),
                };
                let mut keys = Vec::new();
                let mut seen = 0usize;
                let mut overflow = false;
                self.for_each(
                    coll,
                    &range,
                    reverse,
                    skip.saturating_add(take),
                    &mut |_, suffix, _| {
                        if keys.len() >= take {
                            return Ok(false);
                        }
                        if seen >= skip {
                            if keys.len() >= TRANSFORM_TARGETS_MAX {
                                overflow = true;
                                return Ok(false);
                            }
                            keys.push(suffix.to_vec());
                        }
                        seen += 1;
                        Ok(keys.len() < take)
                    },
                )?;
                if overflow {
                    return Err(AccessError::new(
                        "too-many-targets",
                        format!("the transform reaches more than {TRANSFORM_TARGETS_MAX} elements of a stored collection"),
                    ));
                }
                keys
            }
            Navigator::Count
            | Navigator::MapKeys
            | Navigator::NullToVal(_)
            | Navigator::Filter(..) => {
                return Err(not_here(
                    " directly on a stored collection (the top level or a subindexed one)",
                ));
            }
        };
        for suffix in targets {
            self.transform_elem(coll, &suffix, rest, op, next)?;
        }
        Ok(())
    }

    /// Transforms one element of a stored collection.
    fn transform_elem(
        &mut self,
        coll: Coll<'_>,
        suffix: &[u8],
        rest: &[Navigator],
        op: &TransformOp,
        step: usize,
    ) -> Result<(), AccessError> {
        let full = coll.elem_key(suffix);
        let old = self.view.get(self.pstate, coll.table, &full)?;
        if coll.is_set() {
            // A set element is its key: it can only be removed (or kept).
            let elem = Self::decode_suffix(suffix)?;
            let new = path::transform(Some(elem.clone()), rest, op, step)?;
            match new {
                None => {
                    if old.is_some() {
                        self.view.put(self.pstate, coll.table, full, None);
                        let n = self.size(coll)?;
                        self.put_size(coll.prefix, n.saturating_sub(1));
                    }
                    Ok(())
                }
                Some(v) if v == elem => Ok(()),
                Some(_) => Err(PathError::NotTransformable {
                    step,
                    nav: "set element",
                    why: ": set elements can only be removed (insert the new one)",
                }
                .into()),
            }
        } else {
            let new =
                self.transform_value(&full, old.clone(), coll.element_schema(), rest, op, step)?;
            match (&old, new) {
                (_, Some(v)) => {
                    self.view.put(self.pstate, coll.table, full, Some(v));
                    if old.is_none() {
                        let n = self.size(coll)?;
                        self.put_size(coll.prefix, n + 1);
                    }
                }
                (Some(_), None) => {
                    if coll.is_list() {
                        return Err(AccessError::new(
                            "unsupported",
                            "removing one element of a subindexed list is not supported; remove the whole list, or use a subindexed map",
                        ));
                    }
                    self.view.put(self.pstate, coll.table, full, None);
                    let n = self.size(coll)?;
                    self.put_size(coll.prefix, n.saturating_sub(1));
                }
                (None, None) => {}
            }
            Ok(())
        }
    }

    /// A transform that ends on a stored collection itself.
    fn apply_coll(&mut self, coll: Coll<'_>, op: &TransformOp) -> Result<(), AccessError> {
        let elem_schema = coll.element_schema().clone();
        match op {
            TransformOp::Insert(x) if coll.is_set() => {
                let x = self.normalize(&elem_schema, x.clone())?;
                let suffix = key::encode(&x).map_err(PathError::from)?;
                let full = coll.elem_key(&suffix);
                if self.view.get(self.pstate, coll.table, &full)?.is_none() {
                    self.view
                        .put(self.pstate, coll.table, full, Some(Value::Null));
                    let n = self.size(coll)?;
                    self.put_size(coll.prefix, n + 1);
                }
                Ok(())
            }
            TransformOp::Push(x) if coll.is_list() => {
                let x = self.normalize(&elem_schema, x.clone())?;
                let n = self.size(coll)?;
                let suffix =
                    key::encode(&Value::Integer((n as i64).into())).map_err(PathError::from)?;
                self.view
                    .put(self.pstate, coll.table, coll.elem_key(&suffix), Some(x));
                self.put_size(coll.prefix, n + 1);
                Ok(())
            }
            TransformOp::Merge(Value::Map(entries)) if !coll.is_set() && !coll.is_list() => {
                for (k, v) in entries {
                    let suffix = key::encode(k).map_err(PathError::from)?;
                    self.transform_elem(coll, &suffix, &[], &TransformOp::Set(v.clone()), 0)?;
                }
                Ok(())
            }
            TransformOp::Set(_) | TransformOp::Remove => Err(AccessError::new(
                "internal",
                "set/remove of a whole stored collection is applied by its parent",
            )),
            other => {
                let found = coll.kind();
                let (name, expected) = match other {
                    TransformOp::Increment(_) => ("increment", "int"),
                    TransformOp::Insert(_) => ("insert", "set"),
                    TransformOp::Push(_) => ("push", "list"),
                    _ => ("merge", "map"),
                };
                Err(PathError::WrongTarget {
                    op: name,
                    expected,
                    found,
                }
                .into())
            }
        }
    }

    /// Transforms a stored value (`old`; `None` if absent) whose subindexed parts live under
    /// `prefix`; returns what the parent entry stores afterwards.
    fn transform_value(
        &mut self,
        prefix: &[u8],
        old: Option<Value>,
        schema: &Schema,
        path: &[Navigator],
        op: &TransformOp,
        step: usize,
    ) -> Result<Option<Value>, AccessError> {
        if !schema.has_subindexed() {
            let new = path::transform(old, path, op, step)?;
            return new.map(|v| self.normalize(schema, v)).transpose();
        }
        if schema.is_subindexed() {
            if path.is_empty() {
                return match op {
                    TransformOp::Remove => {
                        self.clear_under(prefix)?;
                        Ok(None)
                    }
                    TransformOp::Set(v) => {
                        let v = self.normalize(schema, v.clone())?;
                        self.clear_under(prefix)?;
                        Ok(Some(self.write_value(prefix, v, schema)?))
                    }
                    _ => {
                        if old.is_none() {
                            self.put_size(prefix, 0);
                        }
                        let coll = Coll {
                            table: Table::Sub,
                            prefix,
                            schema,
                        };
                        self.apply_coll(coll, op)?;
                        Ok(Some(Value::Null))
                    }
                };
            }
            let creates = matches!(path.first(), Some(Navigator::Key(_)))
                && !matches!(op, TransformOp::Remove);
            if old.is_none() && !creates {
                return Ok(None);
            }
            if old.is_none() {
                self.put_size(prefix, 0);
            }
            let coll = Coll {
                table: Table::Sub,
                prefix,
                schema,
            };
            self.transform_coll(coll, path, op, step)?;
            return Ok(Some(Value::Null));
        }
        if let Some((nav @ (Navigator::Key(f) | Navigator::Must(f)), rest)) = path.split_first() {
            if let Some(fs) = schema.child(f).cloned() {
                let mut entries = match old {
                    Some(Value::Map(e)) => e,
                    None | Some(Value::Null) => {
                        if matches!(op, TransformOp::Remove) || matches!(nav, Navigator::Must(_)) {
                            return Ok(old);
                        }
                        Vec::new()
                    }
                    Some(other) => {
                        return Err(PathError::Unnavigable {
                            step,
                            nav: nav.name(),
                            found: type_name(&other),
                        }
                        .into())
                    }
                };
                let pos = path::find(&entries, f).map_err(AccessError::from)?;
                if matches!(nav, Navigator::Must(_)) && pos.is_err() {
                    return Ok(Some(Value::Map(entries)));
                }
                let child = pos.ok().map(|i| entries[i].1.clone());
                let p = cat(prefix, &key::encode(f).map_err(PathError::from)?);
                let new_child = self.transform_value(&p, child, &fs, rest, op, step + 1)?;
                match (pos, new_child) {
                    (Ok(i), Some(v)) => entries[i].1 = v,
                    (Ok(i), None) => {
                        entries.remove(i);
                    }
                    (Err(i), Some(v)) => entries.insert(i, (f.clone(), v)),
                    (Err(_), None) => {}
                }
                return Ok(Some(Value::Map(entries)));
            }
        }
        // Anything else on a value holding subindexed parts: materialize, transform in
        // memory, store again.
        let current = match old {
            Some(v) => Some(self.materialize(prefix, v, schema)?),
            None => None,
        };
        let new = path::transform(current, path, op, step)?;
        self.clear_under(prefix)?;
        match new {
            None => Ok(None),
            Some(v) => {
                let v = self.normalize(schema, v)?;
                Ok(Some(self.write_value(prefix, v, schema)?))
            }
        }
    }
}
