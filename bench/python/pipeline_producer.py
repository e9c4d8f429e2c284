# The Kafka producer of the bridge bench's shell-pipeline baseline (`bench bridge`,
# scenario `shell`): `mosquitto_sub -q 1 -F '%t %x' | python pipeline_producer.py ...`.
# Reads "<mqtt topic> <hex payload>" lines on stdin and produces each payload with
# confluent-kafka, keyed by the topic's device, with the librdkafka settings the bench
# passes (the bridge's own). Prints one line, "delivered=N failed=F done_ms=T", once
# `expected` data records (warm-up frames aside) are confirmed, then drains stdin until
# EOF so the bench can read its CPU time before it exits.
#
# Usage: python pipeline_producer.py BROKERS TOPIC EXPECTED SETTINGS_JSON

import json, sys, time
from confluent_kafka import Producer

brokers, topic, expected, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
settings["bootstrap.servers"] = brokers
producer = Producer(settings)
delivered = failed = 0

def report(err, _msg):
    global delivered, failed
    if err is None:
        delivered += 1
    else:
        failed += 1

data = 0
for line in sys.stdin:
    mqtt_topic, _, hex_payload = line.rstrip("\n").partition(" ")
    device = mqtt_topic.split("/")[3]
    while True:
        try:
            producer.produce(topic, bytes.fromhex(hex_payload), key=device, on_delivery=report)
            break
        except BufferError:
            producer.poll(0.005)
    producer.poll(0)
    if device != "warm-up":
        data += 1
        if data == expected:
            break
producer.flush()
print(f"delivered={delivered} failed={failed} done_ms={int(time.time() * 1000)}", flush=True)
for _ in sys.stdin:
    pass
