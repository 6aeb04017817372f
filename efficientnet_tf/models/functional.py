"""Functional models over a whole EfficientNet, built from any caller's stack depth.

Keras orders a functional graph with one Python frame per layer on its longest path; the deepest
variants have more layers in one chain than Python's default recursion limit. `functional_model`
raises the limit only while Keras orders the graph, then puts it back.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import keras

_recursion_lock = threading.Lock()
_recursion_users = 0
_recursion_saved_limit = 0


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


@contextlib.contextmanager
def _recursion_headroom(frames: int):
    """Let `frames` more Python frames nest than the caller has now, then restore the limit.

    V2-XL and L2 have ~1,300 layers in one chain, more than Python's default limit of 1,000
    frames, and the caller's own stack (a notebook, a pytest-xdist worker) comes on top. The
    limit is raised only while the graph is ordered and put back after, so the process keeps
    the limit it had. Nested or concurrent builds share one raise; the last one out restores.
    """
    global _recursion_users, _recursion_saved_limit
    needed = _stack_depth() + frames
    with _recursion_lock:
        if _recursion_users == 0:
            _recursion_saved_limit = sys.getrecursionlimit()
        _recursion_users += 1
        if needed > sys.getrecursionlimit():
            sys.setrecursionlimit(needed)
    try:
        yield
    finally:
        with _recursion_lock:
            _recursion_users -= 1
            if _recursion_users == 0:
                sys.setrecursionlimit(_recursion_saved_limit)


def functional_model(inputs, outputs, name: str, max_layers: int) -> keras.Model:
    """keras.Model(inputs, outputs) for a graph of up to `max_layers` layers, from any caller.

    Works under Python's default recursion limit however deep the caller's stack is (see
    `_recursion_headroom`); use it for every functional model over a whole EfficientNet.
    """
    with _recursion_headroom(max_layers + 64):
        return keras.Model(inputs, outputs, name=name)
