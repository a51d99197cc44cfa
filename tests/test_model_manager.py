"""ModelManager: lazy load, reference counting, idle unload never mid-use, load failure and recovery.

The loader here is a test double (``FakeModel``); the app and end-to-end tests run the real engine.
"""

from __future__ import annotations

import threading
import time
import weakref

import pytest
import torch

from serve.model_manager import ModelManager, ModelState, ModelUnavailable, gpu_memory_bytes


class FakeModel:
    """Test double for an engine: records whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def make(idle_timeout: float, fail_times: int = 0, load_seconds: float = 0.0):  # type: ignore[no-untyped-def]
    calls = {"loads": 0, "failures": fail_times}

    def loader() -> FakeModel:
        time.sleep(load_seconds)
        if calls["failures"]:
            calls["failures"] -= 1
            raise RuntimeError("CUDA out of memory (simulated)")
        calls["loads"] += 1
        return FakeModel()

    manager = ModelManager(loader, unloader=FakeModel.close, idle_timeout=idle_timeout)
    return manager, calls


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_loads_lazily_on_first_use() -> None:
    manager, calls = make(idle_timeout=-1)
    assert manager.state is ModelState.UNLOADED and calls["loads"] == 0
    with manager.use() as model:
        assert isinstance(model, FakeModel) and manager.loaded and manager.users == 1
    with manager.use() as again:
        assert again is model
    assert calls["loads"] == 1 and manager.users == 0


def test_idle_timer_unloads_after_the_last_user() -> None:
    manager, _ = make(idle_timeout=0.2)
    with manager.use() as model:
        pass
    assert manager.loaded
    assert wait_for(lambda: not manager.loaded)
    assert model.closed and manager.unload_count == 1


def test_never_unloaded_while_in_use() -> None:
    manager, calls = make(idle_timeout=0.05)
    with manager.use() as model:
        time.sleep(0.4)  # far longer than the idle timeout
        assert manager.loaded and not model.closed
        with manager.use():
            pass  # a second, nested user finishing must not unload under the first
        time.sleep(0.2)
        assert manager.loaded and not model.closed
    assert wait_for(lambda: not manager.loaded)
    assert calls["loads"] == 1


def test_use_during_countdown_cancels_the_unload() -> None:
    manager, calls = make(idle_timeout=0.3)
    with manager.use():
        pass
    time.sleep(0.15)
    with manager.use():
        time.sleep(0.3)
        assert manager.loaded
    assert calls["loads"] == 1


def test_zero_timeout_unloads_right_after_each_use() -> None:
    manager, calls = make(idle_timeout=0)
    for _ in range(3):
        with manager.use():
            assert manager.loaded
        assert not manager.loaded
    assert calls["loads"] == 3 and manager.unload_count == 3


def test_negative_timeout_never_unloads() -> None:
    manager, _ = make(idle_timeout=-1)
    with manager.use():
        pass
    time.sleep(0.2)
    assert manager.loaded


def test_reload_after_unload() -> None:
    manager, calls = make(idle_timeout=0.05)
    with manager.use() as first:
        pass
    assert wait_for(lambda: not manager.loaded)
    with manager.use() as second:
        assert second is not first and not second.closed
    assert calls["loads"] == 2


def test_load_failure_is_reported_then_retried() -> None:
    manager, calls = make(idle_timeout=-1, fail_times=1)
    with pytest.raises(ModelUnavailable, match="out of memory"), manager.use():
        pass
    assert manager.users == 0 and manager.state is ModelState.UNLOADED
    assert "out of memory" in (manager.last_error or "")
    with manager.use():
        assert manager.loaded
    assert calls["loads"] == 1 and manager.last_error is None


def test_concurrent_first_users_share_one_load() -> None:
    manager, calls = make(idle_timeout=-1, load_seconds=0.2)
    seen = []

    def user() -> None:
        with manager.use() as model:
            seen.append(model)

    threads = [threading.Thread(target=user) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["loads"] == 1 and len({id(m) for m in seen}) == 1 and manager.users == 0


def test_state_is_loading_during_a_slow_load() -> None:
    manager, _ = make(idle_timeout=-1, load_seconds=0.3)
    thread = threading.Thread(target=manager.preload)
    thread.start()
    assert wait_for(lambda: manager.state is ModelState.LOADING, 1.0)
    thread.join()
    assert manager.state is ModelState.LOADED


def test_unload_refuses_while_in_use_and_close_refuses_new_users() -> None:
    manager, _ = make(idle_timeout=-1)
    with manager.use():
        assert manager.unload() is False
    manager.close()
    assert not manager.loaded
    with pytest.raises(ModelUnavailable), manager.use():
        pass


def test_unload_frees_the_model_object() -> None:
    import gc
    import weakref

    manager, _ = make(idle_timeout=-1)
    with manager.use() as model:
        ref = weakref.ref(model)
    del model
    assert manager.unload()
    gc.collect()
    assert ref() is None


def test_gpu_memory_is_read_on_the_device_the_setting_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # Test doubles for a machine with two GPUs in use: 1 GiB on the current one (0), 3 GiB on cuda:1.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    held = {None: 1 << 30, 0: 1 << 30, 1: 3 << 30}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index=None: held[index])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: 2 * held[index])
    assert gpu_memory_bytes("cuda:1") == (3 << 30, 6 << 30)
    assert gpu_memory_bytes("auto") == gpu_memory_bytes("cuda") == (1 << 30, 2 << 30)
    assert gpu_memory_bytes("cpu") == (0.0, 0.0)


def test_a_failed_load_frees_its_partial_model_before_the_memory_is_given_back(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import serve.model_manager as model_manager

    partial: list[weakref.ref] = []
    freed_when_emptied: list[bool] = []

    def loader() -> object:
        weights = torch.zeros(1024)  # what a load that fails half-way has put in memory
        partial.append(weakref.ref(weights))
        raise RuntimeError("CUDA out of memory (simulated)")

    def free_accelerator_memory() -> None:
        freed_when_emptied.append(partial[0]() is None)

    monkeypatch.setattr(model_manager, "free_accelerator_memory", free_accelerator_memory)
    manager = ModelManager(loader, idle_timeout=-1)
    with pytest.raises(ModelUnavailable) as caught, manager.use():
        pass
    assert freed_when_emptied == [True]  # the memory was given back with nothing of the load left
    assert partial[0]() is None  # and the exception the caller holds keeps none of it alive
    assert caught.value.__cause__ is None and caught.value.__context__ is None
