//! The callback token parser (`token::TokenKeys::verify`) and the key material parser
//! (`token::parse_key_material`). The first byte picks what the rest is:
//! - 0: a token as it arrives in a URL path: never a panic, never accepted unless signed;
//! - 1: claims bytes, signed here with the verifying key as a token would be: what verifies
//!   re-signs to a token that verifies to the same claims (the part behind the signature);
//! - 2: `CAPTAIN_BRIDGE_CALLBACK_KEYS` text: never a panic.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use captain_bridge::token::{parse_key_material, TokenKeys};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretSlice;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

fn keys() -> TokenKeys {
    TokenKeys::new(
        vec![("k1".into(), SecretSlice::from(SECRET.to_vec()))],
        "k1",
    )
    .expect("fuzz keys")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(claims) = keys().verify(&text) {
                // Only a MAC under SECRET verifies: the fuzzer cannot forge one by chance.
                assert_eq!(keys().verify(&keys().sign(&claims)), Ok(claims));
            }
        }
        1 => {
            let signed = format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(rest));
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
            mac.update(signed.as_bytes());
            let token = format!(
                "{signed}.{}",
                URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
            );
            if let Ok(claims) = keys().verify(&token) {
                assert_eq!(keys().verify(&keys().sign(&claims)), Ok(claims));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(material) = parse_key_material(&text) {
                if let Some((kid, _)) = material.first() {
                    let kid = kid.clone();
                    let _ = TokenKeys::new(material, &kid);
                }
            }
            let _ = TokenKeys::from_config(&text, "k1");
        }
    }
});
