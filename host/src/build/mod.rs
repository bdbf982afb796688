//! git-build, host side: runs the builder plugin (`git-build` by default) for one commit of a
//! service's repository, granting it exactly two capabilities — check out *that* commit of
//! *that* repository, and build *that* image tag from the checkout — and records the build
//! (status, failing step, output) in the store for `orca logs SERVICE --build`.
//!
//! - [`git`] — repository reference rules, `ls-remote`, checkout.
//! - [`context`] — packing the build context; paths may not leave the checkout.

pub mod context;
pub mod git;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use orca_docker::ContainerRuntime;
use orca_store::{BuildRecord, BuildStatus, Store};

use crate::plugins::{BuildHostCap, BuildRequest, World};
use crate::registry::Registry;
use git::GitAccess;

/// The builder plugin used for `[service.build]`.
pub const BUILDER_PLUGIN: &str = "git-build";
/// How often a running build's output is written to the store.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// What to build: one commit of a service's repository.
#[derive(Debug, Clone)]
pub struct BuildJob {
    /// The service's project.
    pub project: String,
    /// The service.
    pub service: String,
    /// `[service.build]` of the service.
    pub build: orca_config::Build,
    /// The commit (full id).
    pub commit: String,
    /// The branch it belongs to (pushed to, or resolved).
    pub branch: String,
    /// `push (webhook wh-…)` or `deploy`.
    pub trigger: String,
}

/// A finished image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// `<project>/<service>:<short-sha>`.
    pub tag: String,
    /// The engine's image id.
    pub image_id: String,
    /// The build's number (per service).
    pub number: u64,
}

/// A failed build: its number and the reason, naming the failing step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("build {number} of {service} failed: {reason}")]
pub struct BuildFailed {
    /// `project/service`.
    pub service: String,
    /// The build's number (0 if it could not even be recorded).
    pub number: u64,
    /// Why.
    pub reason: String,
}

/// The build service: one per server.
pub struct Builds<R: ContainerRuntime> {
    runtime: Arc<R>,
    store: Store,
    registry: Registry,
    git: GitAccess,
    work_root: PathBuf,
    /// One build at a time per service (a second push waits for the first).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: crate::events::Events,
}

/// The image tag of a commit's build: `<project>/<service>:<first 12 hex digits>`.
pub fn tag_for(project: &str, service: &str, commit: &str) -> String {
    let short: String = commit.chars().take(12).collect();
    format!("{project}/{service}:{}", short.to_ascii_lowercase())
}

impl<R: ContainerRuntime> Builds<R> {
    /// The build service; checkouts go under `home/builds`.
    pub fn new(
        runtime: Arc<R>,
        store: Store,
        registry: Registry,
        git: GitAccess,
        home: &Path,
    ) -> Builds<R> {
        Builds {
            runtime,
            store,
            registry,
            git,
            work_root: home.join("builds"),
            locks: Mutex::new(HashMap::new()),
            events: crate::events::Events::disabled(),
        }
    }

    /// Emits build events through `events` (the default discards them).
    pub fn with_events(mut self, events: crate::events::Events) -> Self {
        self.events = events;
        self
    }

    /// The commit at the head of the service's build branch (or the default branch).
    pub async fn head(&self, build: &orca_config::Build) -> Result<(String, String), String> {
        let commit = self
            .git
            .resolve_head(&build.repo, build.branch.as_deref())
            .await?;
        Ok((commit, build.branch.clone().unwrap_or_default()))
    }

    /// Builds `job` and returns the image. The running version of the service is not
    /// touched either way; the caller deploys the image.
    pub async fn run(self: &Arc<Self>, job: BuildJob) -> Result<Built, BuildFailed> {
        let key = format!("{}/{}", job.project, job.service);
        let lock = self
            .locks
            .lock()
            .expect("build locks poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let failed = |number: u64, reason: String| BuildFailed {
            service: key.clone(),
            number,
            reason,
        };
        git::check_commit(&job.commit).map_err(|e| failed(0, e))?;
        let tag = tag_for(&job.project, &job.service, &job.commit);
        let record = BuildRecord {
            project: job.project.clone(),
            service: job.service.clone(),
            number: 0,
            repo: job.build.repo.clone(),
            branch: job.branch.clone(),
            commit: job.commit.clone(),
            trigger: job.trigger.clone(),
            status: BuildStatus::Running,
            tag: tag.clone(),
            image_id: None,
            error: None,
            started_ms: crate::controller::now_ms(),
            finished_ms: None,
            log: Vec::new(),
        };
        let number = self
            .store
            .start_build(&record)
            .map_err(|e| failed(0, format!("recording the build: {e}")))?;
        self.events.build(&BuildRecord {
            number,
            ..record.clone()
        });
        let span = tracing::info_span!("orca.build", service = %key, number, commit = %job.commit);
        // The span covers the whole build, across its awaits (never `enter()` across one).
        async {
            tracing::info!(trigger = %job.trigger, "build started");

            let workdir = self.work_root.join(format!(
                "{}-{}-{number}-{:08x}",
                job.project,
                job.service,
                rand::random::<u32>()
            ));
            let host = Arc::new(HostBuild {
                handle: tokio::runtime::Handle::current(),
                runtime: self.runtime.clone(),
                git: self.git.clone(),
                repo: job.build.repo.clone(),
                commit: job.commit.clone(),
                tag: tag.clone(),
                workdir: workdir.clone(),
                checked_out: Mutex::new(false),
                log: Arc::new(BuildLog {
                    store: self.store.clone(),
                    record: Mutex::new(BuildRecord { number, ..record }),
                    last_flush: Mutex::new(Instant::now()),
                }),
            });
            let request = BuildRequest {
                project: job.project.clone(),
                service: job.service.clone(),
                repo: job.build.repo.clone(),
                branch: job.branch.clone(),
                commit: job.commit.clone(),
                dockerfile: job
                    .build
                    .dockerfile
                    .clone()
                    .unwrap_or_else(|| "Dockerfile".into()),
                context: job.build.context.clone().unwrap_or_else(|| ".".into()),
                tag: tag.clone(),
            };
            let registry = self.registry.clone();
            let cap: Arc<dyn BuildHostCap> = host.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                let plugin = registry
                    .resolve(BUILDER_PLUGIN, World::Builder)
                    .map_err(|e| e.to_string())?;
                match plugin.build(&request, cap) {
                    Ok(Ok(out)) => Ok(out),
                    Ok(Err(reason)) => Err(reason),
                    Err(e) => Err(format!("builder plugin failed: {e}")),
                }
            })
            .await
            .unwrap_or_else(|e| Err(format!("build task failed: {e}")));
            let cleanup = workdir.clone();
            tokio::task::spawn_blocking(move || {
                if cleanup.exists() {
                    if let Err(e) = std::fs::remove_dir_all(&cleanup) {
                        tracing::warn!(dir = %cleanup.display(), "removing build checkout: {e}");
                    }
                }
            });

            let mut record = host
                .log
                .record
                .lock()
                .expect("build record poisoned")
                .clone();
            record.finished_ms = Some(crate::controller::now_ms());
            let result = match outcome {
                Ok(out) if out.tag == tag && !out.image_id.is_empty() => {
                    record.status = BuildStatus::Succeeded;
                    record.image_id = Some(out.image_id.clone());
                    tracing::info!(tag = %tag, image = %out.image_id, "build succeeded");
                    Ok(Built {
                        tag,
                        image_id: out.image_id,
                        number,
                    })
                }
                Ok(out) => {
                    let reason = format!(
                        "the builder returned image {:?} tagged {:?}, expected tag {tag:?}",
                        out.image_id, out.tag
                    );
                    record.status = BuildStatus::Failed;
                    record.error = Some(reason.clone());
                    Err(failed(number, reason))
                }
                Err(reason) => {
                    tracing::warn!(%reason, "build failed");
                    record.status = BuildStatus::Failed;
                    record.log.push(format!("build failed: {reason}"));
                    record.error = Some(reason.clone());
                    Err(failed(number, reason))
                }
            };
            self.events.build(&record);
            if let Err(e) = self.store.update_build(&record) {
                tracing::error!("recording the build result: {e}");
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// The capabilities granted to one build: bound to its repository, commit, work directory
/// and tag. The plugin gets a handle (`checkout-1`), never a host path.
struct HostBuild<R: ContainerRuntime> {
    handle: tokio::runtime::Handle,
    runtime: Arc<R>,
    git: GitAccess,
    repo: String,
    commit: String,
    tag: String,
    workdir: PathBuf,
    checked_out: Mutex<bool>,
    log: Arc<BuildLog>,
}

/// A running build's record; output lines are written through to the store every
/// [`FLUSH_EVERY`] so `orca logs --build` follows a build in progress.
struct BuildLog {
    store: Store,
    record: Mutex<BuildRecord>,
    last_flush: Mutex<Instant>,
}

const CHECKOUT_HANDLE: &str = "checkout-1";
/// Longest build output line kept.
const MAX_LINE_CHARS: usize = 4096;

impl BuildLog {
    fn push(&self, line: &str) {
        let line: String = line.chars().take(MAX_LINE_CHARS).collect();
        tracing::debug!(target: "orca::build::output", "{line}");
        let snapshot = {
            let mut record = self.record.lock().expect("build record poisoned");
            record.log.push(line);
            orca_store::builds::bound_log(&mut record.log);
            let mut last = self.last_flush.lock().expect("flush clock poisoned");
            if last.elapsed() < FLUSH_EVERY {
                return;
            }
            *last = Instant::now();
            record.clone()
        };
        if let Err(e) = self.store.update_build(&snapshot) {
            tracing::warn!("writing build output: {e}");
        }
    }
}

impl<R: ContainerRuntime> BuildHostCap for HostBuild<R> {
    fn log_line(&self, line: &str) {
        self.log.push(line);
    }

    fn checkout(&self, repo: &str, commit: &str) -> Result<String, String> {
        if repo != self.repo || !commit.eq_ignore_ascii_case(&self.commit) {
            return Err(format!(
                "not granted: this build may check out {} at {} only",
                self.repo, self.commit
            ));
        }
        let mut done = self.checked_out.lock().expect("checkout flag poisoned");
        if *done {
            return Ok(CHECKOUT_HANDLE.to_string());
        }
        std::fs::create_dir_all(self.workdir.parent().unwrap_or(Path::new("/")))
            .map_err(|e| format!("creating the build directory: {e}"))?;
        let lines = self
            .handle
            .block_on(self.git.checkout(repo, commit, &self.workdir))?;
        for line in lines {
            self.log.push(&line);
        }
        *done = true;
        Ok(CHECKOUT_HANDLE.to_string())
    }

    fn build_image(
        &self,
        workdir: &str,
        dockerfile: &str,
        context: &str,
        tag: &str,
    ) -> Result<String, String> {
        if workdir != CHECKOUT_HANDLE || !*self.checked_out.lock().expect("poisoned") {
            return Err(format!(
                "unknown work directory {workdir:?}: check out first"
            ));
        }
        if tag != self.tag {
            return Err(format!("not granted: this build may tag {} only", self.tag));
        }
        let packed = context::pack(&self.workdir, context, dockerfile)?;
        self.log.push(&format!(
            "packed build context {context:?}: {} files, {} KiB",
            packed.files,
            packed.tar.len() / 1024
        ));
        // The engine streams output while the build runs; lines go to the record as they come.
        let log = self.log.clone();
        let result = self.handle.block_on(self.runtime.build_image(
            packed.tar,
            &packed.dockerfile,
            tag,
            Box::new(move |line: &str| log.push(line)),
        ));
        result.map_err(|e| match e {
            orca_docker::RuntimeError::Build { step, reason } => format!("{step}: {reason}"),
            other => other.to_string(),
        })
    }
}
