//! Loading service definitions — `service.toml` files, project directories and the deploy
//! request body — and the checks that span several services.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FieldPath, Invalid};
use crate::names::validate_name;
use crate::service::{check_spec, ServiceSpec};
use crate::source::{parse_json, TomlDoc};

/// The name of the file holding a project's services.
pub const SERVICE_FILE: &str = "service.toml";

/// The shape of `service.toml`: `[[service]]` tables and nothing else.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    #[serde(default)]
    service: Vec<ServiceSpec>,
}

/// The shape of the `POST /api/v1/deploy` body.
#[derive(Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct DeployBody {
    services: Vec<ServiceSpec>,
    #[serde(default)]
    tls: Vec<TlsUpload>,
}

/// A service's own certificate in a deploy request (`"tls"` array): the contents of its
/// `tls_cert` and `tls_key` files, so the server never needs the client's filesystem.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TlsUpload {
    /// The service's project.
    pub project: String,
    /// The service's name.
    pub service: String,
    /// The PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// The PEM private key.
    pub key_pem: String,
}

/// Debug output never shows the key.
impl fmt::Debug for TlsUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsUpload")
            .field("project", &self.project)
            .field("service", &self.service)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A whole `POST /api/v1/deploy` request.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployRequest {
    /// The services, checked one by one and as a set.
    pub services: Vec<ServiceSpec>,
    /// One certificate per service that sets `tls_cert`, and no other.
    pub tls: Vec<TlsUpload>,
}

/// Parses one `service.toml` of `project`: sets `project` on every spec, checks every spec and
/// that no name, domain or alias is used twice within the file.
///
/// `file_label` is how errors name the file. A `project` key in a table is an error, since the
/// project is the directory's name; so is a file without any `[[service]]` table.
pub fn parse_service_file(
    file_label: &str,
    text: &str,
    project: &str,
) -> Result<Vec<ServiceSpec>, ConfigError> {
    let (specs, doc) = parse_located(file_label, text, project, None)?;
    check_set(&specs).map_err(|c| {
        let other = doc
            .position(&table_path(c.other))
            .map(|(line, _)| format!("{file_label}:{line}"))
            .unwrap_or_else(|| format!("service[{}]", c.other));
        doc.error(&table_path(c.index), c.into_invalid(&other))
    })?;
    Ok(specs)
}

fn table_path(index: usize) -> FieldPath {
    FieldPath::key("service").i(index)
}

/// [`parse_service_file`] without the checks across services, keeping the document so that
/// callers can locate later errors.
///
/// With `dir` (the directory of the file), `tls_cert`/`tls_key` files are read and checked.
fn parse_located<'a>(
    file_label: &'a str,
    text: &'a str,
    project: &str,
    dir: Option<&Path>,
) -> Result<(Vec<ServiceSpec>, TomlDoc<'a>), ConfigError> {
    validate_name("project", project).map_err(|e| e.with_file(file_label))?;
    let (file, doc): (ServiceFile, _) = TomlDoc::parse(file_label, text).map_err(|mut e| {
        // `[service]` instead of `[[service]]` is an easy slip; say how to fix it.
        if e.field.as_deref() == Some("service") && e.message.ends_with("expected a sequence") {
            e.message
                .push_str(": write each service as a [[service]] table");
        }
        e
    })?;
    if file.service.is_empty() {
        return Err(
            ConfigError::new("no [[service]] tables: define at least one service")
                .with_file(file_label),
        );
    }
    let mut specs = file.service;
    for (i, spec) in specs.iter_mut().enumerate() {
        if spec.project.is_some() {
            return Err(doc.error(
                &table_path(i),
                Invalid::new(
                    FieldPath::key("project"),
                    format!(
                        "`project` cannot be set in service.toml: the project is the directory \
                         name ({project:?}); remove this line"
                    ),
                ),
            ));
        }
        spec.project = Some(project.to_string());
        check_spec(spec).map_err(|e| doc.error(&table_path(i), e))?;
        if let Some(dir) = dir {
            tls_files(dir, spec).map_err(|e| doc.error(&table_path(i), e))?;
        }
    }
    Ok((specs, doc))
}

/// A service's own certificate, as read from its `tls_cert` and `tls_key` files.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The PEM certificate chain, leaf first.
    pub cert_pem: String,
    /// The PEM private key.
    pub key_pem: String,
}

/// Debug output never shows the key.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The largest certificate or key file read: real ones are a few KiB.
const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads `spec`'s `tls_cert` and `tls_key` (relative to `dir`, the service file's
/// directory) and checks that they look like a PEM certificate and a PEM private key. `None`
/// when the spec names no files. The server parses them fully when they are deployed; this
/// catches a wrong path or a swapped pair at load time, naming the field.
pub fn read_tls_files(dir: &Path, spec: &ServiceSpec) -> Result<Option<TlsFiles>, ConfigError> {
    tls_files(dir, spec).map_err(|e| ConfigError::new(e.message).with_field(e.path.to_string()))
}

fn tls_files(dir: &Path, spec: &ServiceSpec) -> Result<Option<TlsFiles>, Invalid> {
    let (Some(cert), Some(key)) = (&spec.tls_cert, &spec.tls_key) else {
        return Ok(None);
    };
    let read = |field: &str, rel: &str| -> Result<String, Invalid> {
        let path = dir.join(rel);
        let invalid = |m: String| Invalid::new(FieldPath::key(field), m);
        let meta = fs::metadata(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > MAX_PEM_FILE {
            return Err(invalid(format!(
                "{} is {} bytes; a PEM file is expected to be under 1 MiB",
                path.display(),
                meta.len()
            )));
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        Ok(text)
    };
    let cert_pem = read("tls_cert", cert)?;
    let key_pem = read("tls_key", key)?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Invalid::new(
            FieldPath::key("tls_cert"),
            format!(
                "{} holds no \"-----BEGIN CERTIFICATE-----\" block: expected a PEM certificate chain",
                dir.join(cert).display()
            ),
        ));
    }
    let has_key = key_pem
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----"));
    if !has_key {
        return Err(Invalid::new(
            FieldPath::key("tls_key"),
            format!(
                "{} holds no \"-----BEGIN PRIVATE KEY-----\" block: expected a PEM private key",
                dir.join(key).display()
            ),
        ));
    }
    Ok(Some(TlsFiles { cert_pem, key_pem }))
}

/// Loads `dir/service.toml`; the project is the directory's name, which must be a valid name.
pub fn load_project_dir(dir: &Path) -> Result<Vec<ServiceSpec>, ConfigError> {
    let file = dir.join(SERVICE_FILE);
    let label = file.display().to_string();
    let project = project_name(dir).map_err(|e| e.with_file(&label))?;
    let text = read(&file, &label)?;
    let (specs, doc) = parse_located(&label, &text, &project, Some(dir))?;
    check_set(&specs).map_err(|c| {
        let other = doc
            .position(&table_path(c.other))
            .map(|(line, _)| format!("{label}:{line}"))
            .unwrap_or_else(|| format!("service[{}]", c.other));
        doc.error(&table_path(c.index), c.into_invalid(&other))
    })?;
    Ok(specs)
}

fn project_name(dir: &Path) -> Result<String, ConfigError> {
    // `Path::file_name` is None for "." and "..": resolve those to the real directory name.
    let resolved;
    let dir = if dir.file_name().is_none() {
        resolved = dir.canonicalize().map_err(|e| {
            ConfigError::new(format!("cannot resolve directory {}: {e}", dir.display()))
        })?;
        resolved.as_path()
    } else {
        dir
    };
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ConfigError::new(format!(
            "cannot take a project name from directory {}",
            dir.display()
        ))
    })?;
    validate_name("project", name)?;
    Ok(name.to_string())
}

fn read(file: &Path, label: &str) -> Result<String, ConfigError> {
    fs::read_to_string(file)
        .map_err(|e| ConfigError::new(format!("cannot read file: {e}")).with_file(label))
}

/// Loads every `config_dir/services/<project>/service.toml`, projects in name order and
/// services in file order, then checks the whole set (see [`validate_set`]).
///
/// Subdirectories without a `service.toml` and hidden ones (starting with `.`) are skipped.
/// Errors name files as `services/<project>/service.toml` when `config_dir` is `.` or empty,
/// otherwise as the full joined path.
pub fn load_services_dir(config_dir: &Path) -> Result<Vec<ServiceSpec>, ConfigError> {
    let base = if config_dir.as_os_str().is_empty() || config_dir == Path::new(".") {
        Path::new("")
    } else {
        config_dir
    };
    let services_dir = base.join("services");
    let dir_label = services_dir.display().to_string();
    let entries = fs::read_dir(config_dir.join("services")).map_err(|e| {
        ConfigError::new(format!("cannot read directory: {e}")).with_file(&dir_label)
    })?;
    let mut projects = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigError::new(format!("cannot read directory: {e}")).with_file(&dir_label)
        })?;
        let name = entry.file_name();
        let hidden = name.to_str().is_some_and(|n| n.starts_with('.'));
        let path = services_dir.join(&name);
        if hidden || !entry.path().is_dir() || !entry.path().join(SERVICE_FILE).is_file() {
            continue;
        }
        projects.push(path);
    }
    projects.sort();

    let mut files = Vec::new();
    for dir in &projects {
        let file = dir.join(SERVICE_FILE);
        let label = file.display().to_string();
        let project = project_name(dir).map_err(|e| e.with_file(&label))?;
        let text = read(
            &config_dir
                .join("services")
                .join(&project)
                .join(SERVICE_FILE),
            &label,
        )?;
        files.push((label, text, project));
    }

    let mut docs = Vec::new();
    let mut specs = Vec::new();
    let mut origin = Vec::new();
    for (label, text, project) in &files {
        let dir = config_dir.join("services").join(project);
        let (file_specs, doc) = parse_located(label, text, project, Some(&dir))?;
        for (i, spec) in file_specs.into_iter().enumerate() {
            origin.push((docs.len(), i));
            specs.push(spec);
        }
        docs.push(doc);
    }
    check_set(&specs).map_err(|c| {
        let (doc, i) = origin[c.index];
        let (other_doc, j) = origin[c.other];
        let other = match docs[other_doc].position(&table_path(j)) {
            Some((line, _)) => format!("{}:{line}", files[other_doc].0),
            None => files[other_doc].0.clone(),
        };
        docs[doc].error(&table_path(i), c.into_invalid(&other))
    })?;
    Ok(specs)
}

/// Checks a set of services against each other: no `project/name` twice, no domain used by two
/// services, and no alias that is already a name or alias of another service of its project.
///
/// The error's field is relative to the offending spec (e.g. `domain`) and its message names
/// both services.
pub fn validate_set(specs: &[ServiceSpec]) -> Result<(), ConfigError> {
    check_set(specs).map_err(|c| {
        let other = specs[c.other].key();
        let invalid = c.into_invalid(&other);
        ConfigError::new(invalid.message).with_field(invalid.path.to_string())
    })
}

/// Parses and checks a `POST /api/v1/deploy` body, `{"services": [...]}`.
///
/// Every service must name a valid `project`; each is checked like a `service.toml` table, then
/// the set is checked with [`validate_set`]'s rules. Errors carry the JSON path
/// (`services[0].replicas`) and, for syntax and type errors, the line and column.
pub fn parse_deploy_json(body: &[u8]) -> Result<Vec<ServiceSpec>, ConfigError> {
    parse_deploy_request(body).map(|request| request.services)
}

/// [`parse_deploy_json`] with the `"tls"` uploads: every service that sets `tls_cert` has
/// exactly one upload, and every upload belongs to such a service.
pub fn parse_deploy_request(body: &[u8]) -> Result<DeployRequest, ConfigError> {
    let body: DeployBody = parse_json(body)?;
    if body.services.is_empty() {
        return Err(
            ConfigError::new("no services: list at least one service to deploy")
                .with_field("services"),
        );
    }
    let at = |i: usize| FieldPath::key("services").i(i);
    let error =
        |path: FieldPath, message: String| ConfigError::new(message).with_field(path.to_string());
    for (i, spec) in body.services.iter().enumerate() {
        if spec.project.is_none() {
            return Err(error(
                at(i).k("project"),
                "missing project: every service in a deploy request names its project".to_string(),
            ));
        }
        check_spec(spec).map_err(|e| error(at(i).join(&e.path), e.message))?;
    }
    check_set(&body.services).map_err(|c| {
        let index = c.index;
        let other = at(c.other).to_string();
        let invalid = c.into_invalid(&other);
        error(at(index).join(&invalid.path), invalid.message)
    })?;
    for (i, upload) in body.tls.iter().enumerate() {
        let owner = body
            .services
            .iter()
            .find(|s| s.project() == upload.project && s.name == upload.service);
        if owner.is_none_or(|s| s.tls_cert.is_none()) {
            return Err(error(
                FieldPath::key("tls").i(i),
                format!(
                    "certificate for \"{}/{}\": no service of this request with that name sets `tls_cert`",
                    upload.project, upload.service
                ),
            ));
        }
        if body.tls[..i]
            .iter()
            .any(|u| u.project == upload.project && u.service == upload.service)
        {
            return Err(error(
                FieldPath::key("tls").i(i),
                format!(
                    "two certificates for \"{}/{}\"",
                    upload.project, upload.service
                ),
            ));
        }
    }
    for (i, spec) in body.services.iter().enumerate() {
        let uploaded = body
            .tls
            .iter()
            .any(|u| u.project == spec.project() && u.service == spec.name);
        if spec.tls_cert.is_some() && !uploaded {
            return Err(error(
                at(i).k("tls_cert"),
                format!(
                    "service \"{}\" sets `tls_cert` but the request carries no certificate for it (\"tls\" array)",
                    spec.key()
                ),
            ));
        }
    }
    Ok(DeployRequest {
        services: body.services,
        tls: body.tls,
    })
}

/// Two services that may not coexist: `index` (the later one) clashes with `other`.
struct Conflict {
    index: usize,
    other: usize,
    path: FieldPath,
    what: String,
}

impl Conflict {
    /// The problem as seen from the later service, pointing at `other_location`.
    fn into_invalid(self, other_location: &str) -> Invalid {
        Invalid::new(
            self.path,
            format!("{} (first defined at {other_location})", self.what),
        )
    }
}

fn check_set(specs: &[ServiceSpec]) -> Result<(), Conflict> {
    check_pairs(specs)?;
    // Dependency cycles within each project of the set (unknown names may be services
    // already stored: the API checks those against the store).
    let projects: BTreeSet<&str> = specs.iter().map(|s| s.project()).collect();
    for project in projects {
        let graph: BTreeMap<&str, Vec<&str>> = specs
            .iter()
            .filter(|s| s.project() == project)
            .map(|s| {
                (
                    s.name.as_str(),
                    s.depends_on.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let Some(cycle) = crate::service::dependency_cycle(&graph) else {
            continue;
        };
        // Blame the member defined last, at its edge into the cycle; point at the first.
        let index_of = |name: &str| {
            specs
                .iter()
                .position(|s| s.project() == project && s.name == name)
                .unwrap_or(0)
        };
        let members = &cycle[..cycle.len() - 1];
        let (k, last) = members
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| index_of(n))
            .map(|(k, n)| (k, index_of(n)))
            .unwrap_or((0, 0));
        let next = cycle[k + 1];
        let edge = specs[last]
            .depends_on
            .iter()
            .position(|d| d == next)
            .unwrap_or(0);
        let first = members.iter().map(|n| index_of(n)).min().unwrap_or(0);
        return Err(Conflict {
            index: last,
            other: first,
            path: FieldPath::key("depends_on").i(edge),
            what: format!("dependency cycle: {}", cycle.join(" -> ")),
        });
    }
    Ok(())
}

fn check_pairs(specs: &[ServiceSpec]) -> Result<(), Conflict> {
    for (i, spec) in specs.iter().enumerate() {
        for (j, earlier) in specs[..i].iter().enumerate() {
            let conflict = |path: FieldPath, what: String| Conflict {
                index: i,
                other: j,
                path,
                what,
            };
            let same_project = earlier.project() == spec.project();
            if same_project && earlier.name == spec.name {
                return Err(conflict(
                    FieldPath::key("name"),
                    format!("duplicate service {:?}", spec.key()),
                ));
            }
            if spec.domain.is_some() && earlier.domain == spec.domain {
                return Err(conflict(
                    FieldPath::key("domain"),
                    format!(
                        "domain {:?} is already used by service {:?}",
                        spec.domain.as_deref().unwrap_or_default(),
                        earlier.key()
                    ),
                ));
            }
            if !same_project {
                continue;
            }
            // Names and aliases share one DNS namespace on the project's network.
            let taken = |n: &str| earlier.name == n || earlier.aliases.iter().any(|a| a == n);
            for (k, alias) in spec.aliases.iter().enumerate() {
                if taken(alias) {
                    return Err(conflict(
                        FieldPath::key("aliases").i(k),
                        format!(
                            "alias {alias:?} is already a name or alias of service {:?}",
                            earlier.key()
                        ),
                    ));
                }
            }
            if earlier.aliases.contains(&spec.name) {
                return Err(conflict(
                    FieldPath::key("name"),
                    format!(
                        "service name {:?} is already an alias of service {:?}",
                        spec.name,
                        earlier.key()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// JSON schema of a `service.toml` file (`[[service]]` tables), as a subschema of `generator`
/// (so its definitions land where the caller's document keeps them).
#[cfg(feature = "schema")]
pub fn service_file_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<ServiceFile>()
}

/// JSON schema of the `POST /api/v1/deploy` body, as a subschema of `generator`.
#[cfg(feature = "schema")]
pub fn deploy_request_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<DeployBody>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "[[service]]\nname = \"web\"\nimage = \"app:1\"\n";

    #[test]
    fn sets_project_and_keeps_file_order() {
        let text = format!("{WEB}\n[[service]]\nname = \"api\"\nimage = \"app:1\"\n");
        let specs = parse_service_file("f.toml", &text, "shop").unwrap();
        let keys: Vec<String> = specs.iter().map(ServiceSpec::key).collect();
        assert_eq!(keys, ["shop/web", "shop/api"]);
        assert_eq!(specs[0].project.as_deref(), Some("shop"));
    }

    #[test]
    fn memory_as_integer_and_params_in_toml() {
        let text = format!(
            "{WEB}[service.resources]\nmemory = 67108864\n\n[service.deploy]\nstrategy = \"x.wasm\"\n\n\
             [service.deploy.params]\nbake_secs = 30\nlabels = [\"a\", \"b\"]\n"
        );
        let specs = parse_service_file("f.toml", &text, "shop").unwrap();
        assert_eq!(
            specs[0].resources.as_ref().unwrap().memory,
            Some(crate::Memory(64 << 20))
        );
        let params = &specs[0].deploy.as_ref().unwrap().params;
        assert_eq!(params["bake_secs"], serde_json::json!(30));
        assert_eq!(params["labels"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn rejects_a_bad_project_label() {
        let e = parse_service_file("f.toml", WEB, "Shop").unwrap_err();
        assert_eq!(e.file.as_deref(), Some("f.toml"));
        assert!(
            e.message.starts_with("invalid project name \"Shop\""),
            "{e}"
        );
    }

    #[test]
    fn toml_error_positions() {
        let e = parse_service_file("f.toml", "[[service]]\nname = \"web\"\n", "p").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.toml:1:1: field `service[0].image`: service \"web\" has neither `image` nor a `build` table; set one"
        );
        let e = parse_service_file("f.toml", "[[service]]\nimage = \"x\"\n", "p").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("service[0]"));
        assert_eq!(e.message, "missing field `name`");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn load_project_dir_uses_the_directory_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shop");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(SERVICE_FILE), WEB).unwrap();
        let specs = load_project_dir(&dir).unwrap();
        assert_eq!(specs[0].key(), "shop/web");

        let bad = root.path().join("My Shop");
        fs::create_dir(&bad).unwrap();
        fs::write(bad.join(SERVICE_FILE), WEB).unwrap();
        let e = load_project_dir(&bad).unwrap_err();
        assert!(
            e.message.starts_with("invalid project name \"My Shop\""),
            "{e}"
        );

        let empty = root.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = load_project_dir(&empty).unwrap_err();
        assert!(e.message.starts_with("cannot read file"), "{e}");
        assert!(e.file.unwrap().ends_with("empty/service.toml"));
    }

    #[test]
    fn load_services_dir_sorts_and_skips() {
        let root = tempfile::tempdir().unwrap();
        let services = root.path().join("services");
        for project in ["zeta", "alpha", ".hidden", "no-file"] {
            fs::create_dir_all(services.join(project)).unwrap();
        }
        fs::write(services.join("zeta").join(SERVICE_FILE), WEB).unwrap();
        fs::write(services.join("alpha").join(SERVICE_FILE), WEB).unwrap();
        fs::write(services.join(".hidden").join(SERVICE_FILE), "garbage [").unwrap();
        fs::write(services.join("README.md"), "not a project").unwrap();
        let specs = load_services_dir(root.path()).unwrap();
        let keys: Vec<String> = specs.iter().map(ServiceSpec::key).collect();
        assert_eq!(keys, ["alpha/web", "zeta/web"]);

        let e = load_services_dir(&root.path().join("nowhere")).unwrap_err();
        assert!(e.message.starts_with("cannot read directory"), "{e}");
    }

    fn spec(project: &str, name: &str, domain: Option<&str>, aliases: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            project: Some(project.into()),
            image: Some("i".into()),
            replicas: 1,
            port: Some(80),
            domain: domain.map(Into::into),
            health: None,
            internal: false,
            env: Default::default(),
            resources: None,
            placement: None,
            readiness: None,
            liveness: None,
            build: None,
            deploy: None,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            tls_cert: None,
            tls_key: None,
            backup: None,
            volumes: Vec::new(),
            depends_on: Vec::new(),
        }
    }

    #[test]
    fn validate_set_rules() {
        let ok = [
            spec("a", "web", Some("a.localhost"), &["www"]),
            spec("b", "web", Some("b.localhost"), &["www"]),
            spec("a", "api", None, &[]),
        ];
        assert_eq!(validate_set(&ok), Ok(()));

        let cases: [(Vec<ServiceSpec>, &str); 4] = [
            (
                vec![spec("a", "web", None, &[]), spec("a", "web", None, &[])],
                "field `name`: duplicate service \"a/web\" (first defined at a/web)",
            ),
            (
                vec![spec("a", "web", Some("x.io"), &[]), spec("b", "api", Some("x.io"), &[])],
                "field `domain`: domain \"x.io\" is already used by service \"a/web\" (first defined at a/web)",
            ),
            (
                vec![spec("a", "db", None, &[]), spec("a", "db2", None, &["db"])],
                "field `aliases[0]`: alias \"db\" is already a name or alias of service \"a/db\" (first defined at a/db)",
            ),
            (
                vec![spec("a", "db2", None, &["db"]), spec("a", "db", None, &[])],
                "field `name`: service name \"db\" is already an alias of service \"a/db2\" (first defined at a/db2)",
            ),
        ];
        for (specs, expected) in cases {
            assert_eq!(validate_set(&specs).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn deploy_json() {
        let body = br#"{"services": [{"name": "web", "project": "shop", "image": "app:1"}]}"#;
        let specs = parse_deploy_json(body).unwrap();
        assert_eq!(specs[0].key(), "shop/web");

        let e = parse_deploy_json(br#"{"services": []} x"#).unwrap_err();
        assert_eq!(e.to_string(), "line 1, column 18: trailing characters");
        let e = parse_deploy_json(br#"{}"#).unwrap_err();
        assert_eq!(e.to_string(), "line 1, column 2: missing field `services`");
        let e = parse_deploy_json(br#"{"services": [], "dry_run": true}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dry_run"));
        let e = parse_deploy_json(
            br#"{"services": [{"name": "web", "project": "shop", "image": "app:1", "resources": {"memory": "1.5Gi"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("services[0].resources.memory"));
        let e = parse_deploy_json(
            br#"{"services": [{"name": "web", "project": "shop", "image": "app:1", "replicas": 500}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `services[0].replicas`: replicas 500 is out of range: allowed 0 to 100"
        );
        let e =
            parse_deploy_json(br#"{"services": [{"name": "web", "project": "-x", "image": "i"}]}"#)
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("services[0].project"));
    }
}
