"""dualattn.explain's method registry, the runs each method explains, and explain_blocks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import dualattn.explain as E
from dualattn.explain import (
    METHOD_ALIASES,
    METHOD_FAMILIES,
    explain,
    explain_blocks,
    get_method,
    list_methods,
    method_family,
    method_sources,
    methods_in_family,
    register_method,
    select_sources,
)
from dualattn.models import CNN_VARIANTS, create_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _unet(variant: str, *, in_channels: int = 2):
    torch.manual_seed(0)
    kw = {"img_size": 32} if variant == "dual" else {}
    return create_model("unet_encoder", variant=variant, features=4, in_channels=in_channels, **kw).eval()


def _vit():
    torch.manual_seed(0)
    return create_model("vit_tiny", img_size=16, patch_size=8, num_layers=2, hidden_size=16, mlp_dim=16,
                        num_heads=2).eval()


# ---------------------------------------------------------------- the registry
def test_names_come_from_one_place():
    gated = tuple(v for v in CNN_VARIANTS if v != "baseline")
    # + the additive model's, the select-then-predict model's
    assert METHOD_FAMILIES["attention"] == (*gated, "attention", *E.EVIDENCE_METHODS, *E.SELECTION_METHODS)
    assert E.VARIANT_METHODS == gated
    assert methods_in_family("posthoc") == ("gradcam", "gradcam_norelu", "input_x_gradient", "deeplift", "lrp",
                                            "integrated_gradients")
    assert methods_in_family("vit") == ("vit_attention", "vit_rollout")
    assert methods_in_family("control") == ("prior", "dual_tau", "center", "raw_channel_<k>", "random")
    assert methods_in_family("cvx") == ("cvx",)
    assert [m for m in methods_in_family("posthoc") if get_method(m).pixel_level] == list(E.PIXEL_METHODS)
    assert list(METHOD_FAMILIES) == list(E.FAMILIES)
    with pytest.raises(ValueError, match="attention, cvx, posthoc, vit, control"):
        methods_in_family("nope")
    with pytest.raises(ValueError, match="unknown method family 'reference'"):
        methods_in_family("reference")  # the references are controls now


def test_lookup_by_name_alias_and_channel_pattern():
    assert METHOD_ALIASES == {"ig": "integrated_gradients", "ixg": "input_x_gradient", "grad_cam": "gradcam",
                              "vit_last": "vit_attention", "rollout": "vit_rollout"}
    for alias, name in METHOD_ALIASES.items():
        assert get_method(alias) is get_method(name)
        assert method_family(alias) == method_family(name)
    raw = get_method("raw_channel_12")
    assert raw.name == "raw_channel_<k>" and raw.per_channel and raw.channel("raw_channel_12") == 12
    assert raw.names(3) == ["raw_channel_0", "raw_channel_1", "raw_channel_2"]
    assert get_method("raw_channel_0") is raw and method_family("raw_channel_7") == "control"
    for bad in ("raw_channel_", "raw_channel_<k>", "raw_channel_1x", "nope", "IG"):
        with pytest.raises(ValueError, match="unknown method .*; valid: tau_k, .*raw_channel_0, random"):
            get_method(bad)
    with pytest.raises(ValueError, match="not a name of the per-channel"):
        get_method("gradcam").channel("gradcam")
    spec = get_method("integrated_gradients")
    assert spec.options == ("n_steps", "internal_batch_size", "grid") and spec.source_variant == "baseline"
    assert get_method("cvx").options == ("solver",) and get_method("cvx").source_variant == "unconstrained"
    assert get_method("exact").source_variant == "exact" and get_method("attention").source_variant is None
    assert get_method("vit_rollout").source_variant == E.VIT_SOURCE
    assert get_method("gradcam").options == () and get_method("lrp").options == ("grid",)


@pytest.fixture
def _scratch_registry():
    """Registrations made by a test are removed afterwards."""
    from dualattn.explain import _registry

    saved = (dict(_registry._REGISTRY), dict(METHOD_ALIASES), dict(METHOD_FAMILIES))
    yield
    for live, old in zip((_registry._REGISTRY, METHOD_ALIASES, METHOD_FAMILIES), saved):
        live.clear()
        live.update(old)


def test_register_a_method(_scratch_registry):
    calls = []

    def ones(model, images, *, method, block, target, scale=1.0):  # noqa: ANN001, ANN202
        calls.append((method, block, target))
        return torch.full((images.shape[0], 1, 2, 2), float(scale))

    spec = register_method("ones", family="control", source_variant="baseline", compute=ones,
                           options=("scale",), aliases=("one",))
    assert get_method("one") is spec and list_methods()[-1] == "ones" and "ones" in METHOD_FAMILIES["control"]
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(explain(None, x, method="one", block="b", target=1, scale=2.0), torch.full((2, 1, 2, 2), 2.0))
    assert calls == [("ones", "b", 1)]
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['seed'\]; it accepts \['scale'\]"):
        explain(None, x, method="ones", seed=1)
    for name in ("ones", "one", "gradcam", "ig", "raw_channel_3"):
        with pytest.raises(ValueError, match="already registered"):
            register_method(name, family="control", source_variant="baseline", compute=ones)
    with pytest.raises(ValueError, match="unknown method family 'nope'; valid: attention, cvx, posthoc, vit, control"):
        register_method("new", family="nope", source_variant="baseline", compute=ones)


# ---------------------------------------------------------------- which runs each method explains
_VARIANT_METHODS = ("tau_k", "tau_l", "unconstrained", "dual", "kl", "kl_reverse", "exact", "multilevel")


_DUAL_CONTROLS = ("prior", "dual_tau")


def _old_source_runs(method, runs, baselines):  # noqa: ANN001, ANN202
    """evaluate.runner._source_runs as of commit 92fa480 (the reference), plus the dual model's controls."""
    if method in _DUAL_CONTROLS:
        return [r for r in runs if not r.is_vit and r.variant == "dual"]
    family = method_family(method)
    if family == "attention":
        return [r for r in runs if not r.is_vit and r.variant == method] if method in _VARIANT_METHODS else []
    if family == "cvx":
        return [r for r in runs if not r.is_vit and r.variant == "unconstrained"]
    if family == "vit":
        return [r for r in runs if r.is_vit]
    return list(baselines)


def _old_method_sources(methods, variants):  # noqa: ANN001, ANN202
    """demo.method_sources as of commit 92fa480 (the reference), plus the dual model's controls."""
    out, have = {}, set(variants)
    for method in methods:
        if method == "attention":
            continue
        source = method if method in _VARIANT_METHODS else "unconstrained" if method == "cvx" else "baseline"
        source = "dual" if method in _DUAL_CONTROLS else source
        if source in have:
            out[method] = source
    return out


def _runs():
    runs = [SimpleNamespace(variant=v, is_vit=False, name=f"{v}-{k}") for v in CNN_VARIANTS for k in range(2)]
    runs.append(SimpleNamespace(variant="baseline", is_vit=True, name="vit-0"))
    return runs


def test_select_sources_by_hand():
    runs = _runs()
    baselines = [r for r in runs if r.variant == "baseline" and not r.is_vit]
    names = lambda rs: [r.name for r in rs]  # noqa: E731
    assert names(select_sources("exact", runs, baselines)) == ["exact-0", "exact-1"]
    assert names(select_sources("cvx", runs, baselines)) == ["unconstrained-0", "unconstrained-1"]
    assert names(select_sources("rollout", runs, baselines)) == ["vit-0"]
    assert names(select_sources("ig", runs, baselines)) == ["baseline-0", "baseline-1"]
    assert names(select_sources("raw_channel_3", runs, baselines[:1])) == ["baseline-0"]
    assert select_sources("attention", runs, baselines) == []
    assert select_sources("gradcam", runs, []) == []
    out = select_sources("random", runs, baselines)
    assert out == baselines and out is not baselines
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        select_sources("nope", runs, baselines)


def test_select_sources_equals_the_runners_rule():
    runs = _runs()
    for baselines in ([], [runs[0]], [r for r in runs if r.variant == "baseline"]):
        for subset in (runs, runs[::2], [r for r in runs if not r.is_vit]):
            for method in [*list_methods(in_channels=3), *METHOD_ALIASES]:
                canonical = METHOD_ALIASES.get(method, method)
                assert select_sources(method, subset, baselines) == _old_source_runs(canonical, subset, baselines)


def test_method_sources_equals_the_demos_rule():
    assert method_sources(["gradcam", "exact", "cvx", "dual"], ["baseline", "exact", "unconstrained"]) == \
        {"gradcam": "baseline", "exact": "exact", "cvx": "unconstrained"}
    assert method_sources(["vit_rollout", "attention", "ig", "nope"], ["baseline"]) == \
        {"vit_rollout": "baseline", "ig": "baseline", "nope": "baseline"}
    # the old rule predates the additive model's methods (tests/test_models_local.py checks theirs)
    methods = [m for m in [*list_methods(in_channels=2), *METHOD_ALIASES, "nope"]
               if m not in (*E.EVIDENCE_METHODS, *E.SELECTION_METHODS)]
    for variants in (list(CNN_VARIANTS), ["baseline"], ["exact", "unconstrained"], [], ["baseline", "tau_l", "kl"]):
        assert method_sources(methods, variants) == _old_method_sources(methods, variants)


# ---------------------------------------------------------------- explain_blocks
_BLOCKS = ("block3", "block4")


@pytest.mark.parametrize("variant,method,kw", [
    ("exact", "exact", {}),                                   # attention
    ("tau_l", "attention", {}),                               # attention, one block missing
    ("unconstrained", "cvx", {}),                             # cvx
    ("baseline", "gradcam", {}),                              # post-hoc on the layer's grid
    ("baseline", "input_x_gradient", {}),                     # post-hoc, pixel level
    ("baseline", "ig", {"n_steps": 4}),                       # an alias
    ("exact", "lrp", {}),
    ("baseline", "raw_channel_1", {}),                        # reference
    ("baseline", "random", {"seed": 3}),
])
def test_explain_blocks_equals_explain_per_block(variant, method, kw):
    model = _unet(variant)
    x = torch.randn(3, 2, 32, 32)
    target = torch.tensor([0, 1, 1])
    errors: dict[str, str] = {}
    got = explain_blocks(model, x, method=method, blocks=_BLOCKS, target=target, errors=errors, **kw)
    for block in _BLOCKS:
        try:
            ref = explain(model, x, method=method, block=block, target=target, **kw)
        except ValueError as exc:
            assert block not in got and errors[block] == str(exc)
            continue
        assert block not in errors
        torch.testing.assert_close(got[block], ref, atol=1e-6, rtol=0)
    assert list(got) == [b for b in _BLOCKS if b in got]
    assert len(got) == (1 if variant == "tau_l" else 2)


@pytest.mark.parametrize("method", ["vit_rollout", "integrated_gradients", "random"])
def test_explain_blocks_on_a_vit(method):
    vit = _vit()
    x = torch.randn(2, 1, 16, 16)
    kw = {"n_steps": 4} if method == "integrated_gradients" else {}
    got = explain_blocks(vit, x, method=method, blocks=["patches"], target=1, **kw)
    torch.testing.assert_close(got["patches"], explain(vit, x, method=method, block="patches", target=1, **kw),
                               atol=1e-6, rtol=0)


def test_pixel_attribution_computed_once_for_all_blocks(monkeypatch):
    from dualattn.explain import posthoc

    calls = []

    def counting(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append(kw["method"])
        return posthoc.pixel_attribution(*args, **kw)

    monkeypatch.setattr(E, "pixel_attribution", counting)
    model = _unet("exact")
    x = torch.randn(2, 2, 32, 32)
    errors: dict[str, str] = {}
    maps = explain_blocks(model, x, method="lrp", blocks=("block1", "block2", "block3", "block4", "block9"),
                          target=0, errors=errors)
    assert calls == ["lrp"] and list(maps) == ["block1", "block2", "block3", "block4"] and list(errors) == ["block9"]
    for block, m in maps.items():
        torch.testing.assert_close(m, explain(model, x, method="lrp", block=block, target=0), atol=1e-6, rtol=0)
    # a fixed grid serves every block
    calls.clear()
    fixed = explain_blocks(model, x, method="ixg", blocks=_BLOCKS, target=0, grid=(2, 2))
    assert calls == ["input_x_gradient"]
    for m in fixed.values():
        torch.testing.assert_close(m, explain(model, x, method="ixg", target=0, grid=(2, 2)), atol=1e-6, rtol=0)
    # no block applies: no attribution at all
    calls.clear()
    assert explain_blocks(model, x, method="lrp", blocks=("block9",), errors={}) == {} and calls == []


def test_explain_blocks_errors():
    model = _unet("exact")
    x = torch.randn(1, 2, 32, 32)
    for method in ("exact", "gradcam", "lrp"):
        errors: dict[str, str] = {}
        maps = explain_blocks(model, x, method=method, blocks=("block3", "block9"), errors=errors)
        assert list(maps) == ["block3"] and list(errors) == ["block9"] and "block9" in errors["block9"]
        with pytest.raises(ValueError, match="block 'block9'"):
            explain_blocks(model, x, method=method, blocks=("block3", "block9"))
    errors = {}
    assert explain_blocks(model, x, method="vit_rollout", blocks=_BLOCKS, errors=errors) == {}
    assert list(errors) == list(_BLOCKS) and "ViT" in errors["block3"]
    # the caller's mistakes raise whatever errors is
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        explain_blocks(model, x, method="nope", blocks=_BLOCKS, errors={})
    with pytest.raises(ValueError, match="n_steps"):
        explain_blocks(model, x, method="gradcam", blocks=_BLOCKS, errors={}, n_steps=3)
    with pytest.raises(ValueError, match="images"):
        explain_blocks(model, x[0], method="exact", blocks=_BLOCKS, errors={})
    assert explain_blocks(model, x, method="exact", blocks=()) == {}
