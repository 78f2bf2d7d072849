# Sourced by the build scripts: settings for building the scheduler guest for
# wasm32-unknown-unknown, applied to the guest build only.
#
# With the rustup target installed nothing is needed. Where rustup cannot download it,
# set WAYPOINT_WASM_SYSROOT to a prebuilt core+alloc sysroot (for example the path that
# ../shared/tools/wasm32-sysroot prints); the guest then builds with RUSTC_BOOTSTRAP=1 and
# that sysroot, in a target folder of its own so the host build's cache is left alone.
waypoint_guest_env() {
  if [ -n "${WAYPOINT_WASM_SYSROOT:-}" ]; then
    export RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="--sysroot ${WAYPOINT_WASM_SYSROOT} -Zunstable-options -Cpanic=immediate-abort"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/wasm-sysroot"
  fi
}
