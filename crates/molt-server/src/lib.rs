//! molt-server
