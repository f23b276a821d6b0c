from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hypothesis import settings as _hyp_settings  # noqa: E402

# Timing is not what property tests check; a loaded 2-core machine must not fail them.
_hyp_settings.register_profile("safeneurons", deadline=None)
_hyp_settings.load_profile("safeneurons")

from tiny import _LIVE_MODELS, hooks_left, make_tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run ~100x faster on one thread than on two contended ones (measured here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def tiny():
    """Factory: ``tiny(family, seed=0)`` builds a tiny random model of that family."""
    return make_tiny_model


@pytest.fixture(autouse=True)
def _no_hooks_survive():
    """Fail any test that leaves a hook on a tiny model (hooks are global state)."""
    yield
    leaked = {id(m): hooks_left(m) for m in list(_LIVE_MODELS)}
    leaked = {k: v for k, v in leaked.items() if v}
    if leaked:
        for m in list(_LIVE_MODELS):
            for mod in m.modules():
                mod._forward_hooks.clear(); mod._forward_pre_hooks.clear(); mod._backward_hooks.clear()
        pytest.fail(f"hooks left behind on modules: {leaked}")


def shared_datasets_dir() -> Path | None:
    from safeneurons.data.paths import find_data_dir

    return find_data_dir(required=False)
