//! The host interfaces of the released, frozen contracts (`wit/released/<version>/`): one
//! macro, expanded in each release's bindings module (`v0_1`, `v0_2`), that implements that
//! release's `logging`, `endpoint`, `crypto` and `build-host` by delegating to the live ones
//! (`bindings`), so every version's imports share one implementation.

/// Implements the host interfaces of the bindings module it is expanded in. The module must
/// have `strategy`, `probe`, `webhook` and `builder` bindgen modules, `wit` (its `types`),
/// `logging`, and `live` (the live `bindings`) in scope.
macro_rules! delegate_host_interfaces_to_live {
    () => {
        impl wit::Host for HostState {}

        impl logging::Host for HostState {
            fn log(&mut self, level: logging::Level, message: String) {
                let level = match level {
                    logging::Level::Debug => live::logging::Level::Debug,
                    logging::Level::Info => live::logging::Level::Info,
                    logging::Level::Warn => live::logging::Level::Warn,
                    logging::Level::Error => live::logging::Level::Error,
                };
                <HostState as live::logging::Host>::log(self, level, message)
            }
        }

        impl probe::orca::plugin::endpoint::Host for HostState {
            fn address(&mut self) -> String {
                <HostState as live::probe::orca::plugin::endpoint::Host>::address(self)
            }

            fn http_get(
                &mut self,
                path: String,
                headers: Vec<wit::Pair>,
                timeout_ms: u32,
            ) -> Result<wit::HttpResponse, String> {
                let headers = headers
                    .into_iter()
                    .map(|p| live::wit::Pair {
                        key: p.key,
                        value: p.value,
                    })
                    .collect();
                let r = <HostState as live::probe::orca::plugin::endpoint::Host>::http_get(
                    self, path, headers, timeout_ms,
                )?;
                Ok(wit::HttpResponse {
                    status: r.status,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|p| wit::Pair {
                            key: p.key,
                            value: p.value,
                        })
                        .collect(),
                    body: r.body,
                })
            }

            fn tcp_connect(&mut self, timeout_ms: u32) -> Result<(), String> {
                <HostState as live::probe::orca::plugin::endpoint::Host>::tcp_connect(
                    self, timeout_ms,
                )
            }
        }

        impl webhook::orca::plugin::crypto::Host for HostState {
            fn hmac_sha256(&mut self, key: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
                <HostState as live::webhook::orca::plugin::crypto::Host>::hmac_sha256(
                    self, key, data,
                )
            }

            fn constant_time_eq(&mut self, a: Vec<u8>, b: Vec<u8>) -> bool {
                <HostState as live::webhook::orca::plugin::crypto::Host>::constant_time_eq(
                    self, a, b,
                )
            }
        }

        impl builder::orca::plugin::build_host::Host for HostState {
            fn log_line(&mut self, line: String) {
                <HostState as live::builder::orca::plugin::build_host::Host>::log_line(self, line)
            }

            fn checkout(&mut self, repo: String, commit: String) -> Result<String, String> {
                <HostState as live::builder::orca::plugin::build_host::Host>::checkout(
                    self, repo, commit,
                )
            }

            fn build_image(
                &mut self,
                workdir: String,
                dockerfile: String,
                context: String,
                tag: String,
            ) -> Result<String, String> {
                <HostState as live::builder::orca::plugin::build_host::Host>::build_image(
                    self, workdir, dockerfile, context, tag,
                )
            }
        }
    };
}

pub(crate) use delegate_host_interfaces_to_live;
