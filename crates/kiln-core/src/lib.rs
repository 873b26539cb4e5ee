//! Kiln's shared vocabulary: validated names, arches, build and job states,
//! rpm file checks (`header`), SRPM header inspection and the PKI (CA,
//! enrollment, TLS configs).

pub mod child;
pub mod error;
pub mod fsutil;
pub mod git;
pub mod header;
pub mod image;
pub mod layout;
pub mod listing;
pub mod logcap;
pub mod metrics;
pub mod names;
pub mod pki;
pub mod sig;
pub mod srpm;
pub mod state;
pub mod time;
