//! Prometheus metrics: the registry served at `/metrics` and the gauges the controller sets.
//!
//! The reference's families (`orca_services_total`, `orca_instances_total{service,project,
//! status}`, `orca_nodes_total`) are served beside the older `orca_services`,
//! `orca_instances`, `orca_nodes`, with the same values.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use orca_store::{DesiredState, ServiceRecord};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::instance::Instance;

/// Labels of `orca_nodes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// `ready`, `down` or `draining`.
    pub state: String,
}

/// Labels of `orca_instances_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Service name.
    pub service: String,
    /// Project.
    pub project: String,
    /// `ready`, `starting` or `failed`.
    pub status: String,
}

/// Labels of the per-instance usage gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    /// Service name.
    pub service: String,
    /// Project.
    pub project: String,
    /// Replica slot.
    pub slot: String,
}

/// All of orca's metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    services: Gauge,
    instances: Family<InstanceLabels, Gauge>,
    services_total: Gauge,
    instances_total: Family<InstanceLabels, Gauge>,
    nodes: Gauge,
    nodes_total: Family<NodeLabels, Gauge>,
    pass_seconds: Histogram,
    memory: Family<UsageLabels, Gauge>,
    cpu_seconds: Family<UsageLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// Creates the registry; `extra` registers other components' metrics (the proxy's).
    pub fn new(extra: impl FnOnce(&mut Registry)) -> Metrics {
        let mut registry = Registry::default();
        let services: Gauge = Gauge::default();
        let instances = Family::<InstanceLabels, Gauge>::default();
        let nodes: Gauge = Gauge::default();
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("orca_services", "Services in the store", services.clone());
        registry.register(
            "orca_instances",
            "Instances by service, project and status",
            instances.clone(),
        );
        registry.register("orca_nodes", "Nodes in the cluster", nodes.clone());
        // The reference manual's names, beside the older ones (same values): dashboards
        // written from the reference read these.
        let services_total: Gauge = Gauge::default();
        let instances_total = Family::<InstanceLabels, Gauge>::default();
        let nodes_total = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "orca_services_total",
            "Running services in the store",
            services_total.clone(),
        );
        registry.register(
            "orca_instances_total",
            "Instances by service, project and status (ready, starting, failed)",
            instances_total.clone(),
        );
        registry.register(
            "orca_nodes_total",
            "Nodes in the cluster by state (ready, down, draining)",
            nodes_total.clone(),
        );
        registry.register(
            "orca_controller_pass_seconds",
            "Duration of a controller pass",
            pass_seconds.clone(),
        );
        let memory = Family::<UsageLabels, Gauge>::default();
        let cpu_seconds = Family::<UsageLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "orca_instance_memory_bytes",
            "Memory in use by an instance",
            memory.clone(),
        );
        registry.register(
            "orca_instance_cpu_seconds",
            "CPU time consumed by an instance since it started",
            cpu_seconds.clone(),
        );
        extra(&mut registry);
        // The master's own node, until the first pass counts the others.
        nodes.set(1);
        nodes_total
            .get_or_create(&NodeLabels {
                state: "ready".into(),
            })
            .set(1);
        Metrics {
            registry: Arc::new(registry),
            services,
            instances,
            services_total,
            instances_total,
            nodes,
            nodes_total,
            pass_seconds,
            memory,
            cpu_seconds,
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Records one controller pass.
    pub fn observe_pass(&self, took: Duration) {
        self.pass_seconds.observe(took.as_secs_f64());
    }

    /// Forgets all usage samples (before a new round of them).
    pub fn clear_usage(&self) {
        self.memory.clear();
        self.cpu_seconds.clear();
    }

    /// Records one usage sample of an instance.
    pub fn observe_usage(&self, i: &Instance, memory_bytes: u64, cpu_total_ns: u64) {
        let labels = UsageLabels {
            service: i
                .service
                .split_once('/')
                .map(|(_, n)| n)
                .unwrap_or(&i.service)
                .to_string(),
            project: i.project.clone(),
            slot: i.slot.to_string(),
        };
        self.memory
            .get_or_create(&labels)
            .set(i64::try_from(memory_bytes).unwrap_or(i64::MAX));
        self.cpu_seconds
            .get_or_create(&labels)
            .set(cpu_total_ns as f64 / 1e9);
    }

    /// Sets the node gauges: how many nodes are in each state (the master counts as ready).
    pub fn observe_nodes(&self, states: &[&str]) {
        self.nodes.set(states.len() as i64);
        self.nodes_total.clear();
        for state in states {
            self.nodes_total
                .get_or_create(&NodeLabels {
                    state: state.to_string(),
                })
                .inc();
        }
    }

    /// Sets the gauges from one observation.
    pub fn observe_state(
        &self,
        records: &[ServiceRecord],
        instances: &[Instance],
        verdicts: &crate::health::Verdicts<'_>,
    ) {
        let running = records
            .iter()
            .filter(|r| r.state == DesiredState::Running)
            .count() as i64;
        self.services.set(running);
        self.services_total.set(running);
        // Counted first, so each label set is made once per service and status.
        let mut counts: std::collections::HashMap<(&str, &str, &'static str), i64> =
            std::collections::HashMap::new();
        for i in instances {
            let status = if i.is_failed() {
                "failed"
            } else if i.is_running() && verdicts.ready(&i.info.id) {
                "ready"
            } else {
                "starting"
            };
            let name = i
                .service
                .split_once('/')
                .map(|(_, n)| n)
                .unwrap_or(&i.service);
            *counts
                .entry((name, i.project.as_str(), status))
                .or_default() += 1;
        }
        self.instances.clear();
        self.instances_total.clear();
        for ((service, project, status), n) in counts {
            let labels = InstanceLabels {
                service: service.to_string(),
                project: project.to_string(),
                status: status.to_string(),
            };
            self.instances.get_or_create(&labels).set(n);
            self.instances_total.get_or_create(&labels).set(n);
        }
    }
}
