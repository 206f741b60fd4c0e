//! `podkit ambassador`: a sharding proxy for memcache and Redis that places keys exactly where
//! twemproxy (nutcracker) places them, so a migration does not empty the cache.
//!
//! This crate starts with what must match twemproxy bit for bit: the key hashes and the
//! distributions ([`hashkit`]).

pub mod hashkit;
