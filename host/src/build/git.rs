//! git for builds: which repository references are allowed, resolving a branch head
//! (`git ls-remote`) and checking out one commit into a work directory. git runs as a child
//! process with explicit arguments (never a shell), an empty environment plus what it needs,
//! only the https, ssh and file transports, no prompts, and a time limit.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orca_config::BuildSettings;
use tokio::process::Command;

/// Longest one git command may run.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// Most output kept from one git command (for error messages and the build log).
const MAX_OUTPUT: usize = 64 * 1024;

/// How git reaches repositories: the ssh key and known_hosts from `[build]`, and where an
/// unknown ssh host key gets pinned.
#[derive(Debug, Clone)]
pub struct GitAccess {
    ssh_key: Option<PathBuf>,
    known_hosts: PathBuf,
    strict: bool,
    home: PathBuf,
}

impl GitAccess {
    /// From the cluster's `[build]` settings; `home` is orca's state directory.
    pub fn new(settings: &BuildSettings, home: &Path) -> Result<GitAccess, String> {
        for path in [&settings.ssh_key, &settings.known_hosts]
            .into_iter()
            .flatten()
        {
            if !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b))
            {
                return Err(format!(
                    "[build] path {path:?} has characters git's ssh command line cannot carry \
                     safely: use letters, digits and / . _ - + @"
                ));
            }
        }
        if let Some(key) = &settings.ssh_key {
            if !Path::new(key).is_file() {
                return Err(format!("[build] ssh_key {key:?} is not a readable file"));
            }
        }
        Ok(GitAccess {
            ssh_key: settings.ssh_key.as_ref().map(PathBuf::from),
            strict: settings.known_hosts.is_some(),
            known_hosts: settings
                .known_hosts
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("known_hosts")),
            home: home.to_path_buf(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", "https:ssh:file")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("LC_ALL", "C")
            .args([
                "-c",
                "advice.detachedHead=false",
                "-c",
                "core.hooksPath=/dev/null",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let checking = if self.strict { "yes" } else { "accept-new" };
        let mut ssh = format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking={checking} -o UserKnownHostsFile={}",
            self.known_hosts.display()
        );
        if let Some(key) = &self.ssh_key {
            ssh.push_str(&format!(" -o IdentitiesOnly=yes -i {}", key.display()));
        }
        cmd.env("GIT_SSH_COMMAND", ssh);
        cmd
    }

    /// Runs git; stdout on success, else an error carrying git's own message.
    async fn run(&self, what: &str, args: &[&str]) -> Result<String, String> {
        let child = self
            .command(args)
            .spawn()
            .map_err(|e| format!("{what}: cannot run git: {e}"))?;
        let out = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| format!("{what}: git took longer than {}s", GIT_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{what}: {e}"))?;
        let text = |bytes: &[u8]| {
            let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]);
            s.trim().to_string()
        };
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            let stderr = text(&out.stderr);
            let message = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output")
                .to_string();
            Err(format!("{what}: {message}"))
        }
    }

    /// The commit at the head of `branch` (or of the default branch).
    pub async fn resolve_head(&self, repo: &str, branch: Option<&str>) -> Result<String, String> {
        check_repo(repo)?;
        let reference = match branch {
            Some(b) => {
                check_branch(b)?;
                format!("refs/heads/{b}")
            }
            None => "HEAD".to_string(),
        };
        let out = self
            .run(
                &format!("resolving {reference} of {repo}"),
                &["ls-remote", "--", repo, &reference],
            )
            .await?;
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(_, r)| *r == reference)
            .map(|(sha, _)| sha.to_string())
            .filter(|sha| check_commit(sha).is_ok())
            .ok_or_else(|| format!("{repo} has no {reference}"))
    }

    /// Checks out `commit` of `repo` into the new directory `dir` (detached, no history
    /// beyond what the fetch brings). Returns lines for the build log.
    pub async fn checkout(
        &self,
        repo: &str,
        commit: &str,
        dir: &Path,
    ) -> Result<Vec<String>, String> {
        check_repo(repo)?;
        check_commit(commit)?;
        let dir_s = dir
            .to_str()
            .ok_or_else(|| format!("work directory {} is not UTF-8", dir.display()))?;
        let mut log = Vec::new();
        self.run("git init", &["init", "--quiet", "--", dir_s])
            .await?;
        // Fetching one commit by id is what forges allow (protocol v2); older servers refuse
        // ids that are not a ref tip, so fall back to fetching every branch.
        let shallow = self
            .run(
                "fetching the commit",
                &[
                    "-C", dir_s, "fetch", "--quiet", "--depth", "1", "--", repo, commit,
                ],
            )
            .await;
        let target = match shallow {
            Ok(_) => "FETCH_HEAD".to_string(),
            Err(e) => {
                log.push(format!(
                    "shallow fetch of {commit} refused ({e}); fetching all branches"
                ));
                self.run(
                    "fetching branches",
                    &[
                        "-C",
                        dir_s,
                        "fetch",
                        "--quiet",
                        "--",
                        repo,
                        "+refs/heads/*:refs/remotes/origin/*",
                    ],
                )
                .await?;
                commit.to_string()
            }
        };
        self.run(
            &format!("checking out {commit}"),
            &["-C", dir_s, "checkout", "--quiet", "--detach", &target],
        )
        .await?;
        let head = self
            .run("reading HEAD", &["-C", dir_s, "rev-parse", "HEAD"])
            .await?;
        if !head.starts_with(&commit.to_ascii_lowercase()) {
            return Err(format!(
                "checked out {head}, not the requested commit {commit}"
            ));
        }
        log.push(format!("HEAD is {head}"));
        Ok(log)
    }
}

/// A repository reference git-build accepts: `https://…`, `ssh://…`, `user@host:path`,
/// `file:///abs/path` or an absolute local path. Nothing that git could read as an option
/// or as another transport (`ext::`, `fd::`).
pub fn check_repo(repo: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("repository {repo:?} is not allowed: {why}"));
    if repo.is_empty() || repo.len() > 2048 {
        return bad("empty or longer than 2048 bytes");
    }
    if repo.starts_with('-') {
        return bad("starts with '-'");
    }
    if repo.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("contains whitespace or control characters");
    }
    if repo.contains("::") {
        return bad("git remote helpers (`transport::address`) are not allowed");
    }
    let ok = repo.starts_with("https://")
        || repo.starts_with("ssh://")
        || repo.starts_with("file:///")
        || repo.starts_with('/')
        || is_scp_like(repo);
    if ok {
        Ok(())
    } else {
        bad("use https://, ssh://, user@host:path, file:/// or an absolute path")
    }
}

fn is_scp_like(repo: &str) -> bool {
    match repo.split_once(':') {
        Some((host, path)) => {
            !host.is_empty()
                && !host.contains('/')
                && host.contains('@')
                && !path.is_empty()
                && !path.starts_with("//")
        }
        None => false,
    }
}

/// A commit id: 7 to 64 hex digits.
pub fn check_commit(commit: &str) -> Result<(), String> {
    if (7..=64).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "commit {commit:?} is not a commit id (7 to 64 hex digits)"
        ))
    }
}

/// A branch name git would accept as `refs/heads/<name>`, conservatively.
pub fn check_branch(branch: &str) -> Result<(), String> {
    let ok = !branch.is_empty()
        && branch.len() <= 255
        && !branch.starts_with(['-', '/'])
        && !branch.ends_with(['/', '.'])
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.ends_with(".lock")
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "branch {branch:?} is not a branch name git-build accepts"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_references() {
        for ok in [
            "https://github.com/org/app.git",
            "ssh://git@host:2222/org/app.git",
            "git@github.com:org/app.git",
            "file:///srv/git/app",
            "/srv/git/app",
        ] {
            assert!(check_repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "http://plain.example/app.git",
            "git://host/app.git",
            "relative/path",
            "https://host/a b",
            "host:path",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commits_and_branches() {
        assert!(check_commit("366701fde727cb7a9e7f21eb88264f59f6f9b89c").is_ok());
        assert!(check_commit("abc").is_err());
        assert!(check_commit("--all").is_err());
        assert!(check_branch("main").is_ok());
        assert!(check_branch("release/1.2").is_ok());
        for bad in ["-x", "a..b", "a b", "a/", "x.lock", "/a"] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn checks_out_a_local_commit_and_resolves_heads() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
                .arg(&repo)
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        git(&["init", "--quiet", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "one").unwrap();
        git(&["add", "."]);
        git(&["commit", "--quiet", "-m", "one"]);
        let first = git(&["rev-parse", "HEAD"]);
        std::fs::write(repo.join("a.txt"), "two").unwrap();
        git(&["commit", "--quiet", "-am", "two"]);
        let second = git(&["rev-parse", "HEAD"]);

        let access = GitAccess::new(&BuildSettings::default(), tmp.path()).unwrap();
        let repo_s = repo.to_str().unwrap();
        assert_eq!(
            access.resolve_head(repo_s, Some("main")).await.unwrap(),
            second
        );
        assert_eq!(access.resolve_head(repo_s, None).await.unwrap(), second);
        assert!(access.resolve_head(repo_s, Some("nope")).await.is_err());

        let work = tmp.path().join("work");
        access
            .checkout(&format!("file://{repo_s}"), &first, &work)
            .await
            .unwrap();
        assert_eq!(std::fs::read_to_string(work.join("a.txt")).unwrap(), "one");
        let missing = access
            .checkout(
                repo_s,
                "0123456789abcdef0123456789abcdef01234567",
                &tmp.path().join("w2"),
            )
            .await
            .unwrap_err();
        assert!(
            missing.contains("fetch") || missing.contains("checking out"),
            "{missing}"
        );
    }
}
