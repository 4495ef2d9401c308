//! molt-store
