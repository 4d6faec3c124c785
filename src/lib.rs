//! directline-proxy library.

pub mod emulator;
