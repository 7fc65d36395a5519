//! Parsing request bodies: records, NDJSON batches, and the JSON form of paths.
//!
//! The JSON form of a navigator is an object with one key naming it: `{"key": <value>}`.
//! Values use the JSON forms of [`crate::value`].

use serde_json::Value as J;

use super::ApiError;
use crate::pstate::{Cmp, Navigator, Range};
use crate::value::{from_json, Value};

fn parse_json(bytes: &[u8], what: &str) -> Result<J, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("malformed-json", format!("{what}: {e}")))
}

fn value(json: &J, what: &str) -> Result<Value, ApiError> {
    from_json(json).map_err(|e| ApiError::bad_request("invalid-value", format!("{what}: {e}")))
}

pub fn parse_record(body: &[u8]) -> Result<Value, ApiError> {
    value(&parse_json(body, "the record")?, "the record")
}

pub fn parse_ndjson(body: &[u8], lines_max: usize) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() >= lines_max {
            return Err(ApiError::new(
                hyper::StatusCode::PAYLOAD_TOO_LARGE,
                "too-many-lines",
                format!("the batch has more than the ndjson_lines_max limit of {lines_max} lines"),
            ));
        }
        let what = format!("line {}", i + 1);
        let v = value(
            &parse_json(line, &what).map_err(|e| e.detail("line", i + 1))?,
            &what,
        )?;
        out.push(v);
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "empty-batch",
            "the NDJSON body has no records",
        ));
    }
    Ok(out)
}

/// Which partitions a select reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PartitionSel {
    /// The partition owning the path's leading key.
    ByKey,
    One(u32),
    All,
}

/// A select request.
pub struct SelectRequest {
    pub path: Vec<Navigator>,
    pub partition: PartitionSel,
    pub limit: Option<usize>,
    /// Where a previous, truncated select stopped (its `next`): partition and values consumed.
    pub after: Option<(u32, usize)>,
}

fn range(i: usize, arg: &J) -> Result<Range, ApiError> {
    let J::Object(o) = arg else {
        return Err(ApiError::bad_request(
            "invalid-path",
            format!("navigator {i}: `sorted-range` takes an object"),
        ));
    };
    let mut r = Range {
        start_inclusive: true,
        ..Range::default()
    };
    for (k, v) in o {
        let bool_arg = || {
            v.as_bool().ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-path",
                    format!("navigator {i}: `{k}` must be true or false"),
                )
            })
        };
        match k.as_str() {
            "start" => r.start = Some(value(v, &format!("navigator {i} start"))?),
            "end" => r.end = Some(value(v, &format!("navigator {i} end"))?),
            "start-inclusive" => r.start_inclusive = bool_arg()?,
            "end-inclusive" => r.end_inclusive = bool_arg()?,
            "reverse" => r.reverse = bool_arg()?,
            "limit" => {
                r.limit = Some(v.as_u64().ok_or_else(|| {
                    ApiError::bad_request("invalid-path", format!("navigator {i}: `limit` must be a non-negative integer"))
                })?)
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid-path",
                    format!("navigator {i}: unknown sorted-range field `{other}` (start, end, start-inclusive, end-inclusive, limit, reverse)"),
                ))
            }
        }
    }
    Ok(r)
}

/// Parses the JSON form of one navigator (see the README for every form).
fn navigator(i: usize, item: &J) -> Result<Navigator, ApiError> {
    if let J::String(name) = item {
        return match name.as_str() {
            "all" => Ok(Navigator::All),
            "map-keys" => Ok(Navigator::MapKeys),
            "map-vals" => Ok(Navigator::MapVals),
            "first" => Ok(Navigator::First),
            "last" => Ok(Navigator::Last),
            "count" => Ok(Navigator::Count),
            other => Err(ApiError::bad_request(
                "unknown-navigator",
                format!("navigator {i}: unknown navigator `{other}`"),
            )),
        };
    }
    let J::Object(o) = item else {
        return Err(ApiError::bad_request(
            "invalid-path",
            format!("navigator {i} must be a name like \"all\" or an object like {{\"key\": \"apple\"}}"),
        ));
    };
    if o.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid-path",
            format!("navigator {i} must have exactly one key"),
        ));
    }
    let (name, arg) = o.iter().next().expect("one entry");
    let v = |arg: &J| value(arg, &format!("navigator {i}"));
    let cmp = |c: Cmp| -> Result<Navigator, ApiError> { Ok(Navigator::Filter(c, v(arg)?)) };
    match name.as_str() {
        "key" => Ok(Navigator::Key(v(arg)?)),
        "must" => Ok(Navigator::Must(v(arg)?)),
        "nth" => Ok(Navigator::Nth(arg.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "invalid-path",
                format!("navigator {i}: `nth` takes a non-negative integer"),
            )
        })?)),
        "null-to-val" => Ok(Navigator::NullToVal(v(arg)?)),
        "sorted-range" => Ok(Navigator::SortedRange(range(i, arg)?)),
        "filter-eq" => cmp(Cmp::Eq),
        "filter-ne" => cmp(Cmp::Ne),
        "filter-lt" => cmp(Cmp::Lt),
        "filter-le" => cmp(Cmp::Le),
        "filter-gt" => cmp(Cmp::Gt),
        "filter-ge" => cmp(Cmp::Ge),
        "all" | "map-keys" | "map-vals" | "first" | "last" | "count" => {
            navigator(i, &J::String(name.clone()))
        }
        other => Err(ApiError::bad_request(
            "unknown-navigator",
            format!("navigator {i}: unknown navigator `{other}`"),
        )),
    }
}

pub fn parse_path(json: &J, navigators_max: usize) -> Result<Vec<Navigator>, ApiError> {
    let J::Array(items) = json else {
        return Err(ApiError::bad_request(
            "invalid-path",
            "`path` must be a list of navigators",
        ));
    };
    if items.len() > navigators_max {
        return Err(ApiError::bad_request(
            "path-too-long",
            format!(
                "the path has {} navigators, over the path_navigators_max limit of {navigators_max}",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| navigator(i, item))
        .collect()
}

pub fn parse_select(body: &[u8], navigators_max: usize) -> Result<SelectRequest, ApiError> {
    let j = parse_json(body, "the select request")?;
    let J::Object(o) = &j else {
        return Err(ApiError::bad_request(
            "invalid-request",
            "the select request must be an object with `path`",
        ));
    };
    for k in o.keys() {
        if !matches!(k.as_str(), "path" | "partition" | "limit" | "after") {
            return Err(ApiError::bad_request(
                "unknown-field",
                format!("unknown field `{k}` (expected `path`, `partition`, `limit`, `after`)"),
            ));
        }
    }
    let path = parse_path(
        o.get("path")
            .ok_or_else(|| ApiError::bad_request("invalid-request", "missing `path`"))?,
        navigators_max,
    )?;
    let partition = match o.get("partition") {
        None | Some(J::Null) => PartitionSel::ByKey,
        Some(J::String(s)) if s == "all" => PartitionSel::All,
        Some(J::Number(n)) => PartitionSel::One(
            n.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "partition-out-of-range",
                        format!("invalid partition {n}"),
                    )
                })?,
        ),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-request",
                format!("`partition` must be an integer or \"all\", got {other}"),
            ))
        }
    };
    let limit = match o.get("limit") {
        None | Some(J::Null) => None,
        Some(l) => Some(l.as_u64().filter(|l| *l > 0).ok_or_else(|| {
            ApiError::bad_request("invalid-request", "`limit` must be a positive integer")
        })? as usize),
    };
    if partition == PartitionSel::ByKey && path.is_empty() {
        return Err(ApiError::bad_request(
            "invalid-path",
            "the path is empty; it must start with a `key` navigator",
        ));
    }
    let after = match o.get("after") {
        None | Some(J::Null) => None,
        Some(J::Object(a)) => {
            let num = |k: &str| a.get(k).and_then(J::as_u64);
            match (num("partition"), num("skip")) {
                (Some(p), Some(s)) if a.len() == 2 => Some((p as u32, s as usize)),
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid-request",
                        "`after` must be the `next` object of a previous answer",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid-request",
                "`after` must be the `next` object of a previous answer",
            ))
        }
    };
    Ok(SelectRequest {
        path,
        partition,
        limit,
        after,
    })
}
