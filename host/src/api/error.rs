//! `ApiError`: every failure an HTTP client sees, mapped to a status and a JSON body
//! `{"error": {"code", "message", ...}}` in one place.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::depot::RouteError;
use crate::module::{AppendError, DeployError};
use crate::pstate::AccessError;
use crate::query::QueryError;
use crate::runtime::CompileError;
use crate::topology::ProcessingError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u32>,
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Headers the answer carries besides `Retry-After` (`Allow`, `WWW-Authenticate`).
    pub headers: Vec<(hyper::header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            details: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut e = serde_json::Map::new();
        e.insert("code".into(), self.code.into());
        e.insert("message".into(), self.message.clone().into());
        for (k, v) in &self.details {
            e.insert(k.clone(), v.clone());
        }
        serde_json::json!({ "error": e })
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = super::json_response(self.status, &self.to_json());
        for (name, value) in self.headers {
            if let Ok(v) = value.parse() {
                r.headers_mut().insert(name, v);
            }
        }
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                s.to_string().parse().expect("digits"),
            );
        }
        r
    }
}

/// A storage failure reading committed data: `damaged` (a checksum or structure check
/// failed; the message names module, partition, file and key) or `storage` (an I/O error).
pub fn storage(e: redb::Error) -> ApiError {
    let code = match e {
        redb::Error::Corrupted(_) => "damaged",
        _ => "storage",
    };
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, e.to_string())
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match e.code {
            "unknown-pstate" => StatusCode::NOT_FOUND,
            // A stored value the module's own `migrate` refused: not the client's doing.
            "storage" | "damaged" | "migration-failed" => StatusCode::INTERNAL_SERVER_ERROR,
            "migration-unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code, e.message)
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        let message = e.to_string();
        match e {
            AppendError::UnknownDepot { .. } => ApiError::not_found("unknown-depot", message),
            AppendError::TickDepot { .. } => {
                ApiError::new(hyper::StatusCode::CONFLICT, "tick-depot", message)
            }
            AppendError::Route(r) => ApiError::bad_request(
                match r {
                    RouteError::MissingKey(_) => "missing-key",
                    RouteError::BadKey { .. } => "invalid-key",
                    RouteError::PartitionRequired => "partition-required",
                    RouteError::PartitionRange { .. } => "partition-out-of-range",
                    RouteError::PartitionNotAllowed => "partition-not-allowed",
                },
                message,
            ),
            AppendError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "record-too-large", message)
            }
            AppendError::QueueFull(_) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue-full", message);
                e.retry_after_s = Some(1);
                e
            }
            AppendError::Updating(_) => {
                let mut e =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "module-updating", message);
                e.retry_after_s = Some(1);
                e
            }
            AppendError::Failed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "partition-failed", message)
            }
            AppendError::Restarting { .. } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition-restarting",
                    message,
                );
                e.retry_after_s = Some(1);
                e
            }
            AppendError::Unavailable(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition-unavailable",
                    message,
                );
                e.retry_after_s = Some(1);
                e
            }
        }
    }
}

impl From<ProcessingError> for ApiError {
    fn from(e: ProcessingError) -> Self {
        let message = e.to_string();
        match e {
            ProcessingError::Topology {
                partition,
                offset,
                topology,
                error,
            } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "topology-failed",
                message,
            )
            .detail("partition", partition)
            .detail("offset", offset)
            .detail("topology", topology)
            .detail("guest_error", error.code),
            ProcessingError::Storage { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            ProcessingError::PartitionFailed { partition, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "partition-failed", message)
                    .detail("partition", partition)
            }
            ProcessingError::KeyReused {
                partition, offset, ..
            } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                message,
            )
            .detail("partition", partition)
            .detail("offset", offset),
            ProcessingError::AppendUnknown {
                partition, offset, ..
            } => {
                let mut e =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown", message)
                        .detail("partition", partition)
                        .detail("durable", "unknown")
                        .detail("outcome", "unknown");
                if let Some(o) = offset {
                    e = e.detail("offset", o);
                }
                e.retry_after_s = Some(1);
                e
            }
            ProcessingError::NotTaken {
                partition, busy, ..
            } => {
                let mut e = if busy {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue-full", message)
                } else {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "partition-unavailable",
                        message,
                    )
                };
                e.retry_after_s = Some(1);
                e.detail("partition", partition)
            }
            ProcessingError::OutcomeUnknown {
                partition, offset, ..
            } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown", message)
                .detail("partition", partition)
                .detail("offset", offset)
                .detail("durable", true)
                .detail("outcome", "unknown"),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Unknown { .. } => ApiError::not_found("unknown-query", message),
            QueryError::Failed { code, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "query-failed", message)
                    .detail("guest_error", code)
            }
            QueryError::Guest { error, .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query-failed", message)
                    .detail("guest_error", error.code)
            }
            QueryError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            QueryError::Unavailable(_) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "partition-unavailable",
                    message,
                );
                e.retry_after_s = Some(1);
                e
            }
            QueryError::BadAnswer(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query-failed", message)
                    .detail("guest_error", "invalid-value")
            }
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let message = e.to_string();
        match e {
            DeployError::BadName(_) => ApiError::bad_request("invalid-name", message),
            DeployError::Incompatible { .. } => {
                ApiError::new(StatusCode::CONFLICT, "incompatible-update", message)
            }
            DeployError::DrainTimeout { .. } => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "update-drain-timeout",
                    message,
                );
                e.retry_after_s = Some(5);
                e
            }
            DeployError::BadPartitions(_) => ApiError::bad_request("invalid-partitions", message),
            DeployError::Compile(c) => match c {
                CompileError::TooLarge { .. } => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "module-too-large", message)
                }
                CompileError::Invalid(_) => ApiError::bad_request("invalid-component", message),
                CompileError::ForbiddenImport(names) => {
                    ApiError::bad_request("forbidden-import", message)
                        .detail("import", names[0].clone())
                        .detail("imports", names)
                }
                CompileError::ContractVersion { .. } => {
                    ApiError::bad_request("contract-version", message)
                }
                CompileError::MissingExport => {
                    ApiError::bad_request("not-a-sluice-module", message)
                }
                CompileError::Cache(_) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
                }
            },
            DeployError::Define(g) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "define-failed", message)
                    .detail("guest_error", g.code)
            }
            DeployError::InvalidDefinition(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-definition",
                message,
            ),
            DeployError::Io(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
            }
            DeployError::Failed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "module-failed", message)
            }
            DeployError::ClusterUnsupported(_) => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, "cluster-unsupported", message)
            }
            DeployError::Claim(_) => {
                let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "claim-failed", message);
                e.retry_after_s = Some(1);
                e
            }
        }
    }
}
