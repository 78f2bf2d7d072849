//! Build tasks that cargo alone cannot express: guest components for wasm32.
//!
//! `cargo xtask components` builds the built-in policy components (`fcfs`, `priority`, `fair`)
//! into `components/`; `cargo xtask hostile` builds the hostile test components (`trap`,
//! `spin`, `grow`, and a lying fcfs per contract rule, `lie-<rule>`) into `components/hostile/`;
//! `cargo xtask build` builds the components and then the release `waypoint` binary, which
//! embeds them. Each is a `wasm32-unknown-unknown` core module made a component with
//! `wit-component`, through `waypoint-guest-build` (which `waypoint policy build` shares). With
//! `WAYPOINT_WASM_SYSROOT` set (no rustup target available), the guest is built with that
//! sysroot and `RUSTC_BOOTSTRAP=1` in a target folder of its own; nothing else is built that way.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use waypoint_guest_build::{cargo, componentize, ensure_wasm_target, CargoBuild};

/// One component: the crate and features to build, the cargo profile, and the file to write.
struct Guest {
    package: &'static str,
    feature: &'static str,
    output: &'static str,
}

/// The built-in policies get whole-program optimisation; test components build quickly.
const POLICY_PROFILE: &str = "guest";
const TEST_PROFILE: &str = "test-guest";

const POLICIES: [Guest; 3] = [
    Guest {
        package: "waypoint-policy",
        feature: "fcfs",
        output: "fcfs.wasm",
    },
    Guest {
        package: "waypoint-policy",
        feature: "priority",
        output: "priority.wasm",
    },
    Guest {
        package: "waypoint-policy",
        feature: "fair",
        output: "fair.wasm",
    },
];

const HOSTILE: [Guest; 3] = [
    Guest {
        package: "waypoint-hostile-guest",
        feature: "trap",
        output: "hostile/trap.wasm",
    },
    Guest {
        package: "waypoint-hostile-guest",
        feature: "spin",
        output: "hostile/spin.wasm",
    },
    Guest {
        package: "waypoint-hostile-guest",
        feature: "grow",
        output: "hostile/grow.wasm",
    },
];

/// One lying build of the real fcfs scheduler per rule the host checks.
const LYING_RULES: [&str; 12] = [
    "unknown-handle",
    "repeated-handle",
    "range",
    "block-id",
    "too-few-blocks",
    "over-budget",
    "too-many-entries",
    "early-sample",
    "unknown-preempted",
    "unknown-event-id",
    "stats",
    "kv-events",
];

/// The checkout this xtask runs in. `cargo run` sets `CARGO_MANIFEST_DIR` at run time; the
/// compile-time value can name another checkout when a build cache is shared between them.
fn workspace_root() -> PathBuf {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn build(guests: &[Guest], profile: &str) -> Result<()> {
    ensure_wasm_target()?;
    let root = workspace_root();
    for guest in guests {
        build_one(&root, guest.package, guest.feature, guest.output, profile)?;
    }
    Ok(())
}

fn build_one(root: &Path, package: &str, feature: &str, output: &str, profile: &str) -> Result<()> {
    let lib_name = package.replace('-', "_");
    let core_module = CargoBuild {
        manifest: &root.join("Cargo.toml"),
        package: Some(package),
        feature: Some(feature),
        profile,
        target_dir: &target_dir(root),
        lib_name: &lib_name,
    }
    .run()?;
    let output = root.join("components").join(output);
    componentize(&core_module, &output)?;
    eprintln!("built {}", output.display());
    Ok(())
}

/// The hostile components: trap, spin, grow, and one liar per rule.
fn build_hostile() -> Result<()> {
    build(&HOSTILE, TEST_PROFILE)?;
    let root = workspace_root();
    for rule in LYING_RULES {
        let output = format!("hostile/lie-{rule}.wasm");
        build_one(&root, "waypoint-lying-guest", rule, &output, TEST_PROFILE)?;
    }
    Ok(())
}

/// The release host binary, built the ordinary way (no guest settings).
fn build_host() -> Result<()> {
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["build", "--release", "--package", "waypoint"])
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the waypoint binary failed");
    }
    Ok(())
}

const USAGE: &str = "usage: cargo xtask <build|components|hostile|all>
  build       the policy components, then the release waypoint binary
  components  build fcfs, priority and fair into components/
  hostile     build the hostile test components (trap, spin, grow, lie-<rule>) into components/hostile/
  all         components and hostile";

fn main() -> Result<()> {
    let task = env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "build" => build(&POLICIES, POLICY_PROFILE).and_then(|()| build_host()),
        "components" => build(&POLICIES, POLICY_PROFILE),
        "hostile" => build_hostile(),
        "all" => build(&POLICIES, POLICY_PROFILE).and_then(|()| build_hostile()),
        _ => bail!(USAGE),
    }
}
