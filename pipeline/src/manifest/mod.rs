//! Dataset manifests.
