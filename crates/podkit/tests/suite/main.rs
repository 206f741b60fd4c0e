//! podkit's end-to-end suite: the real binary against real servers. One test binary with a
//! module per command, so the support code is compiled and linked once.

// Tests start servers and podkit itself directly, outside any podkit reaper.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod adapter;
mod ambassador;
mod contract;
mod elect;
mod logs;
mod logs_sinks;
mod pod;
mod queue;
mod readme;
mod run;
mod scatter;
mod support;
mod sync;
