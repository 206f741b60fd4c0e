//! podkit in real containers on Docker: its image, and each pattern as a real multi-container
//! pod. A pod is an infra container that holds the network namespace (as Kubernetes' pause
//! container does) plus containers joined to it with `--network container:INFRA`, sharing
//! volumes; servers run in containers of their own on a private network the test creates.
//!
//! Every image is built here, FROM scratch: podkit's by `scripts/image`, the servers' from this
//! machine's binaries and the libraries `ldd` lists (no registry is used).

// Tests start containers and servers directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod adapter;
mod ambassador;
mod elect;
mod image;
mod logs;
mod pod;
mod queue;
mod scatter;
mod support;
mod sync;
