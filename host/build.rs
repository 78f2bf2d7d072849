//! The `waypoint` binary embeds the built-in policy components; they must be built first.

use std::path::Path;

fn main() {
    // Read at run time: one compiled build script serves every clone that shares a build cache.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = Path::new(&manifest_dir).join("../components");
    for policy in ["fcfs", "priority", "fair"] {
        let file = dir.join(format!("{policy}.wasm"));
        println!("cargo:rerun-if-changed={}", file.display());
        if !file.exists() {
            panic!(
                "{} is missing: build the policy components first with `cargo xtask components`",
                file.display()
            );
        }
    }
}
