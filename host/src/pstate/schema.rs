//! PState schemas: their text form, parsing, and validating values against them.
//!
//! The text form is what crosses the WIT boundary and what `describe` shows:
//! `bool | int | float | string | bytes | any | map<K, V> | set<T> | list<T>`, nested freely.
//! A PState's top-level schema is always a `map` whose keys partition it. Invariant: no value
//! is stored in a PState unless [`Schema::validate`] accepted it.

use std::fmt;

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
    Map(Box<Schema>, Box<Schema>),
    Set(Box<Schema>),
    List(Box<Schema>),
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
        found: &'static str,
    },
}

impl fmt::Display for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schema::Bool => f.write_str("bool"),
            Schema::Int => f.write_str("int"),
            Schema::Float => f.write_str("float"),
            Schema::String => f.write_str("string"),
            Schema::Bytes => f.write_str("bytes"),
            Schema::Any => f.write_str("any"),
            Schema::Map(k, v) => write!(f, "map<{k}, {v}>"),
            Schema::Set(e) => write!(f, "set<{e}>"),
            Schema::List(e) => write!(f, "list<{e}>"),
        }
    }
}

/// How deep a schema may nest.
pub const SCHEMA_DEPTH_MAX: usize = 32;

impl Schema {
    /// Parses the text form.
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
        Ok(s)
    }

    /// The key and value schemas of a top-level PState schema (which must be a map).
    pub fn as_top_level(&self) -> Option<(&Schema, &Schema)> {
        match self {
            Schema::Map(k, v) => Some((k, v)),
            _ => None,
        }
    }

    /// Checks that `value` fits this schema; `at` names where the value sits, for errors.
    pub fn validate(&self, value: &Value, at: &str) -> Result<(), SchemaError> {
        let mismatch = || SchemaError::Mismatch {
            at: at.to_string(),
            expected: self.to_string(),
            found: type_name(value),
        };
        match (self, value) {
            (Schema::Any, _) => Ok(()),
            (Schema::Bool, Value::Bool(_)) => Ok(()),
            (Schema::Int, Value::Integer(_)) if as_i64(value).is_some() => Ok(()),
            (Schema::Float, Value::Float(_)) => Ok(()),
            (Schema::Float, Value::Integer(_)) => Ok(()),
            (Schema::String, Value::Text(_)) => Ok(()),
            (Schema::Bytes, Value::Bytes(_)) => Ok(()),
            (Schema::Map(ks, vs), Value::Map(entries)) => {
                for (k, v) in entries {
                    ks.validate(k, &format!("{at} key"))?;
                    vs.validate(v, &format!("{at}[{}]", short(k)))?;
                }
                Ok(())
            }
            (Schema::Set(es), Value::Array(items)) | (Schema::List(es), Value::Array(items)) => {
                for (i, e) in items.iter().enumerate() {
                    es.validate(e, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            _ => Err(mismatch()),
        }
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

fn parse_at(t: &[String], pos: &mut usize, depth: usize) -> Result<Schema, String> {
    if depth > SCHEMA_DEPTH_MAX {
        return Err(format!("nested deeper than {SCHEMA_DEPTH_MAX}"));
    }
    let word = t.get(*pos).ok_or("unexpected end")?.clone();
    *pos += 1;
    let expect = |s: &str, pos: &mut usize| -> Result<(), String> {
        match t.get(*pos) {
            Some(x) if x == s => {
                *pos += 1;
                Ok(())
            }
            Some(x) => Err(format!("expected `{s}`, found `{x}`")),
            None => Err(format!("expected `{s}`, found the end")),
        }
    };
    Ok(match word.as_str() {
        "bool" => Schema::Bool,
        "int" => Schema::Int,
        "float" => Schema::Float,
        "string" => Schema::String,
        "bytes" => Schema::Bytes,
        "any" => Schema::Any,
        "map" => {
            expect("<", pos)?;
            let k = parse_at(t, pos, depth + 1)?;
            expect(",", pos)?;
            let v = parse_at(t, pos, depth + 1)?;
            expect(">", pos)?;
            Schema::Map(Box::new(k), Box::new(v))
        }
        "set" | "list" => {
            expect("<", pos)?;
            let e = parse_at(t, pos, depth + 1)?;
            expect(">", pos)?;
            if word == "set" {
                Schema::Set(Box::new(e))
            } else {
                Schema::List(Box::new(e))
            }
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
        assert!(Schema::parse("map<string>").is_err());
        assert!(Schema::parse("widget").is_err());
        assert!(Schema::parse("int int").is_err());
    }

    #[test]
    fn validates_values() {
        let s = Schema::parse("map<string, int>").unwrap();
        let ok = Value::Map(vec![(Value::Text("a".into()), Value::Integer(1.into()))]);
        assert!(s.validate(&ok, "counts").is_ok());
        let bad = Value::Map(vec![(Value::Text("a".into()), Value::Text("x".into()))]);
        assert_eq!(
            s.validate(&bad, "counts").unwrap_err().to_string(),
            "at counts[\"a\"]: expected int, found string"
        );
    }
}
