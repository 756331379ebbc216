//! A bounded (LRU) map of recently used aggregates' states, so a hot aggregate is not rehydrated
//! for every command. A conflict evicts the entry; the next command reloads.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::types::{AggregateRef, ComponentHash, Json, Version};

#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) version: Version,
    pub(super) state: Json,
    pub(super) component: ComponentHash,
}

struct Inner {
    tick: u64,
    map: HashMap<AggregateRef, (u64, Cached)>,
    order: BTreeMap<u64, AggregateRef>,
}

pub(super) struct HotCache {
    cap: usize,
    inner: Mutex<Inner>,
}

impl HotCache {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Mutex::new(Inner {
                tick: 0,
                map: HashMap::new(),
                order: BTreeMap::new(),
            }),
        }
    }

    pub(super) fn get(&self, k: &AggregateRef) -> Option<Cached> {
        let mut g = self.inner.lock();
        let g = &mut *g;
        g.tick += 1;
        let tick = g.tick;
        let (t, v) = g.map.get_mut(k)?;
        g.order.remove(t);
        *t = tick;
        g.order.insert(tick, k.clone());
        Some(v.clone())
    }

    pub(super) fn put(&self, k: AggregateRef, v: Cached) {
        if self.cap == 0 {
            return;
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        g.tick += 1;
        let tick = g.tick;
        if let Some((old, _)) = g.map.insert(k.clone(), (tick, v)) {
            g.order.remove(&old);
        }
        g.order.insert(tick, k);
        while g.map.len() > self.cap {
            let Some((_, oldest)) = g.order.pop_first() else {
                break;
            };
            g.map.remove(&oldest);
        }
    }

    pub(super) fn remove_tenant(&self, tenant: &crate::types::TenantId) {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let order = &mut g.order;
        g.map.retain(|k, (t, _)| {
            let keep = k.tenant != *tenant;
            if !keep {
                order.remove(t);
            }
            keep
        });
    }

    pub(super) fn remove(&self, k: &AggregateRef) {
        let mut g = self.inner.lock();
        if let Some((t, _)) = g.map.remove(k) {
            g.order.remove(&t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AggregateId, AggregateType, TenantId};

    fn agg() -> AggregateRef {
        AggregateRef {
            tenant: TenantId::new("t").unwrap(),
            aggregate_type: AggregateType::new("x").unwrap(),
            aggregate_id: AggregateId::generate(),
        }
    }

    fn val(v: u64) -> Cached {
        Cached {
            version: Version(v),
            state: Json::parse("{}").unwrap(),
            component: ComponentHash::of(b"c"),
        }
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let c = HotCache::new(2);
        let (a, b, d) = (agg(), agg(), agg());
        c.put(a.clone(), val(1));
        c.put(b.clone(), val(2));
        assert_eq!(c.get(&a).unwrap().version, Version(1)); // a is now newer than b
        c.put(d.clone(), val(3));
        assert!(c.get(&b).is_none());
        assert!(c.get(&a).is_some() && c.get(&d).is_some());
        c.remove(&a);
        assert!(c.get(&a).is_none());
    }
}
