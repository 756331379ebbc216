//! The one place that runs `bindgen!` for the `aggregate` world.

mod generated {
    wasmtime::component::bindgen!({
        world: "aggregate",
        path: "../wit",
    });
}

pub use generated::{
    Aggregate, AggregatePre, Command as WitCommand, DecideError as WitDecideError,
    Event as WitEvent,
};
