//! The builder capability: [`BuildHostCap`], the host side of the `build-host` interface.

/// What a builder plugin may ask of the host. The implementation (checkout into a work
/// directory, image build through the container runtime) lives outside the plugin runtime;
/// its calls block the plugin call's thread, which is why builder calls get a long deadline.
pub trait BuildHostCap: Send + Sync {
    /// A line of build output, kept and shown by `orca logs SERVICE --build`.
    fn log_line(&self, line: &str);
    /// Checks out `repo` at `commit` into a fresh work directory; returns its handle.
    fn checkout(&self, repo: &str, commit: &str) -> Result<String, String>;
    /// Builds an image from a checked-out work directory; returns the image id.
    fn build_image(
        &self,
        workdir: &str,
        dockerfile: &str,
        context: &str,
        tag: &str,
    ) -> Result<String, String>;
}
