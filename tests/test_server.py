"""gunicorn settings: one process for the one model, threads for concurrency, graceful shutdown."""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from serve.config import Settings
from serve.server import gunicorn_options


def test_one_worker_with_threads_and_no_recycling() -> None:
    options = gunicorn_options(Settings(host="0.0.0.0", port=5000, threads=12, graceful_timeout=90.5))
    assert options["workers"] == 1 and options["threads"] == 12
    assert issubclass(options["worker_class"], ThreadWorker)  # gthread, fed whole requests by serve.intake
    assert options["bind"] == "0.0.0.0:5000"
    assert options["max_requests"] == 0 and options["preload_app"] is False
    assert options["graceful_timeout"] == 91
    assert options["control_socket_disable"] is True
    assert callable(options["worker_exit"])


def test_threads_cover_a_full_queue_of_waiting_clients() -> None:
    assert gunicorn_options(Settings(queue_depth=32))["threads"] == 96  # 32 waiting + 32 running + 32
    assert gunicorn_options(Settings(queue_depth=100, concurrent_jobs=2))["threads"] == 134
    assert gunicorn_options(Settings(queue_depth=32, role="api", redis_url="redis://localhost"))["threads"] == 96
    assert gunicorn_options(Settings(queue_depth=32, threads=8))["threads"] == 8


def test_ipv6_hosts_are_bracketed() -> None:
    assert gunicorn_options(Settings(host="::", port=8080))["bind"] == "[::]:8080"


def test_a_server_open_to_the_network_without_a_key_is_warned_about() -> None:
    from serve.server import open_to_the_network_warning

    assert "without an API key" in open_to_the_network_warning(Settings(host="0.0.0.0"))
    assert open_to_the_network_warning(Settings(host="0.0.0.0", api_key="k")) is None
    assert open_to_the_network_warning(Settings(host="0.0.0.0", admin_key="k")) is None  # admin keys count too
    for loopback in ("127.0.0.1", "::1", "localhost"):
        assert open_to_the_network_warning(Settings(host=loopback)) is None
