import numpy as np
import pytest
import torch

from safeneurons.errors import EmptySelectionError
from safeneurons.identify import SafeNeuronConfig, identify, mean_difference_topk, safeneuron_scores
from safeneurons.neurons import ModelShape
from safeneurons.stats import ActivationStats, RunningMoments

L, N = 3, 200


def make_stats(harm: np.ndarray, safe: np.ndarray) -> ActivationStats:
    shape = ModelShape(n_layers=L, site_sizes={"mlp": N})
    moments = {}
    for g, x in (("harmful", harm), ("harmless", safe)):
        cells = {}
        for layer in range(L):
            m = RunningMoments(N)
            m.add(torch.from_numpy(x[:, layer]))
            cells[(layer, "mlp")] = m
        moments[g] = cells
    return ActivationStats(shape, "last", moments)


def planted(seed=0):
    rng = np.random.default_rng(seed)
    harm = rng.normal(0, 1, (120, L, N))
    safe = rng.normal(0, 1, (150, L, N))
    harm[:, 0, 7] += 5.0   # huge effect size: ES and SAS
    harm[:, 1, 11] += 2.0  # moderate
    harm[:, 2, 13] -= 6.0  # negative shift: never selected (one-sided)
    harm[:, 2, 20] = 1.0   # zero variance in both groups, positive shift
    safe[:, 2, 20] = 0.0
    return harm, safe


def reference(harm, safe, tau_es, tau_sas):
    """Algorithm 1 of the paper, written directly in numpy."""
    es, sas = set(), set()
    nu, ns = len(harm), len(safe)
    for layer in range(L):
        mu_u, mu_s = harm[:, layer].mean(0), safe[:, layer].mean(0)
        v = mu_u - mu_s
        z = (v - v.mean()) / v.std()
        sd = np.sqrt(((nu - 1) * harm[:, layer].var(0, ddof=1) + (ns - 1) * safe[:, layer].var(0, ddof=1)) / (nu + ns - 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(sd > 0, v / np.where(sd > 0, sd, 1), np.sign(v) * np.inf)
        es |= {(layer, "mlp", int(j)) for j in np.nonzero(d > tau_es)[0]}
        sas |= {(layer, "mlp", int(j)) for j in np.nonzero((z > tau_sas) & (v > 0))[0]}
    return es, sas


@pytest.mark.parametrize("taus", [(3.0, 2.0), (2.0, 2.0), (0.5, 3.0)])
def test_es_sas_match_numpy_reference_and_recover_planted(taus):
    harm, safe = planted()
    stats = make_stats(harm, safe)
    sets = identify(stats, "safeneuron", {"tau_es": taus[0], "tau_sas": taus[1]})
    es_ref, sas_ref = reference(harm, safe, *taus)
    assert set(sets["ES"]) == es_ref
    assert set(sets["SAS"]) == sas_ref
    assert set(sets["FULL"]) == es_ref | sas_ref
    assert (0, "mlp", 7) in sets["ES"] and (0, "mlp", 7) in sets["SAS"]
    assert (2, "mlp", 13) not in sets["FULL"]
    assert (2, "mlp", 20) in sets["ES"]  # zero-variance positive shift kept, not NaN


def test_scores_are_finite_with_zero_variance_and_constant_layers():
    harm, safe = planted()
    harm[:, 1, :] = 0.0
    safe[:, 1, :] = 0.0  # a dead layer: zero variance and zero spread of the shift
    sc = safeneuron_scores(make_stats(harm, safe), SafeNeuronConfig())
    for arr in (sc.delta, sc.effect, sc.z):
        assert np.isfinite(arr).all()
    assert sc.zero_variance >= N
    assert (sc.z[1] == 0).all() and (sc.effect[1] == 0).all()


def test_t_statistic_option_scales_d():
    harm, safe = planted()
    stats = make_stats(harm, safe)
    d = safeneuron_scores(stats, SafeNeuronConfig(statistic="d")).effect
    t = safeneuron_scores(stats, SafeNeuronConfig(statistic="t")).effect
    factor = np.sqrt(120 * 150 / (120 + 150))
    finite = np.abs(d) < 1e5
    np.testing.assert_allclose(t[finite], d[finite] * factor, rtol=1e-9)


def test_family_defaults_and_provenance():
    harm, safe = planted()
    stats = make_stats(harm, safe)
    qwen = identify(stats, "safeneuron", {}, family="qwen2")["FULL"].provenance
    llama = identify(stats, "safeneuron", {}, family="llama")["FULL"].provenance
    assert (qwen["tau_es"], qwen["tau_sas"]) == (3.0, 2.0)
    assert (llama["tau_es"], llama["tau_sas"]) == (2.0, 2.0)
    assert qwen["n_unsafe"] == 120 and qwen["position"] == "last"


def test_thresholds_that_select_nothing_raise_clearly():
    harm, safe = planted()
    with pytest.raises(EmptySelectionError, match="selected no neurons.*Lower the thresholds"):
        identify(make_stats(harm, safe), "safeneuron", {"tau_es": 1e9, "tau_sas": 1e9})


def test_meandiff_topk_baseline():
    harm, safe = planted()
    s = mean_difference_topk(make_stats(harm, safe), 2)
    assert s.counts_per_layer() == {0: 2, 1: 2, 2: 2}
    assert (0, "mlp", 7) in s and (2, "mlp", 13) not in s
