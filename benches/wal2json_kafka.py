#!/usr/bin/env python3
"""The naive peer of pgbridge's Kafka sink in the end-to-end bench
(benches/pipeline/, part `kafka`): `pg_recvlogical --plugin wal2json`
(format-version 2, one JSON object per change) piped into this script,
which produces every change, line by line, to one topic with
confluent-kafka (librdkafka), acks=all and idempotence as pgbridge's
producer. Exits after stdin ends and every record
has a delivery report; exit 1 when any record failed.

    pg_recvlogical ... -o format-version=2 -o include-pk=1 -f - \
      | python3 wal2json_kafka.py BROKERS TOPIC

Key: the primary-key columns as a JSON object; value: the wal2json line.
Needs the PyPI package confluent-kafka (scripts/bench.sh makes a venv).
"""

import json
import sys

from confluent_kafka import Producer


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    brokers, topic = sys.argv[1], sys.argv[2]
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 10,
            "compression.type": "lz4",
        }
    )
    produced = 0
    for line in sys.stdin.buffer:
        change = json.loads(line)
        action = change.get("action")
        if action not in ("I", "U", "D"):
            continue  # B(egin), C(ommit), M(essage), T(runcate)
        pk = {c["name"] for c in change.get("pk", [])}
        row = change.get("identity") if action == "D" else change.get("columns")
        key = json.dumps({c["name"]: c["value"] for c in row or [] if c["name"] in pk})
        while True:
            try:
                producer.produce(topic, key=key, value=line.rstrip(b"\n"), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)  # queue full: wait for delivery reports
        produced += 1
        if produced % 1000 == 0:
            producer.poll(0)
    left = producer.flush(300)
    print(f"produced {produced} records, {left} undelivered, {len(failed)} failed", file=sys.stderr)
    if failed:
        print(f"first failure: {failed[0]}", file=sys.stderr)
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
