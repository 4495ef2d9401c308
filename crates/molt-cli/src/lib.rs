//! molt-cli
