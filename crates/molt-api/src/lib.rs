//! molt-api
