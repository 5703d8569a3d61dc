//! Avro launch records that cannot be decoded, each classified with a class and a reason so
//! the launch path can dead-letter it, and counted by class.

use crate::support::*;
use captain_bridge::avro::{Contract, LaunchDecodeError, RecordDecoder, RecordKind};
use captain_bridge::domain::RejectClass;
use captain_bridge::metrics::Metrics;
use serde_json::json;

fn launch_json() -> serde_json::Value {
    json!({
        "request_id": "r-hostile", "action": "linkedin-extract-people", "mode": "async",
        "inputs": ["{\"linkedin_profile_url\":\"https://x/in/a\"}"],
        "parameters": null, "identity_ids": null, "identity_mode": null, "schedule": null,
        "metadata": {"team": "growth"}
    })
}

async fn class_of(decoder: &RecordDecoder, payload: &[u8]) -> (RejectClass, String) {
    match decoder.decode_launch(payload, "fallback").await {
        Err(LaunchDecodeError::Rejected { rejection, .. }) => (rejection.class, rejection.message),
        other => panic!("not rejected: {other:?}"),
    }
}

#[tokio::test]
async fn each_undecodable_avro_launch_record_is_classified_precisely() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = settings(&url);
    let decoder = decoder(&settings, &metrics);
    let client = client(&settings, &metrics);
    let contract = Contract::get().unwrap().schema(RecordKind::LaunchRequest);
    let id = client
        .register(&unique("hostile.launch"), &contract.registration_text)
        .await
        .unwrap();
    let good = avro_record(id, &contract.schema, launch_json());
    decoder.decode_launch(&good, "fallback").await.unwrap();

    // Unknown schema id.
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&2_000_000_000u32.to_be_bytes());
    let (class, reason) = class_of(&decoder, &unknown).await;
    assert_eq!(class, RejectClass::UnknownSchemaId, "{reason}");
    assert!(reason.contains("2000000000"), "{reason}");
    // Asked once, then answered from memory while the id stays unknown.
    let (class, _) = class_of(&decoder, &unknown).await;
    assert_eq!(class, RejectClass::UnknownSchemaId);
    let fetches = metrics
        .registry_request_failures
        .with_label_values(&["schema_by_id", "not_found"])
        .get();
    assert_eq!(fetches, 1);

    // Truncated payload: inside the header, and inside the datum.
    assert_eq!(
        class_of(&decoder, &good[..3]).await.0,
        RejectClass::TruncatedPayload
    );
    let (class, reason) = class_of(&decoder, &good[..good.len() - 4]).await;
    assert_eq!(class, RejectClass::TruncatedPayload, "{reason}");

    // Wrong magic byte (Confluent's newer magic byte 1, or any binary that is not ours).
    let mut magic = good.clone();
    magic[0] = 1;
    let (class, reason) = class_of(&decoder, &magic).await;
    assert_eq!(class, RejectClass::WrongMagicByte, "{reason}");
    assert!(reason.contains("0x01"), "{reason}");

    // Not Avro after the magic byte: a union index the schema does not have (zigzag 5).
    let mut garbage = good[..5].to_vec();
    garbage.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff, 0x7f]);
    let (class, reason) = class_of(&decoder, &garbage).await;
    assert_eq!(class, RejectClass::MalformedAvro, "{reason}");
    // ... or a valid datum followed by bytes that belong to none.
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let (class, reason) = class_of(&decoder, &trailing).await;
    assert_eq!(class, RejectClass::MalformedAvro, "{reason}");
    assert!(reason.contains("4 bytes are left"), "{reason}");

    // A JSON text field that is not JSON.
    let mut bad_input = launch_json();
    bad_input["inputs"] = json!(["{\"ok\":1}", "not json"]);
    let record = avro_record(id, &contract.schema, bad_input);
    let (class, reason) = class_of(&decoder, &record).await;
    assert_eq!(class, RejectClass::InvalidJsonText, "{reason}");
    assert!(reason.starts_with("inputs[1]"), "{reason}");

    // Valid Avro that fails validation keeps its request_id and metadata for REJECTED.
    let mut empty = launch_json();
    empty["inputs"] = json!([]);
    match decoder
        .decode_launch(&avro_record(id, &contract.schema, empty), "fallback")
        .await
    {
        Err(LaunchDecodeError::Rejected { rejection, context }) => {
            assert_eq!(rejection.class, RejectClass::EmptyInputs);
            assert_eq!(context.request_id.as_deref(), Some("r-hostile"));
            assert_eq!(context.metadata["team"], "growth");
        }
        other => panic!("{other:?}"),
    }

    let counted = |class: &str| {
        metrics
            .avro_decode_errors
            .with_label_values(&["launch_requests", class])
            .get()
    };
    assert_eq!(counted("unknown_schema_id"), 2);
    assert_eq!(counted("truncated_payload"), 2);
    assert_eq!(counted("wrong_magic_byte"), 1);
    assert_eq!(counted("malformed_avro"), 2);
}

#[tokio::test]
async fn an_incompatible_writer_schema_is_classified_as_such() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = settings(&url);
    let decoder = decoder(&settings, &metrics);
    let client = client(&settings, &metrics);

    // The same record name with `action` an int: cannot be read as the bridge's string.
    let changed = r#"{"type":"record","name":"LaunchRequest","namespace":"dev.captainbridge","fields":[
        {"name":"action","type":"int"},
        {"name":"inputs","type":{"type":"array","items":"string"}}]}"#;
    let id = client
        .register(&unique("hostile.changed"), changed)
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(changed).unwrap();
    let record = avro_record(id, &schema, json!({"action": 3, "inputs": ["{}"]}));
    let (class, reason) = class_of(&decoder, &record).await;
    assert_eq!(class, RejectClass::IncompatibleSchema, "{reason}");
    assert!(reason.contains(&format!("schema id {id}")), "{reason}");

    // A required field the writer does not have and the reader cannot default (`inputs`;
    // `action` has a default since workflow requests may leave it out).
    let missing = r#"{"type":"record","name":"LaunchRequest","namespace":"dev.captainbridge","fields":[
        {"name":"action","type":"string"}]}"#;
    let id = client
        .register(&unique("hostile.missing"), missing)
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(missing).unwrap();
    let record = avro_record(id, &schema, json!({"action": "linkedin-search-people"}));
    assert_eq!(
        class_of(&decoder, &record).await.0,
        RejectClass::IncompatibleSchema
    );

    // Another record type altogether: a RunResult sent to the launch topic.
    let result = Contract::get().unwrap().schema(RecordKind::RunResult);
    let id = client
        .register(&unique("hostile.result"), &result.registration_text)
        .await
        .unwrap();
    let record = avro_record(
        id,
        &result.schema,
        json!({"result_id": "a:b:0", "request_id": "r", "run_uid": "a", "batch_uid": "b",
               "index": 0, "action": "x", "input": null, "custom_data": null,
               "result": "{}", "received_at": "2026-01-01T00:00:00Z", "metadata": {}}),
    );
    assert_eq!(
        class_of(&decoder, &record).await.0,
        RejectClass::IncompatibleSchema
    );

    // A schema id that is not an Avro schema.
    let response = reqwest::Client::new()
        .post(format!("{url}/subjects/{}/versions", unique("hostile.proto")))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(r#"{"schemaType":"PROTOBUF","schema":"syntax = \"proto3\";\nmessage A { string a = 1; }\n"}"#)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let proto: serde_json::Value = response.json().await.unwrap();
    let proto_id = u32::try_from(proto["id"].as_u64().unwrap()).unwrap();
    let mut record = vec![0];
    record.extend_from_slice(&proto_id.to_be_bytes());
    record.extend_from_slice(&[0x0a, 0x01, b'a']);
    let (class, reason) = class_of(&decoder, &record).await;
    assert_eq!(class, RejectClass::IncompatibleSchema, "{reason}");

    // A recursive writer schema whose extra field the reader would ignore: refused before
    // decoding, since its nesting depth is bounded only by the record's size.
    let recursive = r#"{"type":"record","name":"LaunchRequest","namespace":"dev.captainbridge","fields":[
        {"name":"action","type":"string"},
        {"name":"inputs","type":{"type":"array","items":"string"}},
        {"name":"chain","type":["null",{"type":"record","name":"Link","fields":[
            {"name":"next","type":["null","Link"],"default":null}]}],"default":null}]}"#;
    let id = client
        .register(&unique("hostile.recursive"), recursive)
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(recursive).unwrap();
    let record = avro_record(
        id,
        &schema,
        json!({"action": "a", "inputs": ["{}"], "chain": null}),
    );
    let (class, reason) = class_of(&decoder, &record).await;
    assert_eq!(class, RejectClass::IncompatibleSchema, "{reason}");
    assert!(reason.contains("recursive"), "{reason}");
}

#[tokio::test]
async fn an_avro_record_without_a_configured_registry_is_rejected_as_such() {
    let decoder = RecordDecoder::new(None, Metrics::new().unwrap()).unwrap();
    let record = [0, 0, 0, 0, 1, 0];
    let (class, reason) = class_of(&decoder, &record).await;
    assert_eq!(class, RejectClass::NoSchemaRegistry, "{reason}");
    // JSON keeps working with no registry at all.
    let request = decoder
        .decode_launch(
            br#"{"action":"linkedin-extract-people","inputs":[{"u":1}]}"#,
            "t-0-1",
        )
        .await
        .unwrap();
    assert_eq!(request.request_id, "t-0-1");
    assert_eq!(class_of(&decoder, b"{nope").await.0, RejectClass::NotJson);
}
