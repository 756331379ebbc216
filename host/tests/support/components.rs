//! Hand-written components (WAT) shaped like world `aggregate`, each wrong in one way the host
//! must notice: a function body that does not type-check (found only by compiling), an export
//! with the wrong type, a forbidden import. Each call with a different `salt` gives different
//! bytes (a different hash) for the same component.

#![allow(dead_code)]

/// The world's record and variant types, exported as the contract names them.
const TYPES: &str = r#"
  (type $command' (record
    (field "command-id" string) (field "command-type" string) (field "payload" string)
    (field "tenant-id" string) (field "aggregate-id" string)
    (field "metadata" (list (tuple string string)))))
  (export $command "command" (type $command'))
  (type $event' (record (field "event-type" string) (field "schema-version" u32) (field "payload" string)))
  (export $event "event" (type $event'))
  (type $decide-error' (variant (case "rejected" string) (case "invalid" string)))
  (export $decide-error "decide-error" (type $decide-error'))
"#;

/// A component with the world's three exports. `init_body` is the core function body of `init`
/// (`(result i32)`); `decide_params` the component-level parameters of `decide`; `salt` goes into
/// a custom section.
fn aggregate_like(init_body: &str, decide_params: &str, imports: &str, salt: u64) -> Vec<u8> {
    let core_decide_params = if decide_params.contains("$command") {
        "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32"
    } else {
        "i32 i32"
    };
    let wat = format!(
        r#"(component
  {imports}
  (core module $m
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 8)
    (func (export "init") (result i32) {init_body})
    (func (export "decide") (param {core_decide_params}) (result i32) i32.const 0)
    (func (export "apply") (param i32 i32 i32 i32) (result i32) i32.const 0)
    (@custom "salt" "{salt}")
  )
  (core instance $i (instantiate $m))
  {TYPES}
  (func (export "init") (result string)
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "decide") {decide_params}
    (result (result (list $event) (error $decide-error)))
    (canon lift (core func $i "decide") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "apply") (param "state" string) (param "events" (list $event))
    (result (result string (error string)))
    (canon lift (core func $i "apply") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
)"#
    );
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("fixture WAT: {e}\n{wat}"))
}

const DECIDE_PARAMS: &str = r#"(param "state" string) (param "command" $command)"#;

/// Every import and export is right, but `init`'s body returns an `i64` where an `i32` is
/// declared: only compiling (validating function bodies) finds it.
pub fn fails_to_compile(salt: u64) -> Vec<u8> {
    aggregate_like("i64.const 0", DECIDE_PARAMS, "", salt)
}

/// `decide` takes only the state: the export `decide` does not have the contract's type.
pub fn decide_without_command(salt: u64) -> Vec<u8> {
    aggregate_like("i32.const 0", r#"(param "state" string)"#, "", salt)
}

/// Shaped right, but also imports `name` (an empty instance).
pub fn importing(name: &str, salt: u64) -> Vec<u8> {
    aggregate_like(
        "i32.const 0",
        DECIDE_PARAMS,
        &format!(r#"(import "{name}" (instance))"#),
        salt,
    )
}

/// `bytes` (a component) with a custom section appended: the same component, another hash.
pub fn salted(bytes: &[u8], salt: u64) -> Vec<u8> {
    let name = b"salt";
    let payload = salt.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}
