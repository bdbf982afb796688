//! orca's configuration schema and its validation: `service.toml`, `cluster.toml` and the JSON
//! body of `POST /api/v1/deploy`.
//!
//! Module map:
//!
//! - [`service`] — [`ServiceSpec`] and its tables, and the checks on one spec.
//! - [`cluster`] — `cluster.toml`: [`ClusterConfig`], tokens and [`Role`]s.
//! - [`load`] — reading `service.toml` files, project directories and deploy bodies; the
//!   checks across services ([`validate_set`]).
//! - [`units`] — [`Memory`] sizes such as `"512Mi"`.
//! - [`names`] — syntax of names, env keys and domains.
//! - [`secrets`] — `${secrets.KEY}` references.
//! - [`volumes`] — `volumes` entries as typed [`Mount`]s; the host-path prefix rule.
//! - [`error`] — [`ConfigError`], the one error type, located by file, line, column and field.
//! - `source` (private) — parsing TOML/JSON text and locating errors in it.
//!
//! Every type rejects unknown fields, so a misspelt key is an error rather than a silently
//! ignored setting. This crate does no network I/O and knows nothing of Docker or HTTP; the
//! only files it reads are the configuration files it is pointed at.

#![deny(missing_docs)]

pub mod cluster;
pub mod error;
pub mod image;
pub mod load;
pub mod names;
pub mod secrets;
pub mod service;
mod source;
pub mod units;
pub mod volumes;

pub use cluster::{
    load_cluster_config, parse_cluster_file, AcmeSettings, ApiSettings, BackupSettings,
    BuildSettings, ClusterConfig, ClusterSettings, NodesSettings, NotifyConfig, PluginSettings,
    ProxySettings, Role, TokenConfig, UpdateSettings, VolumeSettings,
};
pub use error::ConfigError;
pub use load::{
    load_project_dir, load_services_dir, parse_deploy_json, parse_deploy_request,
    parse_service_file, read_tls_files, validate_set, DeployRequest, TlsFiles, TlsUpload,
};
pub use names::validate_name;
pub use secrets::{secret_refs, substitute_secrets};
pub use service::{BackupOptions, Build, Deploy, Placement, Probe, Resources, ServiceSpec};
pub use units::Memory;
pub use volumes::{parse_mount, Mount, MountSource};
