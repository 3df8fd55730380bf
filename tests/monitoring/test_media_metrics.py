"""The media gauges: stored images and their bytes, on a real server's /metrics."""

from __future__ import annotations

from collections.abc import Callable

from core.config import Settings
from tests.conftest import LiveServer
from tests.core.media.stored import store_message
from tests.monitoring.test_counters_metrics import scrape


def test_media_gauges_count_the_stored_images(
    settings: Settings, live_server_factory: Callable[..., LiveServer]
) -> None:
    paths = store_message(settings, "local:a", images=2, seed=1)
    paths += store_message(settings, "tg:5", seed=2)
    size = sum((settings.media_dir / p).stat().st_size for p in paths)
    server = live_server_factory(settings)
    samples = scrape(server)
    assert samples[("vigil_media_files", ())] == 3
    assert samples[("vigil_media_bytes", ())] == size > 0
