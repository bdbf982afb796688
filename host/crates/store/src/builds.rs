//! Owns table `builds`: the image builds of each service (git-build), with their output,
//! so `orca logs SERVICE --build` shows what happened after the fact.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::record::{check_name, decode, encode, project_range, scoped_key};
use crate::{Store, StoreError};

const BUILDS: TableDefinition<&str, &[u8]> = TableDefinition::new("builds");
const SCHEMA: u32 = 1;

/// Builds kept per service (the newest).
pub const BUILDS_KEPT: usize = 10;
/// Output lines kept per build (the last ones; the first lines are also kept).
pub const BUILD_LOG_LINES: usize = 2000;

/// Where a build stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Started, not finished (or the server stopped while it ran).
    Running,
    /// The image was built.
    Succeeded,
    /// The build failed; `error` says at which step.
    Failed,
}

/// One build of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The service's project.
    pub project: String,
    /// The service.
    pub service: String,
    /// Starts at 1 per service.
    pub number: u64,
    /// Repository built.
    pub repo: String,
    /// Branch the commit was pushed to (or resolved from).
    pub branch: String,
    /// Commit built.
    pub commit: String,
    /// What started it: `push` (with the webhook id) or `deploy`.
    pub trigger: String,
    /// Where it stands.
    pub status: BuildStatus,
    /// The image tag (`<project>/<service>:<short-sha>`).
    pub tag: String,
    /// The image id, once built.
    pub image_id: Option<String>,
    /// Why it failed, naming the step.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub started_ms: u64,
    /// Unix milliseconds, once finished.
    pub finished_ms: Option<u64>,
    /// The build output.
    pub log: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Row {
    schema: u32,
    #[serde(flatten)]
    build: BuildRecord,
}

/// The stored form of a build, its log bounded.
fn encode_build(mut build: BuildRecord) -> Vec<u8> {
    bound_log(&mut build.log);
    encode(&Row {
        schema: SCHEMA,
        build,
    })
}

fn build_key(project: &str, service: &str, number: u64) -> String {
    format!("{}/{number:020}", scoped_key(project, service))
}

/// Keeps the first `BUILD_LOG_LINES / 4` and the last lines of a long log, with a marker.
pub fn bound_log(log: &mut Vec<String>) {
    if log.len() <= BUILD_LOG_LINES {
        return;
    }
    let head = BUILD_LOG_LINES / 4;
    let tail = BUILD_LOG_LINES - head - 1;
    let dropped = log.len() - head - tail;
    let mut kept: Vec<String> = log[..head].to_vec();
    kept.push(format!("[... {dropped} lines omitted ...]"));
    kept.extend_from_slice(&log[log.len() - tail..]);
    *log = kept;
}

impl Store {
    /// Records a new build of `project/service` (its `number` assigned here, one above the
    /// highest kept) and prunes the service's builds to the newest [`BUILDS_KEPT`]. Returns
    /// the number.
    pub fn start_build(&self, build: &BuildRecord) -> Result<u64, StoreError> {
        check_name("project name", &build.project)?;
        check_name("service name", &build.service)?;
        let (from, to) = project_range(&scoped_key(&build.project, &build.service));
        let txn = self.db().begin_write()?;
        let number;
        {
            let mut table = txn.open_table(BUILDS)?;
            let keys: Vec<String> = table
                .range(from.as_str()..to.as_str())?
                .map(|e| e.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<_, _>>()?;
            number = match keys.last() {
                Some(k) => {
                    let bytes = table.get(k.as_str())?.map(|v| v.value().to_vec());
                    let bytes = bytes.unwrap_or_default();
                    let last: Row = decode("builds", k, &bytes, SCHEMA, |r: &Row| r.schema)?;
                    last.build.number + 1
                }
                None => 1,
            };
            let mut row = build.clone();
            row.number = number;
            let key = build_key(&build.project, &build.service, number);
            table.insert(key.as_str(), encode_build(row).as_slice())?;
            let excess = (keys.len() + 1).saturating_sub(BUILDS_KEPT);
            for k in keys.iter().take(excess) {
                table.remove(k.as_str())?;
            }
        }
        txn.commit()?;
        Ok(number)
    }

    /// Replaces a build's record (progress or result). The build must exist.
    pub fn update_build(&self, build: &BuildRecord) -> Result<(), StoreError> {
        let key = build_key(&build.project, &build.service, build.number);
        let txn = self.db().begin_write()?;
        {
            let mut table = txn.open_table(BUILDS)?;
            if table.get(key.as_str())?.is_none() {
                return Err(StoreError::NotFound {
                    what: format!("build {key}"),
                });
            }
            table.insert(key.as_str(), encode_build(build.clone()).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The builds of `project/service` kept, oldest first.
    pub fn list_builds(
        &self,
        project: &str,
        service: &str,
    ) -> Result<Vec<BuildRecord>, StoreError> {
        let (from, to) = project_range(&scoped_key(project, service));
        let txn = self.db().begin_read()?;
        let table = txn.open_table(BUILDS)?;
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str())? {
            let (k, v) = entry?;
            let row: Row = decode("builds", k.value(), v.value(), SCHEMA, |r: &Row| r.schema)?;
            out.push(row.build);
        }
        Ok(out)
    }

    /// The projects that have builds of a service named `service`.
    pub fn build_projects(&self, service: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(BUILDS)?;
        let mut out: Vec<String> = Vec::new();
        for entry in table.iter()? {
            let (k, _) = entry?;
            let mut parts = k.value().splitn(3, '/');
            if let (Some(p), Some(s)) = (parts.next(), parts.next()) {
                if s == service && out.last().map(String::as_str) != Some(p) {
                    out.push(p.to_owned());
                }
            }
        }
        Ok(out)
    }
}

pub(crate) fn create_table(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BUILDS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::store;

    fn build(service: &str) -> BuildRecord {
        BuildRecord {
            project: "shop".into(),
            service: service.into(),
            number: 0,
            repo: "/srv/git/app".into(),
            branch: "main".into(),
            commit: "abc".into(),
            trigger: "deploy".into(),
            status: BuildStatus::Running,
            tag: "shop/web:abc".into(),
            image_id: None,
            error: None,
            started_ms: 1,
            finished_ms: None,
            log: vec!["==> start".into()],
        }
    }

    #[test]
    fn builds_are_numbered_updated_and_pruned_per_service() {
        let (_d, store) = store();
        for i in 0..(BUILDS_KEPT + 3) {
            assert_eq!(store.start_build(&build("web")).unwrap(), i as u64 + 1);
        }
        assert_eq!(store.start_build(&build("web2")).unwrap(), 1);
        let builds = store.list_builds("shop", "web").unwrap();
        assert_eq!(builds.len(), BUILDS_KEPT);
        assert_eq!(builds.last().unwrap().number, BUILDS_KEPT as u64 + 3);
        let mut last = builds.last().unwrap().clone();
        last.status = BuildStatus::Failed;
        last.error = Some("image build failed at Step 2/2".into());
        last.log.push("boom".into());
        store.update_build(&last).unwrap();
        assert_eq!(
            store.list_builds("shop", "web").unwrap().last(),
            Some(&last)
        );
        assert_eq!(store.list_builds("shop", "web2").unwrap().len(), 1);
        let mut missing = build("nope");
        missing.number = 9;
        assert!(store.update_build(&missing).is_err());
    }

    #[test]
    fn long_logs_keep_head_and_tail() {
        let mut log: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        bound_log(&mut log);
        assert_eq!(log.len(), BUILD_LOG_LINES);
        assert_eq!(log[0], "0");
        assert!(log[BUILD_LOG_LINES / 4].contains("omitted"));
        assert_eq!(log.last().unwrap(), "4999");
    }
}
