//! CEL filter expressions over an aggregate's current state, bounded for untrusted input.
//!
//! A filter is a [CEL](https://cel.dev) expression that must evaluate to a `bool`. It sees four
//! variables: `state` (the aggregate's state JSON), `id` (the aggregate id, a string), `version`
//! (an int) and `last_event_at` (a timestamp). Filters come from clients, so everything the `cel`
//! crate (0.15) does not bound is bounded here, in this order:
//!
//! 1. the raw text: at most [`MAX_FILTER_BYTES`] bytes and [`MAX_BRACKET_DEPTH`] nested brackets;
//! 2. `cel`'s parser (on a thread from [`on_filter_thread`]: it recurses deeply);
//! 3. an iterative walk of the syntax tree: [`MAX_AST_NODES`], [`MAX_AST_DEPTH`],
//!    [`MAX_COMPREHENSIONS`] at most [`MAX_COMPREHENSION_NESTING`] deep, no `map()`/`filter()`,
//!    no message construction, only [`FUNCTIONS`] and [`VARIABLES`];
//! 4. a probe evaluation on an empty row, which refuses filters that cannot return a `bool`;
//! 5. per row, an evaluation budget ([`MAX_STEPS_PER_ROW`], [`MAX_EVAL_TIME_PER_ROW`]), checked at
//!    every lookup of a row variable and every comprehension iteration.
//!
//! The bounds were measured on cel 0.15: a stack overflow in its parser or evaluator aborts the
//! process, and neither has a size, step or time limit of its own.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use cel::common::ast::{CallExpr, EntryExpr, Expr};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, IdedExpr, Program, Value};

/// Longest filter accepted, in bytes of UTF-8 source.
///
/// With 1 KiB an operator chain (`1+1+…`) has at most about 512 terms, which cel 0.15 parses
/// safely on a [`FILTER_STACK_BYTES`] stack even in a debug build (measured on cel 0.15).
pub const MAX_FILTER_BYTES: usize = 1024;

/// Deepest nesting of `(`, `[` and `{` accepted, counted on the raw text before parsing.
///
/// Brackets inside string literals count too: skipping literals can be fooled (`r'\'`, `'''`), and
/// over-counting only refuses a filter that did not need them. In a debug build cel 0.15's parser
/// uses about 150 KB of stack per level (measured on cel 0.15); its own limit of 96 levels would
/// need 15 MB.
pub const MAX_BRACKET_DEPTH: usize = 32;

/// Most syntax-tree nodes (names, literals, operators, calls; macros count as what they expand
/// to) a filter may have. Bounds the evaluator's work per row outside comprehensions.
pub const MAX_AST_NODES: usize = 256;

/// Deepest syntax tree accepted. cel 0.15 evaluates by plain recursion: in a debug build an
/// operator chain of about 64 overflows a 2 MiB stack (measured on cel 0.15).
pub const MAX_AST_DEPTH: usize = 48;

/// How deep `all()`, `exists()` and `exists_one()` may nest: 1, no comprehension inside another.
///
/// Each level multiplies the work by the length of a list: 7 nested `exists` over 10 literals took
/// 5 s (measured on cel 0.15).
pub const MAX_COMPREHENSION_NESTING: usize = 1;

/// Most comprehensions (`all()`, `exists()`, `exists_one()`) in one filter.
pub const MAX_COMPREHENSIONS: usize = 4;

/// Most steps in the evaluation of one row, a step being a lookup of a row variable (`state`,
/// `id`, `version`, `last_event_at`; `state.a.b` is one) or an iteration of a comprehension; past
/// it the row fails with [`FilterErrorKind::TooExpensive`].
///
/// That is, e.g., four comprehensions over 250 000 items each. A step costs at least tens of ns, so
/// [`MAX_EVAL_TIME_PER_ROW`] usually stops an expensive row first; this bound does not depend on
/// the machine's load.
pub const MAX_STEPS_PER_ROW: u32 = 1_000_000;

/// Longest evaluation of one row, checked at every step (see [`MAX_STEPS_PER_ROW`]); past it the
/// row fails with [`FilterErrorKind::TooExpensive`].
///
/// cel 0.15 cannot be interrupted, so a row may overrun by one step: at most one iteration, whose
/// body is bounded by [`MAX_AST_NODES`] (`x in state.items` inside a loop makes such an iteration
/// as long as the list). Unbounded, `state.items.exists(x, x in state.items)` over 20 000 items
/// runs for seconds; with the budget, 50 ms (measured on cel 0.15, release).
pub const MAX_EVAL_TIME_PER_ROW: Duration = Duration::from_millis(50);

/// Stack size of the threads [`on_filter_thread`] starts: 32 MiB.
///
/// Every input that passes the bounds parsed and evaluated with 16 MiB in a debug build (release
/// builds needed under 2 MiB; measured on cel 0.15); twice that leaves a margin. The memory is
/// reserved, not committed, until used.
pub const FILTER_STACK_BYTES: usize = 32 << 20;

/// Variables a filter may name.
pub const VARIABLES: &[&str] = &["state", "id", "version", "last_event_at"];

/// Functions and operators a filter may call, by the names cel's parser gives them (`_&&_` is
/// `&&`, `@in` is `in`, `@not_strictly_false` is what `all()`/`exists()` expand to).
///
/// Not here, on purpose: `matches` (regular expressions on untrusted patterns), `map`/`filter`
/// (they build lists; see [`Filter::compile`]), `type`/`dyn` and every extension function.
pub const FUNCTIONS: &[&str] = &[
    // operators
    "_&&_",
    "_||_",
    "!_",
    "-_",
    "_?_:_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "_[_]",
    "@in",
    "@not_strictly_false",
    // functions and methods
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "timestamp",
    "duration",
    "getFullYear",
    "getMonth",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getDate",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Longest evaluation error message kept: cel's messages print the values involved, which may be
/// a whole list from the state.
const MAX_MESSAGE_CHARS: usize = 300;

/// Parse errors reported in one [`FilterError`]; cel reports up to 30.
const MAX_PARSE_ERRORS: usize = 3;

/// The variable the evaluator looks up before every comprehension iteration: `@` cannot be
/// written in a filter, so only [`instrument`] puts it in the tree.
const STEP: &str = "@step";

/// The standard environment, built once: `Context::default()` would rebuild it per row (~33 µs).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// What a filter sees of one aggregate.
///
/// In the filter, `state` is the state JSON (objects are maps, integers that fit are `int`, larger
/// ones `uint`, other numbers `double`), `id` a string, `version` an `int` and `last_event_at` a
/// `timestamp` in UTC.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The aggregate id.
    pub id: &'a str,
    /// The aggregate's version: the version of its last event (1 for the first), 0 with none.
    pub version: u64,
    /// The aggregate's current state.
    pub state: &'a serde_json::Value,
    /// When the aggregate's last event was appended.
    pub last_event_at: chrono::DateTime<chrono::Utc>,
}

/// Why a filter was refused, or failed on a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    /// What went wrong, for programs.
    pub kind: FilterErrorKind,
    /// Byte offset in the filter's source where the problem is, when known.
    pub position: Option<usize>,
    /// What went wrong, for people: e.g. `position 16 (line 1, column 17): Syntax error: …`,
    /// ``unknown function `foo` at position 0``, `the filter must return a bool, it returned int`.
    pub message: String,
}

/// The kinds of [`FilterError`]; serialized in kebab-case (`unknown-function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilterErrorKind {
    /// The text is not a CEL expression.
    Syntax,
    /// A function, method or macro a filter may not call: not in [`FUNCTIONS`], or `map`/`filter`.
    UnknownFunction,
    /// A name that is none of [`VARIABLES`] nor a comprehension's variable; also a message
    /// (struct) type, as in `Foo{a: 1}`.
    UnknownVariable,
    /// The filter returns something other than a `bool`: found at compile time when it does so on
    /// an empty row, else by [`Filter::matches`].
    NotBoolean,
    /// A bound was exceeded: length, nesting, node count, comprehensions, or the per-row
    /// evaluation budget.
    TooExpensive,
    /// Evaluation failed on a row (no such overload, division by zero, overflow, …), or the
    /// filter thread could not start or panicked.
    Evaluation,
}

impl FilterError {
    fn new(kind: FilterErrorKind, position: Option<usize>, message: impl Into<String>) -> Self {
        FilterError {
            kind,
            position,
            message: message.into(),
        }
    }
}

/// A compiled, checked filter. Cheap to clone: the compiled tree is shared.
#[derive(Clone)]
pub struct Filter {
    inner: Arc<Compiled>,
}

struct Compiled {
    source: String,
    /// cel's tree, each comprehension's loop condition prefixed with a [`STEP`] lookup.
    expr: IdedExpr,
    /// The fields of `state` the filter selects (`state.a`, `has(state.a)`), when it uses `state`
    /// no other way; `None` when it uses `state` as a whole (`size(state)`, `state["a"]`).
    state_fields: Option<Vec<String>>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Parses and checks `source` against every bound of this module, then evaluates it once on
    /// an empty row (`id` `""`, `version` 0, `state` `{}`, `last_event_at` the Unix epoch) to
    /// refuse filters that return something other than a `bool`.
    ///
    /// Must run on a thread from [`on_filter_thread`]: cel's parser recurses deeply, and a stack
    /// overflow aborts the process. Takes about 35 µs in release once warm (the first compile in
    /// a process about 1 ms, while cel's parser warms up).
    ///
    /// # Errors
    ///
    /// - [`FilterErrorKind::TooExpensive`] when the source is longer than [`MAX_FILTER_BYTES`],
    ///   nests brackets deeper than [`MAX_BRACKET_DEPTH`], or its tree exceeds [`MAX_AST_NODES`],
    ///   [`MAX_AST_DEPTH`], [`MAX_COMPREHENSIONS`] or [`MAX_COMPREHENSION_NESTING`];
    /// - [`FilterErrorKind::Syntax`] when it does not parse; the message names the byte offset,
    ///   the line and the column (in characters, from 1) and cel's text;
    /// - [`FilterErrorKind::UnknownFunction`] for a call outside [`FUNCTIONS`], including `map()`
    ///   and `filter()` (`all()`, `exists()` and `exists_one()` are allowed), even where
    ///   evaluation would never reach it;
    /// - [`FilterErrorKind::UnknownVariable`] for a name outside [`VARIABLES`];
    /// - [`FilterErrorKind::NotBoolean`] when it returns a non-`bool` on the empty row (`1 + 2`,
    ///   `id`, `state`). Errors of that probe are ignored, since rows differ: `state.name + 1`
    ///   fails on the empty state, and also passes the probe; [`Filter::matches`] reports it.
    ///
    /// # Examples
    ///
    /// ```
    /// use aggregate_host::query::filter::{on_filter_thread, Filter, FilterErrorKind, Row};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (matched, refused) = on_filter_thread(|| {
    ///     let filter = Filter::compile("state.balance > 50 && id.startsWith('acc')")?;
    ///     let state = serde_json::json!({"balance": 100});
    ///     let row = Row { id: "acc-1", version: 3, state: &state, last_event_at: chrono::Utc::now() };
    ///     let refused = Filter::compile("version + 1").unwrap_err().kind;
    ///     Ok::<_, aggregate_host::query::filter::FilterError>((filter.matches(&row)?, refused))
    /// })
    /// .await??;
    /// assert!(matched);
    /// assert_eq!(refused, FilterErrorKind::NotBoolean);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compile(source: &str) -> Result<Filter, FilterError> {
        precheck(source)?;
        let program = Program::compile(source).map_err(|errors| parse_error(source, &errors))?;
        let state_fields = check_tree(&program)?;
        let mut expr = program.expression().clone();
        instrument(&mut expr);
        let filter = Filter {
            inner: Arc::new(Compiled {
                source: source.to_owned(),
                expr,
                state_fields,
            }),
        };
        let empty = serde_json::Value::Object(serde_json::Map::new());
        let probe = Row {
            id: "",
            version: 0,
            state: &empty,
            last_event_at: chrono::DateTime::UNIX_EPOCH,
        };
        match filter.matches(&probe) {
            Err(e) if e.kind == FilterErrorKind::NotBoolean => Err(e),
            _ => Ok(filter),
        }
    }

    /// The source the filter was compiled from.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether `row` passes the filter.
    ///
    /// A missing map key or list index (`state.missing > 1`, `state.items[9] == 1` on a shorter
    /// list) makes the whole filter `false`, even under `!`: test with `has(state.missing)`.
    /// Costs about 0.5 µs per row in release for `state.balance > 50`, whatever the size of the
    /// state: only the fields the filter selects are converted for cel. A filter that uses
    /// `state` otherwise (`size(state)`, `state['a']`, `'a' in state`) converts all of it: about
    /// 270 µs for a 25 KB state. A comprehension costs about 0.7 µs per item. Call it on a
    /// thread from [`on_filter_thread`]: the evaluator recurses over the tree.
    ///
    /// # Errors
    ///
    /// - [`FilterErrorKind::NotBoolean`] when the filter returns something other than a `bool`
    ///   for this row, naming the type;
    /// - [`FilterErrorKind::TooExpensive`] when the row exceeds [`MAX_STEPS_PER_ROW`] or
    ///   [`MAX_EVAL_TIME_PER_ROW`];
    /// - [`FilterErrorKind::Evaluation`] for any other evaluation error, e.g. no such overload
    ///   (`state.name + 1` on a string), division by zero, integer overflow, naming cel's error
    ///   (truncated, it may quote state values).
    pub fn matches(&self, row: &Row<'_>) -> Result<bool, FilterError> {
        let variables = RowVariables::new(row, self.inner.state_fields.as_deref());
        let mut context = Context::with_env(ENV.clone());
        context.set_variable_resolver(&variables);
        let result = Value::resolve_val(&self.inner.expr, &context);
        // Checked first: an error caused by the budget may have been absorbed (`error || true`).
        if variables.exhausted.load(Ordering::Relaxed) {
            return Err(FilterError::new(
                FilterErrorKind::TooExpensive,
                None,
                format!(
                    "the filter exceeded its evaluation budget on aggregate `{}` ({} steps or {} ms per aggregate)",
                    row.id,
                    MAX_STEPS_PER_ROW,
                    MAX_EVAL_TIME_PER_ROW.as_millis()
                ),
            ));
        }
        match result {
            Ok(value) => match value.downcast_ref::<CelBool>() {
                Some(b) => Ok(*b.inner()),
                None => Err(FilterError::new(
                    FilterErrorKind::NotBoolean,
                    None,
                    format!(
                        "the filter must return a bool, it returned {}",
                        value.get_type().name()
                    ),
                )),
            },
            Err(ExecutionError::NoSuchKey(_) | ExecutionError::IndexOutOfBounds(_)) => Ok(false),
            Err(e) => Err(FilterError::new(
                FilterErrorKind::Evaluation,
                None,
                format!(
                    "evaluating the filter on aggregate `{}` failed: {}",
                    row.id,
                    truncate(&e.to_string(), MAX_MESSAGE_CHARS)
                ),
            )),
        }
    }
}

/// Runs `f` on a new thread with a [`FILTER_STACK_BYTES`] stack and returns what it returns.
///
/// [`Filter::compile`] and [`Filter::matches`] recurse deeply inside cel; run them (a whole scan,
/// not one thread per row: starting a thread costs tens of µs) through this. The thread is not
/// from tokio's pool, and nothing here bounds how many run at once: the caller does. If the
/// returned future is dropped, the thread still runs `f` to its end.
///
/// # Errors
///
/// [`FilterErrorKind::Evaluation`] when the thread cannot be started or `f` panics (`filter thread
/// panicked`; the panic itself is logged).
pub async fn on_filter_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, FilterError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cel-filter".into())
        .stack_size(FILTER_STACK_BYTES)
        .spawn(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            // The receiver is gone when the request was cancelled: nobody wants the answer.
            let _ = tx.send(result);
        })
        .map_err(|e| {
            FilterError::new(
                FilterErrorKind::Evaluation,
                None,
                format!("could not start a filter thread: {e}"),
            )
        })?;
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            tracing::error!(panic = what, "filter thread panicked");
            Err(FilterError::new(
                FilterErrorKind::Evaluation,
                None,
                "filter thread panicked",
            ))
        }
        // Unreachable: the thread sends before it ends, and an abort takes us with it.
        Err(_) => Err(FilterError::new(
            FilterErrorKind::Evaluation,
            None,
            "filter thread panicked",
        )),
    }
}

/// Bounds checked on the raw text, before cel's parser sees it.
fn precheck(source: &str) -> Result<(), FilterError> {
    if source.len() > MAX_FILTER_BYTES {
        return Err(FilterError::new(
            FilterErrorKind::TooExpensive,
            None,
            format!(
                "the filter is {} bytes long, more than {MAX_FILTER_BYTES}",
                source.len()
            ),
        ));
    }
    let mut depth = 0usize;
    for (offset, byte) in source.bytes().enumerate() {
        match byte {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_BRACKET_DEPTH {
                    return Err(FilterError::new(
                        FilterErrorKind::TooExpensive,
                        Some(offset),
                        format!(
                            "the filter nests brackets deeper than {MAX_BRACKET_DEPTH} at position {offset}"
                        ),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The first few of cel's parse errors, each as `position N (line L, column C): text`.
fn parse_error(source: &str, errors: &cel::ParseErrors) -> FilterError {
    let located = |e: &cel::ParseError| {
        let (line, column) = e.pos;
        let offset = line_column_to_offset(source, line, column);
        (
            offset,
            format!("position {offset} (line {line}, column {column})"),
        )
    };
    // Only reachable through long ternary chains (`a ? b : c ? …`) below MAX_BRACKET_DEPTH. cel
    // then reports its limit wrapped in debug output, followed by errors it makes up.
    if let Some(e) = errors
        .errors
        .iter()
        .find(|e| e.msg.contains("Recursion limit"))
    {
        let (offset, at) = located(e);
        return FilterError::new(
            FilterErrorKind::TooExpensive,
            Some(offset),
            format!("{at}: the filter nests deeper than the parser allows"),
        );
    }
    let mut parts: Vec<String> = errors
        .errors
        .iter()
        .take(MAX_PARSE_ERRORS)
        .map(|e| format!("{}: {}", located(e).1, e.msg))
        .collect();
    if errors.errors.len() > MAX_PARSE_ERRORS {
        parts.push(format!(
            "and {} more",
            errors.errors.len() - MAX_PARSE_ERRORS
        ));
    }
    let position = errors.errors.first().map(|e| located(e).0);
    if parts.is_empty() {
        parts.push("syntax error".to_owned());
    }
    FilterError::new(FilterErrorKind::Syntax, position, parts.join("; "))
}

/// Byte offset of cel's 1-based (line, column); columns count characters. (0, 0), cel's "unknown",
/// gives 0.
fn line_column_to_offset(source: &str, line: isize, column: isize) -> usize {
    let (Ok(line), Ok(column)) = (usize::try_from(line), usize::try_from(column)) else {
        return 0;
    };
    if line == 0 || column == 0 {
        return 0;
    }
    let start: usize = source
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let rest = &source[start.min(source.len())..];
    start
        + rest
            .char_indices()
            .nth(column - 1)
            .map_or(rest.len(), |(i, _)| i)
}

/// Where node `id` starts in the source, as a byte offset (cel's lexer counts bytes).
fn offset_of(program: &Program, id: u64) -> Option<usize> {
    let (start, _) = program.source_info().offset_for(id)?;
    usize::try_from(start).ok()
}

/// Where the name of the call `id` starts: cel places a call at its `(`, so step back over the
/// name when it is right there.
fn call_position(program: &Program, id: u64, name: &str) -> Option<usize> {
    let paren = offset_of(program, id)?;
    let before = program.source_info().source.get(..paren)?.trim_end();
    Some(if before.ends_with(name) {
        before.len() - name.len()
    } else {
        paren
    })
}

fn at(position: Option<usize>) -> String {
    position.map_or_else(String::new, |p| format!(" at position {p}"))
}

/// Walks the tree without recursion (it may be deep until proven otherwise) and enforces the tree
/// bounds and allowlists. Returns the fields of `state` the filter selects, or `None` when it
/// uses `state` as a whole.
fn check_tree(program: &Program) -> Result<Option<Vec<String>>, FilterError> {
    struct Visit<'e> {
        expr: &'e IdedExpr,
        depth: usize,
        /// How many comprehension loops this node runs inside.
        nesting: usize,
        /// Names bound by the enclosing comprehensions, innermost last.
        bound: Vec<&'e str>,
        /// Whether the node is the operand of a field selection (`node.field`).
        selected: bool,
    }
    let too_expensive = |id: u64, what: String| {
        FilterError::new(FilterErrorKind::TooExpensive, offset_of(program, id), what)
    };

    let mut stack = vec![Visit {
        expr: program.expression(),
        depth: 1,
        nesting: 0,
        bound: Vec::new(),
        selected: false,
    }];
    let (mut nodes, mut comprehensions) = (0usize, 0usize);
    let (mut state_fields, mut whole_state) = (Vec::new(), false);
    while let Some(Visit {
        expr,
        depth,
        nesting,
        bound,
        selected,
    }) = stack.pop()
    {
        nodes += 1;
        if nodes > MAX_AST_NODES {
            return Err(too_expensive(
                expr.id,
                format!("the filter has more than {MAX_AST_NODES} nodes (names, literals, operators, calls)"),
            ));
        }
        if depth > MAX_AST_DEPTH {
            let position = offset_of(program, expr.id);
            return Err(FilterError::new(
                FilterErrorKind::TooExpensive,
                position,
                format!(
                    "the filter nests deeper than {MAX_AST_DEPTH} levels{}",
                    at(position)
                ),
            ));
        }
        let depth = depth + 1;
        match &expr.expr {
            Expr::Literal(_) => {}
            Expr::Unspecified => {
                // Only trees that failed to parse hold it, and cel panics evaluating it.
                return Err(FilterError::new(
                    FilterErrorKind::Syntax,
                    offset_of(program, expr.id),
                    "incomplete expression",
                ));
            }
            Expr::Ident(name) => {
                if !bound.contains(&name.as_str()) && !VARIABLES.contains(&name.as_str()) {
                    let position = offset_of(program, expr.id);
                    return Err(FilterError::new(
                        FilterErrorKind::UnknownVariable,
                        position,
                        format!(
                            "unknown variable `{name}`{}; a filter sees `state`, `id`, `version` and `last_event_at`",
                            at(position)
                        ),
                    ));
                }
                whole_state |= name == "state" && !selected && !bound.contains(&"state");
            }
            Expr::Select(select) => {
                let of_state = matches!(&select.operand.expr, Expr::Ident(n) if n == "state");
                if of_state && !bound.contains(&"state") && !state_fields.contains(&select.field) {
                    state_fields.push(select.field.clone());
                }
                stack.push(Visit {
                    expr: &select.operand,
                    depth,
                    nesting,
                    bound,
                    selected: true,
                });
            }
            Expr::Call(call) => {
                if !FUNCTIONS.contains(&call.func_name.as_str()) {
                    let position = call_position(program, expr.id, &call.func_name);
                    return Err(FilterError::new(
                        FilterErrorKind::UnknownFunction,
                        position,
                        format!("unknown function `{}`{}", call.func_name, at(position)),
                    ));
                }
                for e in call.target.as_deref().into_iter().chain(&call.args) {
                    stack.push(Visit {
                        expr: e,
                        depth,
                        nesting,
                        bound: bound.clone(),
                        selected: false,
                    });
                }
            }
            Expr::List(list) => {
                for e in &list.elements {
                    stack.push(Visit {
                        expr: e,
                        depth,
                        nesting,
                        bound: bound.clone(),
                        selected: false,
                    });
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        return Err(FilterError::new(
                            FilterErrorKind::Syntax,
                            offset_of(program, entry.id),
                            "a field initializer in a map literal",
                        ));
                    };
                    for e in [&entry.key, &entry.value] {
                        stack.push(Visit {
                            expr: e,
                            depth,
                            nesting,
                            bound: bound.clone(),
                            selected: false,
                        });
                    }
                }
            }
            Expr::Struct(s) => {
                let position = offset_of(program, expr.id);
                return Err(FilterError::new(
                    FilterErrorKind::UnknownVariable,
                    position,
                    format!(
                        "unknown type `{}`{}: a filter cannot construct messages",
                        s.type_name,
                        at(position)
                    ),
                ));
            }
            Expr::Comprehension(c) => {
                // `map()`/`filter()` accumulate a list, `all()`/`exists()` a bool, `exists_one()`
                // an int. Lists cost memory per iteration: `state.items.map(x, state.items)` took
                // 4.7 GB for 10 000 items (measured on cel 0.15).
                if matches!(c.accu_init.expr, Expr::List(_)) {
                    let position = offset_of(program, expr.id);
                    let name = if is_filter_step(c) { "filter" } else { "map" };
                    return Err(FilterError::new(
                        FilterErrorKind::UnknownFunction,
                        position,
                        format!(
                            "unknown function `{name}`{}: a filter may use all(), exists() and exists_one()",
                            at(position)
                        ),
                    ));
                }
                comprehensions += 1;
                if comprehensions > MAX_COMPREHENSIONS {
                    return Err(too_expensive(
                        expr.id,
                        format!("the filter has more than {MAX_COMPREHENSIONS} comprehensions (all, exists, exists_one)"),
                    ));
                }
                if nesting + 1 > MAX_COMPREHENSION_NESTING {
                    return Err(too_expensive(
                        expr.id,
                        format!(
                            "the filter nests comprehensions deeper than {MAX_COMPREHENSION_NESTING}"
                        ),
                    ));
                }
                // The range and the initial value are evaluated once, outside the loop.
                for e in [&c.iter_range, &c.accu_init] {
                    stack.push(Visit {
                        expr: e,
                        depth,
                        nesting,
                        bound: bound.clone(),
                        selected: false,
                    });
                }
                let mut inner = bound;
                inner.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    inner.push(v);
                }
                inner.push(&c.accu_var);
                for e in [&c.loop_cond, &c.loop_step] {
                    stack.push(Visit {
                        expr: e,
                        depth,
                        nesting: nesting + 1,
                        bound: inner.clone(),
                        selected: false,
                    });
                }
                stack.push(Visit {
                    expr: &c.result,
                    depth,
                    nesting,
                    bound: inner,
                    selected: false,
                });
            }
        }
    }
    Ok((!whole_state).then_some(state_fields))
}

/// Prefixes every comprehension's loop condition with a lookup of [`STEP`] (`@step && cond`),
/// which charges the row's budget once per iteration and stops the loop when it is spent. Runs
/// after [`check_tree`]: the tree is at most [`MAX_AST_DEPTH`] deep, so recursing is safe.
fn instrument(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) | Expr::Struct(_) => {}
        Expr::Select(select) => instrument(&mut select.operand),
        Expr::Call(call) => {
            if let Some(target) = &mut call.target {
                instrument(target);
            }
            call.args.iter_mut().for_each(instrument);
        }
        Expr::List(list) => list.elements.iter_mut().for_each(instrument),
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    instrument(&mut entry.key);
                    instrument(&mut entry.value);
                }
            }
        }
        Expr::Comprehension(c) => {
            for e in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                instrument(e);
            }
            let id = c.loop_cond.id;
            let cond = std::mem::take(&mut c.loop_cond);
            c.loop_cond = IdedExpr {
                id,
                expr: Expr::Call(CallExpr {
                    func_name: "_&&_".to_owned(),
                    target: None,
                    args: vec![
                        IdedExpr {
                            id,
                            expr: Expr::Ident(STEP.to_owned()),
                        },
                        cond,
                    ],
                }),
            };
        }
    }
}

/// Whether a list comprehension's step is `filter()`'s `cond ? acc + [x] : acc` (with `x` the
/// loop variable) rather than `map()`'s `acc + [f(x)]`; only used to name it in errors.
fn is_filter_step(c: &cel::common::ast::ComprehensionExpr) -> bool {
    let Expr::Call(step) = &c.loop_step.expr else {
        return false;
    };
    if step.func_name != "_?_:_" {
        return false;
    }
    let Some(Expr::Call(add)) = step.args.get(1).map(|e| &e.expr) else {
        return false;
    };
    let Some(Expr::List(added)) = add.args.get(1).map(|e| &e.expr) else {
        return false;
    };
    matches!(added.elements.as_slice(), [e] if matches!(&e.expr, Expr::Ident(n) if *n == c.iter_var))
}

/// The row's variables, answered to cel through a [`VariableResolver`] so that every lookup is
/// counted and timed: cel has no other hook into a running evaluation.
struct RowVariables<'a> {
    state: Box<dyn Val + 'a>,
    id: CelString<'a>,
    version: Box<dyn Val>,
    last_event_at: CelTimestamp,
    steps: AtomicU32,
    deadline: Instant,
    exhausted: AtomicBool,
}

impl<'a> RowVariables<'a> {
    /// The row's variables; of the state only `state_fields` if given (and the state is an
    /// object): a filter that only selects fields cannot tell the difference.
    fn new(row: &Row<'a>, state_fields: Option<&[String]>) -> Self {
        let state = match (state_fields, row.state) {
            (Some(fields), serde_json::Value::Object(object)) => {
                let selected = fields
                    .iter()
                    .filter_map(|f| object.get_key_value(f.as_str()))
                    .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)));
                Box::new(CelMap::from(selected.collect::<HashMap<_, _>>()))
            }
            _ => json_to_val(row.state),
        };
        let version: Box<dyn Val> = match i64::try_from(row.version) {
            Ok(v) => Box::new(CelInt::from(v)),
            Err(_) => Box::new(CelUInt::from(row.version)),
        };
        RowVariables {
            state,
            id: CelString::from(row.id),
            version,
            last_event_at: CelTimestamp::from(row.last_event_at.fixed_offset()),
            steps: AtomicU32::new(0),
            deadline: Instant::now() + MAX_EVAL_TIME_PER_ROW,
            exhausted: AtomicBool::new(false),
        }
    }

    /// Charges one step; false once the budget is spent, and from then on.
    fn step(&self) -> bool {
        if self.exhausted.load(Ordering::Relaxed)
            || self.steps.fetch_add(1, Ordering::Relaxed) >= MAX_STEPS_PER_ROW
            || Instant::now() > self.deadline
        {
            self.exhausted.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl VariableResolver for RowVariables<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        // cel asks for `state.a.b`, `state.a`, then `state`: only a hit is charged.
        let value: &'b (dyn Val + 'b) = match name {
            "state" => self.state.as_ref(),
            "id" => &self.id,
            "version" => self.version.as_ref(),
            "last_event_at" => &self.last_event_at,
            // A spent budget ends the loop: `false && cond`.
            STEP => {
                let go_on = self.step();
                return Some(CowVal::Borrowed(if go_on {
                    &CelBool::TRUE
                } else {
                    &CelBool::FALSE
                }));
            }
            _ => return None,
        };
        // A spent budget makes every later lookup fail, so evaluation winds down quickly.
        self.step().then_some(CowVal::Borrowed(value))
    }
}

/// The state JSON as cel values, borrowing its strings. Integers become `int` where they fit (cel's
/// serde path makes every positive one a `uint`, and `uint + int` has no overload).
fn json_to_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as J;
    match value {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        J::String(s) => Box::new(CelString::from(s.as_str())),
        J::Array(items) => Box::new(CelList::from(
            items.iter().map(json_to_val).collect::<Vec<_>>(),
        )),
        J::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// `text` cut to `max` characters, marked with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at_time(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    /// Compiles `source` on a filter thread and evaluates it on a row with `state`, id `acc-1`,
    /// version 3, last event at 2024-05-01.
    async fn eval(source: &str, state: serde_json::Value) -> Result<bool, FilterError> {
        let source = source.to_owned();
        on_filter_thread(move || {
            let filter = Filter::compile(&source)?;
            filter.matches(&Row {
                id: "acc-1",
                version: 3,
                state: &state,
                last_event_at: at_time("2024-05-01T12:00:00Z"),
            })
        })
        .await
        .unwrap()
    }

    async fn compile(source: impl Into<String>) -> Result<Filter, FilterError> {
        let source = source.into();
        on_filter_thread(move || Filter::compile(&source))
            .await
            .unwrap()
    }

    async fn refused(source: impl Into<String>, kind: FilterErrorKind) -> FilterError {
        let source = source.into();
        let e = compile(source.clone())
            .await
            .expect_err(&format!("{source:.80} should be refused"));
        assert_eq!(e.kind, kind, "{source:.80}: {e}");
        e
    }

    #[tokio::test]
    async fn accepts_and_evaluates_the_documented_filters() {
        let state = json!({"balance": 100, "items": [1, 2, 3], "owner": "Ada", "name": "x"});
        for (source, expected) in [
            ("state.balance > 50", true),
            ("state.balance > 150", false),
            ("id.startsWith(\"a\") && version >= 2", true),
            ("id.startsWith(\"b\") && version >= 2", false),
            ("last_event_at > timestamp(\"2020-01-01T00:00:00Z\")", true),
            ("last_event_at > timestamp(\"2025-01-01T00:00:00Z\")", false),
            ("last_event_at.getFullYear() == 2024", true),
            ("state.items.exists(x, x == 2)", true),
            ("state.items.exists(x, x == 7)", false),
            (
                "state.items.all(x, x > 0) && state.items.exists_one(x, x > 2)",
                true,
            ),
            ("has(state.owner)", true),
            ("has(state.nobody)", false),
            ("'Ada' == state.owner && 2 in state.items", true),
            ("size(state.items) == 3 && state.items[0] == 1", true),
        ] {
            assert_eq!(eval(source, state.clone()).await, Ok(expected), "{source}");
        }
    }

    #[tokio::test]
    async fn json_integers_are_ints() {
        let state = json!({"balance": 100, "big": u64::MAX, "ratio": 0.5});
        assert_eq!(
            eval("state.balance + 1 > 100", state.clone()).await,
            Ok(true)
        );
        assert_eq!(
            eval("state.balance * 2 == 200", state.clone()).await,
            Ok(true)
        );
        assert_eq!(eval("version + 1 == 4", state.clone()).await, Ok(true));
        assert_eq!(
            eval("state.big == 18446744073709551615u", state.clone()).await,
            Ok(true)
        );
        assert_eq!(eval("state.ratio * 2.0 == 1.0", state).await, Ok(true));
    }

    #[tokio::test]
    async fn a_missing_key_or_index_does_not_match() {
        let state = json!({"balance": 100, "items": [1]});
        assert_eq!(eval("state.missing > 1", state.clone()).await, Ok(false));
        assert_eq!(eval("!(state.missing > 1)", state.clone()).await, Ok(false));
        assert_eq!(eval("state.items[3] == 1", state.clone()).await, Ok(false));
        assert_eq!(
            eval("state.missing > 1 || state.balance > 1", state).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn a_syntax_error_names_its_byte_position() {
        let e = refused("state.balance > > 50", FilterErrorKind::Syntax).await;
        assert_eq!(e.position, Some(16), "{e}");
        assert!(
            e.message.starts_with("position 16 (line 1, column 17): "),
            "{e}"
        );
        assert!(e.message.contains("extraneous input '>'"), "{e}");

        // Columns count characters, positions bytes: `é` is two bytes.
        let e = refused("id == \"é\" &&\n  > 1", FilterErrorKind::Syntax).await;
        assert!(e.message.contains("(line 2, column 3)"), "{e}");
        assert_eq!(e.position, Some("id == \"é\" &&\n  ".len()), "{e}");
    }

    #[tokio::test]
    async fn unknown_functions_are_refused_even_where_unreachable() {
        let e = refused("foo(1) || true", FilterErrorKind::UnknownFunction).await;
        assert!(e.message.contains("`foo`"), "{e}");
        assert_eq!(e.position, Some(0), "{e}");
        assert!(e.message.contains("at position 0"), "{e}");

        let e = refused("true || \"é\".bar()", FilterErrorKind::UnknownFunction).await;
        assert!(e.message.contains("`bar`"), "{e}");
        // The offset is in bytes, past the two-byte `é`.
        let position = e.position.expect("a position");
        assert!(position >= "true || \"é\"".len(), "{e}");

        let e = refused("id.matches(\"a\")", FilterErrorKind::UnknownFunction).await;
        assert!(e.message.contains("`matches`"), "{e}");
        assert_eq!(e.position, Some(3), "{e}");
        refused("type(id) == type('a')", FilterErrorKind::UnknownFunction).await;
        refused("math.greatest(1, 2) == 2", FilterErrorKind::UnknownFunction).await;
    }

    #[tokio::test]
    async fn unknown_variables_are_refused() {
        let e = refused("bar > 1", FilterErrorKind::UnknownVariable).await;
        assert!(e.message.contains("`bar`"), "{e}");
        assert_eq!(e.position, Some(0), "{e}");
        let e = refused(
            "state.balance > 1 && tenant == 'x'",
            FilterErrorKind::UnknownVariable,
        )
        .await;
        assert!(e.message.contains("`tenant`"), "{e}");
        assert_eq!(e.position, Some(21), "{e}");
        // A comprehension's variable is only bound inside it.
        refused(
            "state.items.all(x, x > 0) && x > 0",
            FilterErrorKind::UnknownVariable,
        )
        .await;
        refused("Foo{a: 1} == state", FilterErrorKind::UnknownVariable).await;
        // ... and may shadow a row variable inside it.
        assert_eq!(
            eval("[1, 2].all(state, state > 0)", json!({})).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn non_boolean_filters_are_refused_at_compile_time_when_possible() {
        for source in [
            "1 + 2",
            "\"a\"",
            "state",
            "id",
            "version",
            "last_event_at",
            "[true]",
        ] {
            refused(source, FilterErrorKind::NotBoolean).await;
        }
        let e = refused("1 + 2", FilterErrorKind::NotBoolean).await;
        assert_eq!(e.message, "the filter must return a bool, it returned int");

        // `state.balance` is missing from the probe's empty state: only a row tells.
        compile("state.balance").await.unwrap();
        let e = eval("state.balance", json!({"balance": 100}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::NotBoolean);
        assert!(e.message.ends_with("it returned int"), "{e}");
    }

    #[tokio::test]
    async fn evaluation_errors_name_the_error() {
        let e = eval("state.balance / 0 > 1", json!({"balance": 100}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::Evaluation);
        assert!(e.message.contains("Division by zero"), "{e}");
        assert!(e.message.contains("`acc-1`"), "{e}");

        let e = eval("state.name + 1 > 2", json!({"name": "Ada"}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::Evaluation, "{e}");

        let e = eval("9223372036854775807 + version > 0", json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::Evaluation, "{e}");
        assert!(e.message.contains("Overflow"), "{e}");

        // cel quotes the operands: a large state is cut.
        let long = "x".repeat(10_000);
        let e = eval("state.s + 1 > 2", json!({ "s": long }))
            .await
            .unwrap_err();
        assert!(
            e.message.chars().count() < MAX_MESSAGE_CHARS + 100,
            "{}",
            e.message.len()
        );
        assert!(e.message.ends_with('…'), "{e}");
    }

    #[tokio::test]
    async fn comprehensions_are_bounded() {
        let e = refused(
            "[1,2].all(x, [1,2].all(y, true))",
            FilterErrorKind::TooExpensive,
        )
        .await;
        assert!(e.message.contains("comprehensions deeper than 1"), "{e}");
        refused(
            "state.items.all(x, state.items.exists(y, x == y))",
            FilterErrorKind::TooExpensive,
        )
        .await;
        // In the range of another is nested too: it is evaluated once, but let it be simple.
        compile("[1].filter(x, true) == [1]").await.unwrap_err();
        let five = ["state.items.exists(x, x == 1)"; 5].join(" || ");
        let e = refused(five, FilterErrorKind::TooExpensive).await;
        assert!(e.message.contains("more than 4 comprehensions"), "{e}");
        compile(["state.items.exists(x, x == 1)"; 4].join(" || "))
            .await
            .unwrap();

        let e = refused("[1].map(x, x) == [1]", FilterErrorKind::UnknownFunction).await;
        assert!(e.message.contains("`map`"), "{e}");
        let e = refused(
            "[1].filter(x, x > 0) == [1]",
            FilterErrorKind::UnknownFunction,
        )
        .await;
        assert!(e.message.contains("`filter`"), "{e}");
        let e = refused(
            "[1].map(x, x > 0, x * 2) == [2]",
            FilterErrorKind::UnknownFunction,
        )
        .await;
        assert!(e.message.contains("`map`"), "{e}");
    }

    #[tokio::test]
    async fn size_and_nesting_bounds_are_enforced_before_parsing() {
        let started = Instant::now();
        let e = refused("(".repeat(2000), FilterErrorKind::TooExpensive).await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert!(e.message.contains("more than 1024"), "{e}");
        // Within the length bound, the bracket depth: reported where it is exceeded.
        let e = refused("[".repeat(1000), FilterErrorKind::TooExpensive).await;
        assert_eq!(e.position, Some(MAX_BRACKET_DEPTH), "{e}");
        assert!(e.message.contains("deeper than 32"), "{e}");

        let e = refused(
            format!("id == '{}'", "a".repeat(2048)),
            FilterErrorKind::TooExpensive,
        )
        .await;
        assert!(e.message.contains("more than 1024"), "{e}");

        // Exactly at the bounds is fine.
        let deepest = format!(
            "{}true{}",
            "(".repeat(MAX_BRACKET_DEPTH),
            ")".repeat(MAX_BRACKET_DEPTH)
        );
        compile(deepest).await.unwrap();
        let longest = format!("id != '{}'", "a".repeat(MAX_FILTER_BYTES - 8));
        assert_eq!(longest.len(), MAX_FILTER_BYTES);
        compile(longest).await.unwrap();
    }

    #[tokio::test]
    async fn long_chains_are_refused_without_crashing() {
        // 600 terms are 1199 bytes: over the length bound.
        let chain = ["1"; 600].join("+") + " > 0";
        refused(chain, FilterErrorKind::TooExpensive).await;
        // 510 terms fit in 1 KiB: parsed (a left-deep tree), then over the depth bound.
        let chain = ["1"; 510].join("+") + " > 0";
        assert!(chain.len() <= MAX_FILTER_BYTES);
        let e = refused(chain, FilterErrorKind::TooExpensive).await;
        assert!(e.message.contains("deeper than 48 levels"), "{e}");
        // `&&` chains parse into a balanced tree: refused for their size, not depth.
        let chain = ["true"; 170].join("&&");
        let e = refused(chain, FilterErrorKind::TooExpensive).await;
        assert!(e.message.contains("more than 256 nodes"), "{e}");
        // Deep but small: selects, indexes, method chains, ternaries (past cel's own limit too).
        for chain in [
            format!("state{} == 1", ".a".repeat(300)),
            format!("state.items{} == 1", "[0]".repeat(300)),
            format!("id{} > 0", ".size()".repeat(140)),
            format!("{}true", "true ? true : ".repeat(72)),
            format!("{}true", "1?1:".repeat(250)),
        ] {
            assert!(chain.len() <= MAX_FILTER_BYTES, "{}", chain.len());
            let e = compile(chain.clone()).await.expect_err(&chain[..40]);
            assert!(
                matches!(
                    e.kind,
                    FilterErrorKind::TooExpensive | FilterErrorKind::Syntax
                ),
                "{}: {e}",
                &chain[..40]
            );
        }
        let e = refused("1?1:".repeat(250) + "true", FilterErrorKind::TooExpensive).await;
        assert!(
            e.message
                .ends_with("the filter nests deeper than the parser allows"),
            "{e}"
        );
        assert!(e.position.is_some(), "{e}");
        // The parser folds pairs of `!` and `-`: these are short trees, and evaluate.
        assert_eq!(
            eval(&format!("{}true", "!".repeat(1000)), json!({})).await,
            Ok(true)
        );
        assert_eq!(
            eval(&format!("{}true", "!".repeat(999)), json!({})).await,
            Ok(false)
        );
        assert_eq!(
            eval(&format!("{}1 > 0", "-".repeat(1000)), json!({})).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn the_evaluation_budget_stops_quadratic_filters() {
        let items: Vec<u32> = (0..20_000).collect();
        let state = json!({ "items": items });
        let started = Instant::now();
        // ~2e8 comparisons unbounded; every iteration looks `state` up again.
        let e = eval("state.items.exists(x, x in state.items && x < 0)", state)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::TooExpensive, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_evaluation_budget_stops_loops_that_never_look_the_row_up() {
        let items: Vec<u32> = (0..50_000).collect();
        let state = json!({ "items": items });
        // 30 terms per iteration, none a row variable: ~0.2 s unbounded in release.
        let body = ["x + 1 == -1"; 30].join(" || ");
        let started = Instant::now();
        let e = eval(&format!("state.items.exists(x, {body})"), state.clone())
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::TooExpensive, "{e}");
        assert!(e.message.contains("budget"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // The instrumented loop still computes what it did (on fewer items: this is a debug
        // build, about 1 µs per iteration).
        let items: Vec<u32> = (0..5_000).collect();
        let state = json!({ "items": items });
        assert_eq!(
            eval("state.items.exists(x, x == 4999)", state.clone()).await,
            Ok(true)
        );
        assert_eq!(
            eval("state.items.exists(x, x == 5000)", state.clone()).await,
            Ok(false)
        );
        assert_eq!(
            eval("state.items.all(x, x >= 0)", state.clone()).await,
            Ok(true)
        );
        assert_eq!(
            eval("state.items.exists_one(x, x == 7)", state).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn a_filter_sees_the_whole_state_unless_it_only_selects_fields() {
        let state = json!({"a": 1, "b": {"c": 2}, "d": [3]});
        for (source, expected) in [
            // Selected fields only: the rest is not converted, and cannot be told apart.
            ("has(state.a) && !has(state.z)", true),
            ("state.b.c == 2 && state.d[0] == 3", true),
            ("state.z == 1", false),
            // The whole state.
            ("size(state) == 3", true),
            ("'d' in state && state.a == 1", true),
            ("state['b'].c == 2", true),
            ("state.exists(k, k == 'd')", true),
            ("state == {'a': 1, 'b': {'c': 2}, 'd': [3]}", true),
            // A loop variable named `state` is not the row's.
            (
                "[{'z': 1}].exists(state, state.z == 1) && size(state) == 3",
                true,
            ),
            (
                "[{'z': 1}].exists(state, state.z == 1) && state.a == 1",
                true,
            ),
        ] {
            assert_eq!(eval(source, state.clone()).await, Ok(expected), "{source}");
        }
    }

    #[tokio::test]
    async fn hostile_random_input_never_crashes() {
        // Raw bytes half the time, CEL-ish tokens the other half: both reach the parser, the
        // latter also the checks and the evaluator.
        const TOKENS: &[&str] = &[
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ".",
            ",",
            "!",
            "?",
            ":",
            "+",
            "-",
            "*",
            "/",
            "%",
            "<",
            ">=",
            "==",
            "!=",
            "&&",
            "||",
            " in ",
            "\"",
            "'",
            "'''",
            "r'",
            "b'",
            "\\",
            " ",
            "\n",
            "0",
            "1",
            "9223372036854775807",
            "1u",
            "2.5e308",
            "0x",
            "state",
            "id",
            "version",
            "last_event_at",
            "x",
            ".all(x, ",
            ".exists(",
            ".map(",
            "has(",
            "size(",
            "int(",
            "timestamp(",
            "duration(",
            "'1s'",
            "é",
            "🦀",
            "null",
            "true",
            "false",
            "{'a': 1}",
        ];
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        // Valid filters with a few tokens replaced or inserted: most still parse, so they reach
        // the checks and the evaluator.
        const SEEDS: &[&[&str]] = &[
            &["state", ".", "a", " > ", "1"],
            &["state", ".items", ".exists(x, ", "x", " == ", "2", ")"],
            &[
                "id",
                ".startsWith(",
                "'a'",
                ")",
                " && ",
                "version",
                " >= ",
                "2",
            ],
            &[
                "last_event_at",
                " > ",
                "timestamp(",
                "'2020-01-01T00:00:00Z'",
                ")",
            ],
            &[
                "has(", "state", ".", "a", ")", " || ", "size(", "state", ".s", ")", " == ", "1",
            ],
            &[
                "state", ".a", " + ", "1", " * ", "2", " == ", "3", " ? ", "true", " : ", "false",
            ],
        ];
        let mut inputs = Vec::with_capacity(1000);
        for i in 0..1000 {
            let len = next() % 64;
            let input = match i % 3 {
                0 => {
                    let bytes: Vec<u8> = (0..len * 2).map(|_| next() as u8).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                1 => (0..len).map(|_| TOKENS[next() % TOKENS.len()]).collect(),
                _ => {
                    let mut tokens = SEEDS[next() % SEEDS.len()].to_vec();
                    for _ in 0..next() % 3 {
                        let at = next() % tokens.len();
                        let token = TOKENS[next() % TOKENS.len()];
                        if next() % 2 == 0 {
                            tokens[at] = token;
                        } else {
                            tokens.insert(at, token);
                        }
                    }
                    tokens.concat()
                }
            };
            inputs.push(input);
        }
        let compiled = on_filter_thread(move || {
            let state = json!({"a": 1, "items": [1, 2], "s": "x"});
            let row = Row {
                id: "acc-1",
                version: 1,
                state: &state,
                last_event_at: at_time("2024-05-01T12:00:00Z"),
            };
            let mut compiled = 0;
            for input in &inputs {
                if let Ok(filter) = Filter::compile(input) {
                    compiled += 1;
                    let _ = filter.matches(&row);
                }
            }
            compiled
        })
        .await
        .unwrap();
        // Many inputs made it past the parser, so the checks and the evaluator ran too.
        assert!(compiled > 50, "{compiled}");
    }

    #[tokio::test]
    async fn a_panic_on_the_filter_thread_is_an_error() {
        let e = on_filter_thread(|| -> u32 { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(e.kind, FilterErrorKind::Evaluation);
        assert_eq!(e.message, "filter thread panicked");
        assert_eq!(on_filter_thread(|| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_filter_is_shared_across_threads() {
        fn send_sync<T: Send + Sync + Clone + fmt::Debug>() {}
        send_sync::<Filter>();
        let filter = compile("state.balance > 50").await.unwrap();
        assert_eq!(filter.source(), "state.balance > 50");
        assert!(format!("{filter:?}").contains("state.balance > 50"));
        let copy = filter.clone();
        let matched = on_filter_thread(move || {
            let state = json!({"balance": 51});
            copy.matches(&Row {
                id: "a",
                version: 1,
                state: &state,
                last_event_at: chrono::Utc::now(),
            })
        })
        .await
        .unwrap();
        assert_eq!(matched, Ok(true));
    }

    #[test]
    fn kinds_serialize_in_kebab_case() {
        assert_eq!(
            serde_json::to_value(FilterErrorKind::UnknownFunction).unwrap(),
            json!("unknown-function")
        );
        assert_eq!(
            serde_json::to_value(FilterErrorKind::NotBoolean).unwrap(),
            json!("not-boolean")
        );
        assert_eq!(
            serde_json::to_value(FilterErrorKind::TooExpensive).unwrap(),
            json!("too-expensive")
        );
    }
}
