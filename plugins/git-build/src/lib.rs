//! `git-build`: orca's build pipeline. Checks out `repo` at `commit` through the build host,
//! builds the image from `dockerfile` (default `Dockerfile`) and `context` (default `.`) in
//! that work directory, tags it `tag` (default `<project>/<service>:<short sha>`), and returns
//! the image id and tag. Progress goes to the build log (`orca logs SERVICE --build`).
//! A failure names the failing step: `checkout failed: …`, `image build failed: …`.

#![deny(unsafe_code)]

use orca_plugin_sdk::builder::{BuildHost, Builder};
use orca_plugin_sdk::types::{BuildOutput, BuildRequest};
use orca_plugin_sdk::{log, Level};

/// The build pipeline.
#[derive(Default)]
pub struct GitBuild;

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    match value.trim() {
        "" => default,
        v => v,
    }
}

/// The tag to use: the request's, or `<project>/<service>:<first 12 characters of commit>`.
pub fn tag_for(request: &BuildRequest) -> String {
    if !request.tag.trim().is_empty() {
        return request.tag.trim().to_string();
    }
    let short: String = request.commit.trim().chars().take(12).collect();
    format!("{}/{}:{}", request.project, request.service, short)
}

fn fail(host: &dyn BuildHost, message: String) -> Result<BuildOutput, String> {
    host.log_line(&message);
    log(Level::Warn, &format!("git-build: {message}"));
    Err(message)
}

impl Builder for GitBuild {
    fn build(&self, request: &BuildRequest, host: &dyn BuildHost) -> Result<BuildOutput, String> {
        let repo = request.repo.trim();
        let commit = request.commit.trim();
        if repo.is_empty() {
            return fail(host, "checkout failed: no repository given".into());
        }
        if commit.is_empty() {
            return fail(host, "checkout failed: no commit given".into());
        }
        let dockerfile = or_default(&request.dockerfile, "Dockerfile");
        let context = or_default(&request.context, ".");
        let tag = tag_for(request);

        let branch = match request.branch.trim() {
            "" => String::new(),
            b => format!(" (branch {b})"),
        };
        host.log_line(&format!("==> checking out {repo} at {commit}{branch}"));
        let workdir = match host.checkout(repo, commit) {
            Ok(w) => w,
            Err(e) => return fail(host, format!("checkout failed: {e}")),
        };
        host.log_line(&format!("==> checked out into {workdir}"));
        host.log_line(&format!(
            "==> building {tag} from {dockerfile} (context {context})"
        ));
        let image_id = match host.build_image(&workdir, dockerfile, context, &tag) {
            Ok(id) => id,
            Err(e) => return fail(host, format!("image build failed: {e}")),
        };
        host.log_line(&format!("==> built {tag} ({image_id})"));
        Ok(BuildOutput { image_id, tag })
    }
}

orca_plugin_sdk::export_builder!(GitBuild);

#[cfg(test)]
mod tests {
    use super::*;
    use orca_plugin_sdk::testing::{BuildCall, FakeBuildHost};

    fn request() -> BuildRequest {
        BuildRequest {
            project: "shop".into(),
            service: "web".into(),
            repo: "https://git.example.com/shop/web.git".into(),
            branch: "main".into(),
            commit: "366701fde727cb7a9e7f21eb88264f59f6f9b89c".into(),
            dockerfile: "deploy/Dockerfile".into(),
            context: "app".into(),
            tag: "shop/web:366701fde727".into(),
        }
    }

    #[test]
    fn checks_out_then_builds() {
        let host = FakeBuildHost::new();
        let out = GitBuild.build(&request(), &host).unwrap();
        assert_eq!(
            out,
            BuildOutput {
                image_id: "sha256:fake-image".into(),
                tag: "shop/web:366701fde727".into()
            }
        );
        let calls: Vec<BuildCall> = host
            .calls()
            .into_iter()
            .filter(|c| !matches!(c, BuildCall::LogLine { .. }))
            .collect();
        assert_eq!(
            calls,
            vec![
                BuildCall::Checkout {
                    repo: "https://git.example.com/shop/web.git".into(),
                    commit: "366701fde727cb7a9e7f21eb88264f59f6f9b89c".into()
                },
                BuildCall::BuildImage {
                    workdir: "workdir-1".into(),
                    dockerfile: "deploy/Dockerfile".into(),
                    context: "app".into(),
                    tag: "shop/web:366701fde727".into()
                },
            ]
        );
        let log = host.log_lines().join("\n");
        assert!(log.contains("checking out"), "{log}");
        assert!(log.contains("sha256:fake-image"), "{log}");
    }

    #[test]
    fn defaults_for_dockerfile_context_and_tag() {
        let host = FakeBuildHost::new();
        let mut req = request();
        req.dockerfile.clear();
        req.context.clear();
        req.tag.clear();
        let out = GitBuild.build(&req, &host).unwrap();
        assert_eq!(out.tag, "shop/web:366701fde727");
        assert!(host.calls().contains(&BuildCall::BuildImage {
            workdir: "workdir-1".into(),
            dockerfile: "Dockerfile".into(),
            context: ".".into(),
            tag: "shop/web:366701fde727".into()
        }));
    }

    #[test]
    fn a_failed_checkout_stops_the_build() {
        let host = FakeBuildHost::new().with_checkout(Err("repository not found".into()));
        let err = GitBuild.build(&request(), &host).unwrap_err();
        assert_eq!(err, "checkout failed: repository not found");
        assert!(!host
            .calls()
            .iter()
            .any(|c| matches!(c, BuildCall::BuildImage { .. })));
        assert_eq!(host.log_lines().last().unwrap(), &err);
    }

    #[test]
    fn a_failed_image_build_is_named() {
        let host = FakeBuildHost::new().with_build_image(Err("step 3/7: exit code 1".into()));
        let err = GitBuild.build(&request(), &host).unwrap_err();
        assert_eq!(err, "image build failed: step 3/7: exit code 1");
        assert_eq!(host.log_lines().last().unwrap(), &err);
    }

    #[test]
    fn empty_requests_are_refused_before_any_call() {
        let host = FakeBuildHost::new();
        let mut req = request();
        req.commit.clear();
        assert_eq!(
            GitBuild.build(&req, &host).unwrap_err(),
            "checkout failed: no commit given"
        );
        assert!(!host
            .calls()
            .iter()
            .any(|c| matches!(c, BuildCall::Checkout { .. })));
    }
}
