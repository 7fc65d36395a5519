//! Handler execution: one handler call with its retries, and the wasmtime implementation of
//! the [`Executor`] seam.
//!
//! A failed call is classified ([`RetryClass`]): a *transient* failure (a trap, the deadline,
//! the memory cap, a failed instantiation) may pass on another attempt and is retried with
//! backoff up to `handler_attempts_max`; a *permanent* one (the guest returned an error, a hop
//! to a handler the topology does not declare, an oversized or undecodable ack value) fails the
//! same way every time and becomes a dead letter at once. Invariant: a failed call's writes are
//! dropped ([`Executor::end_record`] with `false`) before anything else runs.

use super::core::Partition;
use super::seams::{Called, Executor, HopTransport, PartitionLog, PartitionStore};
use super::work::ACK_VALUE_BYTES_MAX;
use super::Topology;
use crate::imports::{EmittedHop, Imports};
use crate::pstate::store::Overlay;
use crate::runtime::{GuestError, GuestInstance, RecordCtx};
use crate::value::{from_cbor, Value};

/// Whether another attempt of a failed call may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    Transient,
    Permanent,
}

/// The retry class of a failure code (see [`GuestError`]).
pub fn retry_class(code: &str) -> RetryClass {
    match code {
        "trap" | "deadline-exceeded" | "memory-limit" | "instantiate" => RetryClass::Transient,
        _ => RetryClass::Permanent,
    }
}

/// A handler's successful outcome: its ack-return value and the hops it emitted.
pub type Handled = (Option<Value>, Vec<EmittedHop>);

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Runs one handler with retries; on success keeps its writes. On failure returns the
    /// last error and the number of attempts made.
    pub(super) fn run_handler(
        &mut self,
        topology: &Topology,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<Handled, (GuestError, u32)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .exec
                .call(&topology.name, handler, input, ctx)
                .and_then(|called| check_call(topology, called));
            match result {
                Ok(v) => {
                    self.exec.end_record(true);
                    self.counters.processed(&topology.name);
                    return Ok(v);
                }
                Err(e) => {
                    self.exec.end_record(false);
                    tracing::warn!(
                        module = &*self.cfg.module,
                        partition = self.cfg.partition,
                        topology = topology.name,
                        handler,
                        offset = ctx.offset,
                        attempt,
                        "handler failed: {e}"
                    );
                    if e.code == "deadline-exceeded" {
                        // A call that ran to its deadline held a core that long: this partition
                        // pauses as long before its next call, so a runaway module gets at most
                        // half a core per partition and its neighbours keep theirs.
                        sleep_ms(self.cfg.deadline_penalty_ms);
                    }
                    let permanent = retry_class(&e.code) == RetryClass::Permanent;
                    if permanent || attempt >= self.cfg.handler_attempts_max {
                        self.counters.dead(&topology.name);
                        return Err((e, attempt));
                    }
                    self.counters.retried(&topology.name);
                    sleep_ms(self.cfg.retry_backoff_base_ms << attempt.min(6));
                }
            }
        }
    }
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Checks what a successful call returned: hops to declared handlers, an ack value that fits.
fn check_call(topology: &Topology, called: Called) -> Result<Handled, GuestError> {
    if let Some(bad) = called
        .hops
        .iter()
        .find(|h| !topology.hop_handlers.contains(&h.handler))
    {
        return Err(GuestError {
            code: "unknown-hop-handler".into(),
            message: format!(
                "hop to handler `{}`, which topology `{}` does not declare (it has: {})",
                bad.handler,
                topology.name,
                topology.hop_handlers.join(", ")
            ),
        });
    }
    if let Some(bytes) = called
        .ack
        .as_ref()
        .filter(|b| b.len() > ACK_VALUE_BYTES_MAX)
    {
        return Err(GuestError {
            code: "ack-too-large".into(),
            message: format!(
                "the ack-return value is {} bytes, over the limit of {ACK_VALUE_BYTES_MAX}",
                bytes.len()
            ),
        });
    }
    let value = called
        .ack
        .map(|bytes| from_cbor(&bytes))
        .transpose()
        .map_err(|e| GuestError {
            code: "invalid-value".into(),
            message: format!("ack-return value: {e}"),
        })?;
    Ok((value, called.hops))
}

/// The handler imports of a partition's instance (it is always made with them).
pub(super) fn handler_imports(instance: &mut GuestInstance) -> &mut Imports {
    instance
        .imports_mut::<Imports>()
        .expect("partition instances are made with `Imports`")
}

impl Executor for GuestInstance {
    fn call(
        &mut self,
        topology: &str,
        handler: &str,
        input: &[u8],
        ctx: RecordCtx<'_>,
    ) -> Result<Called, GuestError> {
        let ack = self.handle(topology, handler, input, ctx)?;
        Ok(Called {
            ack,
            hops: handler_imports(self).take_hops(),
        })
    }

    fn end_record(&mut self, keep: bool) {
        if let Some(s) = handler_imports(self).session_mut().as_mut() {
            s.end_record(keep);
        }
    }

    fn take_writes(&mut self) -> Overlay {
        handler_imports(self)
            .session_mut()
            .as_mut()
            .map(|s| s.take_writes())
            .unwrap_or_default()
    }

    fn take_storage_fault(&mut self) -> Option<super::seams::StorageError> {
        handler_imports(self).take_storage_fault()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_errors_are_permanent_and_traps_transient() {
        for code in [
            "guest-error",
            "unknown-hop-handler",
            "ack-too-large",
            "invalid-value",
        ] {
            assert_eq!(retry_class(code), RetryClass::Permanent, "{code}");
        }
        for code in ["trap", "deadline-exceeded", "memory-limit", "instantiate"] {
            assert_eq!(retry_class(code), RetryClass::Transient, "{code}");
        }
    }
}
