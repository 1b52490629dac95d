//! The command-line front ends (`serve`, `download`, `bench`), kept out of the library: they only parse
//! flags and wire library parts together.

pub mod bench;
pub mod bench_itl;
pub mod bench_pager;
pub mod download;
pub mod runtime_args;
pub mod serve;
