//! The built-in policy components, embedded so the binary runs with no files beside it.

/// `(name, component bytes)` of every built-in policy.
pub const BUILTIN_POLICIES: [(&str, &[u8]); 3] = [
    ("fcfs", include_bytes!("../../components/fcfs.wasm")),
    ("priority", include_bytes!("../../components/priority.wasm")),
    ("fair", include_bytes!("../../components/fair.wasm")),
];

/// The embedded component of a built-in policy.
pub fn builtin_policy(name: &str) -> Option<&'static [u8]> {
    BUILTIN_POLICIES
        .iter()
        .find(|(builtin, _)| *builtin == name)
        .map(|(_, bytes)| *bytes)
}
