//! Hash maps with a fixed, unseeded hasher, so nothing in the guest depends on a random seed.

/// A `hashbrown` map with the Fx hasher.
pub(crate) type FxHashMap<K, V> = hashbrown::HashMap<K, V, rustc_hash::FxBuildHasher>;
