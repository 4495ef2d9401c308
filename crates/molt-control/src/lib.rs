//! molt-control
