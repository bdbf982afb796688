//! The wit-bindgen output, one module per world, and the conversions between its types and
//! the SDK's own types. Nothing here is part of the public API: plugin crates reach it only
//! through the `export_*!` macros.
//!
//! `types` and `logging` are generated once (with the `strategy` world) and shared by the other
//! worlds through `with`, so one set of conversions serves every world and a plugin has one
//! `logging` import whatever its world.

// The generated code is `unsafe` by nature (canonical-ABI lifting and lowering); it is confined
// to this module.
#![allow(unsafe_code, missing_docs, clippy::all)]

/// The runtime support the generated code calls, reachable from plugin crates.
pub use wit_bindgen::rt;

/// The `strategy` world; also the home of the shared `types` and `logging` interfaces.
pub mod strategy {
    wit_bindgen::generate!({
        path: "../wit",
        world: "orca:plugin/strategy",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "orca_plugin_sdk::__bindings::strategy",
        runtime_path: "orca_plugin_sdk::__bindings::rt",
    });
}

/// The `placement` world.
pub mod placement {
    wit_bindgen::generate!({
        path: "../wit",
        world: "orca:plugin/placement",
        with: {
            "orca:plugin/types@0.3.0": crate::__bindings::strategy::orca::plugin::types,
            "orca:plugin/logging@0.3.0": crate::__bindings::strategy::orca::plugin::logging,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "orca_plugin_sdk::__bindings::placement",
        runtime_path: "orca_plugin_sdk::__bindings::rt",
    });
}

/// The `probe` world.
pub mod probe {
    wit_bindgen::generate!({
        path: "../wit",
        world: "orca:plugin/probe",
        with: {
            "orca:plugin/types@0.3.0": crate::__bindings::strategy::orca::plugin::types,
            "orca:plugin/logging@0.3.0": crate::__bindings::strategy::orca::plugin::logging,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "orca_plugin_sdk::__bindings::probe",
        runtime_path: "orca_plugin_sdk::__bindings::rt",
    });
}

/// The `webhook` world.
pub mod webhook {
    wit_bindgen::generate!({
        path: "../wit",
        world: "orca:plugin/webhook",
        with: {
            "orca:plugin/types@0.3.0": crate::__bindings::strategy::orca::plugin::types,
            "orca:plugin/logging@0.3.0": crate::__bindings::strategy::orca::plugin::logging,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "orca_plugin_sdk::__bindings::webhook",
        runtime_path: "orca_plugin_sdk::__bindings::rt",
    });
}

/// The `builder` world.
pub mod builder {
    wit_bindgen::generate!({
        path: "../wit",
        world: "orca:plugin/builder",
        with: {
            "orca:plugin/types@0.3.0": crate::__bindings::strategy::orca::plugin::types,
            "orca:plugin/logging@0.3.0": crate::__bindings::strategy::orca::plugin::logging,
        },
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "orca_plugin_sdk::__bindings::builder",
        runtime_path: "orca_plugin_sdk::__bindings::rt",
    });
}

/// The generated `types` interface, shared by every world.
pub use strategy::orca::plugin::types as wit;

/// Conversions between the generated records and the SDK's [`crate::types`].
pub(crate) mod convert {
    use super::wit;
    use crate::types as sdk;

    impl From<wit::Pair> for sdk::Pair {
        fn from(p: wit::Pair) -> Self {
            sdk::Pair {
                key: p.key,
                value: p.value,
            }
        }
    }

    impl From<sdk::Pair> for wit::Pair {
        fn from(p: sdk::Pair) -> Self {
            wit::Pair {
                key: p.key,
                value: p.value,
            }
        }
    }

    fn pairs(v: Vec<wit::Pair>) -> Vec<sdk::Pair> {
        v.into_iter().map(Into::into).collect()
    }

    impl From<wit::Service> for sdk::Service {
        fn from(s: wit::Service) -> Self {
            sdk::Service {
                project: s.project,
                name: s.name,
                image: s.image,
                replicas: s.replicas,
                port: s.port,
                domain: s.domain,
                params: pairs(s.params),
            }
        }
    }

    impl From<wit::Readiness> for sdk::Readiness {
        fn from(r: wit::Readiness) -> Self {
            match r {
                wit::Readiness::Starting => sdk::Readiness::Starting,
                wit::Readiness::Ready => sdk::Readiness::Ready,
                wit::Readiness::Failed => sdk::Readiness::Failed,
            }
        }
    }

    impl From<wit::Instance> for sdk::Instance {
        fn from(i: wit::Instance) -> Self {
            sdk::Instance {
                id: i.id,
                node: i.node,
                revision: i.revision,
                readiness: i.readiness.into(),
                age_ms: i.age_ms,
            }
        }
    }

    /// The columns of `nodes` as one [`sdk::Node`] per node (a column shorter than the
    /// first reads as zeros; index lists outside the range are ignored).
    pub(crate) fn nodes(n: wit::Nodes) -> Vec<sdk::Node> {
        let at32 = |c: &[u32], i: usize| c.get(i).copied().unwrap_or(0);
        let at64 = |c: &[u64], i: usize| c.get(i).copied().unwrap_or(0);
        let mut nodes: Vec<sdk::Node> = (0..n.cpu_millis.len())
            .map(|i| sdk::Node {
                cpu_millis: n.cpu_millis[i],
                cpu_millis_free: at32(&n.cpu_millis_free, i),
                memory_bytes: at64(&n.memory_bytes, i),
                memory_bytes_free: at64(&n.memory_bytes_free, i),
                instances: at32(&n.instances, i),
                existing: at32(&n.existing, i),
                draining: false,
                selected: true,
            })
            .collect();
        for i in n.draining {
            if let Some(node) = nodes.get_mut(i as usize) {
                node.draining = true;
            }
        }
        for i in n.unselected {
            if let Some(node) = nodes.get_mut(i as usize) {
                node.selected = false;
            }
        }
        nodes
    }

    /// A plugin's verdicts as the `verdicts` record: a score per node and the infeasible
    /// nodes. A node without a verdict is infeasible; a verdict for a node out of range or a
    /// second verdict for a node is the plugin's error.
    pub(crate) fn verdicts(
        verdicts: Vec<sdk::Verdict>,
        count: usize,
    ) -> Result<wit::Verdicts, String> {
        let mut scores = vec![0u32; count];
        let mut answered = vec![false; count];
        let mut infeasible = Vec::new();
        for v in verdicts {
            let i = v.node as usize;
            match answered.get_mut(i) {
                None => return Err(format!("verdict for node {i} of {count}")),
                Some(true) => return Err(format!("two verdicts for node {i}")),
                Some(seen) => *seen = true,
            }
            scores[i] = v.score;
            if let Some(reason) = v.infeasible {
                infeasible.push(wit::Infeasible {
                    node: v.node,
                    reason,
                });
            }
        }
        for (i, seen) in answered.into_iter().enumerate() {
            if !seen {
                infeasible.push(wit::Infeasible {
                    node: i as u32,
                    reason: "no verdict".into(),
                });
            }
        }
        Ok(wit::Verdicts { scores, infeasible })
    }

    impl From<wit::Traffic> for sdk::Traffic {
        fn from(t: wit::Traffic) -> Self {
            sdk::Traffic {
                stable: t.stable,
                candidate: t.candidate,
            }
        }
    }

    impl From<sdk::Traffic> for wit::Traffic {
        fn from(t: sdk::Traffic) -> Self {
            wit::Traffic {
                stable: t.stable,
                candidate: t.candidate,
            }
        }
    }

    impl From<wit::RolloutState> for sdk::RolloutState {
        fn from(s: wit::RolloutState) -> Self {
            sdk::RolloutState {
                service: s.service.into(),
                stable_revision: s.stable_revision,
                candidate_revision: s.candidate_revision,
                stable: s.stable.into_iter().map(Into::into).collect(),
                candidate: s.candidate.into_iter().map(Into::into).collect(),
                traffic: s.traffic.into(),
                candidate_requests: s.candidate_requests,
                candidate_errors: s.candidate_errors,
                elapsed_ms: s.elapsed_ms,
                now_ms: s.now_ms,
                promote_requested: s.promote_requested,
                rollback_requested: s.rollback_requested,
                plugin_state: s.plugin_state,
            }
        }
    }

    impl From<sdk::Action> for wit::Action {
        fn from(a: sdk::Action) -> Self {
            match a {
                sdk::Action::ScaleCandidate(n) => wit::Action::ScaleCandidate(n),
                sdk::Action::ScaleStable(n) => wit::Action::ScaleStable(n),
                sdk::Action::SetTraffic(t) => wit::Action::SetTraffic(t.into()),
                sdk::Action::WaitUntil(t) => wit::Action::WaitUntil(t),
                sdk::Action::Promote => wit::Action::Promote,
                sdk::Action::Rollback(reason) => wit::Action::Rollback(reason),
                sdk::Action::Done => wit::Action::Done,
            }
        }
    }

    impl From<sdk::Step> for wit::Step {
        fn from(s: sdk::Step) -> Self {
            wit::Step {
                actions: s.actions.into_iter().map(Into::into).collect(),
                plugin_state: s.plugin_state,
            }
        }
    }

    impl From<wit::PlacementRequest> for sdk::PlacementRequest {
        fn from(r: wit::PlacementRequest) -> Self {
            sdk::PlacementRequest {
                service: r.service.into(),
                pin: r.pin,
                memory_bytes: r.memory_bytes,
                cpu_millis: r.cpu_millis,
            }
        }
    }

    impl From<wit::ProbeSettings> for sdk::ProbeSettings {
        fn from(s: wit::ProbeSettings) -> Self {
            sdk::ProbeSettings {
                path: s.path,
                timeout_ms: s.timeout_ms,
                params: pairs(s.params),
            }
        }
    }

    impl From<wit::HttpResponse> for sdk::HttpResponse {
        fn from(r: wit::HttpResponse) -> Self {
            sdk::HttpResponse {
                status: r.status,
                headers: pairs(r.headers),
                body: r.body,
            }
        }
    }

    impl From<wit::WebhookRequest> for sdk::WebhookRequest {
        fn from(r: wit::WebhookRequest) -> Self {
            sdk::WebhookRequest {
                method: r.method,
                path: r.path,
                headers: pairs(r.headers),
                body: r.body,
            }
        }
    }

    impl From<wit::Hook> for sdk::Hook {
        fn from(h: wit::Hook) -> Self {
            sdk::Hook {
                id: h.id,
                repo: h.repo,
                branch: h.branch,
                secret: h.secret,
            }
        }
    }

    impl From<sdk::Redeploy> for wit::Redeploy {
        fn from(r: sdk::Redeploy) -> Self {
            wit::Redeploy {
                hook: r.hook,
                repo: r.repo,
                branch: r.branch,
                commit: r.commit,
            }
        }
    }

    impl From<sdk::WebhookOutcome> for wit::WebhookOutcome {
        fn from(o: sdk::WebhookOutcome) -> Self {
            match o {
                sdk::WebhookOutcome::Redeploy(r) => {
                    wit::WebhookOutcome::Redeploy(r.into_iter().map(Into::into).collect())
                }
                sdk::WebhookOutcome::Ignore(reason) => wit::WebhookOutcome::Ignore(reason),
                sdk::WebhookOutcome::Pong => wit::WebhookOutcome::Pong,
            }
        }
    }

    impl From<crate::strategy::InvalidParam> for wit::ParamError {
        fn from(e: crate::strategy::InvalidParam) -> Self {
            wit::ParamError {
                key: e.key,
                message: e.message,
            }
        }
    }

    impl From<sdk::Rejection> for wit::Rejection {
        fn from(r: sdk::Rejection) -> Self {
            wit::Rejection {
                status: r.status,
                reason: r.reason,
            }
        }
    }

    impl From<wit::BuildRequest> for sdk::BuildRequest {
        fn from(r: wit::BuildRequest) -> Self {
            sdk::BuildRequest {
                project: r.project,
                service: r.service,
                repo: r.repo,
                branch: r.branch,
                commit: r.commit,
                dockerfile: r.dockerfile,
                context: r.context,
                tag: r.tag,
            }
        }
    }

    impl From<sdk::BuildOutput> for wit::BuildOutput {
        fn from(o: sdk::BuildOutput) -> Self {
            wit::BuildOutput {
                image_id: o.image_id,
                tag: o.tag,
            }
        }
    }

    impl From<sdk::Level> for super::strategy::orca::plugin::logging::Level {
        fn from(l: sdk::Level) -> Self {
            use super::strategy::orca::plugin::logging::Level;
            match l {
                sdk::Level::Debug => Level::Debug,
                sdk::Level::Info => Level::Info,
                sdk::Level::Warn => Level::Warn,
                sdk::Level::Error => Level::Error,
            }
        }
    }
}

/// The host's capabilities, behind the SDK's capability traits.
pub mod host {
    use crate::types::{HttpResponse, Pair};

    /// The `endpoint` import of the `probe` world.
    pub struct HostEndpoint;

    impl crate::probe::Endpoint for HostEndpoint {
        fn address(&self) -> String {
            super::probe::orca::plugin::endpoint::address()
        }

        fn http_get(
            &self,
            path: &str,
            headers: &[Pair],
            timeout_ms: u32,
        ) -> Result<HttpResponse, String> {
            let headers: Vec<super::wit::Pair> = headers.iter().cloned().map(Into::into).collect();
            super::probe::orca::plugin::endpoint::http_get(path, &headers, timeout_ms)
                .map(Into::into)
        }

        fn tcp_connect(&self, timeout_ms: u32) -> Result<(), String> {
            super::probe::orca::plugin::endpoint::tcp_connect(timeout_ms)
        }
    }

    /// The `crypto` import of the `webhook` world.
    pub struct HostCrypto;

    impl crate::webhook::Crypto for HostCrypto {
        fn hmac_sha256(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
            super::webhook::orca::plugin::crypto::hmac_sha256(key, data)
        }

        fn constant_time_eq(&self, a: &[u8], b: &[u8]) -> bool {
            super::webhook::orca::plugin::crypto::constant_time_eq(a, b)
        }
    }

    /// The `build-host` import of the `builder` world.
    pub struct HostBuildHost;

    impl crate::builder::BuildHost for HostBuildHost {
        fn log_line(&self, line: &str) {
            super::builder::orca::plugin::build_host::log_line(line)
        }

        fn checkout(&self, repo: &str, commit: &str) -> Result<String, String> {
            super::builder::orca::plugin::build_host::checkout(repo, commit)
        }

        fn build_image(
            &self,
            workdir: &str,
            dockerfile: &str,
            context: &str,
            tag: &str,
        ) -> Result<String, String> {
            super::builder::orca::plugin::build_host::build_image(workdir, dockerfile, context, tag)
        }
    }
}

/// Sends a log line to the host's `logging` import.
pub fn log(level: crate::types::Level, message: &str) {
    strategy::orca::plugin::logging::log(level.into(), message)
}
