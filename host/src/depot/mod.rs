//! Depots: durable, partitioned, append-only logs of records.
//!
//! Owns partitioners (routing a record to a partition) and the per-partition depot log
//! ([`log::DepotLog`]). Invariant: a hash-partitioned record lands on the partition that owns its
//! key under [`crate::partition`], the same function PStates use.

pub mod log;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pstate::key;
use crate::value::{type_name, Value};

/// How a depot routes records.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitioner {
    /// By the stable hash of the field at this path of the record.
    Hash(Vec<String>),
    /// Round-robin over the partitions.
    Random,
    /// The appender names the partition.
    Direct,
}

impl Partitioner {
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Partitioner::Hash(fields) => serde_json::json!({"hash": fields.join(".")}),
            Partitioner::Random => serde_json::json!("random"),
            Partitioner::Direct => serde_json::json!("direct"),
        }
    }
}

/// A record that cannot be routed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("the record has no `{0}` field, which this depot is hash-partitioned by")]
    MissingKey(String),
    #[error("the record's `{field}` field cannot be a key: {why}")]
    BadKey { field: String, why: String },
    #[error("this depot is `direct`-partitioned: name the partition with ?partition=k")]
    PartitionRequired,
    #[error("partition {given} is out of range: this module has partitions 0..{partitions}")]
    PartitionRange { given: u32, partitions: u32 },
    #[error("?partition is only for `direct` depots; this one routes records itself")]
    PartitionNotAllowed,
}

/// A depot of a deployed module.
#[derive(Debug)]
pub struct Depot {
    pub name: String,
    pub partitioner: Partitioner,
    /// A tick depot: the host appends a tick to every partition this often; clients cannot.
    pub tick_interval_ms: Option<u64>,
    /// How long its records are kept.
    pub retention: Retention,
    round_robin: AtomicU64,
}

/// How long a depot keeps its records, per partition; `None`: no bound of that kind. Records a
/// topology has not processed, or that a dead letter names, are kept whatever the bounds say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    pub max_records: Option<u64>,
    pub max_age_ms: Option<u64>,
}

impl Retention {
    /// A deployment's setting, as in `?retain.<depot>=records:N,age_ms:M` (either or both) or
    /// `none` (keep everything).
    pub fn parse_setting(text: &str) -> Result<Retention, String> {
        let mut r = Retention::default();
        if text == "none" {
            return Ok(r);
        }
        for part in text.split(',') {
            let (kind, n) = part.split_once(':').ok_or_else(|| {
                format!("`{part}`: write `records:N`, `age_ms:MS` (comma-separated) or `none`")
            })?;
            let n: u64 = n
                .parse()
                .map_err(|_| format!("`{part}`: `{n}` is not a non-negative integer"))?;
            match kind {
                "records" => r.max_records = Some(n),
                "age_ms" => r.max_age_ms = Some(n),
                _ => return Err(format!("`{part}`: the bounds are `records` and `age_ms`")),
            }
        }
        Ok(r)
    }

    pub fn is_unbounded(&self) -> bool {
        self.max_records.is_none() && self.max_age_ms.is_none()
    }

    pub fn describe(&self) -> serde_json::Value {
        if self.is_unbounded() {
            return serde_json::Value::Null;
        }
        serde_json::json!({"max_records": self.max_records, "max_age_ms": self.max_age_ms})
    }
}

impl Depot {
    pub fn new(name: String, partitioner: Partitioner) -> Self {
        Self {
            name,
            partitioner,
            tick_interval_ms: None,
            retention: Retention::default(),
            round_robin: AtomicU64::new(0),
        }
    }

    /// The partition `record` goes to; `requested` is the caller's `?partition=`.
    pub fn route(
        &self,
        record: &Value,
        requested: Option<u32>,
        partitions: u32,
    ) -> Result<u32, RouteError> {
        match &self.partitioner {
            Partitioner::Direct => {
                let p = requested.ok_or(RouteError::PartitionRequired)?;
                if p >= partitions {
                    return Err(RouteError::PartitionRange {
                        given: p,
                        partitions,
                    });
                }
                Ok(p)
            }
            _ if requested.is_some() => Err(RouteError::PartitionNotAllowed),
            Partitioner::Random => Ok(
                (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32
            ),
            Partitioner::Hash(fields) => {
                let name = fields.join(".");
                let mut v = record;
                for f in fields {
                    v = field(v, f).ok_or_else(|| RouteError::MissingKey(name.clone()))?;
                }
                let bytes = key::encode(v).map_err(|e| RouteError::BadKey {
                    field: name.clone(),
                    why: format!("{e} (found {})", type_name(v)),
                })?;
                Ok(crate::partition::partition_of(&bytes, partitions))
            }
        }
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
            .map(|(_, v)| v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::from_json;
    use serde_json::json;

    #[test]
    fn hash_routes_like_pstate_keys() {
        let d = Depot::new(
            "words".into(),
            Partitioner::Hash(vec!["user".into(), "id".into()]),
        );
        let r = from_json(&json!({"user": {"id": "apple"}})).unwrap();
        let p = d.route(&r, None, 8).unwrap();
        assert_eq!(
            p,
            crate::pstate::partition_of_key(&Value::Text("apple".into()), 8).unwrap()
        );
        assert_eq!(
            d.route(&from_json(&json!({"user": {}})).unwrap(), None, 8),
            Err(RouteError::MissingKey("user.id".into()))
        );
        assert_eq!(
            d.route(&r, Some(1), 8),
            Err(RouteError::PartitionNotAllowed)
        );
    }

    #[test]
    fn direct_and_random() {
        let d = Depot::new("d".into(), Partitioner::Direct);
        assert_eq!(d.route(&Value::Null, Some(3), 8), Ok(3));
        assert_eq!(
            d.route(&Value::Null, None, 8),
            Err(RouteError::PartitionRequired)
        );
        assert_eq!(
            d.route(&Value::Null, Some(8), 8),
            Err(RouteError::PartitionRange {
                given: 8,
                partitions: 8
            })
        );
        let r = Depot::new("r".into(), Partitioner::Random);
        let ps: Vec<u32> = (0..8)
            .map(|_| r.route(&Value::Null, None, 4).unwrap())
            .collect();
        assert_eq!(ps, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }
}
