//! Warm instances, keyed by (tenant, aggregate type, component hash), bounded globally (LRU).
//!
//! The key includes the tenant, so an instance that ran one tenant's commands can never be handed
//! to another tenant; it includes the component hash, so a deploy never reuses an instance of the
//! previous version.

use std::collections::{BTreeMap, HashMap};

use wasmtime::Store;

use super::bindings::Aggregate;
use super::host_state::HostState;
use crate::types::{AggregateType, ComponentHash, TenantId};

/// Which warm instances a call may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The tenant the call runs for.
    pub tenant: TenantId,
    /// The aggregate type.
    pub aggregate_type: AggregateType,
    /// The component that runs it.
    pub component: ComponentHash,
}

pub(crate) struct Instance {
    pub(crate) id: u64,
    pub(crate) tenant: TenantId,
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: Aggregate,
    pub(crate) calls: u64,
}

pub(crate) struct Pool {
    cap: usize,
    tick: u64,
    by_key: HashMap<InstanceKey, Vec<(u64, Instance)>>,
    /// tick of last return → key; the first entry is the least recently used instance.
    lru: BTreeMap<u64, InstanceKey>,
}

impl Pool {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            tick: 0,
            by_key: HashMap::new(),
            lru: BTreeMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.len()
    }

    /// The most recently returned instance for `key`, if any.
    pub(crate) fn take(&mut self, key: &InstanceKey) -> Option<Instance> {
        let list = self.by_key.get_mut(key)?;
        let (tick, inst) = list.pop()?;
        if list.is_empty() {
            self.by_key.remove(key);
        }
        self.lru.remove(&tick);
        Some(inst)
    }

    /// Keep an instance; returns instances evicted to stay within the bound (dropped by the caller,
    /// outside the lock).
    pub(crate) fn put(&mut self, key: InstanceKey, inst: Instance) -> Vec<Instance> {
        debug_assert_eq!(inst.tenant, key.tenant);
        let mut evicted = Vec::new();
        if self.cap == 0 {
            evicted.push(inst);
            return evicted;
        }
        while self.lru.len() >= self.cap {
            match self.evict_lru() {
                Some(i) => evicted.push(i),
                None => break,
            }
        }
        self.tick += 1;
        self.lru.insert(self.tick, key.clone());
        self.by_key.entry(key).or_default().push((self.tick, inst));
        evicted
    }

    pub(crate) fn evict_lru(&mut self) -> Option<Instance> {
        let (tick, key) = self.lru.pop_first()?;
        let list = self.by_key.get_mut(&key)?;
        let pos = list.iter().position(|(t, _)| *t == tick)?;
        let (_, inst) = list.remove(pos);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        Some(inst)
    }

    /// Remove every instance of a component (it was replaced or unloaded).
    pub(crate) fn retire(&mut self, component: &ComponentHash) -> Vec<Instance> {
        let keys: Vec<InstanceKey> = self
            .by_key
            .keys()
            .filter(|k| &k.component == component)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            for (tick, inst) in self.by_key.remove(&k).unwrap_or_default() {
                self.lru.remove(&tick);
                out.push(inst);
            }
        }
        out
    }
}
