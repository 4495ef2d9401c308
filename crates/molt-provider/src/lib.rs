//! molt-provider
