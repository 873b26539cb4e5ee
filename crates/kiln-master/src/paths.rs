//! The data directory layout: [`kiln_core::layout::Layout`], the one type
//! the master, the repository builder and the benchmarks all build their
//! paths with. `Paths` is its name here.

pub use kiln_core::layout::Layout;

/// The master's data directory layout.
pub type Paths = Layout;

pub use kiln_core::names::is_sha256;

pub use kiln_core::fsutil::sha256_file;
