//! Backups and restores of the services' named volumes (`orca backup`, `orca restore`),
//! scheduled and verified backups (`[backup]`), retention.
//!
//! A backup is a directory `$ORCA_HOME/backups/<id>/` (the id is the UTC time it started,
//! `20261202T030000.000Z`) holding one tar per volume, read through the engine's archive API
//! from a never-started helper container of the service's own image (nothing is pulled,
//! nothing executed), a consistent copy of the store (`store.redb`, secrets sealed as on
//! disk) and `manifest.json` (per archive: service, volume, size, sha256; orca version;
//! created; status). A restore checks every checksum first (a mismatch changes nothing),
//! holds the services stopped through the controller (their desired state untouched),
//! replaces each volume by a fresh one filled through a helper container, and releases them.
//! Verification restores each archive into a throwaway volume, reads it back and compares
//! every file's digest (and the service's `verify_path`).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use orca_config::BackupSettings;
use orca_docker::{ContainerRuntime, RuntimeError, HELPER_MOUNT};
use orca_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::controller::ControllerHandle;
use crate::events::Events;
use crate::instance;
use crate::volumes::{docker_volume_name, volume_labels};

/// Label on helper containers (the backup id), beside `orca.cluster`.
pub const LABEL_HELPER: &str = "orca.backup.helper";

/// The manifest file of a backup directory.
pub const MANIFEST: &str = "manifest.json";

/// The store copy's file in a backup directory.
pub const STORE_COPY: &str = "store.redb";

/// How long a restore or a `stop_during_backup` waits for a service's instances to go.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// What went wrong, with the HTTP meaning the API gives it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// No such backup, service or archive.
    #[error("{0}")]
    NotFound(String),
    /// Refused, nothing changed (a checksum mismatch, a bad argument, a failed backup).
    #[error("{0}")]
    Refused(String),
    /// Another backup or restore is running.
    #[error("another backup or restore is running ({0}); try again when it has finished")]
    Busy(String),
    /// It failed along the way.
    #[error("{0}")]
    Failed(String),
}

fn failed(context: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::Failed(format!("{context}: {e}"))
}

/// One volume's archive in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The services (`project/name`) that mount the volume.
    pub services: Vec<String>,
    /// The project.
    pub project: String,
    /// The volume's name in the project (`data`).
    pub volume: String,
    /// The Docker volume (`orca-<cluster>-<project>-<volume>`).
    pub docker_volume: String,
    /// The image its helper containers use (the first service's).
    pub image: String,
    /// File name in the backup directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Paths that must exist in a verified copy (relative to the volume's root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_paths: Vec<String>,
}

/// The store copy in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreEntry {
    /// File name in the backup directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The backup's id (its directory's name).
    pub id: String,
    /// The orca version that wrote it.
    pub orca_version: String,
    /// When it started (Unix seconds).
    pub created: u64,
    /// `running`, `ok` or `failed`.
    pub status: String,
    /// Whether it was made by `[backup] schedule`.
    pub scheduled: bool,
    /// `None`: not verified; `Some(true)`: verified; `Some(false)`: verification failed.
    pub verified: Option<bool>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it covers: `all`, `project P` or `service P/S`.
    pub scope: String,
    /// The volumes' archives.
    pub archives: Vec<ArchiveEntry>,
    /// The store copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreEntry>,
    /// Docker volumes covered but not backed up, with why (not on the master's engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

impl Manifest {
    /// Bytes of every file.
    pub fn total_bytes(&self) -> u64 {
        self.archives.iter().map(|a| a.size).sum::<u64>()
            + self.store.as_ref().map_or(0, |s| s.size)
    }
}

/// What to back up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Scope {
    /// Only this project's services (with `service`: the project of that service).
    pub project: Option<String>,
    /// Only this service.
    pub service: Option<String>,
}

impl Scope {
    fn covers(&self, project: &str, name: &str) -> bool {
        self.project.as_deref().is_none_or(|p| p == project)
            && self.service.as_deref().is_none_or(|s| s == name)
    }

    fn describe(&self) -> String {
        match (&self.project, &self.service) {
            (_, Some(s)) => format!(
                "service {}/{s}",
                self.project.as_deref().unwrap_or("default")
            ),
            (Some(p), None) => format!("project {p}"),
            (None, None) => "all".to_string(),
        }
    }
}

/// A running or finished backup or restore, as `GET /api/v1/backups/{id}` shows it.
#[derive(Debug, Default)]
pub struct Progress {
    op: &'static str,
    done: AtomicU64,
    total: AtomicU64,
    outcome: Mutex<Option<Result<(), String>>>,
}

impl Progress {
    fn new(op: &'static str, total: u64) -> Arc<Progress> {
        Arc::new(Progress {
            op,
            total: AtomicU64::new(total),
            ..Default::default()
        })
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    fn finish(&self, r: &Result<(), BackupError>) {
        *self.outcome.lock().expect("progress lock") =
            Some(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
    }

    /// JSON for the API: op, state, bytes done and total (0: unknown), error.
    pub fn json(&self) -> serde_json::Value {
        let outcome = self.outcome.lock().expect("progress lock").clone();
        let (state, error) = match outcome {
            None => ("running", None),
            Some(Ok(())) => ("done", None),
            Some(Err(e)) => ("failed", Some(e)),
        };
        serde_json::json!({
            "op": self.op,
            "state": state,
            "done_bytes": self.done.load(Ordering::Relaxed),
            "total_bytes": self.total.load(Ordering::Relaxed),
            "error": error,
        })
    }
}

/// Backups of one cluster: the directory, the engine, the store, the controller.
pub struct Backups<R: ContainerRuntime> {
    dir: PathBuf,
    store: Store,
    runtime: Arc<R>,
    controller: ControllerHandle,
    events: Events,
    cluster: String,
    settings: BackupSettings,
    /// One backup or restore at a time (holds the id of the running one).
    busy: Arc<tokio::sync::Mutex<()>>,
    running: Mutex<Option<String>>,
    /// The last operation on each backup id.
    jobs: Mutex<BTreeMap<String, Arc<Progress>>>,
}

/// A backup id: the UTC time, `YYYYMMDDTHHMMSS.mmmZ`.
fn new_id() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// Whether `id` looks like a backup id (so it can never leave the backups directory).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || c == 'T' || c == 'Z' || c == '.')
        && !id.contains("..")
}

fn now_unix() -> u64 {
    crate::controller::now_ms() / 1000
}

impl<R: ContainerRuntime> Backups<R> {
    /// Backups kept under `home/backups`.
    pub fn new(
        home: &Path,
        store: Store,
        runtime: Arc<R>,
        controller: ControllerHandle,
        events: Events,
        cluster: String,
        settings: BackupSettings,
    ) -> Backups<R> {
        Backups {
            dir: home.join("backups"),
            store,
            runtime,
            controller,
            events,
            cluster,
            settings,
            busy: Arc::new(tokio::sync::Mutex::new(())),
            running: Mutex::new(None),
            jobs: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory holding the backups.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every backup's manifest, newest first (unreadable directories are skipped).
    pub fn list(&self) -> Vec<Manifest> {
        let mut out: Vec<Manifest> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                valid_id(&name).then(|| self.manifest(&name).ok())?
            })
            .collect();
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out
    }

    /// The manifest of backup `id`.
    pub fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        if !valid_id(id) {
            return Err(BackupError::NotFound(format!(
                "{id:?} is not a backup id (they look like 20261202T030000.000Z; see orca backup list)"
            )));
        }
        let path = self.dir.join(id).join(MANIFEST);
        let text = std::fs::read(&path).map_err(|_| {
            BackupError::NotFound(format!("no backup {id:?} (see orca backup list)"))
        })?;
        serde_json::from_slice(&text).map_err(|e| failed(&format!("reading {}", path.display()), e))
    }

    /// The progress of the last operation on backup `id`.
    pub fn progress(&self, id: &str) -> Option<Arc<Progress>> {
        self.jobs.lock().expect("jobs lock").get(id).cloned()
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), BackupError> {
        let dir = self.dir.join(&m.id);
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        let body = serde_json::to_vec_pretty(m).map_err(|e| failed("encoding manifest", e))?;
        std::fs::write(&tmp, body).map_err(|e| failed("writing manifest", e))?;
        std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(|e| failed("writing manifest", e))
    }

    fn claim(&self, id: &str) -> Result<tokio::sync::OwnedMutexGuard<()>, BackupError> {
        let guard = self.busy.clone().try_lock_owned().map_err(|_| {
            BackupError::Busy(
                self.running
                    .lock()
                    .expect("running lock")
                    .clone()
                    .unwrap_or_default(),
            )
        })?;
        *self.running.lock().expect("running lock") = Some(id.to_string());
        Ok(guard)
    }

    /// Starts a backup of `scope` in the background; returns its id at once (its progress
    /// is [`progress`](Self::progress), its manifest says `running` until it ends).
    pub fn start_backup(
        self: &Arc<Self>,
        scope: Scope,
        verify: bool,
    ) -> Result<String, BackupError> {
        let id = new_id();
        let guard = self.claim(&id)?;
        let started = self
            .plan(&scope)
            .and_then(|plan| Ok((plan, self.begin(&id, &scope, false)?)));
        let (plan, manifest) = match started {
            Ok(x) => x,
            Err(e) => {
                *self.running.lock().expect("running lock") = None;
                return Err(e);
            }
        };
        let progress = Progress::new("backup", 0);
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id.clone(), progress.clone());
        let this = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let r = this.run_backup(manifest, plan, verify, &progress).await;
            progress.finish(&r);
            *this.running.lock().expect("running lock") = None;
        });
        Ok(id)
    }

    fn begin(&self, id: &str, scope: &Scope, scheduled: bool) -> Result<Manifest, BackupError> {
        std::fs::create_dir_all(self.dir.join(id))
            .map_err(|e| failed(&format!("creating {}", self.dir.join(id).display()), e))?;
        let m = Manifest {
            id: id.to_string(),
            orca_version: env!("CARGO_PKG_VERSION").to_string(),
            created: now_unix(),
            status: "running".into(),
            scheduled,
            verified: None,
            error: None,
            scope: scope.describe(),
            archives: Vec::new(),
            store: None,
            skipped: Vec::new(),
        };
        self.write_manifest(&m)?;
        Ok(m)
    }

    /// The volumes `scope` covers, one entry per Docker volume, with the services using it
    /// and whether any wants to be stopped while it is read.
    fn plan(&self, scope: &Scope) -> Result<Vec<(ArchiveEntry, bool)>, BackupError> {
        let records = self
            .store
            .list_services()
            .map_err(|e| failed("reading services", e))?;
        if scope.service.is_some() || scope.project.is_some() {
            let any = records
                .iter()
                .any(|r| scope.covers(r.spec.project(), &r.spec.name));
            if !any {
                return Err(BackupError::NotFound(format!(
                    "no service matches {} (see orca status)",
                    scope.describe()
                )));
            }
        }
        let mut out: Vec<(ArchiveEntry, bool)> = Vec::new();
        for rec in &records {
            let (project, name) = (rec.spec.project(), rec.spec.name.as_str());
            if !scope.covers(project, name) {
                continue;
            }
            let opts = rec.spec.backup.clone().unwrap_or_default();
            for mount in rec.spec.mounts() {
                let Some(volume) = mount.volume() else {
                    continue;
                };
                let docker = docker_volume_name(&self.cluster, project, volume);
                let key = rec.spec.key();
                if let Some((e, stop)) = out.iter_mut().find(|(e, _)| e.docker_volume == docker) {
                    e.services.push(key);
                    e.verify_paths.extend(opts.verify_path.clone());
                    *stop |= opts.stop_during_backup;
                    continue;
                }
                let Some(image) = rec.spec.image.clone() else {
                    continue;
                };
                out.push((
                    ArchiveEntry {
                        services: vec![key],
                        project: project.to_string(),
                        volume: volume.to_string(),
                        file: format!("{project}--{volume}.tar"),
                        docker_volume: docker,
                        image,
                        size: 0,
                        sha256: String::new(),
                        verify_paths: opts.verify_path.clone().into_iter().collect(),
                    },
                    opts.stop_during_backup,
                ));
            }
        }
        if out.is_empty() && (scope.service.is_some() || scope.project.is_some()) {
            return Err(BackupError::Refused(format!(
                "{} has no named volume to back up",
                scope.describe()
            )));
        }
        Ok(out)
    }

    async fn run_backup(
        &self,
        mut manifest: Manifest,
        plan: Vec<(ArchiveEntry, bool)>,
        verify: bool,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let r = self.fill(&mut manifest, plan, progress).await;
        let r = match r {
            Ok(()) if verify => {
                let v = self.verify(&manifest).await;
                manifest.verified = Some(v.is_ok());
                v
            }
            other => other,
        };
        manifest.status = if r.is_ok() { "ok" } else { "failed" }.into();
        manifest.error = r.as_ref().err().map(|e| e.to_string());
        self.write_manifest(&manifest)?;
        self.events
            .backup(&manifest.id, false, manifest.error.as_deref());
        match &r {
            Ok(()) => {
                tracing::info!(backup = %manifest.id, bytes = manifest.total_bytes(), "backup done")
            }
            Err(e) => tracing::warn!(backup = %manifest.id, error = %e, "backup failed"),
        }
        self.retain();
        r
    }

    async fn fill(
        &self,
        manifest: &mut Manifest,
        plan: Vec<(ArchiveEntry, bool)>,
        progress: &Progress,
    ) -> Result<(), BackupError> {
        let dir = self.dir.join(&manifest.id);
        let here: HashSet<String> = self
            .runtime
            .list_volumes()
            .await
            .map_err(|e| failed("listing volumes", e))?
            .into_iter()
            .map(|v| v.name)
            .collect();
        for (mut entry, stop) in plan {
            // Never made here (the service never ran, or runs on an agent node): not backed
            // up, and never created empty by a helper.
            if !here.contains(&entry.docker_volume) {
                manifest.skipped.push(format!(
                    "{}: volume {:?} is not on the master's engine",
                    entry.services.join(", "),
                    entry.docker_volume
                ));
                continue;
            }
            let held = if stop {
                self.hold(&entry).await?
            } else {
                Vec::new()
            };
            let r = self
                .read_volume(&manifest.id, &entry, &dir.join(&entry.file), progress)
                .await;
            self.release(&held);
            let (size, sha) = r?;
            entry.size = size;
            entry.sha256 = sha;
            manifest.archives.push(entry);
            self.write_manifest(manifest)?;
        }
        let store = self.store.clone();
        let path = dir.join(STORE_COPY);
        let copy_path = path.clone();
        tokio::task::spawn_blocking(move || store.copy_to(&copy_path))
            .await
            .map_err(|e| failed("copying the store", e))?
            .map_err(|e| failed("copying the store", e))?;
        let (size, sha256) = hash_file(&path).await?;
        progress.add(size);
        manifest.store = Some(StoreEntry {
            file: STORE_COPY.into(),
            size,
            sha256,
        });
        Ok(())
    }

    fn helper_labels(&self, id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (instance::LABEL_CLUSTER.to_string(), self.cluster.clone()),
            (LABEL_HELPER.to_string(), id.to_string()),
        ])
    }

    fn helper_name(&self, what: &str) -> String {
        format!(
            "orca-{}-backup-{what}-{}",
            self.cluster,
            hex::encode(rand::random::<[u8; 4]>())
        )
    }

    /// Streams volume `entry` into `file`; returns its size and SHA-256.
    async fn read_volume(
        &self,
        id: &str,
        entry: &ArchiveEntry,
        file: &Path,
        progress: &Progress,
    ) -> Result<(u64, String), BackupError> {
        let labels = volume_labels(&self.cluster, &entry.project, &entry.volume);
        let helper = self
            .runtime
            .create_volume_helper(
                &self.helper_name("read"),
                &entry.image,
                &entry.docker_volume,
                &labels,
                &self.helper_labels(id),
            )
            .await
            .map_err(|e| failed(&format!("reading volume {:?}", entry.docker_volume), e))?;
        let r = self.download(&helper, file, Some(progress)).await;
        self.remove_helper(&helper).await;
        r.map_err(|e| failed(&format!("reading volume {:?}", entry.docker_volume), e))
    }

    async fn download(
        &self,
        helper: &str,
        file: &Path,
        progress: Option<&Progress>,
    ) -> Result<(u64, String), String> {
        let mut out = tokio::fs::File::create(file)
            .await
            .map_err(|e| format!("creating {}: {e}", file.display()))?;
        let mut stream = self.runtime.download_archive(helper, HELPER_MOUNT);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if let Some(p) = progress {
                p.add(chunk.len() as u64);
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
        }
        out.flush().await.map_err(|e| e.to_string())?;
        out.sync_all().await.map_err(|e| e.to_string())?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    async fn upload(
        &self,
        helper: &str,
        file: &Path,
        progress: Option<Arc<Progress>>,
    ) -> Result<(), String> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("opening {}: {e}", file.display()))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map(move |c| {
            if let (Ok(c), Some(p)) = (&c, &progress) {
                p.add(c.len() as u64);
            }
            c
        });
        self.runtime
            .upload_archive(helper, "/", stream.boxed())
            .await
            .map_err(|e| e.to_string())
    }

    async fn remove_helper(&self, id: &str) {
        if let Err(e) = self.runtime.stop_and_remove(id, Duration::ZERO).await {
            tracing::warn!(helper = id, error = %e, "removing a backup helper container failed");
        }
    }

    /// Holds every service of `entry` stopped and waits until no container mounts its
    /// volume; returns the services held.
    async fn hold(&self, entry: &ArchiveEntry) -> Result<Vec<String>, BackupError> {
        for s in &entry.services {
            self.controller.hold(s);
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        loop {
            let users = self
                .runtime
                .list_volumes()
                .await
                .map_err(|e| failed("listing volumes", e))?
                .into_iter()
                .find(|v| v.name == entry.docker_volume)
                .map(|v| v.users)
                .unwrap_or_default();
            if users.is_empty() {
                return Ok(entry.services.clone());
            }
            if tokio::time::Instant::now() > deadline {
                self.release(&entry.services);
                return Err(BackupError::Failed(format!(
                    "the instances of {} did not stop within {} s (still on volume {:?}: {})",
                    entry.services.join(", "),
                    STOP_WAIT.as_secs(),
                    entry.docker_volume,
                    users.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn release(&self, services: &[String]) {
        for s in services {
            self.controller.release(s);
        }
    }

    /// Checks every archive of `m` (or those of `service`) against its size and checksum.
    async fn check(&self, m: &Manifest, archives: &[&ArchiveEntry]) -> Result<(), BackupError> {
        if m.status != "ok" {
            return Err(BackupError::Refused(format!(
                "backup {} is {} ({}): refusing to restore it",
                m.id,
                m.status,
                m.error.as_deref().unwrap_or("not finished")
            )));
        }
        let dir = self.dir.join(&m.id);
        for a in archives {
            let path = dir.join(&a.file);
            let (size, sha) = hash_file(&path).await.map_err(|e| {
                BackupError::Refused(format!(
                    "archive {} is unreadable: {e}; nothing changed",
                    a.file
                ))
            })?;
            if size != a.size || sha != a.sha256 {
                return Err(BackupError::Refused(format!(
                    "archive {} of backup {} is corrupt or was tampered with: sha256 {sha} ({size} bytes), the manifest says {} ({} bytes); nothing changed",
                    a.file, m.id, a.sha256, a.size
                )));
            }
        }
        Ok(())
    }

    /// Verifies backup `id` and starts restoring it (every volume, or those of `service`,
    /// `project/name` or a name) in the background. A checksum mismatch is refused here,
    /// before anything changes.
    pub async fn start_restore(
        self: &Arc<Self>,
        id: &str,
        service: Option<String>,
    ) -> Result<(), BackupError> {
        let m = self.manifest(id)?;
        let archives: Vec<ArchiveEntry> = m
            .archives
            .iter()
            .filter(|a| {
                service.as_deref().is_none_or(|s| {
                    a.services
                        .iter()
                        .any(|k| k == s || k.rsplit('/').next() == Some(s))
                })
            })
            .cloned()
            .collect();
        if archives.is_empty() {
            return Err(BackupError::NotFound(match &service {
                Some(s) => format!(
                    "backup {id} holds no volume of service {s:?} (it holds: {})",
                    m.archives
                        .iter()
                        .flat_map(|a| a.services.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("backup {id} holds no volume"),
            }));
        }
        let guard = self.claim(id)?;
        let refs: Vec<&ArchiveEntry> = archives.iter().collect();
        if let Err(e) = self.check(&m, &refs).await {
            *self.running.lock().expect("running lock") = None;
            self.events.backup(id, true, Some(&e.to_string()));
            return Err(e);
        }
        let total = archives.iter().map(|a| a.size).sum();
        let progress = Progress::new("restore", total);
        self.jobs
            .lock()
            .expect("jobs lock")
            .insert(id.to_string(), progress.clone());
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let _guard = guard;
            let r = this.restore(&id, &archives, progress.clone()).await;
            this.events.backup(
                &id,
                true,
                r.as_ref().err().map(|e| e.to_string()).as_deref(),
            );
            match &r {
                Ok(()) => tracing::info!(backup = %id, "restore done"),
                Err(e) => tracing::warn!(backup = %id, error = %e, "restore failed"),
            }
            progress.finish(&r);
            *this.running.lock().expect("running lock") = None;
        });
        Ok(())
    }

    async fn restore(
        &self,
        id: &str,
        archives: &[ArchiveEntry],
        progress: Arc<Progress>,
    ) -> Result<(), BackupError> {
        let dir = self.dir.join(id);
        for a in archives {
            // The services of the project that mount the volume now.
            let mut entry = a.clone();
            entry.services = self.users_now(a)?;
            let held = self.hold(&entry).await?;
            let r = self
                .replace(id, a, &dir.join(&a.file), progress.clone())
                .await;
            self.release(&held);
            r?;
        }
        Ok(())
    }

    /// Services (`project/name`) whose spec mounts `a`'s volume now.
    fn users_now(&self, a: &ArchiveEntry) -> Result<Vec<String>, BackupError> {
        let mut out: HashSet<String> = a.services.iter().cloned().collect();
        for r in self
            .store
            .list_services()
            .map_err(|e| failed("reading services", e))?
        {
            if r.spec.project() == a.project
                && r.spec
                    .mounts()
                    .iter()
                    .any(|m| m.volume() == Some(&a.volume))
            {
                out.insert(r.spec.key());
            }
        }
        let mut v: Vec<String> = out.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// Replaces volume `a` by the archive `file`: the volume removed, made again empty (with
    /// its labels) by a helper container, the archive uploaded into it.
    async fn replace(
        &self,
        id: &str,
        a: &ArchiveEntry,
        file: &Path,
        progress: Arc<Progress>,
    ) -> Result<(), BackupError> {
        let ctx = || format!("restoring volume {:?}", a.docker_volume);
        match self.runtime.remove_volume(&a.docker_volume).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(failed(&ctx(), e)),
        }
        let labels = volume_labels(&self.cluster, &a.project, &a.volume);
        let helper = self
            .runtime
            .create_volume_helper(
                &self.helper_name("restore"),
                &a.image,
                &a.docker_volume,
                &labels,
                &self.helper_labels(id),
            )
            .await
            .map_err(|e| failed(&ctx(), e))?;
        let r = self.upload(&helper, file, Some(progress)).await;
        self.remove_helper(&helper).await;
        r.map_err(|e| failed(&ctx(), e))
    }

    /// Restores every archive of `m` into a throwaway volume, reads it back and compares
    /// every file's digest with the archive's; each `verify_path` must exist.
    async fn verify(&self, m: &Manifest) -> Result<(), BackupError> {
        let timeout = Duration::from_secs(self.settings.verify_timeout_secs);
        match tokio::time::timeout(timeout, self.verify_all(m)).await {
            Ok(r) => r,
            Err(_) => Err(BackupError::Failed(format!(
                "verification did not finish within verify_timeout_secs = {}",
                timeout.as_secs()
            ))),
        }
    }

    async fn verify_all(&self, m: &Manifest) -> Result<(), BackupError> {
        let dir = self.dir.join(&m.id);
        for a in &m.archives {
            let scratch_name = format!("verify{}", hex::encode(rand::random::<[u8; 4]>()));
            let scratch = docker_volume_name(&self.cluster, "backup", &scratch_name);
            let labels = volume_labels(&self.cluster, "backup", &scratch_name);
            let reread = dir.join(format!("{}.verify", a.file));
            let r = async {
                let helper = self
                    .runtime
                    .create_volume_helper(
                        &self.helper_name("verify"),
                        &a.image,
                        &scratch,
                        &labels,
                        &self.helper_labels(&m.id),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let r = async {
                    self.upload(&helper, &dir.join(&a.file), None).await?;
                    self.download(&helper, &reread, None).await
                }
                .await;
                self.remove_helper(&helper).await;
                r?;
                let (orig, back) = (dir.join(&a.file), reread.clone());
                tokio::task::spawn_blocking(move || {
                    Ok::<_, String>((tree_digest(&orig)?, tree_digest(&back)?))
                })
                .await
                .map_err(|e| e.to_string())?
            }
            .await;
            let _ = tokio::fs::remove_file(&reread).await;
            if let Err(e) = self.runtime.remove_volume(&scratch).await {
                tracing::warn!(volume = %scratch, error = %e, "removing a verification volume failed");
            }
            let (orig, back) =
                r.map_err(|e| BackupError::Failed(format!("verifying {}: {e}", a.file)))?;
            if orig != back {
                let differ: Vec<&String> = orig
                    .iter()
                    .filter(|(k, v)| back.get(*k) != Some(v))
                    .map(|(k, _)| k)
                    .chain(back.keys().filter(|k| !orig.contains_key(*k)))
                    .take(5)
                    .collect();
                return Err(BackupError::Failed(format!(
                    "verification of {} failed: the restored copy differs ({differ:?})",
                    a.file
                )));
            }
            for p in &a.verify_paths {
                let key = format!("{}/{p}", HELPER_MOUNT.trim_start_matches('/'));
                if !back.contains_key(&key) {
                    return Err(BackupError::Failed(format!(
                        "verification of {} failed: verify_path {p:?} does not exist in the restored volume",
                        a.file
                    )));
                }
            }
        }
        Ok(())
    }

    /// Retention: only the `keep` newest backups stay (none running is deleted).
    fn retain(&self) {
        let Some(keep) = self.settings.keep else {
            return;
        };
        for old in self.list().into_iter().skip(keep as usize) {
            if old.status == "running" {
                continue;
            }
            // Renamed out of sight first (a name that is no backup id), so a backup is either
            // listed whole or gone: `list` never sees one half deleted.
            let path = self.dir.join(&old.id);
            let doomed = self.dir.join(format!(".deleting-{}", old.id));
            let removed =
                std::fs::rename(&path, &doomed).and_then(|()| std::fs::remove_dir_all(&doomed));
            match removed {
                Ok(()) => tracing::info!(backup = %old.id, keep, "old backup deleted (retention)"),
                Err(e) => {
                    tracing::warn!(backup = %old.id, error = %e, "deleting an old backup failed")
                }
            }
        }
    }

    /// Runs `[backup] schedule` until `shutdown`: a verified backup of everything at each
    /// time the pattern matches (UTC), then retention.
    pub async fn run_schedule(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(pattern) = self.settings.schedule.clone() else {
            return;
        };
        let cron: croner::Cron = match pattern.parse() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(schedule = %pattern, error = %e, "backup schedule invalid");
                return;
            }
        };
        tracing::info!(schedule = %pattern, "backups scheduled");
        loop {
            let now = chrono::Utc::now();
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                return;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let guard = self.busy.clone().lock_owned().await;
            let id = new_id();
            *self.running.lock().expect("running lock") = Some(id.clone());
            let scope = Scope::default();
            let r = async {
                let plan = self.plan(&scope)?;
                let m = self.begin(&id, &scope, true)?;
                let progress = Progress::new("backup", 0);
                self.jobs
                    .lock()
                    .expect("jobs lock")
                    .insert(id.clone(), progress.clone());
                let r = self.run_backup(m, plan, true, &progress).await;
                progress.finish(&r);
                r
            }
            .await;
            if let Err(e) = r {
                tracing::warn!(backup = %id, error = %e, "scheduled backup failed");
            }
            *self.running.lock().expect("running lock") = None;
            drop(guard);
        }
    }
}

/// SHA-256 and size of a file.
async fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)
            .map_err(|e| failed(&format!("opening {}", path.display()), e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| failed(&format!("reading {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((size, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(|e| failed("hashing", e))?
}

/// Every entry of a tar file: path (without a trailing `/`) → its kind and, for files, the
/// SHA-256 of the contents (for links, the target).
pub fn tree_digest(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut out = BTreeMap::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("reading {}: {e}", path.display()))?;
        let name = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let kind = entry.header().entry_type();
        let value = if kind.is_file() {
            let mut hasher = Sha256::new();
            std::io::copy(&mut entry, &mut hasher).map_err(|e| e.to_string())?;
            format!("file {}", hex::encode(hasher.finalize()))
        } else if kind.is_dir() {
            "dir".to_string()
        } else {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|p| p.to_string_lossy().to_string())
                .unwrap_or_default();
            format!("{kind:?} {target}")
        };
        out.insert(name, value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_backups_directory() {
        assert!(valid_id(&new_id()), "{}", new_id());
        for bad in ["", "..", "../x", "a/b", "20261202T030000.000Z/..", "x"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn tree_digest_sees_files_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, "v/d/", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "v/d/f", &b"abc"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let t = tree_digest(&path).unwrap();
        assert_eq!(t["v/d"], "dir");
        assert!(t["v/d/f"].starts_with("file ba7816bf"), "{t:?}");
    }
}
