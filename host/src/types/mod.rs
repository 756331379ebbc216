//! Domain types shared by every layer: validated ids, command/event/snapshot envelopes.
//!
//! Every id that reaches a storage key or a NATS subject is a validated newtype, so no crafted
//! string can escape its tenant's key range.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A value that failed validation; names the field and says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidValue {
    /// Which field or header was bad, e.g. `tenant id`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidValue {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

const MAX_NAME_LEN: usize = 64;

fn check_name(field: &'static str, s: &str, allow_empty: bool) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(InvalidValue::new(field, "must not be empty"))
        };
    }
    if s.len() > MAX_NAME_LEN {
        return Err(InvalidValue::new(
            field,
            format!("is {} bytes long; at most {MAX_NAME_LEN} allowed", s.len()),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(InvalidValue::new(
            field,
            format!("{s:?} contains {c:?}; only ASCII letters, digits, '-' and '_' are allowed"),
        ));
    }
    Ok(())
}

/// A tenant: ASCII letters, digits, `-` and `_`, at most 64 bytes. The empty tenant means
/// single-tenant mode.
///
/// # Examples
///
/// ```
/// use aggregate_host::types::TenantId;
/// let t: TenantId = "acme-01".parse().unwrap();
/// assert_eq!(t.as_str(), "acme-01");
/// assert!("acme.01".parse::<TenantId>().is_err());
/// assert!(TenantId::single().is_single());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The tenant of single-tenant mode (the empty id).
    pub fn single() -> Self {
        Self(String::new())
    }

    /// Parse and validate a tenant id.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] naming `tenant id` when the string has a forbidden character or is too long.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        check_name("tenant id", &s, true)?;
        if s == RESERVED_TENANT {
            return Err(InvalidValue {
                field: "tenant id",
                reason: format!(
                    "{RESERVED_TENANT:?} is reserved: it names the single tenant in admin paths, NATS subjects and placement keys"
                ),
            });
        }
        Ok(Self(s))
    }

    /// Whether this is the single-tenant (empty) id.
    pub fn is_single(&self) -> bool {
        self.0.is_empty()
    }

    /// The id as text (empty in single-tenant mode).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id no tenant may have: `_` names the single (unnamed) tenant where an empty id cannot
/// stand (an admin path, a NATS subject token, a placement key).
pub const RESERVED_TENANT: &str = "_";

/// The name of an aggregate type, e.g. `bank-account`: 1–64 ASCII letters, digits, `-`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AggregateType(String);

impl AggregateType {
    /// Parse and validate an aggregate type name.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] naming `aggregate type` when empty, too long or with a forbidden character.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        check_name("aggregate type", &s, false)?;
        Ok(Self(s))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of one aggregate: a UUID v7 (time-ordered).
///
/// # Examples
///
/// ```
/// use aggregate_host::types::AggregateId;
/// let id = AggregateId::generate();
/// assert_eq!(id.to_string().parse::<AggregateId>().unwrap(), id);
/// // a v4 UUID is refused: ids must be v7
/// assert!("5c3a2a52-1f45-4a1c-9d2b-2c1f7a3b7a10".parse::<AggregateId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AggregateId(Uuid);

impl AggregateId {
    /// A new time-ordered id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wrap a UUID, checking that it is version 7.
    ///
    /// # Errors
    ///
    /// [`InvalidValue`] naming `aggregate id` for any other UUID version.
    pub fn from_uuid(u: Uuid) -> Result<Self, InvalidValue> {
        match u.get_version_num() {
            7 => Ok(Self(u)),
            v => Err(InvalidValue::new(
                "aggregate id",
                format!("{u} is a UUID v{v}; a UUID v7 is required"),
            )),
        }
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

/// The id of one command; the idempotency key and the causation id of the events it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandId(Uuid);

impl CommandId {
    /// A new random-enough, time-ordered command id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

/// Position of an event in its aggregate's stream: the first event is version 1; an aggregate
/// with no events is at version 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of an aggregate with no events.
    pub const INITIAL: Version = Version(0);

    /// The version after `n` more events.
    pub fn advance(self, n: u64) -> Version {
        Version(self.0 + n)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The SHA-256 of a component's bytes: its identity everywhere (blob store, manifest, cache,
/// snapshots). Displayed as `sha256:<64 hex digits>`.
///
/// # Examples
///
/// ```
/// use aggregate_host::types::ComponentHash;
/// let h = ComponentHash::of(b"hello");
/// assert_eq!(h, ComponentHash::of(b"hello"));
/// assert_eq!(h.to_string().parse::<ComponentHash>().unwrap(), h);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ComponentHash([u8; 32]);

impl ComponentHash {
    /// Hash some bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits (no `sha256:` prefix), e.g. for file names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for logs: the first 12 hex digits.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Debug for ComponentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComponentHash({})", self.short())
    }
}

impl fmt::Display for ComponentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl FromStr for ComponentHash {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let hexpart = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|_| {
            InvalidValue::new(
                "component hash",
                format!("{s:?} is not `sha256:` followed by 64 hex digits"),
            )
        })?;
        Ok(Self(out))
    }
}

macro_rules! string_conversions {
    ($t:ty, $parse:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&String::from(self.clone()), f)
            }
        }
        impl FromStr for $t {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                ($parse)(s)
            }
        }
        impl TryFrom<String> for $t {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                s.parse()
            }
        }
    };
}

string_conversions!(TenantId, |s: &str| TenantId::new(s));
string_conversions!(AggregateType, |s: &str| AggregateType::new(s));
string_conversions!(AggregateId, |s: &str| {
    let u = Uuid::parse_str(s)
        .map_err(|e| InvalidValue::new("aggregate id", format!("{s:?} is not a UUID: {e}")))?;
    AggregateId::from_uuid(u)
});
string_conversions!(CommandId, |s: &str| Uuid::parse_str(s)
    .map(CommandId)
    .map_err(|e| InvalidValue::new(
        "command id",
        format!("{s:?} is not a UUID: {e}")
    )));

impl From<TenantId> for String {
    fn from(v: TenantId) -> String {
        v.0
    }
}
impl From<AggregateType> for String {
    fn from(v: AggregateType) -> String {
        v.0
    }
}
impl From<AggregateId> for String {
    fn from(v: AggregateId) -> String {
        v.0.to_string()
    }
}
impl From<CommandId> for String {
    fn from(v: CommandId) -> String {
        v.0.to_string()
    }
}
impl From<ComponentHash> for String {
    fn from(v: ComponentHash) -> String {
        v.to_string()
    }
}
impl TryFrom<String> for ComponentHash {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, InvalidValue> {
        s.parse()
    }
}

/// Validated JSON text, kept as written: serialized inline (not as a string), compared by text.
/// Guests exchange JSON text with the host, so payloads and states stay text end to end instead
/// of being parsed into trees and printed again on every hop.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(Box<serde_json::value::RawValue>);

impl Json {
    /// Check that `text` is one JSON value and keep it.
    ///
    /// # Errors
    ///
    /// The parser's error (with line and column) when it is not.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text.into()).map(Json)
    }

    /// Serialize any value.
    ///
    /// # Panics
    ///
    /// Never for `serde_json::Value`; only if a `Serialize` impl itself fails.
    pub fn from_value<T: Serialize>(v: &T) -> Self {
        Json(serde_json::value::to_raw_value(v).expect("serializable value"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Parse into a `serde_json::Value` (for display and tests).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("validated JSON")
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an aggregate lives: tenant, type and id. Every storage key starts with this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AggregateRef {
    /// The tenant that owns the aggregate.
    pub tenant: TenantId,
    /// The aggregate's type.
    pub aggregate_type: AggregateType,
    /// The aggregate's id.
    pub aggregate_id: AggregateId,
}

impl fmt::Display for AggregateRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = if self.tenant.is_single() {
            "-"
        } else {
            self.tenant.as_str()
        };
        write!(f, "{t}/{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// Metadata carried from the gateway into every event a command produces.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandMetadata {
    /// `x-correlation-id`: ties together everything one business request caused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// W3C `traceparent` of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The host that ran the command and wrote its events (cluster mode: its host id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Who sent the command: the `sub` of its JWT (with JWT authentication on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// A command on its way to an aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique id (idempotency key).
    pub command_id: CommandId,
    /// The aggregate it is addressed to.
    pub target: AggregateRef,
    /// The command's name, e.g. `deposit`.
    pub command_type: String,
    /// The command's body, a JSON object.
    pub payload: Json,
    /// Gateway metadata.
    #[serde(default)]
    pub metadata: CommandMetadata,
    /// When the host received it.
    pub received_at: DateTime<Utc>,
}

/// An event as the aggregate decided it, before it has a place in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event's name, e.g. `deposited`.
    pub event_type: String,
    /// Version of this event type's payload schema.
    pub schema_version: u32,
    /// The event's body (validated JSON text from the guest).
    pub payload: Json,
}

/// An event stored in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Where it belongs.
    pub aggregate: AggregateRef,
    /// Its position in the aggregate's stream (1-based, no gaps).
    pub version: Version,
    /// The event's name.
    pub event_type: String,
    /// Version of the payload schema.
    pub schema_version: u32,
    /// The event's body.
    pub payload: Json,
    /// The command that caused it.
    pub causation_id: CommandId,
    /// Gateway metadata of that command.
    #[serde(default)]
    pub metadata: CommandMetadata,
    /// The component that decided it.
    pub component: ComponentHash,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// A saved state of an aggregate, so rehydration starts here and not at event 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Whose state.
    pub aggregate: AggregateRef,
    /// The version this state includes (all events up to and including it).
    pub version: Version,
    /// The state, exactly as the guest returned it.
    pub state: Json,
    /// The component that built the state.
    pub component: ComponentHash,
    /// The event log's position of the last included event (log-specific; e.g. stream sequence).
    pub log_position: u64,
}

/// The parts of an event a guest's `apply` sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventData<'a> {
    /// The event's name.
    pub event_type: &'a str,
    /// Version of the payload schema.
    pub schema_version: u32,
    /// The event's body as JSON text.
    pub payload: &'a str,
}

impl NewEvent {
    /// The parts a guest's `apply` sees.
    pub fn data(&self) -> EventData<'_> {
        EventData {
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: self.payload.as_str(),
        }
    }
}

impl Event {
    /// The parts a guest's `apply` sees.
    pub fn data(&self) -> EventData<'_> {
        EventData {
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: self.payload.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_reject_separators_and_long_names() {
        for bad in ["a.b", "a/b", "a b", "ä", "a*", "a>", &"x".repeat(65), "_"] {
            let e = TenantId::new(bad).unwrap_err();
            assert_eq!(e.field, "tenant id", "{bad}");
        }
        assert!(TenantId::new("_").unwrap_err().reason.contains("reserved"));
        assert!(TenantId::new("Acme_01-x").is_ok());
        assert!(TenantId::new("").unwrap().is_single());
    }

    #[test]
    fn aggregate_type_must_not_be_empty() {
        let e = AggregateType::new("").unwrap_err();
        assert_eq!(e.to_string(), "invalid aggregate type: must not be empty");
        assert!(AggregateType::new("bank.account").is_err());
    }

    #[test]
    fn aggregate_id_must_be_v7_uuid() {
        let e = "not-a-uuid".parse::<AggregateId>().unwrap_err();
        assert_eq!(e.field, "aggregate id");
        let v4 = "5c3a2a52-1f45-4a1c-9d2b-2c1f7a3b7a10"
            .parse::<AggregateId>()
            .unwrap_err();
        assert!(v4.reason.contains("v4"), "{v4}");
        let id = AggregateId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<AggregateId>(&json).unwrap(), id);
        assert!(
            serde_json::from_str::<AggregateId>("\"5c3a2a52-1f45-4a1c-9d2b-2c1f7a3b7a10\"")
                .is_err()
        );
    }

    #[test]
    fn component_hash_round_trips_and_rejects_garbage() {
        let h = ComponentHash::of(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<ComponentHash>().unwrap(), h);
        assert_eq!(h.to_hex().parse::<ComponentHash>().unwrap(), h);
        assert!("sha256:zz".parse::<ComponentHash>().is_err());
    }

    #[test]
    fn json_keeps_text_and_rejects_garbage() {
        let j = Json::parse(r#"{"b":1, "a":2}"#).unwrap();
        assert_eq!(j.as_str(), r#"{"b":1, "a":2}"#);
        assert_eq!(
            serde_json::to_string(&vec![j.clone()]).unwrap(),
            r#"[{"b":1, "a":2}]"#
        );
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("1 2").is_err());
    }

    #[test]
    fn tenant_deserialization_validates() {
        assert!(serde_json::from_str::<TenantId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<TenantId>("\"../evil\"").is_err());
    }
}
