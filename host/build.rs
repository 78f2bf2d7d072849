//! The `waypoint` binary embeds the built-in policy components; they must be built first.

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../components");
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
