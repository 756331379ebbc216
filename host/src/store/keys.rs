//! Binary key encoding shared by the fjall-backed stores.
//!
//! Layout (all parts tenant first, so a tenant's keys form one contiguous, prefix-closed range):
//!
//! ```text
//! aggregate key  = tenant 0x00 type 0x00 id(16 bytes)
//! event key      = aggregate key ++ version (u64 big endian)
//! command key    = tenant 0x00 command-id(16 bytes)
//! ```
//!
//! Tenant ids and aggregate types are validated newtypes made only of `[A-Za-z0-9_-]`, so they
//! never contain the `0x00` separator: the prefix `tenant 0x00` of one tenant can never be a prefix
//! of another tenant's keys (`acme\0` vs `acme-2\0`), and the empty (single-tenant) tenant's keys
//! all start with `0x00`, which no other tenant's keys do. Ids and versions have fixed widths, so
//! nothing after the type needs a separator.

use uuid::Uuid;

use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, TenantId};

use super::StoreError;

const SEP: u8 = 0;

/// `tenant 0x00`: the prefix of all of a tenant's keys in one keyspace.
pub(crate) fn tenant_prefix(tenant: &TenantId) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.as_str().len() + 1);
    k.extend_from_slice(tenant.as_str().as_bytes());
    k.push(SEP);
    k
}

/// `tenant 0x00 type 0x00`: the prefix of a tenant's keys of one aggregate type.
pub(crate) fn type_prefix(tenant: &TenantId, aggregate_type: &AggregateType) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(aggregate_type.as_str().as_bytes());
    k.push(SEP);
    k
}

/// `tenant 0x00 type 0x00 id`: the key of an aggregate (and prefix of its events).
pub(crate) fn aggregate_key(aggregate: &AggregateRef) -> Vec<u8> {
    let mut k = type_prefix(&aggregate.tenant, &aggregate.aggregate_type);
    k.reserve(16 + 8);
    k.extend_from_slice(aggregate.aggregate_id.as_uuid().as_bytes());
    k
}

/// `aggregate key ++ version(BE)`.
pub(crate) fn event_key(aggregate_key: &[u8], version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(aggregate_key.len() + 8);
    k.extend_from_slice(aggregate_key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// `tenant 0x00 command-id`.
pub(crate) fn command_key(tenant: &TenantId, command_id: &CommandId) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(command_id.as_uuid().as_bytes());
    k
}

/// Decode an aggregate key (as written by [`aggregate_key`]).
pub(crate) fn decode_aggregate_key(key: &[u8]) -> Result<AggregateRef, StoreError> {
    let corrupted = |reason: &str| StoreError::Corrupted {
        location: format!("key {}", hex::encode(key)),
        reason: reason.to_string(),
    };
    let t_end = key
        .iter()
        .position(|b| *b == SEP)
        .ok_or_else(|| corrupted("no tenant separator"))?;
    let rest = &key[t_end + 1..];
    let ty_end = rest
        .iter()
        .position(|b| *b == SEP)
        .ok_or_else(|| corrupted("no type separator"))?;
    let id_bytes = &rest[ty_end + 1..];
    if id_bytes.len() != 16 {
        return Err(corrupted("aggregate id is not 16 bytes"));
    }
    let tenant = std::str::from_utf8(&key[..t_end])
        .ok()
        .and_then(|s| TenantId::new(s).ok())
        .ok_or_else(|| corrupted("invalid tenant id"))?;
    let aggregate_type = std::str::from_utf8(&rest[..ty_end])
        .ok()
        .and_then(|s| AggregateType::new(s).ok())
        .ok_or_else(|| corrupted("invalid aggregate type"))?;
    let mut raw = [0u8; 16];
    raw.copy_from_slice(id_bytes);
    let aggregate_id = AggregateId::from_uuid(Uuid::from_bytes(raw))
        .map_err(|_| corrupted("aggregate id is not a UUID v7"))?;
    Ok(AggregateRef {
        tenant,
        aggregate_type,
        aggregate_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(tenant: &str, ty: &str) -> AggregateRef {
        AggregateRef {
            tenant: TenantId::new(tenant).unwrap(),
            aggregate_type: AggregateType::new(ty).unwrap(),
            aggregate_id: AggregateId::generate(),
        }
    }

    #[test]
    fn aggregate_keys_round_trip() {
        for (t, ty) in [("", "a"), ("acme", "bank-account"), ("x_y-1", "T")] {
            let a = agg(t, ty);
            assert_eq!(decode_aggregate_key(&aggregate_key(&a)).unwrap(), a);
        }
    }

    #[test]
    fn tenant_prefixes_never_overlap() {
        let a = agg("acme", "t");
        let b = agg("acme-2", "t");
        let single = agg("", "t");
        let pa = tenant_prefix(&a.tenant);
        assert!(aggregate_key(&a).starts_with(&pa));
        assert!(!aggregate_key(&b).starts_with(&pa));
        assert!(!aggregate_key(&a).starts_with(&tenant_prefix(&b.tenant)));
        let ps = tenant_prefix(&single.tenant);
        assert!(aggregate_key(&single).starts_with(&ps));
        assert!(!aggregate_key(&a).starts_with(&ps));
        // type prefixes are closed too: `t` vs `tt`
        let c = agg("acme", "tt");
        assert!(!aggregate_key(&c).starts_with(&type_prefix(&a.tenant, &a.aggregate_type)));
    }

    #[test]
    fn event_keys_sort_by_version() {
        let k = aggregate_key(&agg("a", "b"));
        assert!(event_key(&k, 2) < event_key(&k, 10));
        assert!(event_key(&k, 255) < event_key(&k, 256));
    }
}
