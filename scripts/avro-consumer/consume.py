"""A downstream consumer that is not the bridge: Confluent's own Python client reads Avro
records from a topic with its AvroDeserializer (writer schema fetched from the registry by the
id in each record) and prints each record as one JSON line:
{"key": "...", "schema_id": N, "value": {...}}. Exits 1 if fewer than --count records arrive
within --timeout seconds, or on any consumer or deserialization error."""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": args.registry}))
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"avro-downstream-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    deadline = time.monotonic() + args.timeout
    try:
        while seen < args.count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                print(f"consumer error: {msg.error()}", file=sys.stderr)
                return 1
            raw = msg.value()
            value = deserializer(raw, SerializationContext(msg.topic(), MessageField.VALUE))
            line = {
                "key": msg.key().decode() if msg.key() is not None else None,
                "schema_id": int.from_bytes(raw[1:5], "big"),
                "value": value,
            }
            print(json.dumps(line), flush=True)
            seen += 1
    finally:
        consumer.close()
    if seen < args.count:
        print(f"only {seen} of {args.count} records within {args.timeout}s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
