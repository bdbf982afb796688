//! The host side of a plugin call: the store data ([`HostState`]), the memory limiter, and
//! the implementations of the host interfaces (`logging`, `endpoint`, `crypto`, `build-host`).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::bindings::{builder, logging, probe, webhook, wit};
use super::build_host::BuildHostCap;
use super::endpoint::EndpointCap;
use super::types::Pair;

/// Longest log message (or build log line) kept; the rest is cut at a char boundary.
pub(crate) const MAX_LOG_BYTES: usize = 4 * 1024;
/// Log messages kept per call; a plugin logging in a loop cannot flood the host's logs.
pub(crate) const MAX_LOGS_PER_CALL: u32 = 256;

/// Caps a store's memories (summed) and tables, and remembers a refusal so a subsequent trap
/// can be reported as [`PluginError::MemoryExceeded`](super::PluginError::MemoryExceeded).
pub(crate) struct Limiter {
    pub(crate) memory_limit: usize,
    pub(crate) memory_used: usize,
    pub(crate) memory_denied: bool,
}

/// Table elements per table: far more than any Rust guest needs, far less than harmful.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self
            .memory_used
            .saturating_add(desired.saturating_sub(current));
        if used > self.memory_limit {
            self.memory_denied = true;
            return Ok(false);
        }
        self.memory_used = used;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_denied = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

/// The data of one call's store: who is calling, its limits, and the capabilities its
/// world grants (`None` for the others, which its linker does not even define).
pub(crate) struct HostState {
    pub(crate) plugin: Arc<str>,
    pub(crate) limiter: Limiter,
    pub(crate) logs: u32,
    pub(crate) endpoint: Option<Arc<dyn EndpointCap>>,
    /// Upper bound of one endpoint operation: the probe's own timeout.
    pub(crate) endpoint_timeout: Duration,
    pub(crate) build: Option<Arc<dyn BuildHostCap>>,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, memory_limit: usize) -> Self {
        HostState {
            plugin,
            limiter: Limiter {
                memory_limit,
                memory_used: 0,
                memory_denied: false,
            },
            logs: 0,
            endpoint: None,
            endpoint_timeout: Duration::ZERO,
            build: None,
        }
    }
}

/// `s` cut to at most `max` bytes at a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl wit::Host for HostState {}

impl logging::Host for HostState {
    fn log(&mut self, level: logging::Level, message: String) {
        self.logs += 1;
        if self.logs > MAX_LOGS_PER_CALL {
            if self.logs == MAX_LOGS_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin log limit of {MAX_LOGS_PER_CALL} messages per call reached; dropping the rest");
            }
            return;
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let plugin = &*self.plugin;
        match level {
            logging::Level::Debug => tracing::debug!(target: "orca::plugin", plugin, "{message}"),
            logging::Level::Info => tracing::info!(target: "orca::plugin", plugin, "{message}"),
            logging::Level::Warn => tracing::warn!(target: "orca::plugin", plugin, "{message}"),
            logging::Level::Error => tracing::error!(target: "orca::plugin", plugin, "{message}"),
        }
    }
}

impl HostState {
    fn endpoint(&self) -> Result<&Arc<dyn EndpointCap>, String> {
        self.endpoint
            .as_ref()
            .ok_or_else(|| "no endpoint bound to this call".to_string())
    }

    /// The guest's timeout, capped by the probe's own (0 means "the probe's").
    fn endpoint_timeout(&self, timeout_ms: u32) -> Duration {
        let asked = Duration::from_millis(u64::from(timeout_ms));
        if asked.is_zero() {
            self.endpoint_timeout
        } else {
            asked.min(self.endpoint_timeout)
        }
    }
}

impl probe::orca::plugin::endpoint::Host for HostState {
    fn address(&mut self) -> String {
        self.endpoint
            .as_ref()
            .map(|e| e.address())
            .unwrap_or_default()
    }

    fn http_get(
        &mut self,
        path: String,
        headers: Vec<wit::Pair>,
        timeout_ms: u32,
    ) -> Result<wit::HttpResponse, String> {
        let timeout = self.endpoint_timeout(timeout_ms);
        let headers: Vec<Pair> = super::bindings::from_pairs(headers);
        let response = self.endpoint()?.http_get(&path, &headers, timeout)?;
        Ok(super::bindings::http_response(response))
    }

    fn tcp_connect(&mut self, timeout_ms: u32) -> Result<(), String> {
        let timeout = self.endpoint_timeout(timeout_ms);
        self.endpoint()?.tcp_connect(timeout)
    }
}

impl webhook::orca::plugin::crypto::Host for HostState {
    fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
        // HMAC accepts keys of any length, so `new_from_slice` never fails; an empty answer
        // would only make the plugin's comparison fail, never panic the host.
        match <Hmac<Sha256> as Mac>::new_from_slice(&key) {
            Ok(mut mac) => {
                mac.update(&data);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
        // Lengths are public (a MAC's length is fixed); `ct_eq` returns false for different ones.
        a.ct_eq(&b).into()
    }
}

impl builder::orca::plugin::build_host::Host for HostState {
    fn log_line(&mut self, line: String) {
        if let Some(b) = &self.build {
            b.log_line(truncate(&line, MAX_LOG_BYTES));
        }
    }

    fn checkout(&mut self, repo: String, commit: String) -> Result<String, String> {
        match &self.build {
            Some(b) => b.checkout(&repo, &commit),
            None => Err("no build host bound to this call".into()),
        }
    }

    fn build_image(
        &mut self,
        workdir: String,
        dockerfile: String,
        context: String,
        tag: String,
    ) -> Result<String, String> {
        match &self.build {
            Some(b) => b.build_image(&workdir, &dockerfile, &context, &tag),
            None => Err("no build host bound to this call".into()),
        }
    }
}
