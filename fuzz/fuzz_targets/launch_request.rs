//! The launch request decoder (`domain::request::parse_json`), fed any bytes a producer can put
//! on the launch topic. It never panics; a request it accepts survives the trip through the
//! internal requests topic unchanged; strict JSON (duplicate keys refused) reads what it
//! accepts exactly as serde_json does.
#![no_main]

use captain_bridge::domain::request::{parse_json, RejectClass};
use captain_bridge::domain::{strict_json, RejectedContext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The best-effort context of a rejected record must never fail either.
    let _ = RejectedContext::from_bytes(data);
    match parse_json(data, "fuzz-0-0") {
        Ok(request) => {
            let forwarded = serde_json::to_vec(&request).expect("a request serializes");
            let again = parse_json(&forwarded, "another-0-0")
                .unwrap_or_else(|r| panic!("a forwarded request is refused: {r}"));
            assert_eq!(again, request, "the requests topic changes the request");
        }
        Err(rejection) => {
            assert!(!rejection.message.is_empty(), "a rejection says why");
            if rejection.class == RejectClass::DuplicateKey {
                assert!(rejection.message.contains("is given twice"), "{rejection}");
            }
        }
    }
    if let Ok(strict) = strict_json::from_slice(data) {
        let loose: serde_json::Value =
            serde_json::from_slice(data).expect("what strict JSON accepts is JSON");
        assert_eq!(strict, loose, "strict JSON reads a value differently");
    }
});
