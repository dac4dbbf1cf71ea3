import pytest

from tests.contract import BackendContract


class TestMemoryContract(BackendContract):
    @pytest.fixture
    def url(self, memory_url: str) -> str:
        return memory_url + "?partitions=2"
