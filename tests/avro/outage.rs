//! A registry that goes away: known ids keep working, anything that needs the registry fails
//! with an error that says "retry later" (never "this record is bad"), and it all works again
//! once the registry is back. This registry is reached over https, with a CA of its own.

use crate::run_result;
use crate::support::*;
use captain_bridge::avro::{Contract, LaunchDecodeError, RecordKind};
use captain_bridge::metrics::Metrics;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_stopped_registry_is_a_retriable_error_and_a_restarted_one_works_again() {
    let registry = OwnRegistry::start("outage");
    let metrics = Metrics::new().unwrap();
    // Without the private CA the registry's certificate is not trusted.
    let untrusted = client(&settings(&registry.tls_url), &metrics)
        .latest_id("any-value")
        .await
        .unwrap_err();
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");
    let settings = captain_bridge::avro::SchemaRegistrySettings {
        ca_file: Some(registry.ca_file.clone()),
        ..settings(&registry.tls_url)
    };
    let topics = topics("outage");
    let contract = Contract::get().unwrap().schema(RecordKind::LaunchRequest);
    let launch = |id: u32| {
        avro_record(
            id,
            &contract.schema,
            json!({"request_id": "r-outage", "action": "linkedin-extract-people", "mode": null,
                   "inputs": ["{\"u\":1}"], "parameters": null, "identity_ids": null,
                   "identity_mode": null, "schedule": null, "metadata": {}}),
        )
    };

    let warm = avro_encoder(&settings, &topics, &metrics);
    warm.encode_result(&run_result("r", 0)).await.unwrap();
    let id = client(&settings, &metrics)
        .register(&unique("outage.launch"), &contract.registration_text)
        .await
        .unwrap();
    let warm_decoder = decoder(&settings, &metrics);
    warm_decoder.decode_launch(&launch(id), "f").await.unwrap();

    registry.stop();

    // Ids already known need no registry.
    warm.encode_result(&run_result("r", 1)).await.unwrap();
    warm_decoder.decode_launch(&launch(id), "f").await.unwrap();

    // Everything else says: retry later.
    let cold = avro_encoder(&settings, &topics, &metrics);
    let err = cold.encode_result(&run_result("r", 2)).await.unwrap_err();
    assert!(err.is_retriable(), "{err:?}");
    assert_eq!(err.class(), "registry_unavailable");
    let cold_decoder = decoder(&settings, &metrics);
    match cold_decoder.decode_launch(&launch(id), "f").await {
        Err(LaunchDecodeError::Registry(e)) => assert!(e.is_retriable(), "{e:?}"),
        other => panic!("expected a retriable registry error, got {other:?}"),
    }
    assert!(
        metrics
            .registry_request_failures
            .with_label_values(&["register", "registry_unavailable"])
            .get()
            >= 1
    );
    assert!(
        metrics
            .avro_encode_errors
            .with_label_values(&["run_results", "registry_unavailable"])
            .get()
            >= 1
    );

    registry.restart();

    // The same encoder goes through once the registry answers again (the in-memory registry
    // starts empty: the schema is registered anew).
    let bytes = eventually(Duration::from_secs(30), "encode after restart", || async {
        cold.encode_result(&run_result("r", 2)).await.ok()
    })
    .await;
    assert_eq!(bytes[0], 0);
    let id = client(&settings, &metrics)
        .register(&unique("outage.launch"), &contract.registration_text)
        .await
        .unwrap();
    let request = eventually(Duration::from_secs(30), "decode after restart", || async {
        cold_decoder.decode_launch(&launch(id), "f").await.ok()
    })
    .await;
    assert_eq!(request.request_id, "r-outage");
}
