//! Kiln's shared vocabulary: validated names, arches, build and job states,
//! SRPM header inspection and the PKI (CA, enrollment, TLS configs).

pub mod fsutil;
pub mod listing;
pub mod names;
pub mod pki;
pub mod srpm;
pub mod state;
