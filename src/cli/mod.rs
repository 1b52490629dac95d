//! The command-line front ends (`serve`, `download`, `bench`, `train`, the chain helpers), kept out of the
//! library: they only parse
//! flags and wire library parts together.

pub mod bench;
pub mod bench_device;
mod bench_device_plan;
pub mod bench_itl;
pub mod bench_pager;
pub mod bench_structured;
pub mod chain_tools;
pub mod compare_devices;
pub mod download;
pub mod runtime_args;
pub mod serve;
pub mod train;
