//! The demo the README's first command runs: deploy a component, send a short bank-account story
//! through the runtime, print each decision, event and state.

use std::path::Path;
use std::sync::Arc;

use crate::registry::Registry;
use crate::runtime::{Decision, InstanceKey, Runtime, RuntimeConfig};
use crate::types::{
    AggregateId, AggregateRef, AggregateType, Command, CommandId, CommandMetadata, Json, TenantId,
};

/// Deploy the component at `component` into a registry under `data_dir`, then run the story.
///
/// # Errors
///
/// When the component cannot be read, is refused, or a guest call fails.
pub fn run(component: &Path, data_dir: &Path, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        artifact_dir: Some(data_dir.join("artifacts")),
        ..RuntimeConfig::default()
    })?);
    let registry = Registry::open(
        data_dir,
        &data_dir.join("manifest.yaml"),
        runtime.clone(),
        64 << 20,
    )?;
    let bytes = std::fs::read(component)
        .map_err(|e| anyhow::anyhow!("read {}: {e}", component.display()))?;
    let ty = AggregateType::new("bank-account")?;
    let deployed = registry.deploy(&ty, &bytes, None)?;
    let active = registry.resolve(&ty)?;
    writeln!(
        out,
        "deployed {ty} = {} (version {}, {} bytes)",
        deployed.component,
        deployed.version,
        bytes.len()
    )?;
    let stats = runtime.stats();
    writeln!(
        out,
        "  compiled: {}, loaded from precompiled artifact: {}",
        stats.compiles, stats.artifact_loads
    )?;

    let tenant = TenantId::new("demo")?;
    let target = AggregateRef {
        tenant: tenant.clone(),
        aggregate_type: ty.clone(),
        aggregate_id: AggregateId::generate(),
    };
    let key = InstanceKey {
        tenant,
        aggregate_type: ty,
        component: active.component,
    };
    let mut state: Json =
        runtime.with_instance(&key, &active.limits, active.isolation, |g| g.init())?;
    writeln!(out, "aggregate {target}\n  init -> {state}")?;
    let story = [
        ("open", r#"{"owner":"Ada"}"#),
        ("deposit", r#"{"amount":100}"#),
        ("withdraw", r#"{"amount":30}"#),
        ("withdraw", r#"{"amount":500}"#),
        ("deposit", r#"{"amount":-1}"#),
        ("deposit", r#"{"amount":12}"#),
    ];
    let mut version = 0u64;
    for (command_type, payload) in story {
        let cmd = Command {
            command_id: CommandId::generate(),
            target: target.clone(),
            command_type: command_type.into(),
            payload: Json::parse(payload)?,
            metadata: CommandMetadata::default(),
            received_at: chrono::Utc::now(),
        };
        let (decision, next, fuel) =
            runtime.with_instance(&key, &active.limits, active.isolation, |g| {
                let d = g.decide(&state, &cmd)?;
                let fuel = g.fuel_used();
                let next = match &d {
                    Decision::Accepted(ev) => g.apply(&state, ev.iter().map(|e| e.data()))?,
                    _ => state.clone(),
                };
                Ok((d, next, fuel))
            })?;
        writeln!(out, "{command_type} {payload}  (fuel {fuel})")?;
        match decision {
            Decision::Accepted(events) => {
                for e in &events {
                    version += 1;
                    writeln!(
                        out,
                        "  event v{version} {} (schema {}) {}",
                        e.event_type, e.schema_version, e.payload
                    )?;
                }
                writeln!(out, "  state -> {next}")?;
            }
            Decision::Rejected(m) => writeln!(out, "  rejected: {m}")?,
            Decision::Invalid(m) => writeln!(out, "  invalid: {m}")?,
        }
        state = next;
    }
    let s = runtime.stats();
    writeln!(
        out,
        "final state {state} at version {version}; instances created {}, warm reuses {}, discarded {}",
        s.instantiations, s.pool_hits, s.discards
    )?;
    Ok(())
}
