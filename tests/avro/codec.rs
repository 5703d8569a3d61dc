//! Round trips through the registry: what the encoder writes, the decoder (and the registry's
//! own subjects) read back; JSON and Avro through the same entry point; the registration modes.

use crate::support::*;
use crate::{run_result, status_event};
use captain_bridge::avro::{
    Contract, EncodeError, Format, OutputFormats, RecordEncoder, RecordKind, RegistryError,
    SubjectNameStrategy,
};
use captain_bridge::metrics::Metrics;
use serde_json::json;

#[tokio::test]
async fn output_records_encoded_in_avro_decode_to_their_json_form() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = settings(&url);
    let topics = topics("codec.roundtrip");
    let encoder = avro_encoder(&settings, &topics, &metrics);
    let decoder = decoder(&settings, &metrics);

    let event = status_event("r-roundtrip");
    let result = run_result("r-roundtrip", 7);
    let status_bytes = encoder.encode_status(&event).await.unwrap();
    let result_bytes = encoder.encode_result(&result).await.unwrap();
    assert_eq!(status_bytes[0], 0, "magic byte");
    assert_ne!(
        status_bytes[1..5],
        result_bytes[1..5],
        "one schema id per record type"
    );

    let status = decoder
        .decode(RecordKind::RunStatusEvent, "run_status", &status_bytes)
        .await
        .unwrap();
    assert_eq!(status, serde_json::to_value(&event).unwrap());
    let decoded = decoder
        .decode(RecordKind::RunResult, "run_results", &result_bytes)
        .await
        .unwrap();
    assert_eq!(decoded, serde_json::to_value(&result).unwrap());

    // TopicNameStrategy: the subjects are the topics' value subjects.
    let subjects = subjects(&url).await;
    for topic in [&topics.run_status, &topics.run_results] {
        assert!(subjects.contains(&format!("{topic}-value")), "{subjects:?}");
    }
    let registered = metrics
        .registry_request_duration
        .with_label_values(&["register"])
        .get_sample_count();
    assert_eq!(
        registered, 2,
        "one registration per topic, then the cached id"
    );
}

#[tokio::test]
async fn record_name_strategy_registers_under_the_record_name_once_for_every_topic() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = captain_bridge::avro::SchemaRegistrySettings {
        subject_name_strategy: SubjectNameStrategy::RecordName,
        ..settings(&url)
    };
    let first = avro_encoder(&settings, &topics("codec.record-a"), &metrics);
    let second = avro_encoder(&settings, &topics("codec.record-b"), &metrics);
    let a = first.encode_result(&run_result("r", 0)).await.unwrap();
    let b = second.encode_result(&run_result("r", 0)).await.unwrap();
    assert_eq!(a, b, "same subject, same schema, same id");
    assert!(subjects(&url)
        .await
        .contains(&"dev.captainbridge.RunResult".to_owned()));
}

#[tokio::test]
async fn a_launch_request_in_json_and_in_avro_decode_through_the_same_entry_point() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = settings(&url);
    let decoder = decoder(&settings, &metrics);
    let client = client(&settings, &metrics);
    let contract = Contract::get().unwrap().schema(RecordKind::LaunchRequest);
    let id = client
        .register(&unique("codec.launch"), &contract.registration_text)
        .await
        .unwrap();

    let json_request = json!({
        "request_id": "r-same", "action": "linkedin-extract-people", "mode": "schedule",
        "inputs": [{"linkedin_profile_url": "https://x/in/a", "custom_data": {"crm": "1"}}],
        "parameters": {"skills": true}, "identity_mode": "managed",
        "schedule": {"cron": "*/5 * * * *", "schedule_at": null, "timezone": "Europe/Paris"},
        "metadata": {"team": "growth"}
    });
    let avro = avro_record(
        id,
        &contract.schema,
        json!({
            "request_id": "r-same", "action": "linkedin-extract-people", "mode": "schedule",
            "inputs": ["{\"linkedin_profile_url\":\"https://x/in/a\",\"custom_data\":{\"crm\":\"1\"}}"],
            "parameters": "{\"skills\":true}", "identity_ids": null, "identity_mode": "managed",
            "schedule": {"cron": "*/5 * * * *", "schedule_at": null, "timezone": "Europe/Paris"},
            "metadata": {"team": "growth"}
        }),
    );
    let from_json = decoder
        .decode_launch(json_request.to_string().as_bytes(), "fallback")
        .await
        .unwrap();
    let from_avro = decoder.decode_launch(&avro, "fallback").await.unwrap();
    assert_eq!(from_json, from_avro);
    assert_eq!(from_avro.request_id, "r-same");
    assert_eq!(from_avro.inputs[0]["custom_data"]["crm"], "1");
}

#[tokio::test]
async fn a_writer_schema_of_an_older_shape_is_resolved_to_the_bridges_schema() {
    // A producer on an earlier LaunchRequest: no identity fields, no schedule, an extra field
    // the bridge does not know. Resolution drops the extra field and fills the defaults.
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let settings = settings(&url);
    let decoder = decoder(&settings, &metrics);
    let older = r#"{"type":"record","name":"LaunchRequest","namespace":"dev.captainbridge","fields":[
        {"name":"action","type":"string"},
        {"name":"inputs","type":{"type":"array","items":"string"}},
        {"name":"priority","type":"int"},
        {"name":"request_id","type":["null","string"],"default":null}]}"#;
    let id = client(&settings, &metrics)
        .register(&unique("codec.older"), older)
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(older).unwrap();
    let record = avro_record(
        id,
        &schema,
        json!({"action": "linkedin-extract-people", "inputs": ["{\"u\":1}"], "priority": 3, "request_id": null}),
    );
    let request = decoder.decode_launch(&record, "topic-0-42").await.unwrap();
    assert_eq!(
        request.request_id, "topic-0-42",
        "no request_id: the fallback"
    );
    assert_eq!(request.inputs, vec![json!({"u": 1})]);
    assert!(request.metadata.is_empty() && request.identity_mode.is_none());

    let control = client(&settings, &metrics)
        .register(
            &unique("codec.control"),
            &Contract::get()
                .unwrap()
                .schema(RecordKind::ControlCommand)
                .registration_text,
        )
        .await
        .unwrap();
    let command = avro_record(
        control,
        &Contract::get()
            .unwrap()
            .schema(RecordKind::ControlCommand)
            .schema,
        json!({"command_id": "c1", "command": "pause_schedule", "request_id": "r1",
               "run_uid": null, "schedule_uid": "s1", "reason": null}),
    );
    assert_eq!(
        decoder.decode_control(&command).await.unwrap(),
        json!({"command_id": "c1", "command": "pause_schedule", "request_id": "r1",
               "run_uid": null, "schedule_uid": "s1", "reason": null})
    );
}

#[tokio::test]
async fn without_auto_register_the_schema_must_already_be_registered() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let lookup = captain_bridge::avro::SchemaRegistrySettings {
        auto_register: false,
        ..settings(&url)
    };
    let topics = topics("codec.lookup");
    let encoder = avro_encoder(&lookup, &topics, &metrics);
    let err = encoder
        .encode_result(&run_result("r", 0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::Registry(RegistryError::Refused { status: 404, .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_retriable());
    assert!(
        !subjects(&url)
            .await
            .contains(&format!("{}-value", topics.run_results)),
        "a lookup never registers"
    );

    let text = &Contract::get()
        .unwrap()
        .schema(RecordKind::RunResult)
        .registration_text;
    let id = client(&lookup, &metrics)
        .register(&format!("{}-value", topics.run_results), text)
        .await
        .unwrap();
    // A fresh encoder: the first one holds its failure for a moment, by design.
    let encoder = avro_encoder(&lookup, &topics, &metrics);
    let bytes = encoder.encode_result(&run_result("r", 0)).await.unwrap();
    assert_eq!(bytes[1..5], id.to_be_bytes());
}

#[tokio::test]
async fn use_latest_version_writes_with_the_subjects_latest_schema() {
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let topics = topics("codec.latest");
    let subject = format!("{}-value", topics.run_results);
    // A later version of RunResult, registered by someone else: one more field, defaulted.
    let mut later: serde_json::Value = serde_json::from_str(RecordKind::RunResult.avsc()).unwrap();
    later["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "source_region", "type": "string", "default": "eu"}));
    let latest_id = client(&settings(&url), &metrics)
        .register(&subject, &later.to_string())
        .await
        .unwrap();

    let settings = captain_bridge::avro::SchemaRegistrySettings {
        auto_register: false,
        use_latest_version: true,
        ..settings(&url)
    };
    let formats = OutputFormats {
        run_results: Format::Avro,
        ..OutputFormats::default()
    };
    let encoder = RecordEncoder::new(
        &formats,
        &topics,
        &settings,
        Some(client(&settings, &metrics)),
        metrics.clone(),
    )
    .unwrap();
    encoder.warm_up().await.unwrap();
    let result = run_result("r-latest", 1);
    let bytes = encoder.encode_result(&result).await.unwrap();
    assert_eq!(bytes[1..5], latest_id.to_be_bytes());

    // The run_status topic stayed JSON.
    let status = encoder
        .encode_status(&status_event("r-latest"))
        .await
        .unwrap();
    assert_eq!(status[0], b'{');

    let decoded = decoder(&settings, &metrics)
        .decode(RecordKind::RunResult, "run_results", &bytes)
        .await
        .unwrap();
    assert_eq!(decoded, serde_json::to_value(&result).unwrap());
}
