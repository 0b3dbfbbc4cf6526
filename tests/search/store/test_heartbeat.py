from __future__ import annotations

import pytest

from agesearch.search.errors import StorageError
from agesearch.search.store.study import HEARTBEAT_ENV, heartbeat_seconds, open_storage


def test_heartbeat_seconds_sets_the_interval_and_a_grace_of_three(monkeypatch, tmp_path):
    monkeypatch.setenv(HEARTBEAT_ENV, "4")
    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}")
    assert (storage.heartbeat_interval, storage.grace_period) == (4, 12)
    monkeypatch.delenv(HEARTBEAT_ENV)
    assert heartbeat_seconds() == 10


@pytest.mark.parametrize("raw", ["0", "-3", "ten", "1.5"])
def test_heartbeat_seconds_refuses_what_is_not_a_whole_positive_number(monkeypatch, raw):
    monkeypatch.setenv(HEARTBEAT_ENV, raw)
    with pytest.raises(StorageError, match=f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, not '{raw}'"):
        heartbeat_seconds()
