//! `waypoint policy new` and `waypoint policy build`: a policy crate written from a template,
//! and that crate built into a component beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use waypoint_guest_build::{cargo, componentize, ensure_wasm_target, CargoBuild, GuestBuildError};

/// What a policy crate command could not do.
#[derive(Debug, thiserror::Error)]
pub enum PolicyCrateError {
    /// The name cannot be a crate's.
    #[error(
        "policy name {0:?}: use 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter"
    )]
    BadName(String),
    /// `policy new` writes only into a new or empty folder.
    #[error("{0} exists and is not empty; choose a new folder")]
    NotEmpty(PathBuf),
    /// The SDK crate is not where the command looked.
    #[error(
        "the waypoint-policy SDK is not at {0}; pass --sdk with the path of the \
         scheduler-guest/component folder of a Waypoint checkout"
    )]
    NoSdk(PathBuf),
    /// `cargo metadata` could not describe the crate.
    #[error("reading {manifest}: {message}")]
    Metadata {
        /// The crate's manifest.
        manifest: PathBuf,
        /// Why.
        message: String,
    },
    /// The crate builds no `cdylib`, so there is no component to make.
    #[error("{0} has no cdylib library target; a policy crate sets `crate-type = [\"cdylib\"]`")]
    NotCdylib(PathBuf),
    /// Building failed.
    #[error(transparent)]
    Build(#[from] GuestBuildError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

const CARGO_TOML: &str = include_str!("../templates/policy/Cargo.toml.in");
const LIB_RS: &str = include_str!("../templates/policy/lib.rs.in");
const README: &str = include_str!("../templates/policy/README.md.in");

/// The SDK of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scheduler-guest/component")
}

fn check_name(name: &str) -> Result<(), PolicyCrateError> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if starts_with_letter && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(PolicyCrateError::BadName(name.into()))
    }
}

/// `sjf-aging` → `SjfAging`: the policy type's name.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyCrateError {
    let path = path.to_path_buf();
    move |source| PolicyCrateError::Io { path, source }
}

/// Write a ready policy crate named `name` into `dir` (new or empty), depending on the SDK at
/// `sdk`. Returns the files written.
pub fn new_crate(name: &str, dir: &Path, sdk: &Path) -> Result<Vec<PathBuf>, PolicyCrateError> {
    check_name(name)?;
    let sdk = sdk
        .canonicalize()
        .ok()
        .filter(|sdk| sdk.join("Cargo.toml").is_file())
        .ok_or_else(|| PolicyCrateError::NoSdk(sdk.to_path_buf()))?;
    if fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(PolicyCrateError::NotEmpty(dir.to_path_buf()));
    }
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{type_name}}", &type_name(name))
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    let files = [
        (dir.join("Cargo.toml"), fill(CARGO_TOML)),
        (dir.join("src/lib.rs"), fill(LIB_RS)),
        (dir.join("README.md"), fill(README)),
        (dir.join(".gitignore"), "/target\n*.wasm\n".to_owned()),
    ];
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::write(path, text).map_err(io(path))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// The parts of `cargo metadata` a build needs.
#[derive(serde::Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(serde::Deserialize)]
struct Target {
    name: String,
    crate_types: Vec<String>,
}

/// Build the policy crate in `dir` for wasm32 (release profile) and write its component to
/// `dir/<package>.wasm`, which is returned.
pub fn build_crate(dir: &Path) -> Result<PathBuf, PolicyCrateError> {
    let manifest = dir.join("Cargo.toml");
    let metadata_failed = |message: String| PolicyCrateError::Metadata {
        manifest: manifest.clone(),
        message,
    };
    let output = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .map_err(|e| metadata_failed(e.to_string()))?;
    if !output.status.success() {
        return Err(metadata_failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).map_err(|e| metadata_failed(e.to_string()))?;
    let manifest_path = manifest.canonicalize().map_err(io(&manifest))?;
    let package = metadata
        .packages
        .iter()
        .find(|package| package.manifest_path == manifest_path)
        .ok_or_else(|| metadata_failed("no package in this folder".into()))?;
    let library = package
        .targets
        .iter()
        .find(|target| target.crate_types.iter().any(|kind| kind == "cdylib"))
        .ok_or_else(|| PolicyCrateError::NotCdylib(manifest.clone()))?;
    ensure_wasm_target()?;
    let core_module = CargoBuild {
        manifest: &manifest,
        package: None,
        feature: None,
        profile: "release",
        target_dir: &metadata.target_directory,
        lib_name: &library.name.replace('-', "_"),
    }
    .run()?;
    let component = dir.join(format!("{}.wasm", package.name));
    componentize(&core_module, &component)?;
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_must_be_crate_names() {
        for good in ["sjf", "edf-v2", "tenant_fair2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "2fast", "Sjf", "a b", "../x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(type_name("sjf"), "Sjf");
        assert_eq!(type_name("sjf-with_aging"), "SjfWithAging");
    }

    #[test]
    fn a_new_crate_goes_only_into_an_empty_folder() {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let dir = scratch.path().join("edf-v2");
        let files = new_crate("edf-v2", &dir, &default_sdk()).expect("written");
        assert_eq!(files.len(), 4);
        let lib = fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("pub struct EdfV2"), "{lib}");
        assert!(lib.contains("waypoint_policy::export!(EdfV2);"), "{lib}");
        assert!(matches!(
            new_crate("edf-v2", &dir, &default_sdk()),
            Err(PolicyCrateError::NotEmpty(_))
        ));
        assert!(matches!(
            new_crate("x", &dir.join("other"), &dir.join("no-sdk")),
            Err(PolicyCrateError::NoSdk(_))
        ));
    }
}
