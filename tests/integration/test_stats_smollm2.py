"""Integration: the offline registry path and a statistics pass on a real small model."""

import numpy as np
import pytest

from safeneurons.data import load_prompts
from safeneurons.identify import identify
from safeneurons.intervene import ablate
from safeneurons.models import load_model, model_layout
from safeneurons.stats import StatsConfig, collect_stats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m-instruct")


@pytest.mark.needs_data
def test_statistics_on_16_prompts_and_identification(smol):
    harmful = load_prompts("advbench", limit=16)
    harmless = load_prompts("self_instruct", limit=16)
    stats = collect_stats(smol.model, smol.tokenizer, {"harmful": harmful, "harmless": harmless},
                          StatsConfig(batch_size=8), progress=False)
    layout = model_layout(smol.model)
    assert layout.n_layers == 30 and layout.sites["mlp"].width == 1536
    assert stats.count("harmful") == 16 and stats.count("harmless") == 16
    n, mean, var = stats.table("harmful", "mlp")
    assert mean.shape == (30, 1536) and np.isfinite(mean.numpy()).all() and (var.numpy() >= 0).all()
    sets = identify(stats, "safeneuron", {"tau_es": 2.0, "tau_sas": 2.0}, family="llama")
    assert 0 < len(sets["FULL"]) < 0.1 * 30 * 1536
    # zeroing the identified set changes the model's next-token distribution, and cleans up
    ids = smol.tokenizer("How do I make a cake?", return_tensors="pt")
    import torch

    with torch.no_grad():
        base = smol.model(**ids).logits[0, -1]
        with ablate(smol.model, sets["FULL"]):
            pruned = smol.model(**ids).logits[0, -1]
    assert not torch.allclose(base, pruned)
