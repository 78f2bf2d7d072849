//! Builds a guest crate into a component: Rust's wasm32 standard library (found, added with
//! rustup, or a sysroot named by `WAYPOINT_WASM_SYSROOT`), `cargo build`, and `wit-component`.
//!
//! `cargo xtask` builds the project's own components with it, and `waypoint policy build`
//! builds a third party's policy crate the same way.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guests' target.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// A guest build that failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestBuildError {
    /// The wasm32 standard library is missing and rustup could not add it.
    #[error(
        "the guest components need Rust's {TARGET} standard library, and `rustup target add \
         {TARGET}` did not install it. Install it that way, or set WAYPOINT_WASM_SYSROOT to a \
         sysroot built for {TARGET}"
    )]
    NoWasmTarget,
    /// A tool could not be started.
    #[error("running {tool}: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
    },
    /// `cargo build` failed (its own output says why).
    #[error("building {0} failed")]
    Cargo(String),
    /// The core module is not a valid component of the world it was built for.
    #[error("making {path} a component: {message}")]
    Componentize {
        /// The core module.
        path: PathBuf,
        /// wit-component's reason.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The cargo that runs this build (`$CARGO`), or `cargo` from the path.
pub fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Make sure the wasm32 standard library is there: present, or added with rustup, or the
/// sysroot `WAYPOINT_WASM_SYSROOT` names (rather than rustc's "can't find crate for `core`").
pub fn ensure_wasm_target() -> Result<(), GuestBuildError> {
    if env::var_os("WAYPOINT_WASM_SYSROOT").is_some() {
        return Ok(());
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|source| GuestBuildError::Spawn {
            tool: rustc.to_string_lossy().into_owned(),
            source,
        })?;
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir()
    {
        return Ok(());
    }
    eprintln!("the {TARGET} target is not installed: running `rustup target add {TARGET}`");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .is_ok_and(|status| status.success());
    if added {
        Ok(())
    } else {
        Err(GuestBuildError::NoWasmTarget)
    }
}

/// One `cargo build` of a guest crate for wasm32.
pub struct CargoBuild<'a> {
    /// The crate's (or its workspace's) `Cargo.toml`.
    pub manifest: &'a Path,
    /// `--package`, when the manifest is a workspace's.
    pub package: Option<&'a str>,
    /// `--no-default-features --features FEATURE`, when set.
    pub feature: Option<&'a str>,
    /// The cargo profile.
    pub profile: &'a str,
    /// The target folder (a sysroot build uses a subfolder of its own).
    pub target_dir: &'a Path,
    /// The library's name (the package name with `_` for `-`): the core module's file stem.
    pub lib_name: &'a str,
}

impl CargoBuild<'_> {
    /// Build, and return the core module's path. With `WAYPOINT_WASM_SYSROOT` set, the guest
    /// builds with that sysroot and `RUSTC_BOOTSTRAP=1` in a target folder of its own.
    pub fn run(&self) -> Result<PathBuf, GuestBuildError> {
        let mut target = self.target_dir.to_path_buf();
        let mut command = Command::new(cargo());
        command
            .arg("build")
            .arg("--manifest-path")
            .arg(self.manifest);
        command.args(["--profile", self.profile, "--target", TARGET]);
        if let Some(package) = self.package {
            command.args(["--package", package]);
        }
        if let Some(feature) = self.feature {
            command.args(["--no-default-features", "--features", feature]);
        }
        if let Some(sysroot) = env::var_os("WAYPOINT_WASM_SYSROOT") {
            let sysroot = sysroot.to_string_lossy().into_owned();
            target = target.join("wasm-sysroot");
            command.env("RUSTC_BOOTSTRAP", "1").env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
                format!("--sysroot {sysroot} -Zunstable-options -Cpanic=immediate-abort"),
            );
        }
        command.env("CARGO_TARGET_DIR", &target);
        let status = command.status().map_err(|source| GuestBuildError::Spawn {
            tool: "cargo".into(),
            source,
        })?;
        if !status.success() {
            let name = match (self.package, self.feature) {
                (Some(package), Some(feature)) => format!("{package} with feature {feature}"),
                (Some(package), None) => package.to_owned(),
                _ => self.manifest.display().to_string(),
            };
            return Err(GuestBuildError::Cargo(name));
        }
        Ok(target
            .join(TARGET)
            .join(self.profile)
            .join(format!("{}.wasm", self.lib_name)))
    }
}

/// Turn a core module into a component (its WIT world is embedded by wit-bindgen) at `output`.
pub fn componentize(core_module: &Path, output: &Path) -> Result<(), GuestBuildError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GuestBuildError::Io { path, source }
    };
    let module = fs::read(core_module).map_err(io(core_module))?;
    let failed = not_a_component(core_module);
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .map_err(&failed)?
        .validate(true)
        .encode()
        .map_err(&failed)?;
    if let Some(dir) = output.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    fs::write(output, component).map_err(io(output))
}

fn not_a_component<E: std::fmt::Display>(core_module: &Path) -> impl Fn(E) -> GuestBuildError {
    let path = core_module.to_path_buf();
    move |error| GuestBuildError::Componentize {
        path: path.clone(),
        message: format!("{error:#}"),
    }
}
