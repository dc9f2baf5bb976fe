"""The speed presets' step engines (engines.spec.DENOISER_VARIANTS) against denoiser_step, on
the tiny model's export wrappers: the conditional-only step is the guided step at cfg 1, a deep
step is the full step plus the feature, and a shallow step resumed from that feature at the same
time step is the full step again (it recomputes only the layers after the cache point)."""

from __future__ import annotations

import pytest
import torch

from hallo2rt.engines.spec import DENOISER_VARIANTS, SPEED_ENGINES
from hallo2rt.export.graphs import GraphShapes, build_graph


@pytest.fixture(scope="module")
def graphs(tiny):
    shapes = GraphShapes(size=64, frames=4)
    return {name: build_graph(name, tiny, shapes) for name in DENOISER_VARIANTS}


def _feed(graphs):
    spec = graphs["denoiser_step"]
    names = [t.name for t in spec.spec.inputs]
    return dict(zip(names, spec.make_inputs({}, torch.Generator().manual_seed(0)), strict=True))


def _run(graphs, name, feed, **extra):
    g = graphs[name]
    both = {**feed, **extra}
    with torch.no_grad():
        return g.module(*[both[t.name] for t in g.spec.inputs])


def test_every_variant_takes_denoiser_step_inputs_at_its_shapes(graphs):
    base = {t.name: t for t in graphs["denoiser_step"].spec.inputs}
    for name in SPEED_ENGINES:
        halves, part = DENOISER_VARIANTS[name]
        spec = graphs[name].spec
        inputs = {t.name: t for t in spec.inputs if t.name != "deep_feature"}
        assert all(base[k] == t for k, t in inputs.items()), name
        assert ("cfg_scale" in inputs) == (halves == 2)
        if part == "shallow":  # the layers after the cache point read far fewer inputs
            assert len(inputs) < len(base) - 10
        else:
            assert set(inputs) == set(base) - ({"cfg_scale"} if halves == 1 else set())
        outputs = [t.name for t in spec.outputs]
        assert outputs == (["next_latents", "deep_feature"] if part == "deep" else ["next_latents"])
    for halves in ("", "_cond"):  # each shallow engine takes what its deep partner gives
        deep, shallow = graphs[f"denoiser{halves}_deep"], graphs[f"denoiser{halves}_shallow"]
        assert deep.spec.outputs[1] == shallow.spec.inputs[-1]


def test_conditional_only_step_is_the_guided_step_at_cfg_1(graphs):
    feed = _feed(graphs)
    guided = _run(graphs, "denoiser_step", feed, cfg_scale=torch.tensor([1.0]))[0]
    cond = _run(graphs, "denoiser_cond", feed)[0]
    torch.testing.assert_close(cond, guided, rtol=1e-5, atol=1e-5)
    at_35 = _run(graphs, "denoiser_step", feed)[0]
    assert (at_35 - cond).abs().max() > 1e-2  # guidance matters, so the test can fail


@pytest.mark.parametrize("halves", ["", "_cond"])
def test_a_shallow_step_from_the_deep_feature_of_the_same_step_is_the_full_step(graphs, halves):
    feed = _feed(graphs)
    full = _run(graphs, "denoiser_step" if not halves else "denoiser_cond", feed)[0]
    step, feature = _run(graphs, f"denoiser{halves}_deep", feed)
    assert torch.equal(step, full)
    again = _run(graphs, f"denoiser{halves}_shallow", feed, deep_feature=feature)[0]
    torch.testing.assert_close(again, full, rtol=1e-6, atol=1e-6)
    # at another time step the cached feature is stale: the cheap step differs from a full one
    later = {"timestep": torch.tensor([300])}
    cheap = _run(graphs, f"denoiser{halves}_shallow", feed, deep_feature=feature, **later)[0]
    exact = _run(graphs, f"denoiser{halves}_deep", feed, **later)[0]
    assert (cheap - exact).abs().max() > 1e-4


def test_the_faithful_denoiser_refuses_other_batches(tiny):
    den = tiny["denoiser"]
    with pytest.raises(ValueError, match="two CFG halves .* or the conditional one, got batch 3"):
        den(
            torch.zeros(3, 4, 2, 8, 8),
            torch.tensor([1]),
            None,
            None,
            None,
            [],
            [],
            [],
            [],
            [],
            None,
        )


def test_flops_of_the_variants_are_counted_on_the_graphs():
    """Counted on the meta device (shapes only): the relations the presets rely on."""
    from hallo2rt.benchmarks.flops import branch_tflops, step_tflops

    c = step_tflops("tiny", 128, 4)
    assert (
        c["denoiser_deep"] == c["denoiser_step"] and c["denoiser_cond_deep"] == c["denoiser_cond"]
    )
    assert 0.4 < c["denoiser_cond"] / c["denoiser_step"] < 0.6
    assert c["denoiser_shallow"] < 0.5 * c["denoiser_step"]
    branches = branch_tflops("tiny", 128, 4)
    assert branches == sorted(branches) and branches[0] == pytest.approx(c["denoiser_shallow"])
