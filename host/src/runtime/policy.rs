//! What a component may import and must export, checked by *reading* the component — before
//! anything is compiled.
//!
//! Compiling is the expensive step (seconds of CPU and hundreds of MiB for a 12 MB JavaScript
//! component), so everything that can be decided from the component's structure is decided first:
//! is it wasm, is it a component, is it well-formed (every section but the function bodies, which
//! the compiler validates), does it import only WASI 0.2 interfaces the host links, and does it
//! export world `aggregate` with exactly the contract's function types. The world is read from
//! `wit/aggregate.wit` — the same file the host's bindings are generated from — so the contract
//! has one source of truth, and so does the import policy ([`LINKED_WASI_INTERFACES`]).

use std::sync::OnceLock;

use wasmparser::component_types::{ComponentAnyTypeId, ComponentEntityType, SubtypeCx};
use wasmparser::{
    ComponentTypeRef, Parser, Payload, TypeBounds, ValidPayload, Validator, WasmFeatures,
};

use super::RuntimeError;
use crate::types::ComponentHash;

/// WASI 0.2 packages the host links. Each is granted nothing (no dirs, env, network, stdin), but a
/// guest toolchain's standard library imports them, so they must be present.
pub(crate) const LINKED_WASI_PACKAGES: &[&str] =
    &["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// Every interface of those packages that the host's linker defines, as `package/interface`:
/// exactly what `wasmtime_wasi::p2::add_to_linker_sync` adds in wasmtime-wasi 48.0.8 (its
/// `add_nonblocking_to_linker`, `add_sync_wasi_io` and the synchronous filesystem and socket
/// bindings). An import of any other interface could only fail at link time, after compiling.
pub(crate) const LINKED_WASI_INTERFACES: &[&str] = &[
    "cli/environment",
    "cli/exit",
    "cli/stdin",
    "cli/stdout",
    "cli/stderr",
    "cli/terminal-input",
    "cli/terminal-output",
    "cli/terminal-stdin",
    "cli/terminal-stdout",
    "cli/terminal-stderr",
    "clocks/monotonic-clock",
    "clocks/wall-clock",
    "filesystem/preopens",
    "filesystem/types",
    "io/error",
    "io/poll",
    "io/streams",
    "random/insecure",
    "random/insecure-seed",
    "random/random",
    "sockets/instance-network",
    "sockets/ip-name-lookup",
    "sockets/network",
    "sockets/tcp",
    "sockets/tcp-create-socket",
    "sockets/udp",
    "sockets/udp-create-socket",
];

/// The contract (also what `bindings.rs` generates the host's side from).
const WIT: &str = include_str!("../../../wit/aggregate.wit");

/// Read `bytes` and refuse them unless they are a component the host can link and call.
///
/// Costs one pass over the bytes without validating function bodies (milliseconds for a 12 MB
/// component, no compiled code). Passing does not promise that compiling succeeds: function
/// bodies are validated by the compiler.
///
/// # Errors
///
/// [`RuntimeError::NotWasm`], [`RuntimeError::CoreModule`], [`RuntimeError::Malformed`],
/// [`RuntimeError::ForbiddenImport`] naming the first refused import, or
/// [`RuntimeError::WorldMismatch`] naming the export that is missing or has the wrong type.
pub(crate) fn check(bytes: &[u8], hash: ComponentHash) -> Result<(), RuntimeError> {
    check_header(bytes)?;
    let malformed = |e: wasmparser::Error| RuntimeError::Malformed {
        hash,
        reason: super::truncate(e.to_string()),
    };
    let features = WasmFeatures::all();
    // Both components are validated by the same validator so their types can be compared.
    let mut validator = Validator::new_with_features(features);
    let world = validator
        .validate_all(world_component())
        .expect("the encoded contract is a valid component");
    validator.reset();

    let mut parser = Parser::new(0);
    parser.set_features(features);
    let mut depth = 0usize;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut types = None;
    for payload in parser.parse_all(bytes) {
        let payload = payload.map_err(malformed)?;
        if depth == 0 {
            match &payload {
                Payload::ComponentImportSection(s) => {
                    for i in s.clone() {
                        let i = i.map_err(malformed)?;
                        imports.push((i.name.full_name().into_owned(), i.ty));
                    }
                }
                Payload::ComponentExportSection(s) => {
                    for e in s.clone() {
                        exports.push(e.map_err(malformed)?.name.name.to_string());
                    }
                }
                _ => {}
            }
        }
        match validator.payload(&payload).map_err(malformed)? {
            ValidPayload::Parser(_) => depth += 1,
            ValidPayload::End(t) if depth == 0 => types = Some(t),
            ValidPayload::End(_) => depth -= 1,
            // Function bodies are left to the compiler: validating them is most of its work.
            ValidPayload::Func(..) | ValidPayload::Ok => {}
        }
    }
    let types = types.ok_or_else(|| RuntimeError::Malformed {
        hash,
        reason: "the component ends early".into(),
    })?;

    if let Some((import, reason)) = imports
        .iter()
        .find_map(|(name, ty)| import_refusal(name, ty).map(|why| (name.clone(), why)))
    {
        return Err(RuntimeError::ForbiddenImport {
            hash,
            import,
            reason,
        });
    }

    let (ours, theirs) = (types.as_ref(), world.as_ref());
    let world_type = match theirs.component_item_for_export("aggregate").map(|i| i.ty) {
        Some(ComponentEntityType::Type {
            referenced: ComponentAnyTypeId::Component(wrapper),
            ..
        }) => match theirs[wrapper].exports.values().next().map(|i| i.ty) {
            Some(ComponentEntityType::Component(w)) => w,
            _ => unreachable!("a WIT package's world is a component type"),
        },
        _ => unreachable!("the WIT package exports world `aggregate`"),
    };
    for (name, expected) in &theirs[world_type].exports {
        let mismatch = |reason: String| RuntimeError::WorldMismatch {
            hash,
            export: Some(name.clone()),
            reason,
        };
        let Some(found) = ours.component_item_for_export(name) else {
            return Err(mismatch(super::truncate(format!(
                "it does not export `{name}`; world `aggregate` exports {} (it exports: {})",
                quoted(theirs[world_type].exports.keys()),
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    quoted(&exports)
                },
            ))));
        };
        SubtypeCx::new_with_refs(ours, theirs)
            .component_entity_type(&found.ty, &expected.ty, 0)
            .map_err(|e| {
                mismatch(format!(
                    "export `{name}` does not have the contract's type: {}",
                    super::truncate(e.message().to_string())
                ))
            })?;
    }
    Ok(())
}

fn quoted<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// World `aggregate` encoded as a component type (the binary form of the WIT package).
fn world_component() -> &'static [u8] {
    static ENCODED: OnceLock<Vec<u8>> = OnceLock::new();
    ENCODED.get_or_init(|| {
        let mut resolve = wit_parser::Resolve::default();
        let package = resolve
            .push_str("aggregate.wit", WIT)
            .expect("wit/aggregate.wit parses");
        wit_component::encode(&resolve, package, false).expect("wit/aggregate.wit encodes")
    })
}

/// `\0asm` and the component layer.
fn check_header(bytes: &[u8]) -> Result<(), RuntimeError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(RuntimeError::NotWasm);
    }
    // Core modules have version 1 and layer 0; components have layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(RuntimeError::CoreModule);
    }
    Ok(())
}

/// Why the host refuses this import; `None` when it is allowed.
fn import_refusal(name: &str, ty: &ComponentTypeRef) -> Option<String> {
    match ty {
        // A concrete type the component names (the world's `command`, `event`, ...): no
        // capability, nothing to link.
        ComponentTypeRef::Type(TypeBounds::Eq(_)) => None,
        ComponentTypeRef::Type(_) => {
            Some("it is an abstract resource type; the host provides none outside WASI 0.2".into())
        }
        // WASI interfaces are instances; a function, module or component of that name is
        // nothing the linker defines.
        ComponentTypeRef::Instance(_) => refusal(name),
        _ => refusal(name).or_else(|| {
            Some("it is not imported as an instance; the host links WASI interfaces only".into())
        }),
    }
}

/// Why the host refuses an import of this name; `None` when it links it.
fn refusal(name: &str) -> Option<String> {
    let Some((ns, rest)) = name.split_once(':') else {
        return Some("it is not a WASI interface; aggregates may import WASI 0.2 only".into());
    };
    let (package, version) = match rest.split_once('@') {
        Some((path, v)) => (path.split('/').next().unwrap_or(path), Some(v)),
        None => (rest.split('/').next().unwrap_or(rest), None),
    };
    if ns != "wasi" {
        return Some(format!(
            "`{ns}:` is not WASI; aggregates must not call into the host except through WASI 0.2"
        ));
    }
    if !LINKED_WASI_PACKAGES.contains(&package) {
        return Some(format!(
            "wasi:{package} is not provided: aggregates are pure, all I/O stays in the host \
             (linked: {})",
            LINKED_WASI_PACKAGES
                .iter()
                .map(|p| format!("wasi:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let interface = rest.split_once('@').map_or(rest, |(path, _)| path);
    if !LINKED_WASI_INTERFACES.contains(&interface) {
        return Some(format!(
            "wasi:{interface} is not an interface the host links (wasmtime-wasi 48's WASI 0.2 \
             interfaces of {})",
            LINKED_WASI_PACKAGES
                .iter()
                .map(|p| format!("wasi:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    match version {
        Some(v) if v.starts_with("0.2.") => None,
        Some(v) => Some(format!(
            "WASI version {v} is not supported; the host links WASI 0.2"
        )),
        None => Some("an unversioned WASI import; the host links WASI 0.2.x".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> ComponentHash {
        ComponentHash::of(b"test")
    }

    #[test]
    fn wasi_02_core_interfaces_are_allowed() {
        for ok in [
            "wasi:cli/environment@0.2.3",
            "wasi:io/streams@0.2.0",
            "wasi:random/random@0.2.6",
        ] {
            assert_eq!(refusal(ok), None, "{ok}");
        }
    }

    #[test]
    fn http_foreign_and_future_wasi_are_refused() {
        assert!(refusal("wasi:http/outgoing-handler@0.2.3")
            .unwrap()
            .contains("wasi:http is not provided"));
        assert!(refusal("evil:net/exfil")
            .unwrap()
            .contains("`evil:` is not WASI"));
        assert!(refusal("wasi:cli/environment@0.3.0")
            .unwrap()
            .contains("0.3.0"));
        assert!(refusal("plain-name").is_some());
    }

    #[test]
    fn made_up_interfaces_of_linked_packages_are_refused() {
        assert!(refusal("wasi:cli/bogus@0.2.0")
            .unwrap()
            .contains("wasi:cli/bogus is not an interface the host links"));
        assert!(refusal("wasi:io@0.2.0").is_some());
        for interface in LINKED_WASI_INTERFACES {
            assert_eq!(
                refusal(&format!("wasi:{interface}@0.2.0")),
                None,
                "{interface}"
            );
        }
        // An interface imported as something else than an instance.
        let poll_as_func =
            wat::parse_str(r#"(component (import "wasi:io/poll@0.2.0" (func)))"#).unwrap();
        match check(&poll_as_func, hash()) {
            Err(RuntimeError::ForbiddenImport { import, reason, .. }) => {
                assert_eq!(import, "wasi:io/poll@0.2.0");
                assert!(reason.contains("not imported as an instance"), "{reason}");
            }
            other => panic!("expected ForbiddenImport, got {other:?}"),
        }
        let bogus =
            wat::parse_str(r#"(component (import "wasi:cli/bogus@0.2.0" (instance)))"#).unwrap();
        assert!(matches!(
            check(&bogus, hash()),
            Err(RuntimeError::ForbiddenImport { .. })
        ));
    }

    #[test]
    fn the_contract_encodes_and_names_its_three_exports() {
        let mut v = Validator::new_with_features(WasmFeatures::all());
        let t = v.validate_all(world_component()).unwrap();
        assert!(t.as_ref().component_item_for_export("aggregate").is_some());
    }

    #[test]
    fn an_empty_component_lacks_every_export() {
        let e = check(&wat::parse_str("(component)").unwrap(), hash()).unwrap_err();
        match &e {
            RuntimeError::WorldMismatch { export, reason, .. } => {
                assert_eq!(export.as_deref(), Some("init"));
                assert!(reason.contains("exports: nothing"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_import_outside_wasi_is_named_before_anything_compiles() {
        let c =
            wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.3" (instance)))"#)
                .unwrap();
        match check(&c, hash()).unwrap_err() {
            RuntimeError::ForbiddenImport { import, reason, .. } => {
                assert_eq!(import, "wasi:http/outgoing-handler@0.2.3");
                assert!(reason.contains("wasi:http is not provided"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn imported_concrete_types_are_allowed_abstract_resources_are_not() {
        let types = wat::parse_str(
            r#"(component (type $t (record (field "a" string))) (import "command" (type (eq $t))))"#,
        )
        .unwrap();
        match check(&types, hash()).unwrap_err() {
            RuntimeError::WorldMismatch { export, .. } => {
                assert_eq!(export.as_deref(), Some("init"))
            }
            other => panic!("the type import passes, the exports do not: {other:?}"),
        }
        let resource =
            wat::parse_str(r#"(component (import "handle" (type (sub resource))))"#).unwrap();
        match check(&resource, hash()).unwrap_err() {
            RuntimeError::ForbiddenImport { import, reason, .. } => {
                assert_eq!(import, "handle");
                assert!(reason.contains("resource"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_bytes_are_malformed_not_compiled() {
        let mut c =
            wat::parse_str(r#"(component (import "wasi:io/error@0.2.0" (instance)))"#).unwrap();
        c.truncate(c.len() - 3);
        assert!(
            matches!(check(&c, hash()), Err(RuntimeError::Malformed { .. })),
            "{:?}",
            check(&c, hash())
        );
        assert!(matches!(check(b"nope", hash()), Err(RuntimeError::NotWasm)));
        let core = wat::parse_str("(module)").unwrap();
        assert!(matches!(
            check(&core, hash()),
            Err(RuntimeError::CoreModule)
        ));
    }
}
