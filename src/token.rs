//! Callback tokens: the last path segment of the callback URL handed to Captain Data. A token
//! carries the correlation data the bridge needs when the callback arrives (which request,
//! which chunk), signed with HMAC-SHA256 under a key id so that keys can be rotated: one key
//! signs, every listed key verifies. Format: `v1.{kid}.{b64url(claims)}.{b64url(mac)}`, with
//! the MAC over `v1.{kid}.{b64url(claims)}`; URL-safe base64 without padding.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "v1";
/// Shortest accepted secret.
pub const MIN_SECRET_LEN: usize = 16;
/// Longer tokens are refused before any decoding (a request id is at most a few hundred bytes).
const MAX_TOKEN_LEN: usize = 2048;
const MAX_KID_LEN: usize = 64;

/// What the bridge needs to know about a callback it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackClaims {
    /// The launch request the run belongs to.
    #[serde(rename = "r")]
    pub request_id: String,
    /// Which chunk of the request the run carries (0 when the request was not split).
    #[serde(rename = "c")]
    pub chunk: u32,
    /// Unix seconds after which the token is refused (`None`: never). Async runs' tokens
    /// expire (`callbacks.token_ttl`); a schedule's token cannot, since every firing is a new
    /// run calling back with it. Tokens signed before expiry existed carry none.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Why a token was refused. Every variant means 401; they differ in logs only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The key id is not (or no longer) among the verifying keys, e.g. a retired key.
    #[error("unknown token key id {0:?}")]
    UnknownKey(String),
    #[error("bad token signature")]
    BadSignature,
    /// Signed by us, but past its `expires_at`.
    #[error("token expired at {0} (unix seconds)")]
    Expired(i64),
}

impl TokenError {
    /// Never: the same token will be refused again.
    pub fn is_retriable(&self) -> bool {
        false
    }

    /// A short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired(_) => "expired",
        }
    }
}

/// Why key material was refused. Messages name the entry, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    #[error("no callback signing key configured")]
    Empty,
    #[error("key entry {index} is not of the form kid:base64secret")]
    NotAPair { index: usize },
    #[error("key entry {index}: key id {kid:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    BadKid { index: usize, kid: String },
    #[error("key {kid:?}: secret is not valid base64")]
    BadBase64 { kid: String },
    #[error("key {kid:?}: secret is {len} bytes, at least {MIN_SECRET_LEN} are required")]
    TooShort { kid: String, len: usize },
    #[error("key {kid:?} is listed twice")]
    Duplicate { kid: String },
    #[error("signing key {kid:?} is not among the configured keys")]
    UnknownSigningKey { kid: String },
}

/// The keyed MAC state of one key. It is as sensitive as the secret it was derived from:
/// never printed.
#[derive(Clone)]
struct KeyedMac(HmacSha256);

/// The keys that sign and verify callback tokens.
#[derive(Clone)]
pub struct TokenKeys {
    signing_kid: String,
    /// Keyed once at start-up; the raw secrets are dropped (and zeroized) after that.
    keys: HashMap<String, KeyedMac>,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("TokenKeys")
            .field("signing_kid", &self.signing_kid)
            .field("verifying_kids", &kids)
            .finish()
    }
}

impl TokenKeys {
    /// Builds the key set: `keys` verify, `signing_kid` (one of them) signs.
    pub fn new(
        keys: Vec<(String, SecretSlice<u8>)>,
        signing_kid: &str,
    ) -> Result<Self, KeyConfigError> {
        if keys.is_empty() {
            return Err(KeyConfigError::Empty);
        }
        let mut map = HashMap::with_capacity(keys.len());
        for (index, (kid, secret)) in keys.into_iter().enumerate() {
            if !valid_kid(&kid) {
                return Err(KeyConfigError::BadKid { index, kid });
            }
            let bytes = secret.expose_secret();
            if bytes.len() < MIN_SECRET_LEN {
                let len = bytes.len();
                return Err(KeyConfigError::TooShort { kid, len });
            }
            // HMAC takes keys of any length, so this cannot fail; map it anyway.
            let mac = HmacSha256::new_from_slice(bytes).map_err(|_| KeyConfigError::TooShort {
                kid: kid.clone(),
                len: bytes.len(),
            })?;
            if map.insert(kid.clone(), KeyedMac(mac)).is_some() {
                return Err(KeyConfigError::Duplicate { kid });
            }
        }
        if !map.contains_key(signing_kid) {
            return Err(KeyConfigError::UnknownSigningKey {
                kid: signing_kid.to_owned(),
            });
        }
        Ok(Self {
            signing_kid: signing_kid.to_owned(),
            keys: map,
        })
    }

    /// Parses config text `kid1:base64secret,kid2:base64secret` (standard or URL-safe base64,
    /// padding optional; whitespace around entries ignored) and builds the key set.
    pub fn from_config(text: &str, signing_kid: &str) -> Result<Self, KeyConfigError> {
        Self::new(parse_key_material(text)?, signing_kid)
    }

    /// The key id new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Signs `claims` into a URL-safe token.
    pub fn sign(&self, claims: &CallbackClaims) -> String {
        // Serializing two plain fields cannot fail; an empty payload would only fail to verify.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!(
            "{VERSION}.{}.{}",
            self.signing_kid,
            URL_SAFE_NO_PAD.encode(json)
        );
        let tag = match self.keys.get(&self.signing_kid) {
            Some(KeyedMac(mac)) => {
                let mut mac = mac.clone();
                mac.update(signed.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            // `new` guarantees the signing key is present.
            None => Vec::new(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a token's signature (in constant time) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<CallbackClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (signed, tag) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("missing signature"))?;
        let mut parts = signed.split('.');
        let (Some(version), Some(kid), Some(claims), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected four dot-separated parts"));
        };
        if version != VERSION {
            return Err(TokenError::Malformed("unsupported version"));
        }
        if !valid_kid(kid) {
            return Err(TokenError::Malformed("invalid key id"));
        }
        let KeyedMac(mac) = self
            .keys
            .get(kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac = mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        // Only signed bytes are decoded past this point.
        let json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: CallbackClaims = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("claims are not valid"))?;
        match claims.expires_at {
            Some(at) if chrono::Utc::now().timestamp() > at => Err(TokenError::Expired(at)),
            _ => Ok(claims),
        }
    }
}

/// `{public_base_url}/callbacks/{token}`, the URL handed to Captain Data.
pub fn callback_url(public_base_url: &str, token: &str) -> String {
    format!(
        "{}/callbacks/{token}",
        public_base_url.trim_end_matches('/')
    )
}

/// Parses `kid1:base64secret,kid2:base64secret` into key entries.
pub fn parse_key_material(text: &str) -> Result<Vec<(String, SecretSlice<u8>)>, KeyConfigError> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
    let mut keys = Vec::new();
    for (index, entry) in text
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let (kid, secret) = entry
            .split_once(':')
            .ok_or(KeyConfigError::NotAPair { index })?;
        let (kid, secret) = (kid.trim(), secret.trim());
        if !valid_kid(kid) {
            return Err(KeyConfigError::BadKid {
                index,
                kid: kid.to_owned(),
            });
        }
        let bytes = standard
            .decode(secret)
            .or_else(|_| url_safe.decode(secret))
            .map_err(|_| KeyConfigError::BadBase64 {
                kid: kid.to_owned(),
            })?;
        keys.push((kid.to_owned(), SecretSlice::from(bytes)));
    }
    if keys.is_empty() {
        return Err(KeyConfigError::Empty);
    }
    Ok(keys)
}

fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> SecretSlice<u8> {
        SecretSlice::from(vec![byte; 32])
    }

    fn keys(signing: &str) -> TokenKeys {
        TokenKeys::new(
            vec![("k1".into(), secret(1)), ("k2".into(), secret(2))],
            signing,
        )
        .unwrap()
    }

    fn claims() -> CallbackClaims {
        CallbackClaims {
            request_id: "orders-3-1042".into(),
            chunk: 2,
            expires_at: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_back_to_its_claims() {
        let keys = keys("k1");
        let token = keys.sign(&claims());
        assert!(token.starts_with("v1.k1."));
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(keys.verify(&token), Ok(claims()));
    }

    #[test]
    fn tampered_claims_or_signature_are_refused() {
        let keys = keys("k1");
        let token = keys.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let other = URL_SAFE_NO_PAD.encode(br#"{"r":"someone-else","c":2}"#);
        let forged_claims = format!("v1.k1.{other}.{}", parts[3]);
        assert_eq!(keys.verify(&forged_claims), Err(TokenError::BadSignature));
        let forged_mac = format!("v1.k1.{}.{}", parts[2], URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert_eq!(keys.verify(&forged_mac), Err(TokenError::BadSignature));
        // Claiming another key id does not help either.
        let relabelled = format!("v1.k2.{}.{}", parts[2], parts[3]);
        assert_eq!(keys.verify(&relabelled), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        let keys = keys("k1");
        for bad in [
            "",
            "abc",
            "v1.k1.x",
            "v2.k1.e30.AA",
            "v1.k!.e30.AA",
            "v1.k1.e30.%%",
        ] {
            assert!(
                matches!(keys.verify(bad), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            keys.verify(&"a".repeat(5000)),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn a_token_of_a_retired_key_is_refused_as_unknown() {
        let old = TokenKeys::new(vec![("old".into(), secret(9))], "old").unwrap();
        let token = old.sign(&claims());
        assert_eq!(
            keys("k1").verify(&token),
            Err(TokenError::UnknownKey("old".into()))
        );
    }

    #[test]
    fn after_rotation_tokens_of_the_previous_signing_key_still_verify() {
        let before = keys("k1");
        let token = before.sign(&claims());
        let after = keys("k2");
        assert_eq!(after.verify(&token), Ok(claims()));
        assert!(after.sign(&claims()).starts_with("v1.k2."));
    }

    #[test]
    fn key_material_parses_from_config_text() {
        let text = " k1:AAECAwQFBgcICQoLDA0ODxAREhM= , k2:AAECAwQFBgcICQoLDA0ODxAREhM ";
        let keys = TokenKeys::from_config(text, "k2").unwrap();
        assert_eq!(keys.signing_kid(), "k2");
        assert_eq!(keys.verify(&keys.sign(&claims())), Ok(claims()));
    }

    #[test]
    fn bad_key_material_is_refused_naming_the_entry_and_never_the_secret() {
        let short = TokenKeys::from_config("k1:AAEC", "k1").unwrap_err();
        assert_eq!(
            short,
            KeyConfigError::TooShort {
                kid: "k1".into(),
                len: 3
            }
        );
        let err = parse_key_material("k1:AAECAwQFBgcICQoLDA0ODxAREhM=,oops").unwrap_err();
        assert_eq!(err, KeyConfigError::NotAPair { index: 1 });
        let err = parse_key_material("k1:not base64!").unwrap_err();
        assert!(err.to_string().contains("k1") && !err.to_string().contains("not base64!"));
        assert_eq!(
            parse_key_material(" , ").unwrap_err(),
            KeyConfigError::Empty
        );
        let good = "k1:AAECAwQFBgcICQoLDA0ODxAREhM=";
        assert!(matches!(
            TokenKeys::from_config(good, "k9"),
            Err(KeyConfigError::UnknownSigningKey { .. })
        ));
        assert!(matches!(
            TokenKeys::from_config(&format!("{good},{good}"), "k1"),
            Err(KeyConfigError::Duplicate { .. })
        ));
    }

    #[test]
    fn the_debug_of_the_keys_shows_key_ids_only() {
        let dbg = format!("{:?}", keys("k1"));
        assert!(dbg.contains("k1") && dbg.contains("k2"));
        assert!(!dbg.contains("[1, 1"));
    }

    #[test]
    fn the_callback_url_joins_the_public_base_and_the_token() {
        assert_eq!(
            callback_url("https://b.example/", "v1.k.x.y"),
            "https://b.example/callbacks/v1.k.x.y"
        );
    }

    #[test]
    fn a_token_past_its_expiry_is_refused_and_one_without_expiry_never_expires() {
        let keys = keys("k1");
        let past = CallbackClaims {
            expires_at: Some(chrono::Utc::now().timestamp() - 1),
            ..claims()
        };
        assert!(matches!(
            keys.verify(&keys.sign(&past)),
            Err(TokenError::Expired(_))
        ));
        let future = CallbackClaims {
            expires_at: Some(chrono::Utc::now().timestamp() + 60),
            ..claims()
        };
        assert_eq!(keys.verify(&keys.sign(&future)), Ok(future));
        assert_eq!(keys.verify(&keys.sign(&claims())), Ok(claims()));
    }
}
