"""Model lifecycle: lazy load, reference counting, idle unload, memory figures.

The manager knows nothing about what a request is. Users hold the model with ``with manager.use()``;
the idle timer is armed only when the last user lets go, so the model is never unloaded while anything
still uses it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelState(StrEnum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"


class ModelUnavailable(Exception):
    """Loading the model failed; the reason is user-facing. The next use tries again."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def free_accelerator_memory() -> None:
    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the engine
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_available() -> bool:
    """Whether this process can use a CUDA GPU (torch imported here, where a model is loaded anyway)."""
    import torch

    return torch.cuda.is_available()


def gpu_memory_bytes(device: str = "auto") -> tuple[float, float]:
    """(allocated, reserved) bytes on the CUDA device a ``--device`` setting names ('auto' and 'cuda': the
    current one); zeros on the CPU, without CUDA, or before CUDA is in use."""
    import torch

    # Querying memory before CUDA is initialised would create a context (hundreds of MB) on an idle GPU.
    if device == "cpu" or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0.0, 0.0
    index = torch.device("cuda" if device == "auto" else device).index  # None: the current device
    return float(torch.cuda.memory_allocated(index)), float(torch.cuda.memory_reserved(index))


class ModelManager(Generic[T]):
    """Owns one model: loads it on first use, unloads it ``idle_timeout`` seconds after the last use.

    ``idle_timeout`` 0 unloads as soon as the last user lets go; a negative value never unloads.
    """

    def __init__(self, loader: Callable[[], T], *, unloader: Callable[[T], None] | None = None,
                 idle_timeout: float = 300.0, name: str = "model") -> None:
        self._loader = loader
        self._unloader = unloader
        self.idle_timeout = idle_timeout
        self.name = name
        self._model: T | None = None
        self._state = ModelState.UNLOADED
        self._users = 0
        self._lock = threading.Lock()  # guards the fields above
        self._load_lock = threading.Lock()  # one load at a time; waiters get its result
        self._timer: threading.Timer | None = None
        self._timer_generation = 0
        self.load_count = 0
        self.unload_count = 0
        self.last_error: str | None = None
        self.last_load_seconds: float | None = None
        self._closed = False

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def loaded(self) -> bool:
        return self._state is ModelState.LOADED

    @property
    def users(self) -> int:
        return self._users

    @contextmanager
    def use(self) -> Iterator[T]:
        """Hold the model for the duration of the block, loading it first if needed."""
        with self._lock:
            if self._closed:
                raise ModelUnavailable("the server is shutting down")
            self._users += 1
            self._cancel_timer()
        try:
            model = self._ensure_loaded()
        except BaseException:
            self._release()
            raise
        try:
            yield model
        finally:
            self._release()

    def preload(self) -> None:
        """Load now (for ``--preload``); the idle timer then applies as after a request."""
        with self.use():
            pass

    def _ensure_loaded(self) -> T:
        with self._load_lock:
            with self._lock:
                if self._model is not None:
                    return self._model
                self._state = ModelState.LOADING
            started = time.monotonic()
            failure = None
            try:
                model = self._loader()
            except Exception as exc:
                failure = str(exc) or type(exc).__name__
                log.debug("loading the %s failed:\n%s", self.name, traceback.format_exc())  # text, no references
            if failure is not None:
                # Out of the except block: the error's traceback, and the partly loaded model its frames hold,
                # are gone before the memory is freed, and the exception raised carries no reference to them.
                with self._lock:
                    self._state = ModelState.UNLOADED
                    self.last_error = failure
                log.error("loading the %s failed: %s", self.name, failure)
                free_accelerator_memory()
                raise ModelUnavailable(failure)
            with self._lock:
                self._model = model
                self._state = ModelState.LOADED
                self.load_count += 1
                self.last_error = None
                self.last_load_seconds = time.monotonic() - started
            return model

    def _release(self) -> None:
        unload_now = False
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._model is not None:
                if self.idle_timeout == 0:
                    unload_now = True
                elif self.idle_timeout > 0:
                    self._arm_timer()
        if unload_now:
            self.unload()

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._timer_generation += 1
        timer = threading.Timer(self.idle_timeout, self._expire, args=(self._timer_generation,))
        timer.daemon = True
        timer.name = f"{self.name}-idle-timer"
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_generation += 1

    def _expire(self, generation: int) -> None:
        with self._lock:
            if generation != self._timer_generation or self._users:
                return  # superseded, or someone started using the model again
        log.info("%s idle for %.0f s: unloading", self.name, self.idle_timeout)
        self.unload()

    def unload(self) -> bool:
        """Unload if nobody uses the model; return whether it was unloaded."""
        with self._load_lock:
            with self._lock:
                if self._model is None or self._users:
                    return False
                model, self._model = self._model, None
                self._cancel_timer()
            if self._unloader is not None:
                try:
                    self._unloader(model)
                except Exception:  # a failing cleanup must not keep the memory pinned
                    log.exception("unloading the %s raised", self.name)
            del model
            free_accelerator_memory()
            with self._lock:
                # Reported unloaded only once the memory is actually released.
                self._state = ModelState.UNLOADED
                self.unload_count += 1
            log.info("%s unloaded", self.name)
            return True

    def close(self) -> None:
        """Refuse new users and unload (used at shutdown)."""
        with self._lock:
            self._closed = True
            self._cancel_timer()
        self.unload()
