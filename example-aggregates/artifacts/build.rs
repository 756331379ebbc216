//! Builds the guest components with a nested `cargo build --target wasm32-wasip2 --profile guest`
//! and writes their paths to `$OUT_DIR/artifacts.rs`.
//!
//! The nested build uses its own target directory (`<workspace>/target/guests`) so it does not
//! wait on the lock of the outer build, and runs with the environment of the outer cargo scrubbed
//! of everything that describes the outer build (flags, target, wrappers, jobserver, cfg and
//! package variables), which would otherwise leak into the wasm build.

use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";

/// `(constant, package, directory under example-aggregates/)` of each guest.
const GUESTS: &[(&str, &str, &str)] = &[
    ("BANK_ACCOUNT", "bank-account", "bank-account"),
    ("BANK_ACCOUNT_V2", "bank-account-v2", "bank-account-v2"),
    ("HOSTILE", "hostile", "hostile"),
    ("FORBIDDEN_IMPORT", "forbidden-import", "forbidden-import"),
];

/// A component (not a core module): `\0asm`, version 0x0d, layer 1.
const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Variables set by the outer cargo (or its wrappers) that must not reach the nested build.
const REMOVE_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "TARGET",
    "HOST",
    "OUT_DIR",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
    "RUSTC_LINKER",
];

/// Prefixes of such variables (`CARGO_MANIFEST_LINKS`, `CARGO_CFG_UNIX`, `DEP_Z_INCLUDE`, ...).
const REMOVE_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "DEP_",
    "__CARGO_",
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let workspace = manifest_dir
        .ancestors()
        .nth(2)
        .expect("example-aggregates/artifacts lives two levels below the workspace root")
        .to_path_buf();
    let target_dir = workspace.join("target").join("guests");

    rerun_if_changed(&workspace, &manifest_dir);
    check_target_installed();
    build_guests(&workspace, &target_dir);

    let mut code = String::new();
    for (constant, package, _) in GUESTS {
        let wasm = target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", package.replace('-', "_")));
        check_component(&wasm);
        let path = wasm.to_str().expect("target directory path is not UTF-8");
        writeln!(
            code,
            "/// Absolute path of the `{package}` component (`{TARGET}`, profile `{PROFILE}`).\n\
             pub const {constant}: &str = {path:?};"
        )
        .unwrap();
    }
    let polyglot = target_dir.join("polyglot");
    writeln!(
        code,
        "/// Where `scripts/build-guests.sh` writes the Go, JavaScript and Python components\n\
         /// (`bank_account_go.wasm`, `hostile_js.wasm`, ...).\n\
         pub const POLYGLOT_DIR: &str = {:?};",
        polyglot
            .to_str()
            .expect("target directory path is not UTF-8")
    )
    .unwrap();
    std::fs::write(out_dir.join("artifacts.rs"), code).expect("write artifacts.rs");
}

fn rerun_if_changed(workspace: &Path, manifest_dir: &Path) {
    let mut paths = vec![
        workspace.join("wit"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join("guest-sdk/rust/src"),
        workspace.join("guest-sdk/rust/Cargo.toml"),
        manifest_dir.join("build.rs"),
    ];
    for (_, _, dir) in GUESTS {
        let dir = workspace.join("example-aggregates").join(dir);
        paths.push(dir.join("Cargo.toml"));
        paths.push(dir.join("src"));
        if dir.join("wit").exists() {
            paths.push(dir.join("wit"));
        }
    }
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Fails with instructions if the standard library for the wasm target is not installed.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let output = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output();
    let installed = match &output {
        Ok(o) if o.status.success() => {
            let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&dir).is_dir()
        }
        _ => false,
    };
    if !installed {
        panic!(
            "\n\nThe Rust standard library for `{TARGET}` is not installed, so the example guest \
             components cannot be built.\nInstall it with:\n\n    rustup target add {TARGET}\n\n"
        );
    }
}

fn build_guests(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["--target", TARGET, "--profile", PROFILE, "--color", "never"])
        .arg("--target-dir")
        .arg(target_dir);
    for (_, package, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    for var in REMOVE_VARS {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if REMOVE_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(key);
        }
    }

    let shown = format!(
        "{} {} (in {}, without the outer build's environment variables)",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        workspace.display()
    );
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the nested cargo: {e}\nCommand: {shown}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("may not be installed")
            || stderr.contains("can't find crate for `std`")
            || stderr.contains("can't find crate for `core`")
        {
            format!("\nIs the target installed? Run `rustup target add {TARGET}`.\n")
        } else {
            String::new()
        };
        panic!(
            "\n\nBuilding the guest components failed ({}).\nCommand: {shown}\n\
             --- stderr of the nested cargo ---\n{stderr}\n--- end of stderr ---\n{hint}",
            output.status
        );
    }
}

fn check_component(wasm: &Path) {
    let bytes = std::fs::read(wasm)
        .unwrap_or_else(|e| panic!("the guest build did not produce {}: {e}", wasm.display()));
    if !bytes.starts_with(&COMPONENT_MAGIC) {
        panic!(
            "{} is not a WebAssembly component (header {:02x?})",
            wasm.display(),
            &bytes[..bytes.len().min(8)]
        );
    }
}
