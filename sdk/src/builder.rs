//! Build pipelines (the `builder` world): turn a commit into an image through host
//! capabilities.

use std::marker::PhantomData;

use crate::types::{BuildOutput, BuildRequest};

/// The build capabilities the host grants a builder.
///
/// On wasm it is the host's `build-host` import; in native tests use
/// [`FakeBuildHost`](crate::testing::FakeBuildHost).
pub trait BuildHost {
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

/// A build pipeline driven by the plugin.
///
/// Plugins are stateless: the export glue builds the type with `Default::default()` for every
/// build. Register it with [`export_builder!`](crate::export_builder).
pub trait Builder {
    /// Builds `request` through `host`; `Err` fails the build with that message.
    fn build(&self, request: &BuildRequest, host: &dyn BuildHost) -> Result<BuildOutput, String>;
}

/// The generated `Guest` implementation behind [`export_builder!`](crate::export_builder).
#[doc(hidden)]
pub struct __Export<T>(PhantomData<T>);

impl<T: Builder + Default> crate::__bindings::builder::Guest for __Export<T> {
    fn build(
        request: crate::__bindings::wit::BuildRequest,
    ) -> Result<crate::__bindings::wit::BuildOutput, String> {
        T::default()
            .build(&request.into(), &crate::__bindings::host::HostBuildHost)
            .map(Into::into)
    }
}

/// Exports a [`Builder`] as the component's `build` function.
///
/// The type must implement [`Builder`] and [`Default`]; see
/// [`export_strategy!`](crate::export_strategy) for how the export macros behave.
#[macro_export]
macro_rules! export_builder {
    ($ty:ty) => {
        const _: () = {
            fn __orca_requires_builder_and_default<
                T: $crate::builder::Builder + ::core::default::Default,
            >() {
            }
            let _ = __orca_requires_builder_and_default::<$ty>;
        };
        #[cfg(target_family = "wasm")]
        #[allow(unsafe_code)]
        const _: () = {
            type __OrcaBuilderExport = $crate::builder::__Export<$ty>;
            $crate::__bindings::builder::export!(
                __OrcaBuilderExport with_types_in $crate::__bindings::builder
            );
        };
    };
}
