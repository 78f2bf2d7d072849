//! Hash maps with fixed, unseeded hashers, so nothing in the guest depends on a random seed.

use crate::output::{BuildHandleHasher, RequestHandle};

/// A `hashbrown` map with the Fx hasher.
pub(crate) type FxHashMap<K, V> = hashbrown::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A `hashbrown` map keyed by request handle, neighbouring handles in neighbouring buckets.
pub(crate) type HandleMap<V> = hashbrown::HashMap<RequestHandle, V, BuildHandleHasher>;
