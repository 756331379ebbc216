//! Which imports a component may have: WASI 0.2 interfaces only, all linked deny-by-default.

use wasmtime::component::Component;
use wasmtime::Engine;

/// WASI 0.2 packages the host links. Each is granted nothing (no dirs, env, network, stdin), but a
/// guest toolchain's standard library imports them, so they must be present.
const LINKED_WASI_PACKAGES: &[&str] = &["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// The first import the host refuses, with the reason; `None` when every import is allowed.
pub(crate) fn forbidden_import(engine: &Engine, component: &Component) -> Option<(String, String)> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| refusal(name).map(|why| (name.to_string(), why)))
}

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
    use super::refusal;

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
}
