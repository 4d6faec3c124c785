//! directline-proxy library.
