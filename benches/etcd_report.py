"""Formats loadgen's JSON lines (floor first, then coordinator/etcd pairs) as the BENCHMARKS.md table."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
floor, runs = rows[0], rows[1:]
print()
print("| clients | coordinator writes/s | p50 / p99 ms | etcd writes/s | p50 / p99 ms | throughput ratio | p99 ratio (coord / etcd) |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for c, e in zip(runs[0::2], runs[1::2]):
    print(
        "| {} | {:,.0f} | {:.2f} / {:.2f} | {:,.0f} | {:.2f} / {:.2f} | {:.2f}x | {:.2f} |".format(
            c["clients"], c["writes_per_sec"], c["p50_ms"], c["p99_ms"], e["writes_per_sec"], e["p50_ms"], e["p99_ms"],
            c["writes_per_sec"] / e["writes_per_sec"], c["p99_ms"] / e["p99_ms"],
        )
    )
print()
print(
    "value size {} bytes; loopback RTT p50 {:.3f} ms; write+fdatasync p50 {:.3f} ms".format(
        runs[0]["value_bytes"], floor["loopback_rtt_ms"], floor["fdatasync_ms"]
    )
)
