//! molt-image
