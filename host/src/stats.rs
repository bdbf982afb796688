//! The stats loop: samples each running instance's memory and CPU from the runtime every
//! `stats_interval_secs`, for `status` and `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orca_docker::{ContainerRuntime, ContainerStats};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::controller::ControllerHandle;
use crate::metrics::Metrics;

/// Latest usage of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes.
    pub memory_limit_bytes: u64,
    /// CPU use between the last two samples, in percent of one core.
    pub cpu_percent: Option<f64>,
    cpu_total_ns: u64,
    at: Instant,
}

/// Usage by container id.
#[derive(Clone, Default)]
pub struct Stats {
    inner: Arc<Mutex<HashMap<String, Usage>>>,
}

impl Stats {
    /// Empty table.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Latest usage of an instance, if sampled.
    pub fn usage(&self, id: &str) -> Option<Usage> {
        self.inner.lock().expect("stats lock").get(id).copied()
    }

    fn record(&self, id: &str, s: ContainerStats, at: Instant) {
        let mut map = self.inner.lock().expect("stats lock");
        let cpu_percent = map.get(id).and_then(|prev| {
            let dt = at.duration_since(prev.at).as_nanos() as f64;
            (dt > 0.0 && s.cpu_total_ns >= prev.cpu_total_ns)
                .then(|| (s.cpu_total_ns - prev.cpu_total_ns) as f64 / dt * 100.0)
        });
        let usage = Usage {
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            cpu_percent,
            cpu_total_ns: s.cpu_total_ns,
            at,
        };
        map.insert(id.to_string(), usage);
    }

    /// Samples every running instance each `interval` until `shutdown`, on whichever node
    /// it runs (the master's own engine is `local_name`).
    #[allow(clippy::too_many_arguments)]
    pub async fn run<R: ContainerRuntime>(
        self,
        runtime: Arc<R>,
        nodes: Arc<crate::nodes::Nodes>,
        local_name: String,
        controller: ControllerHandle,
        metrics: Metrics,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let view = controller.view();
            let running: Vec<_> = view.instances.iter().filter(|i| i.is_running()).collect();
            let samples = futures::future::join_all(running.iter().map(|i| {
                let node = nodes.runtime_for(&i.node, &runtime, &local_name);
                async move {
                    match node {
                        Some(r) => r.stats(&i.info.id).await,
                        None => Err(orca_docker::RuntimeError::Unavailable {
                            reason: format!("node {} is not connected", i.node),
                        }),
                    }
                }
            }))
            .await;
            let now = Instant::now();
            let mut live = HashSet::new();
            metrics.clear_usage();
            for (inst, sample) in running.iter().zip(samples) {
                match sample {
                    Ok(s) => {
                        self.record(&inst.info.id, s, now);
                        metrics.observe_usage(inst, s.memory_bytes, s.cpu_total_ns);
                        live.insert(inst.info.id.clone());
                    }
                    Err(e) => {
                        debug!(id = %crate::instance::short(&inst.info.id), error = %e, "stats sample failed")
                    }
                }
            }
            self.inner
                .lock()
                .expect("stats lock")
                .retain(|id, _| live.contains(id));
        }
    }
}
