"""Settings every broker module has; each module's config model extends `BrokerConfig`."""

from __future__ import annotations

from pydantic import Field

from workflow_engine.config.models import Strict
from workflow_engine.durations import Duration


class BrokerConfig(Strict):
    """Settings every broker module has (each module's config model extends this)."""

    publish_timeout: Duration = Field(10.0, gt=0, description="How long a publish keeps retrying while the "
                                      "broker is unreachable before the step fails.")
    operation_timeout: Duration = Field(5.0, gt=0, description="Deadline of one broker round trip (publish, "
                                        "ack, fetch beyond its wait, ping).")
    health_interval: Duration = Field(2.0, gt=0, description="How often the connection is checked while idle.")
    reconnect_initial: Duration = Field(0.2, gt=0, description="First delay between reconnect attempts.")
    reconnect_max: Duration = Field(10.0, gt=0, description="Largest delay between reconnect attempts (capped "
                                    "exponential backoff with jitter).")
    backlog_interval: Duration = Field(5.0, gt=0, description="How often `broker_backlog` is refreshed for "
                                       "each open consumer.")
    fetch_wait: Duration = Field(1.0, gt=0, description="Longest wait of one fetch for new messages.")
