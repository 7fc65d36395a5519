//! PState schemas: their text form, parsing, and normalizing values against them.
//!
//! Text form (what crosses the WIT boundary and what `describe` shows):
//! `bool | int | float | string | bytes | any | map<K, V> | set<T> | list<T> | {field: T, ...}`,
//! nested freely; a collection marked `subindexed` (`subindexed map<K, V>`) stores each element
//! as its own redb entry. A PState's top-level schema is always a `map` whose keys partition it.
//! Subindexed collections may be the top-level map's value or a record field (so every one has
//! a fixed storage prefix), and may not sit inside another subindexed collection.
//! Invariant: no value is stored unless [`Schema::normalize`] accepted it; normalized maps are
//! sorted by key encoding and normalized sets are sorted and free of duplicates.

use std::fmt;

use super::key;
use crate::value::{as_i64, type_name, Value};

/// The shape of a PState or of a value inside one.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    Bool,
    Int,
    Float,
    String,
    Bytes,
    Any,
    Map {
        key: Box<Schema>,
        value: Box<Schema>,
        subindexed: bool,
    },
    Set {
        element: Box<Schema>,
        subindexed: bool,
    },
    List {
        element: Box<Schema>,
        subindexed: bool,
    },
    /// A map with fixed string keys (fields), each optional.
    Record(Vec<(String, Schema)>),
}

/// A schema text that does not parse, or a value that does not fit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("bad schema `{text}`: {why}")]
    Parse { text: String, why: String },
    #[error("at {at}: expected {expected}, found {found}")]
    Mismatch {
        at: String,
        expected: String,
        found: String,
    },
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub = |s: bool| if s { "subindexed " } else { "" };
        match self {
            Schema::Bool => f.write_str("bool"),
            Schema::Int => f.write_str("int"),
            Schema::Float => f.write_str("float"),
            Schema::String => f.write_str("string"),
            Schema::Bytes => f.write_str("bytes"),
            Schema::Any => f.write_str("any"),
            Schema::Map {
                key,
                value,
                subindexed,
            } => write!(f, "{}map<{key}, {value}>", sub(*subindexed)),
            Schema::Set {
                element,
                subindexed,
            } => write!(f, "{}set<{element}>", sub(*subindexed)),
            Schema::List {
                element,
                subindexed,
            } => write!(f, "{}list<{element}>", sub(*subindexed)),
            Schema::Record(fields) => {
                f.write_str("{")?;
                for (i, (name, s)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name}: {s}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// How deep a schema may nest.
pub const SCHEMA_DEPTH_MAX: usize = 32;

impl Schema {
    /// Parses the text form and checks where `subindexed` may appear.
    /// Whether data stored under `self` stays readable (and keeps its storage layout) under
    /// `new`: the same shape, where a scalar or a plain collection may widen to `any` and a
    /// record may gain fields (every field is optional). On refusal, says where and what.
    pub fn can_become(&self, new: &Schema) -> Result<(), String> {
        self.can_become_at(new, "")
    }

    fn can_become_at(&self, new: &Schema, at: &str) -> Result<(), String> {
        let here = if at.is_empty() { "the top level" } else { at };
        let refuse = || Err(format!("at {here}: `{self}` cannot become `{new}`"));
        match (self, new) {
            _ if self == new => Ok(()),
            (old, Schema::Any) if !old.has_subindexed() => Ok(()),
            (
                Schema::Map {
                    key: k1,
                    value: v1,
                    subindexed: s1,
                },
                Schema::Map {
                    key: k2,
                    value: v2,
                    subindexed: s2,
                },
            ) if s1 == s2 => {
                k1.can_become_at(k2, &format!("{at}<key>"))?;
                v1.can_become_at(v2, &format!("{at}<value>"))
            }
            (
                Schema::Set {
                    element: e1,
                    subindexed: s1,
                },
                Schema::Set {
                    element: e2,
                    subindexed: s2,
                },
            )
            | (
                Schema::List {
                    element: e1,
                    subindexed: s1,
                },
                Schema::List {
                    element: e2,
                    subindexed: s2,
                },
            ) if s1 == s2 => e1.can_become_at(e2, &format!("{at}<element>")),
            (Schema::Record(old), Schema::Record(new_fields)) => {
                for (name, s) in old {
                    let path = format!("{at}.{name}");
                    match new_fields.iter().find(|(n, _)| n == name) {
                        Some((_, t)) => s.can_become_at(t, &path)?,
                        None => {
                            return Err(format!(
                                "at {path}: the field is removed (existing data holds it)"
                            ))
                        }
                    }
                }
                Ok(())
            }
            _ => refuse(),
        }
    }

    pub fn parse(text: &str) -> Result<Schema, SchemaError> {
        let err = |why: &str| SchemaError::Parse {
            text: text.to_string(),
            why: why.to_string(),
        };
        let tokens = tokenize(text);
        let mut pos = 0;
        let s = parse_at(&tokens, &mut pos, 0).map_err(|w| err(&w))?;
        if pos != tokens.len() {
            return Err(err(&format!("unexpected `{}`", tokens[pos])));
        }
        if let Schema::Map {
            value, subindexed, ..
        } = &s
        {
            if *subindexed {
                return Err(err(
                    "the top-level map is already stored entry by entry; drop `subindexed`",
                ));
            }
            value.check_subindexing(true, false).map_err(|w| err(&w))?;
        } else {
            s.check_subindexing(false, false).map_err(|w| err(&w))?;
        }
        Ok(s)
    }

    /// `placeable`: a subindexed collection may sit here; `inside`: we are within one.
    fn check_subindexing(&self, placeable: bool, inside: bool) -> Result<(), String> {
        let sub = self.is_subindexed();
        if sub && inside {
            return Err(format!(
                "`{self}` is subindexed inside another subindexed collection"
            ));
        }
        if sub && !placeable {
            return Err(format!(
                "`{self}`: a subindexed collection must be the PState's value or a record field"
            ));
        }
        let inside = inside || sub;
        match self {
            Schema::Map { key, value, .. } => {
                key.check_subindexing(false, inside)?;
                value.check_subindexing(false, inside)
            }
            Schema::Set { element, .. } | Schema::List { element, .. } => {
                element.check_subindexing(false, inside)
            }
            Schema::Record(fields) => fields
                .iter()
                .try_for_each(|(_, s)| s.check_subindexing(true, inside)),
            _ => Ok(()),
        }
    }

    pub fn is_subindexed(&self) -> bool {
        matches!(
            self,
            Schema::Map {
                subindexed: true,
                ..
            } | Schema::Set {
                subindexed: true,
                ..
            } | Schema::List {
                subindexed: true,
                ..
            }
        )
    }

    /// Whether any part of this schema is subindexed.
    pub fn has_subindexed(&self) -> bool {
        self.is_subindexed()
            || match self {
                Schema::Record(fields) => fields.iter().any(|(_, s)| s.has_subindexed()),
                _ => false,
            }
    }

    /// The key and value schemas of a top-level PState schema (which must be a map).
    pub fn as_top_level(&self) -> Option<(&Schema, &Schema)> {
        match self {
            Schema::Map { key, value, .. } => Some((key, value)),
            _ => None,
        }
    }

    /// The schema of the value under `k` (map value or record field), if this is a map/record.
    pub fn child(&self, k: &Value) -> Option<&Schema> {
        match self {
            Schema::Map { value, .. } => Some(value),
            Schema::Record(fields) => match k {
                Value::Text(name) => fields.iter().find(|(n, _)| n == name).map(|(_, s)| s),
                _ => None,
            },
            Schema::Any => Some(&Schema::Any),
            _ => None,
        }
    }

    /// The schema of an element (list/set element, map value).
    pub fn element(&self) -> Option<&Schema> {
        match self {
            Schema::Map { value, .. } => Some(value),
            Schema::Set { element, .. } | Schema::List { element, .. } => Some(element),
            Schema::Any => Some(&Schema::Any),
            _ => None,
        }
    }

    /// Checks that `value` fits, returning it normalized (maps sorted by key encoding, sets
    /// sorted and deduplicated). `at` names where the value sits, for errors.
    pub fn normalize(&self, value: Value, at: &str) -> Result<Value, SchemaError> {
        let mismatch = |found: &Value| SchemaError::Mismatch {
            at: at.to_string(),
            expected: self.to_string(),
            found: type_name(found).to_string(),
        };
        match (self, value) {
            (Schema::Any, v) => Ok(sort_any(v)),
            (Schema::Bool, v @ Value::Bool(_)) => Ok(v),
            (Schema::Int, v @ Value::Integer(_)) if as_i64(&v).is_some() => Ok(v),
            (Schema::Float, v @ Value::Float(_)) => Ok(v),
            (Schema::Float, Value::Integer(i)) => Ok(Value::Float(i128::from(i) as f64)),
            (Schema::String, v @ Value::Text(_)) => Ok(v),
            (Schema::Bytes, v @ Value::Bytes(_)) => Ok(v),
            (
                Schema::Map {
                    key: ks, value: vs, ..
                },
                Value::Map(entries),
            ) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let k = ks.normalize(k, &format!("{at} key"))?;
                    let enc = key::encode(&k).map_err(|e| SchemaError::Mismatch {
                        at: format!("{at} key"),
                        expected: "a key".into(),
                        found: e.to_string(),
                    })?;
                    let at = format!("{at}[{}]", short(&k));
                    out.push((enc, k, vs.normalize(v, &at)?));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
                Ok(Value::Map(
                    out.into_iter().map(|(_, k, v)| (k, v)).collect(),
                ))
            }
            (Schema::Set { element, .. }, Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, e) in items.into_iter().enumerate() {
                    let e = element.normalize(e, &format!("{at}[{i}]"))?;
                    let enc = key::encode(&e).map_err(|err| SchemaError::Mismatch {
                        at: format!("{at}[{i}]"),
                        expected: "a set element usable as a key".into(),
                        found: err.to_string(),
                    })?;
                    out.push((enc, e));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
                Ok(Value::Array(out.into_iter().map(|(_, e)| e).collect()))
            }
            (Schema::List { element, .. }, Value::Array(items)) => Ok(Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| element.normalize(e, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            )),
            (Schema::Record(fields), Value::Map(entries)) => {
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let Value::Text(name) = &k else {
                        return Err(SchemaError::Mismatch {
                            at: at.to_string(),
                            expected: self.to_string(),
                            found: format!("a {} field name", type_name(&k)),
                        });
                    };
                    let Some((_, fs)) = fields.iter().find(|(n, _)| n == name) else {
                        return Err(SchemaError::Mismatch {
                            at: at.to_string(),
                            expected: self.to_string(),
                            found: format!("unknown field `{name}`"),
                        });
                    };
                    let at = format!("{at}.{name}");
                    let v = fs.normalize(v, &at)?;
                    out.push((key::encode(&k).expect("text encodes"), k, v));
                }
                out.sort_by(|a, b| a.0.cmp(&b.0));
                out.dedup_by(|a, b| a.0 == b.0);
                Ok(Value::Map(
                    out.into_iter().map(|(_, k, v)| (k, v)).collect(),
                ))
            }
            (_, v) => Err(mismatch(&v)),
        }
    }
}

/// Sorts the maps inside an `any` value by key encoding (where their keys are keys), so
/// navigators can binary-search them.
fn sort_any(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(sort_any).collect()),
        Value::Map(entries) => {
            let mut keyed: Vec<(Option<Vec<u8>>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| (key::encode(&k).ok(), k, sort_any(v)))
                .collect();
            if keyed.iter().all(|(e, _, _)| e.is_some()) {
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                keyed.dedup_by(|a, b| a.0 == b.0);
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        other => other,
    }
}

fn short(v: &Value) -> String {
    let s = crate::value::to_json(v).to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' || c == '-' {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn expect(t: &[String], pos: &mut usize, s: &str) -> Result<(), String> {
    match t.get(*pos) {
        Some(x) if x == s => {
            *pos += 1;
            Ok(())
        }
        Some(x) => Err(format!("expected `{s}`, found `{x}`")),
        None => Err(format!("expected `{s}`, found the end")),
    }
}

fn parse_at(t: &[String], pos: &mut usize, depth: usize) -> Result<Schema, String> {
    if depth > SCHEMA_DEPTH_MAX {
        return Err(format!("nested deeper than {SCHEMA_DEPTH_MAX}"));
    }
    let mut word = t.get(*pos).ok_or("unexpected end")?.clone();
    *pos += 1;
    let subindexed = word == "subindexed";
    if subindexed {
        word = t
            .get(*pos)
            .ok_or("unexpected end after `subindexed`")?
            .clone();
        *pos += 1;
        if !matches!(word.as_str(), "map" | "set" | "list") {
            return Err(format!(
                "only map, set and list can be subindexed, not `{word}`"
            ));
        }
    }
    Ok(match word.as_str() {
        "bool" => Schema::Bool,
        "int" => Schema::Int,
        "float" => Schema::Float,
        "string" => Schema::String,
        "bytes" => Schema::Bytes,
        "any" => Schema::Any,
        "map" => {
            expect(t, pos, "<")?;
            let k = parse_at(t, pos, depth + 1)?;
            expect(t, pos, ",")?;
            let v = parse_at(t, pos, depth + 1)?;
            expect(t, pos, ">")?;
            Schema::Map {
                key: Box::new(k),
                value: Box::new(v),
                subindexed,
            }
        }
        "set" | "list" => {
            expect(t, pos, "<")?;
            let e = Box::new(parse_at(t, pos, depth + 1)?);
            expect(t, pos, ">")?;
            if word == "set" {
                Schema::Set {
                    element: e,
                    subindexed,
                }
            } else {
                Schema::List {
                    element: e,
                    subindexed,
                }
            }
        }
        "{" => {
            let mut fields: Vec<(String, Schema)> = Vec::new();
            loop {
                let name = t.get(*pos).ok_or("unexpected end in a record")?.clone();
                *pos += 1;
                if name == "}" && fields.is_empty() {
                    break;
                }
                if !name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!("expected a field name, found `{name}`"));
                }
                if fields.iter().any(|(n, _)| *n == name) {
                    return Err(format!("field `{name}` appears twice"));
                }
                expect(t, pos, ":")?;
                fields.push((name, parse_at(t, pos, depth + 1)?));
                match t.get(*pos).map(String::as_str) {
                    Some(",") => *pos += 1,
                    Some("}") => {
                        *pos += 1;
                        break;
                    }
                    other => {
                        return Err(format!("expected `,` or `}}` in a record, found {other:?}"))
                    }
                }
            }
            Schema::Record(fields)
        }
        other => return Err(format!("unknown type `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        let s = Schema::parse("map< string,map<int ,list<any>>>").unwrap();
        assert_eq!(s.to_string(), "map<string, map<int, list<any>>>");
        assert_eq!(Schema::parse(&s.to_string()).unwrap(), s);
        let r =
            Schema::parse("map<string, {balance: int, history: subindexed list<any>}>").unwrap();
        assert_eq!(
            r.to_string(),
            "map<string, {balance: int, history: subindexed list<any>}>"
        );
        assert!(Schema::parse("map<string, subindexed set<int>>").is_ok());
        assert!(Schema::parse("map<string>").is_err());
        assert!(Schema::parse("widget").is_err());
        assert!(Schema::parse("int int").is_err());
        assert!(Schema::parse("subindexed int").is_err());
        assert!(
            Schema::parse("map<string, list<subindexed set<int>>>").is_err(),
            "not placeable"
        );
        assert!(
            Schema::parse("map<string, subindexed map<int, {a: subindexed set<int>}>>").is_err(),
            "nested"
        );
    }

    #[test]
    fn normalizes_values() {
        let s = Schema::parse("map<string, int>").unwrap();
        let t = |s: &str| Value::Text(s.into());
        let i = |n: i64| Value::Integer(n.into());
        let v = Value::Map(vec![(t("b"), i(2)), (t("a"), i(1))]);
        assert_eq!(
            s.normalize(v, "counts").unwrap(),
            Value::Map(vec![(t("a"), i(1)), (t("b"), i(2))])
        );
        let bad = Value::Map(vec![(t("a"), t("x"))]);
        assert_eq!(
            s.normalize(bad, "counts").unwrap_err().to_string(),
            "at counts[\"a\"]: expected int, found string"
        );
        let set = Schema::parse("set<int>").unwrap();
        assert_eq!(
            set.normalize(Value::Array(vec![i(3), i(-1), i(3)]), "s")
                .unwrap(),
            Value::Array(vec![i(-1), i(3)])
        );
        let rec = Schema::parse("{a: int}").unwrap();
        assert!(rec
            .normalize(Value::Map(vec![(t("b"), i(1))]), "r")
            .is_err());
    }
}
