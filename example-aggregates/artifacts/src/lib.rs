//! The example and test guest components, built for the host's tests and benches.
//!
//! Depending on this crate (usually as a dev-dependency) builds `bank-account`, `hostile` and
//! `forbidden-import` for `wasm32-wasip2` with the workspace's `guest` profile, in a separate
//! target directory (`<workspace>/target/guests`), and exposes the absolute paths of the
//! resulting component files. The build needs `rustup target add wasm32-wasip2`.
//!
//! - [`BANK_ACCOUNT`]: the SDK's reference bank account aggregate.
//! - [`BANK_ACCOUNT_V2`]: the same account whose deposits record a currency (event schema 2);
//!   the hot-deploy tests deploy it over `BANK_ACCOUNT`.
//! - [`HOSTILE`]: a misbehaving guest (infinite loop, memory hog, panic, invalid JSON, huge
//!   outputs, stderr spam, tenant tracking); see the `hostile` crate's docs for its commands.
//! - [`FORBIDDEN_IMPORT`]: a guest that also imports `evil:net/exfil`, which the host must refuse
//!   to link.
//!
//! # Examples
//!
//! ```
//! let bytes = std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap();
//! assert_eq!(&bytes[..4], b"\0asm");
//! ```

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

/// Every guest as `(package name, path)`.
pub const ALL: &[(&str, &str)] = &[
    ("bank-account", BANK_ACCOUNT),
    ("bank-account-v2", BANK_ACCOUNT_V2),
    ("hostile", HOSTILE),
    ("forbidden-import", FORBIDDEN_IMPORT),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_artifact_is_a_component() {
        for (name, path) in ALL {
            assert!(std::path::Path::new(path).is_absolute(), "{name}: {path}");
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert_eq!(
                &bytes[..8],
                &[0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00],
                "{name} is not a component"
            );
        }
    }

    #[test]
    fn forbidden_import_names_the_evil_interface() {
        let bytes = std::fs::read(FORBIDDEN_IMPORT).unwrap();
        let needle = b"evil:net/exfil";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }
}
