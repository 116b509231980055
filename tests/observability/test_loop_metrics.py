"""Loop metrics expose exactly what prometheus_client's own families expose for the same writes."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from workflow_engine.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 2.5, 30.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    # Creation times differ between the two registries; everything else must be equal.
    return sorted(re.sub(r"^(\S+_created\{.*\}) .*$", r"\1 T", line) for line in text.splitlines())


def _write(counter: Counter | LoopCounter, gauge: Gauge | LoopGauge, histogram: Histogram | LoopHistogram) -> None:
    counter.labels("w", "success").inc()
    counter.labels("w", "success").inc(2.5)
    counter.labels("w", "error").inc()
    counter.labels("v", "success").inc(0)
    gauge.labels("w").inc()
    gauge.labels("w").inc(3)
    gauge.labels("w").dec()
    gauge.labels("x").set(7)
    gauge.labels("gone").set(1)
    gauge.remove("gone")
    for amount in (0.0, 0.001, 0.0011, 0.05, 0.1, 2.5, 29.9, 30.0, 31.0, 1e9, -1.0):
        histogram.labels("w").observe(amount)
    histogram.labels("idle")


def test_loop_families_expose_the_same_samples_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _write(Counter("runs_total", "Runs.", ["workflow_type", "status"], registry=theirs),
           Gauge("active", "Active.", ["workflow_type"], registry=theirs),
           Histogram("took_seconds", "Took.", ["workflow_type"], buckets=BUCKETS, registry=theirs))
    _write(LoopCounter("runs_total", "Runs.", ["workflow_type", "status"], registry=ours),
           LoopGauge("active", "Active.", ["workflow_type"], registry=ours),
           LoopHistogram("took_seconds", "Took.", ["workflow_type"], buckets=BUCKETS, registry=ours))

    assert _exposition(ours) == _exposition(theirs)
    assert ours.get_sample_value("runs_total", {"workflow_type": "w", "status": "success"}) == 3.5
    assert ours.get_sample_value("took_seconds_bucket", {"workflow_type": "w", "le": "0.001"}) == 3
    assert ours.get_sample_value("took_seconds_count", {"workflow_type": "w"}) == 11


def test_a_loop_family_refuses_wrong_use() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("runs_total", "Runs.", ["workflow_type"], registry=registry)
    with pytest.raises(ValueError, match="counters only go up"):
        counter.labels("w").inc(-1)
    with pytest.raises(ValueError, match="2 label values for labels"):
        counter.labels("w", "x")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopCounter("runs_total", "Again.", ["workflow_type"], registry=registry)
    with pytest.raises(ValueError, match="buckets must be increasing"):
        LoopHistogram("h", "H.", ["a"], buckets=(1.0, 0.5))
