//! The controller's Docker networks: which it made or saw in use, and their removal once
//! nothing needs them (`instance::unused_networks` decides).

use tracing::{info, warn};

use orca_docker::ContainerRuntime;
use orca_store::{DesiredState, ServiceRecord};

use super::Controller;
use crate::instance::{self, Instance};

impl<R: ContainerRuntime> Controller<R> {
    pub(super) fn remember_network(&self, name: &str) {
        let mut mem = self.memory.lock().expect("controller memory lock");
        mem.networks.insert(name.to_string());
    }

    /// The legacy networks a new instance of `project` joins besides its own.
    pub(super) fn legacy_networks(&self, project: &str, internal: bool) -> Vec<String> {
        let mem = self.memory.lock().expect("controller memory lock");
        mem.legacy
            .get(project)
            .into_iter()
            .flatten()
            .filter(|n| internal || n.as_str() != instance::LEGACY_INTERNAL_NETWORK)
            .cloned()
            .collect()
    }

    /// Notes the networks this pass sees (and each running project's legacy networks, which
    /// starts join) and returns the cluster's networks nothing uses any more, for
    /// [`Self::remove_networks`] — after the pass's starts, so a removal (tens of ms on the
    /// engine) never delays a deploy.
    pub(super) fn unused_networks(
        &self,
        records: &[ServiceRecord],
        instances: &[Instance],
    ) -> Vec<String> {
        let running: Vec<(&str, bool)> = records
            .iter()
            .filter(|r| r.state == DesiredState::Running)
            .map(|r| (r.spec.project(), r.spec.internal))
            .collect();
        {
            let mut mem = self.memory.lock().expect("controller memory lock");
            // Once per pass: with many services and instances, once per service was a third
            // of a pass's CPU (100 services × 10,000 instances, bench/agents.sh).
            let attached = instance::attached_networks(&self.cluster, instances);
            mem.legacy = running
                .iter()
                .map(|(p, _)| {
                    let nets = instance::legacy_networks_of(&attached, p, true);
                    (p.to_string(), nets)
                })
                .collect();
            mem.networks.extend(attached);
            instance::unused_networks(&self.cluster, &mem.networks, &running, instances)
        }
    }

    /// Removes the networks [`Self::unused_networks`] found.
    pub(super) async fn remove_networks(&self, unused: Vec<String>) {
        for network in unused {
            match self.runtime.remove_network(&network).await {
                Ok(()) => {
                    info!(%network, "removed a network nothing uses any more");
                    let mut mem = self.memory.lock().expect("controller memory lock");
                    mem.networks.remove(&network);
                }
                Err(e) => warn!(%network, error = %e, "could not remove an unused network"),
            }
        }
    }
}
