"""The official network's quirks, each pinned by a test that fails if the quirk is lost.

docs/model.md §1.4 (train branch), §1.8 (CFG halves), §1.9 (bank and interleaving), §1.10 (motion
frames), §1.11 (audio branches and motion_scale), §7 (fp16-rounded reference features).
"""

from __future__ import annotations

import copy

import pytest
import torch

from hallo2rt.export.modules import reference_tokens_official, split_reference_bank
from hallo2rt.export.modules.unet import _Ctx

F_FRAMES = 4


def make_inputs(tiny, frames=F_FRAMES, seed=0):
    """Official-style inputs for the tiny denoiser (8x8 latents, 2 motion frames)."""
    g = torch.Generator().manual_seed(seed)
    den = tiny["denoiser"]
    cfg = tiny.config
    shapes = den.hooked_shapes((8, 8))
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    return dict(
        sample=x.repeat(2, 1, 1, 1, 1),
        timestep=torch.tensor(500),
        image_tokens=torch.randn(
            2, cfg.heads.image_tokens, cfg.unet.cross_attention_dim, generator=g
        ),
        audio_tokens=torch.cat(
            [torch.zeros(1, frames, 8, 32), torch.randn(1, frames, 8, 32, generator=g)]
        ),
        face_feature=torch.cat(
            [torch.zeros(1, 32, 1, 8, 8), torch.randn(1, 32, 1, 8, 8, generator=g)]
        ),
        ref_features=[torch.randn(2, L, C, generator=g) for L, C in shapes],
        motion_features=[torch.randn(2, 2, L, C, generator=g) for L, C in shapes],
        full_masks=[torch.rand(1, (8 >> i) ** 2, generator=g) for i in range(4)],
        face_masks=[torch.rand(1, (8 >> i) ** 2, generator=g) for i in range(4)],
        lip_masks=[torch.rand(1, (8 >> i) ** 2, generator=g) for i in range(4)],
        motion_scale=torch.tensor([1.0, 1.0, 1.0]),
    )


@torch.no_grad()
def run(den, kw):
    """The denoiser on official-style inputs; reference features go through reference_kv."""
    kw = dict(kw)
    kw["ref_kv"] = den.reference_kv(kw.pop("ref_features"))
    return den(**kw)


@pytest.fixture(scope="module")
def base(tiny):
    kw = make_inputs(tiny)
    return kw, run(tiny["denoiser"], kw)


def test_uncond_half_ignores_the_reference(tiny, base):
    kw, v = base
    changed = dict(kw, ref_features=[r + 1.0 for r in kw["ref_features"]])
    v2 = run(tiny["denoiser"], changed)
    assert torch.equal(v2[0], v[0])  # uncond rows: plain self-attention, no reference
    assert not torch.allclose(v2[1], v[1], atol=1e-3)


def test_both_halves_use_the_motion_frames(tiny, base):
    kw, v = base
    g = torch.Generator().manual_seed(9)  # random: a constant shift is normalised away per frame
    changed = dict(
        kw, motion_features=[m + torch.randn(m.shape, generator=g) for m in kw["motion_features"]]
    )
    v2 = run(tiny["denoiser"], changed)
    assert not torch.allclose(v2[0], v[0], atol=1e-3)
    assert not torch.allclose(v2[1], v[1], atol=1e-3)


def _perturb(modules):
    with torch.no_grad():
        for p in modules.parameters():
            p.add_(torch.randn_like(p))


def test_dead_8x8_motion_modules_never_run(tiny, base):
    kw, v = base
    den = copy.deepcopy(tiny["denoiser"])
    _perturb(den.down_blocks[3].motion_modules)  # DownBlock3D
    _perturb(den.up_blocks[0].motion_modules)  # UpBlock3D
    assert torch.equal(run(den, kw), v)
    _perturb(den.mid_block.motion_modules)  # the 8x8 *mid* module does run
    assert not torch.allclose(run(den, kw), v, atol=1e-3)


def test_motion_frames_sit_at_temporal_positions_0_and_1(tiny, base):
    kw, v = base
    m, f = 2, F_FRAMES
    live = [
        mm
        for blk in (
            *tiny["denoiser"].down_blocks[:3],
            tiny["denoiser"].mid_block,
            *tiny["denoiser"].up_blocks[1:],
        )
        for mm in blk.motion_modules
    ]

    def with_pe(rows):
        den = copy.deepcopy(tiny["denoiser"])
        dead = {
            id(x) for x in (*den.down_blocks[3].motion_modules, *den.up_blocks[0].motion_modules)
        }
        for mm in den.modules():
            if type(mm).__name__ == "MotionModule" and id(mm) not in dead:
                for attn in mm.temporal_transformer.transformer_blocks[0].attention_blocks:
                    attn.pos_encoder.pe[:, rows] += 3.0
        return run(den, kw)

    assert len(live) == 16
    assert not torch.allclose(with_pe(slice(0, m)), v, atol=1e-3)  # motion frames read 0..1
    assert not torch.allclose(with_pe(slice(m, m + 1)), v, atol=1e-3)  # first clip frame at 2
    assert torch.equal(with_pe(slice(m + f, None)), v)  # nothing beyond 2 + F


def test_motion_module_matches_a_naive_per_sequence_implementation(tiny):
    mm = tiny["denoiser"].down_blocks[0].motion_modules[0]
    tt = mm.temporal_transformer
    blk = tt.transformer_blocks[0]
    g = torch.Generator().manual_seed(3)
    b, f, c, h, w, m = 2, 3, 32, 4, 4, 2
    x = torch.randn(b * f, c, h, w, generator=g)
    motion = torch.randn(b, m, h * w, c, generator=g)
    with torch.no_grad():
        got = mm(x, motion, b)
        want = torch.empty_like(x)
        for bi in range(b):
            frames = [motion[bi, j].T.reshape(c, h, w) for j in range(m)]  # (d1 d2) -> h, w
            frames += [x[bi * f + j] for j in range(f)]
            seq = torch.stack(frames)  # (m+f, C, H, W)
            normed = tt.norm(seq).flatten(2).transpose(1, 2)  # (T, HW, C)
            for pos in range(h * w):
                t = tt.proj_in(normed[:, pos])  # (T, C) one temporal sequence
                for attn, norm in zip(blk.attention_blocks, blk.norms, strict=True):
                    t = attn(norm(t)[None])[0] + t
                t = t + blk.ff(blk.ff_norm(t))
                t = tt.proj_out(t)
                for j in range(f):
                    want[bi * f + j, :, pos // w, pos % w] = (
                        t[m + j] + x[bi * f + j, :, pos // w, pos % w]
                    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _without_branches(den, names):
    """A copy of the denoiser whose audio branches ``names`` contribute nothing."""
    den = copy.deepcopy(den)
    with torch.no_grad():
        for mod in den.modules():
            for name in names:
                conv = getattr(mod, f"zero_conv_{name}", None)
                if conv is not None:
                    conv.weight.zero_()
                    conv.bias.zero_()
    return den


def test_motion_scale_scales_its_own_audio_branch(tiny, base):
    kw, _ = base
    den = tiny["denoiser"]

    def v(model, scale):
        return run(model, dict(kw, motion_scale=torch.tensor(scale)))

    # [pose, face, lip] = [full, face, lip]: a zero scale removes exactly that branch
    only_full = _without_branches(den, ["face", "lip"])
    torch.testing.assert_close(v(den, [0.7, 0.0, 0.0]), v(only_full, [0.7, 9.0, 9.0]))
    only_lip = _without_branches(den, ["full", "face"])
    torch.testing.assert_close(v(den, [0.0, 0.0, 1.3]), v(only_lip, [9.0, 9.0, 1.3]))
    none = _without_branches(den, ["full", "face", "lip"])
    torch.testing.assert_close(v(den, [0.0, 0.0, 0.0]), v(none, [1.0, 1.0, 1.0]))
    assert not torch.allclose(v(den, [0.0, 0.0, 0.0]), v(den, [1.0, 1.0, 1.0]), atol=1e-3)


def test_audio_branches_are_linear_in_motion_scale(tiny):
    blk = copy.deepcopy(tiny["denoiser"].down_blocks[0].audio_modules[0].transformer_blocks[0])
    with torch.no_grad():
        for p in blk.ff.parameters():
            p.zero_()  # isolate the branch sum from the FF that follows it
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, 32, generator=g)
    audio = torch.randn(3, 8, 32, generator=g)
    masks = [torch.rand(3, 16, generator=g) for _ in range(3)]
    with torch.no_grad():

        def out(s):
            return blk(x, audio, masks, torch.tensor(s))

        base = out([0.0, 0.0, 0.0])
        parts = [out(s) - base for s in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0])]
        torch.testing.assert_close(
            out([2.0, -1.0, 0.5]) - base,
            2 * parts[0] - parts[1] + 0.5 * parts[2],
            rtol=1e-5,
            atol=1e-5,
        )


def test_reference_and_motion_features_are_rounded_to_fp16(tiny, base):
    kw, v = base
    tiny_step = [r * (1 + 1e-5) for r in kw["ref_features"]]  # below fp16 resolution (~1e-3)
    rounded = dict(
        kw,
        ref_features=[r.half().float() for r in kw["ref_features"]],
        motion_features=[m.half().float() for m in kw["motion_features"]],
    )
    assert torch.equal(run(tiny["denoiser"], rounded), v)
    v_small = run(tiny["denoiser"], dict(kw, ref_features=tiny_step))
    assert (v_small - v).abs().max() < (v.abs().max() * 1e-2)
    unrounded_ok = all(
        torch.equal(a.half(), b.half()) for a, b in zip(tiny_step, kw["ref_features"], strict=True)
    )
    if unrounded_ok:  # the perturbation vanished in fp16, so the output must be identical
        assert torch.equal(v_small, v)


@pytest.mark.parametrize("frames", [4, 3])
def test_cond_frames_alternate_between_the_two_reference_rows(tiny, frames):
    den = tiny["denoiser"]
    st = den.down_blocks[0].attentions[0]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2 * frames, 32, 8, 8, generator=g)
    ref = torch.randn(2, 64, 32, generator=g)
    tokens = torch.randn(2 * frames, 4, 32, generator=g)

    def spatial(r):
        kv = st.transformer_blocks[0].attn1.project_kv(r.half().float())
        ctx = _Ctx(temb=torch.zeros(1, 128), tokens=tokens, frames=frames, ref_kv=[kv])
        with torch.no_grad():
            return den._spatial(st, x, ctx)

    out = spatial(ref)
    out0 = spatial(torch.stack([ref[0] + 1.0, ref[1]]))  # change the uncond-token reference
    changed = [bool((out0[frames + j] - out[frames + j]).abs().max() > 1e-4) for j in range(frames)]
    # official: ref (2, L, C).repeat(F, 1, 1) -> row k reads ref[k % 2]; cond frame j is row F + j
    assert changed == [(frames + j) % 2 == 0 for j in range(frames)]
    assert torch.equal(out0[:frames], out[:frames])


def test_hooked_attention_equals_the_official_concat_then_overwrite(tiny):
    """Official reader: all 2F rows attend [x; ref tiled] (K/V projected every step), then the
    uncond rows are overwritten by plain self-attention. Ours never computes the overwritten part
    and projects the reference once (docs/model.md §6.1-2); the result must be the same."""
    den = tiny["denoiser"]
    st = den.up_blocks[3].attentions[2]
    tb = st.transformer_blocks[0]
    f = 4
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2 * f, 32, 8, 8, generator=g)
    ref = torch.randn(2, 64, 32, generator=g)
    tokens = torch.randn(2, 4, 32, generator=g).repeat_interleave(f, 0)
    with torch.no_grad():
        kv = tb.attn1.project_kv(ref.half().float())
        ctx = _Ctx(temb=torch.zeros(1, 128), tokens=tokens, frames=f, ref_kv=[kv])
        got = den._spatial(st, x, ctx)
        t = st.tokens_in(x)
        n1 = tb.norm1(t)
        bank = ref.half().float().repeat(f, 1, 1)  # fp16 bank, repeat over the 3-D tensor
        hidden_c = tb.attn1(n1, torch.cat([n1, bank], dim=1)) + t
        uc = torch.tensor([True] * f + [False] * f)
        hidden_c[uc] = tb.attn1(n1[uc], n1[uc]) + t[uc]
        want = st.tokens_out(tb.tail(hidden_c, tokens), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_net_token_tiling_and_first_bank_entry(tiny):
    tokens = torch.stack([torch.full((4, 32), 1.0), torch.full((4, 32), 2.0)])
    tiled = reference_tokens_official(tokens)  # batch [r, m1, m2, r, m1, m2]
    assert [int(t[0, 0]) for t in tiled] == [1, 2, 1, 2, 1, 2]  # m1/m2 are cross-assigned
    g = torch.Generator().manual_seed(5)
    lat = torch.randn(6, 4, 8, 8, generator=g)
    ref = tiny["reference_unet"]
    with torch.no_grad():
        a = ref(lat, torch.tensor(0), torch.randn(6, 4, 32, generator=g))
        b = ref(lat, torch.tensor(0), torch.randn(6, 4, 32, generator=g))
    assert torch.equal(a[0], b[0])  # down0.a0's norm1 precedes every cross-attention
    assert not torch.allclose(a[1], b[1], atol=1e-4)
    r, motion = split_reference_bank(a[3])
    assert torch.equal(r, a[3][[0, 3]]) and torch.equal(
        motion, a[3].reshape(2, 3, *a[3].shape[1:])[:, 1:]
    )


def test_the_conditional_half_alone_is_the_conditional_half_of_both(tiny, base):
    """A batch of 1 (the speed presets' guidance truncation) is the conditional half: every
    per-half input cut to its conditional row gives the conditional rows of the two-half call;
    the reference rows stay both (the conditional frames read both). Other batches fail."""
    kw, v = base
    cond = dict(
        kw,
        sample=kw["sample"][1:],
        image_tokens=kw["image_tokens"][1:],
        audio_tokens=kw["audio_tokens"][1:],
        face_feature=kw["face_feature"][1:],
        motion_features=[m[1:] for m in kw["motion_features"]],
    )
    torch.testing.assert_close(run(tiny["denoiser"], cond), v[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="two CFG halves"):
        run(tiny["denoiser"], dict(kw, sample=torch.cat([kw["sample"]] * 2)[:3]))


def test_cached_token_kv_gives_the_same_v(tiny, base):
    """Image and audio token K/V projected once (per video / per clip) equal projecting them in
    every call; a wrong pairing of blocks and cached K/V would not."""
    kw, want = base
    den = tiny["denoiser"]
    image_kv, audio_kv = den.token_kv(kw["image_tokens"], kw["audio_tokens"])
    assert len(image_kv) == len(audio_kv) == len(den.hooked_blocks)
    cached = dict(kw, image_tokens=None, audio_tokens=None, token_kv=(image_kv, audio_kv))
    torch.testing.assert_close(run(den, cached), want, rtol=1e-5, atol=1e-6)
    swapped = dict(cached, token_kv=(image_kv, audio_kv[::-1]))
    with pytest.raises(RuntimeError):  # other blocks' widths: the shapes no longer fit
        run(den, swapped)
    shuffled = [kv[::-1] for kv in audio_kv]  # the face and lip branches swapped
    got = run(den, dict(cached, token_kv=(image_kv, shuffled)))
    assert (got - want).abs().max() > 1e-3


def test_the_denoiser_step_spec_lists_its_inputs_under_the_shared_names(tiny):
    """The step wrapper reads its inputs by these names (engines.bank), in the spec's order."""
    from hallo2rt.engines.bank import denoiser_input_names
    from hallo2rt.export.graphs import GraphShapes, build_graph

    graph = build_graph("denoiser_step", tiny, GraphShapes(size=64, frames=2))
    levels = len(tiny.config.unet.block_out_channels)
    names = denoiser_input_names(len(tiny["denoiser"].hooked_blocks), levels)
    assert tuple(t.name for t in graph.spec.inputs) == names == graph.module.names
