//! JWT authentication of gateway requests (`jwt` in the configuration; off by default).
//!
//! A request carries `Authorization: Bearer <JWT>`. The token is checked with the `jsonwebtoken`
//! crate against keys loaded once at start: an HS256 secret, a PEM public key (RSA: RS256,
//! RS384, RS512; EC P-256: ES256; EC P-384: ES384) or a JWKS file (RFC 7517; a token's `kid`
//! picks the key). `exp`, `iss` and `aud` are required and checked (`iss` and `aud` against the
//! configured values, `exp` with `leeway_secs` of clock skew). The tenant is the claim named by
//! `tenant_claim` (default `tenant_id`); the subject (`sub`) becomes the events' `actor`.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::Digest;

use crate::config::{ConfigError, JwtConfig};
use crate::types::TenantId;

/// Longest `sub` recorded as an actor, in bytes; a longer subject is refused (it is copied into
/// every event the command writes).
pub const MAX_ACTOR_BYTES: usize = 256;

/// Longest bearer token read, in bytes; a longer one is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request's token was refused (each is a 401 with its own message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    /// Not a JWT (shape, base64, JSON), or over [`MAX_TOKEN_BYTES`].
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf is in the future)")]
    NotYetValid,
    /// The signature does not verify with the configured key.
    #[error("bad signature: the token was not signed by a configured key")]
    BadSignature,
    /// `alg` is not one the configured key verifies.
    #[error("token algorithm {0} is not accepted by the configured key")]
    WrongAlgorithm(String),
    /// The token's `kid` names no key of the JWKS.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// `aud` is not the configured audience.
    #[error("wrong audience: the token is not meant for this service")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer: the token was not issued by the configured issuer")]
    WrongIssuer,
    /// A required claim (`exp`, `iss`, `aud`) is missing or has the wrong type.
    #[error("token claim `{0}` is missing or malformed")]
    Claim(String),
}

impl TokenError {
    /// A short stable name (the problem's `reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed(_) => "malformed",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not-yet-valid",
            TokenError::BadSignature => "bad-signature",
            TokenError::WrongAlgorithm(_) => "wrong-algorithm",
            TokenError::UnknownKey(_) => "unknown-key",
            TokenError::WrongAudience => "wrong-audience",
            TokenError::WrongIssuer => "wrong-issuer",
            TokenError::Claim(_) => "claim",
        }
    }
}

/// What a valid token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant claim, when the token has one.
    pub tenant: Option<TenantId>,
    /// `sub`, when the token has one.
    pub actor: Option<String>,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// Tokens whose verification is remembered at most; the cache is emptied when full.
const MAX_CACHED_TOKENS: usize = 10_000;

/// Checks bearer tokens against the configured keys.
///
/// A token that verified is remembered (by its SHA-256) until its `exp` plus the leeway, so a
/// client that sends the same token again is not verified again: an RS256 verification costs
/// more than the rest of a command (BENCHMARKS.md). Only valid tokens are remembered, so made-up
/// tokens cannot fill the cache.
pub struct Authenticator {
    keys: Vec<Key>,
    tenant_claim: String,
    leeway_secs: u64,
    verified: parking_lot::Mutex<std::collections::HashMap<[u8; 32], (Principal, u64)>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("tenant_claim", &self.tenant_claim)
            .finish()
    }
}

fn config_err(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: format!("jwt.{field}"),
        reason: reason.into(),
    }
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| config_err(field, format!("{}: {e}", path.display())))
}

impl Authenticator {
    /// Load the keys `config` names (validated by [`crate::config::Config::validate`]: exactly
    /// one key source, an issuer and an audience).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the `jwt.*` field whose file cannot be read or holds no usable
    /// key.
    pub fn load(config: &JwtConfig) -> Result<Self, ConfigError> {
        let validation = |algorithms: Vec<Algorithm>| {
            let mut v = Validation::new(algorithms[0]);
            v.algorithms = algorithms;
            v.leeway = config.leeway_secs;
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.set_issuer(&[config.issuer.as_deref().unwrap_or_default()]);
            v.set_audience(&[config.audience.as_deref().unwrap_or_default()]);
            v.validate_nbf = true;
            v
        };
        let mut keys = Vec::new();
        if let Some(path) = &config.hs256_secret_file {
            let secret = read("hs256_secret_file", path)?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(config_err(
                    "hs256_secret_file",
                    format!(
                        "the secret is {} bytes; HS256 needs at least 32 (RFC 7518 §3.2)",
                        secret.len()
                    ),
                ));
            }
            keys.push(Key {
                kid: None,
                key: DecodingKey::from_secret(secret),
                validation: validation(vec![Algorithm::HS256]),
            });
        }
        if let Some(path) = &config.public_key_file {
            let pem = read("public_key_file", path)?;
            let (key, algorithms) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (
                    k,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                )
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                // The curve decides the algorithm: an uncompressed point is 65 bytes on P-256 and
                // 97 on P-384 (SEC 1 §2.3.3); other curves and compressed points are refused.
                let alg = match k.as_bytes().len() {
                    65 => Algorithm::ES256,
                    97 => Algorithm::ES384,
                    n => {
                        return Err(config_err(
                            "public_key_file",
                            format!(
                            "{}: an EC key of {n} bytes; use an uncompressed P-256 or P-384 key",
                            path.display()
                        ),
                        ))
                    }
                };
                (k, vec![alg])
            } else {
                return Err(config_err(
                    "public_key_file",
                    format!(
                        "{}: not a PEM RSA or EC (P-256, P-384) public key",
                        path.display()
                    ),
                ));
            };
            keys.push(Key {
                kid: None,
                key,
                validation: validation(algorithms),
            });
        }
        if let Some(path) = &config.jwks_file {
            let text = read("jwks_file", path)?;
            let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
                config_err("jwks_file", format!("{}: not a JWKS: {e}", path.display()))
            })?;
            for jwk in &set.keys {
                // Only signature keys (RFC 7517 §4.2): an encryption key verifies nothing.
                if matches!(
                    &jwk.common.public_key_use,
                    Some(u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature
                ) {
                    continue;
                }
                let algorithms = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => {
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
                    }
                    AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        EllipticCurve::P256 => vec![Algorithm::ES256],
                        EllipticCurve::P384 => vec![Algorithm::ES384],
                        _ => continue,
                    },
                    // Symmetric and EdDSA keys are not accepted from a key set.
                    _ => continue,
                };
                let algorithms = match jwk.common.key_algorithm.and_then(|a| {
                    a.to_string()
                        .parse::<Algorithm>()
                        .ok()
                        .filter(|a| algorithms.contains(a))
                }) {
                    Some(a) => vec![a],
                    None => algorithms,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    config_err(
                        "jwks_file",
                        format!(
                            "{}: key {:?}: {e}",
                            path.display(),
                            jwk.common.key_id.as_deref().unwrap_or("")
                        ),
                    )
                })?;
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    key,
                    validation: validation(algorithms),
                });
            }
            if keys.is_empty() {
                return Err(config_err(
                    "jwks_file",
                    format!("{}: no RSA or EC (P-256, P-384) key", path.display()),
                ));
            }
        }
        Ok(Self {
            keys,
            tenant_claim: config.tenant_claim.clone(),
            leeway_secs: config.leeway_secs,
            verified: parking_lot::Mutex::default(),
        })
    }

    /// The claim that names the tenant.
    pub fn tenant_claim(&self) -> &str {
        &self.tenant_claim
    }

    /// Check the value of an `Authorization` header (`None`: absent).
    ///
    /// # Errors
    ///
    /// The [`TokenError`] that says why the token is refused. A tenant claim that is not a valid
    /// tenant id is [`TokenError::Claim`]; so is a `sub` that is not a string or is longer than
    /// [`MAX_ACTOR_BYTES`].
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Principal, TokenError> {
        let raw = authorization.ok_or(TokenError::Missing)?;
        let text = std::str::from_utf8(raw)
            .map_err(|_| TokenError::Malformed("the Authorization header is not UTF-8".into()))?;
        let token = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(TokenError::Missing),
        };
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "the token is longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((principal, until)) = self.verified.lock().get(&digest) {
            if now <= *until {
                return Ok(principal.clone());
            }
        }
        let (principal, exp) = self.verify(token)?;
        let mut verified = self.verified.lock();
        if verified.len() >= MAX_CACHED_TOKENS {
            verified.clear();
        }
        verified.insert(
            digest,
            (principal.clone(), exp.saturating_add(self.leeway_secs)),
        );
        Ok(principal)
    }

    /// Verify a token with the keys: its principal and `exp`.
    fn verify(&self, token: &str) -> Result<(Principal, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(map_error)?;
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.is_some()) => {
                let found: Vec<&Key> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if found.is_empty() {
                    return Err(TokenError::UnknownKey(kid.chars().take(64).collect()));
                }
                found
            }
            _ => self.keys.iter().collect(),
        };
        let usable: Vec<&Key> = candidates
            .into_iter()
            .filter(|k| k.validation.algorithms.contains(&header.alg))
            .collect();
        if usable.is_empty() {
            return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let mut last = TokenError::BadSignature;
        for key in usable {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => {
                    // `exp` is required and was checked to be a number.
                    let exp = data.claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
                    return self.principal(data.claims).map(|p| (p, exp));
                }
                // Another key of the set may verify it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {}
                Err(e) => last = map_error(e),
            }
        }
        Err(last)
    }

    fn principal(&self, claims: Map<String, Value>) -> Result<Principal, TokenError> {
        let tenant = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            // An empty claim would mean the single tenant; a token names a tenant or none.
            Some(Value::String(t)) if !t.is_empty() => {
                Some(TenantId::new(t).map_err(|_| TokenError::Claim(self.tenant_claim.clone()))?)
            }
            Some(_) => return Err(TokenError::Claim(self.tenant_claim.clone())),
        };
        let actor = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_ACTOR_BYTES => {
                Some(s.clone())
            }
            Some(_) => return Err(TokenError::Claim("sub".into())),
        };
        Ok(Principal { tenant, actor })
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::WrongAlgorithm("of the token".into())
        }
        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
            TokenError::Claim(c.clone())
        }
        _ => TokenError::Malformed(e.to_string()),
    }
}

/// The gateway middleware of JWT authentication (a no-op without `jwt`). Every route but
/// `/openapi.json` and `/problems/{slug}` needs a valid token. The token's tenant claim becomes
/// the request's `x-tenant-id` when the header is absent; a header that disagrees is 403. The
/// [`Principal`] is put in the request's extensions for the handlers.
pub(super) async fn authenticate(
    axum::extract::State(st): axum::extract::State<super::AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;

    use super::tenants::TENANT_HEADER;
    use super::ApiError;

    let Some(auth) = st.0.auth.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/openapi.json" || path.starts_with("/problems/") {
        return next.run(request).await;
    }
    let internal = request
        .extensions()
        .get::<super::ingress::Internal>()
        .is_some();
    if internal && !request.headers().contains_key(header::AUTHORIZATION) {
        // Made by the host itself (NATS ingress, a forward from a cluster peer that checked the
        // token already): NATS permissions are the boundary.
        return next.run(request).await;
    }
    let refuse = |request: axum::extract::Request, e: ApiError| {
        super::drain_after_answer(request);
        let mut response = e.into_response();
        response.extensions_mut().insert(AuthTenant(None));
        response
    };
    // One token and one tenant: with two of either, which one counts would be a guess.
    if request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .count()
        > 1
    {
        let e = TokenError::Malformed("more than one Authorization header".into());
        return refuse(request, e.into());
    }
    if request.headers().get_all(TENANT_HEADER).iter().count() > 1 {
        let e = ApiError::BadRequest("more than one x-tenant-id header".into());
        return refuse(request, e);
    }
    let checked = auth.check(
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    let principal = match checked {
        Ok(p) => p,
        Err(e) => return refuse(request, e.into()),
    };
    match &principal.tenant {
        Some(claim) => match request.headers().get(TENANT_HEADER) {
            None => {
                let value =
                    HeaderValue::from_str(claim.as_str()).expect("a tenant id is visible ASCII");
                request.headers_mut().insert(TENANT_HEADER, value);
            }
            Some(v) if v.as_bytes() == claim.as_str().as_bytes() => {}
            Some(v) => {
                let e = ApiError::tenant_mismatch(v.as_bytes(), claim.as_str());
                return refuse(request, e);
            }
        },
        // A multi-tenant host takes the tenant from the token only: a header anyone can set
        // proves nothing.
        None if st.0.config.multi_tenant => {
            let e = TokenError::Claim(auth.tenant_claim().to_string());
            return refuse(request, e.into());
        }
        // A token without a tenant acts for the single tenant only.
        None => match request.headers().get(TENANT_HEADER) {
            Some(v) if !v.is_empty() => {
                let e = ApiError::tenant_mismatch(v.as_bytes(), "");
                return refuse(request, e);
            }
            _ => {}
        },
    }
    let tenant = request
        .headers()
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(AuthTenant(Some(tenant)));
    response
}

/// Put by [`authenticate`] on its answers for the request log's tenant label: `Some(header)` for
/// an authenticated request (the `x-tenant-id` it ran with, `None` when absent), `None` for a
/// refused one (its header is nobody's: labelled `=other`).
#[derive(Debug, Clone)]
pub(super) struct AuthTenant(pub Option<Option<String>>);

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/e2e/fixtures/jwt")
            .join(name)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn config() -> JwtConfig {
        JwtConfig {
            issuer: Some("iss-1".into()),
            audience: Some("aud-1".into()),
            ..JwtConfig::default()
        }
    }

    fn good() -> Value {
        json!({"iss": "iss-1", "aud": "aud-1", "exp": now() + 60, "sub": "erin", "tenant_id": "acme"})
    }

    fn es256(claims: &Value, kid: Option<&str>) -> String {
        let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap())
            .unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn an_es256_public_key_checks_tokens() {
        let auth = Authenticator::load(&JwtConfig {
            public_key_file: Some(fixture("es256-public.pem")),
            ..config()
        })
        .unwrap();
        let token = es256(&good(), None);
        let p = auth.check(Some(&bearer(&token))).unwrap();
        assert_eq!(p.tenant, Some(TenantId::new("acme").unwrap()));
        assert_eq!(p.actor.as_deref(), Some("erin"));
        // Verified once, then remembered until exp + leeway; refused tokens are not remembered.
        assert_eq!(auth.check(Some(&bearer(&token))).unwrap(), p);
        assert_eq!(auth.verified.lock().len(), 1);
        let until = auth.verified.lock().values().next().unwrap().1;
        assert_eq!(until, good()["exp"].as_u64().unwrap() + 30);
        assert!(auth.check(Some(b"Bearer a.b.c")).is_err());
        assert_eq!(auth.verified.lock().len(), 1);
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = good();
            f(&mut c);
            auth.check(Some(&bearer(&es256(&c, None)))).unwrap_err()
        };
        assert_eq!(
            with(&|c| c["iss"] = json!("other")),
            TokenError::WrongIssuer
        );
        assert_eq!(
            with(&|c| c["aud"] = json!(["x", "y"])),
            TokenError::WrongAudience
        );
        assert_eq!(
            with(&|c| c["nbf"] = json!(now() + 3600)),
            TokenError::NotYetValid
        );
        assert_eq!(
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            TokenError::Claim("aud".into())
        );
        assert_eq!(
            with(&|c| c["tenant_id"] = json!("no.dots")),
            TokenError::Claim("tenant_id".into())
        );
        assert_eq!(
            with(&|c| c["sub"] = json!(7)),
            TokenError::Claim("sub".into())
        );
        // An HS256 token is refused by an EC key (no algorithm confusion).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(
            auth.check(Some(&bearer(&hs))),
            Err(TokenError::WrongAlgorithm(_))
        ));
        assert_eq!(auth.check(Some(b"Basic abc")), Err(TokenError::Missing));
        assert_eq!(auth.check(Some(b"Bearer ")), Err(TokenError::Missing));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            auth.check(Some(&bearer(&huge))),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid() {
        let dir = tempfile::tempdir().unwrap();
        let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-private.pem")).unwrap())
            .unwrap();
        let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256-private.pem")).unwrap())
            .unwrap();
        let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
        ec_jwk.common.key_id = Some("ec-1".into());
        let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
        rsa_jwk.common.key_id = Some("rsa-1".into());
        let mut enc_jwk = ec_jwk.clone();
        enc_jwk.common.key_id = Some("enc-1".into());
        enc_jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
        let jwks = dir.path().join("jwks.json");
        std::fs::write(
            &jwks,
            json!({ "keys": [ec_jwk, rsa_jwk, enc_jwk] }).to_string(),
        )
        .unwrap();
        let auth = Authenticator::load(&JwtConfig {
            jwks_file: Some(jwks),
            ..config()
        })
        .unwrap();
        auth.check(Some(&bearer(&es256(&good(), Some("ec-1")))))
            .unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        let rs = jsonwebtoken::encode(&header, &good(), &rsa).unwrap();
        assert_eq!(
            auth.check(Some(&bearer(&rs))).unwrap().actor.as_deref(),
            Some("erin")
        );
        assert_eq!(
            auth.check(Some(&bearer(&es256(&good(), Some("gone"))))),
            Err(TokenError::UnknownKey("gone".into()))
        );
        assert_eq!(
            auth.check(Some(&bearer(&es256(&good(), Some("enc-1"))))),
            Err(TokenError::UnknownKey("enc-1".into())),
            "an encryption key verifies nothing"
        );
        // The EC token under the RSA key's id: that key does not take ES256.
        assert!(matches!(
            auth.check(Some(&bearer(&es256(&good(), Some("rsa-1"))))),
            Err(TokenError::WrongAlgorithm(_))
        ));
    }

    #[test]
    fn bad_key_files_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let e = Authenticator::load(&JwtConfig {
            hs256_secret_file: Some(short.clone()),
            ..config()
        })
        .unwrap_err();
        assert!(
            e.field == "jwt.hs256_secret_file" && e.reason.contains("32"),
            "{e}"
        );
        let e = Authenticator::load(&JwtConfig {
            public_key_file: Some(short),
            ..config()
        })
        .unwrap_err();
        assert_eq!(e.field, "jwt.public_key_file");
        let e = Authenticator::load(&JwtConfig {
            jwks_file: Some(dir.path().join("missing.json")),
            ..config()
        })
        .unwrap_err();
        assert_eq!(e.field, "jwt.jwks_file");
    }
}
