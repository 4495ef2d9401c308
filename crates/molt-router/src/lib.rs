//! molt-router
