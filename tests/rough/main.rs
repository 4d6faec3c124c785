//! The SSO, SSO trust and transparency suites again, against the rough
//! emulator (`EmulatorConfig::rough`): indented JSON with `\/` escapes, gzip
//! answers, `permessage-deflate` offers and user ids that are not `dl_`.
//! The suites' files are shared with the `e2e` binary, not copied.

/// Read by `common`: every emulator these suites start is rough.
const ROUGH_EMULATOR: bool = true;

#[path = "../common/mod.rs"]
mod common;
#[path = "../e2e/sso.rs"]
mod sso;
#[path = "../e2e/sso_trust.rs"]
mod sso_trust;
#[path = "../e2e/transparency.rs"]
mod transparency;
