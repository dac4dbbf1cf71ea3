"""The Backend contract on the real brokers (the memory run is in tests/unit)."""

import pytest

from tests.contract import BackendContract

from .helpers import FAST_GROUP


@pytest.mark.kafka
@pytest.mark.timeout(180)
class TestKafkaContract(BackendContract):
    settings = {"kafka": FAST_GROUP, "revoke_timeout": 3}
    fences_commits_per_partition = False

    @pytest.fixture
    def url(self, kafka_bootstrap: str) -> str:
        return f"kafka://{kafka_bootstrap}"


@pytest.mark.redis
@pytest.mark.timeout(120)
class TestRedisContract(BackendContract):
    settings = {"lease_ttl": 3}

    @pytest.fixture
    def url(self, redis_url: str) -> str:
        return redis_url
