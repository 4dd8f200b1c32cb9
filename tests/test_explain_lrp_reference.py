"""dualattn.explain.lrp checked against zennit (the LRP authors' library) and a written-out reference.

* The U-Net encoder baseline: our composite (Captum underneath) against zennit's own rules (``Epsilon``,
  ``Gamma``, ``Norm``) with its ``SequentialMergeBatchNorm`` canonizer, layer by layer the same composite, in
  float64. One difference is by design of the two libraries: Captum's gamma rule changes a layer's weights
  only, zennit's (like Montavon et al. 2019, whose denominator sums over the bias too) adds ``gamma * b+`` to
  the bias as well. With no bias in the gamma layers the two agree to float rounding; with folded BatchNorm
  biases they agree once zennit's gamma is built (from its own ``BasicHook`` / ``GammaMod``) on the weights only.
* A gated model (``dual``, the recipe's cascaded gate): the features are multiplied by the map (``h * N w``).
  A reference written out here (every rule as a formula, the gate's softmax / normalization / product by hand)
  computes LRP with three treatments of that product: as autograd passes a gradient, the way Captum does
  (what ours computed while the product was a plain op) and the way zennit does (neither library has a rule
  for it), and the signal-take-all treatment (all relevance of ``h * N w`` to ``h``, none to the map: the map
  as a constant weighting, Arras et al. 2017). Each library matches the reference with its own treatment to
  float rounding; ours now gives every ``FeatureWeighting`` the signal-take-all rule and matches that one,
  the only treatment that conserves relevance.

zennit 0.5.1 imports its torchvision canonizers when the package is imported, and torchvision does not
install beside the CPU torch here; the tests give that import a stand-in module with the two class names it
asks for (none of the zennit code used here touches it) and skip when zennit itself is missing.
``scripts/setup.sh`` installs zennit with ``--no-deps``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dualattn.explain.lrp as L
from dualattn.explain.lrp import LRP_RULES, LRPRule, describe_lrp_rules, lrp_attribution
from dualattn.models import FeatureWeighting, create_model, weight_features
from dualattn.train.recipes import DUAL_GATE


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _load_zennit() -> types.ModuleType | None:
    """``zennit`` (imported with a torchvision stand-in where torchvision is missing), or None."""
    if importlib.util.find_spec("zennit") is None:
        return None
    if "zennit" in sys.modules:
        return sys.modules["zennit"]
    names = ("torchvision", "torchvision.models", "torchvision.models.resnet")
    saved = {name: sys.modules.get(name) for name in names}
    if importlib.util.find_spec("torchvision") is None:
        tv, models, resnet = (types.ModuleType(name) for name in names)
        resnet.BasicBlock = type("BasicBlock", (), {})  # only subclassed / isinstance-checked by zennit.torchvision
        resnet.Bottleneck = type("Bottleneck", (), {})
        tv.models, models.resnet = models, resnet
        sys.modules.update(dict(zip(names, (tv, models, resnet))))
    try:
        import zennit
        import zennit.canonizers
        import zennit.composites
        import zennit.core
        import zennit.rules
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return zennit


@pytest.fixture(scope="module")
def zennit():
    module = _load_zennit()
    if module is None:
        pytest.skip("zennit is not installed (scripts/setup.sh: pip install --no-deps zennit)")
    return module


def _randomize(model: nn.Module, *, shifts: bool) -> nn.Module:
    """BatchNorm statistics and affine parameters as after training (``shifts=False``: every folded bias 0, and
    the head's and gates' biases 0 too); the dual witness away from zero."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.running_mean.copy_(0.5 * torch.randn(n, generator=g) if shifts else torch.zeros(n))
                m.bias.copy_(0.2 * torch.randn(n, generator=g) if shifts else torch.zeros(n))
            elif not shifts and isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
        witness = getattr(model, "witness", None)
        if witness is not None:
            witness.lam.copy_(0.5 * torch.randn(witness.lam.shape, generator=g))
    return model


def _model(variant: str, *, shifts: bool, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"img_size": 32, **DUAL_GATE} if variant == "dual" else {}
    model = create_model("unet_encoder", variant=variant, in_channels=4, features=4, **kw)
    return _randomize(model.double().eval(), shifts=shifts)


def _roles(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """Weight layer -> role of the composite (the middle rule where a lower layer is not followed by a ReLU)."""
    return {r["layer"]: "middle" if r["note"] else r["role"] for r in describe_lrp_rules(model, x[:1])["layers"]}


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ---------------------------------------------------------------- zennit with the same composite
def _zennit_lrp(zennit, model, x, target, roles, *, gamma_on_weights_only: bool) -> torch.Tensor:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import NameMapComposite
    from zennit.core import BasicHook, Stabilizer
    from zennit.rules import Epsilon, Gamma, GammaMod, Norm

    def gamma(value: float):
        if not gamma_on_weights_only:
            return Gamma(gamma=value, stabilizer=1e-9)
        stab = Stabilizer(1e-9)
        return BasicHook(input_modifiers=[lambda a: a],
                         param_modifiers=[GammaMod(value, min=0.0, param_keys=["weight"])],
                         output_modifiers=[lambda z: z], gradient_mapper=lambda g, outs: g / stab(outs[0]),
                         reducer=lambda ins, grads: ins[0] * grads[0])  # fmt: skip

    def rule(r: LRPRule):
        if r.kind == "gamma":
            return gamma(r.value)
        return Epsilon(epsilon=r.value if r.kind == "epsilon" else 1e-9)

    m = copy.deepcopy(model)
    merged = SequentialMergeBatchNorm().apply(m)
    for inst in merged:  # a merged BatchNorm computes x / sqrt(1 + eps): make it the identity it stands for
        inst.batch_norm.eps = 0.0
    assert len(merged) == sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    name_map = [((name,), rule(LRP_RULES[role])) for name, role in roles.items()]
    pools = tuple(n for n, mod in m.named_modules() if isinstance(mod, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)))
    name_map.append((pools, Norm(stabilizer=1e-9)))  # LRP-0 on the poolings, as ours
    xi = x.clone().requires_grad_(True)
    with NameMapComposite(name_map=name_map).context(m) as hooked:
        out = hooked(xi)
        start = torch.zeros_like(out)
        idx = torch.arange(len(target))
        start[idx, target] = out[idx, target].detach()  # relevance starts at the target logit, as Captum's
        (rel,) = torch.autograd.grad(out, xi, start)
    return rel


@pytest.mark.parametrize("shifts", [False, True])
def test_baseline_matches_zennit(zennit, shifts):
    model = _model("baseline", shifts=shifts)
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    t = torch.tensor([0, 1])
    roles = _roles(model, x)
    assert list(roles.values()) == ["input"] + ["lower"] * 3 + ["middle"] * 3 + ["upper"] * 4
    ours = lrp_attribution(model, x, target=t)  # float32 out of a float64 computation
    same = _zennit_lrp(zennit, model, x, t, roles, gamma_on_weights_only=True)
    assert _max_rel(ours, same) < 1e-6
    stock = _zennit_lrp(zennit, model, x, t, roles, gamma_on_weights_only=False)
    if shifts:  # folded BatchNorm biases in the gamma layers: zennit's gamma also raises the positive biases
        assert _max_rel(ours, stock) > 1e-3
    else:
        assert _max_rel(ours, stock) < 1e-6


# ---------------------------------------------------------------- a written-out reference for the gated model
def _sign0(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _signal(fn, weight, a, g, rule: LRPRule) -> torch.Tensor:
    """``W'^T (g / stab(W' a + b))`` of a linear layer ``fn(a, W)``: gamma changes the weights (not the bias),
    the stabilizer is ``eps * sign(z)`` with sign(0) = +1 (1e-9 for LRP-0 and gamma). The layer's relevance at
    its input is ``a *`` this."""
    w = weight + rule.value * weight.clamp(min=0) if rule.kind == "gamma" else weight
    eps = rule.value if rule.kind == "epsilon" else 1e-9
    a = a.detach().requires_grad_(True)
    z = fn(a, w)
    (c,) = torch.autograd.grad(z, a, (g / (z + eps * _sign0(z))).detach())
    return c


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    if bn is None:
        return w, b
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return w * s[:, None, None, None], (b - bn.running_mean) * s + bn.bias.detach()


def reference_lrp_dual(model, x, target, roles, *, product: str, rules=LRP_RULES) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite LRP of the ``dual`` U-Net encoder, every step written out; returns ``(relevance, logits)``.

    ``product`` says what happens at ``p = h * N w`` (the gated features), with ``R_p`` the relevance of ``p``
    and ``g_U`` the signal the gate's first conv sends back to ``h`` (relevance of the gate reaches ``h``
    through the map's softmaxes, the normalizations and the gate's convs, each conv with its rule):

    * ``"captum"``: ``R_h = h * (R_p * N w + g_U)``: Captum multiplies everything arriving at ``h`` by ``h``,
      the product's own share included (ours);
    * ``"zennit"``: ``R_h = R_p * N w + h * g_U``: the product's gradient applied to relevance (zennit's);
    * ``"signal"``: ``R_h = R_p``: the map is a constant weighting, all of ``R_p`` goes to the features and
      none to the gate (conservative: the LRP treatment of multiplicative gates, Arras et al. 2017).
    """
    if product not in ("captum", "zennit", "signal"):
        raise ValueError(product)
    rule = {name: rules[role] for name, role in roles.items()}
    ops: list[tuple] = []
    for sname, stage in model.backbone.stages.items():
        mods = list(stage.named_children())
        i = 0
        while i < len(mods):
            name, m = mods[i]
            if isinstance(m, nn.MaxPool2d):
                ops.append(("maxpool", m.kernel_size))
                i += 1
            elif isinstance(m, nn.Conv2d):
                bn = mods[i + 1][1] if i + 1 < len(mods) and isinstance(mods[i + 1][1], nn.BatchNorm2d) else None
                w, b = _fold(m, bn)
                fn = (lambda a, w_, b=b, m=m: F.conv2d(a, w_, b, padding=m.padding, stride=m.stride))
                ops.append(("linear", f"backbone.stages.{sname}.{name}", fn, w))
                i += 2 if bn is not None else 1
            elif isinstance(m, nn.ReLU):
                ops.append(("relu",))
                i += 1
            else:
                raise TypeError(f"the reference knows no {type(m).__name__}")
        if sname in model.gates:
            ops.append(("gate", sname))

    def conv1(m):  # a gate's 1x1 conv as (fn, weight)
        b = None if m.bias is None else m.bias.detach()
        return (lambda a, w_, b=b: F.conv2d(a, w_, b)), m.weight.detach()

    fine = model.attention_blocks[0]
    acts, gates = [x], {}
    h = x
    for op in ops:  # forward, keeping what the backward needs
        if op[0] == "linear":
            h = op[2](h, op[3])
        elif op[0] == "relu":
            h = h.clamp(min=0)
        elif op[0] == "maxpool":
            h = F.max_pool2d(h, op[1])
        else:
            g = model.gates[op[1]]
            st: dict = {"v": h, "gate": g}
            z = h
            for key, m in (("1", g.U), ("2", g.U2)):
                if m is None:
                    continue
                fn, w = conv1(m)
                st["in" + key], st["y" + key] = z, fn(z, w)
                st["n" + key] = F.normalize(st["y" + key], dim=1, eps=g.eps)
                z = st["n" + key].clamp(min=0)
            fn, w = conv1(g.u)
            st["z_u"] = z
            phi = fn(z, w)[:, 0] * g.scale
            log_tau = torch.log_softmax(phi.flatten(1), 1).view_as(phi)
            lam = model.witness.lam.detach()[None].expand(h.shape[0], *model.witness.lam.shape)
            if op[1] == fine:
                f = h.shape[-1] // lam.shape[-1]
                logits_w = log_tau - lam.repeat_interleave(f, -2).repeat_interleave(f, -1)
            else:
                logits_w = log_tau + lam
            log_w = torch.log_softmax(logits_w.flatten(1), 1).view_as(logits_w)
            st["tau"], st["w"] = log_tau.exp(), log_w.exp()
            st["nw"] = (log_w + math.log(log_w[0].numel())).exp()
            gates[op[1]] = st
            h = h * st["nw"][:, None]
        acts.append(h)
    pooled = h.mean((2, 3))
    fc = (lambda a, w_: F.linear(a, w_, model.fc.bias.detach()))
    logits = fc(pooled, model.fc.weight.detach())
    rel = torch.zeros_like(logits)
    idx = torch.arange(len(target))
    rel[idx, target] = logits[idx, target]
    rel = pooled * _signal(fc, model.fc.weight.detach(), pooled, rel, rule["fc"])
    rel = h * (rel / (pooled + 1e-9 * _sign0(pooled)) / (h.shape[2] * h.shape[3]))[:, :, None, None]  # avg pool
    for k in reversed(range(len(ops))):  # backward
        op, a = ops[k], acts[k]
        if op[0] == "linear":
            rel = a * _signal(op[2], op[3], a, rel, rule[op[1]])
        elif op[0] == "maxpool":  # LRP-0: to the maximum of each window
            ar = a.detach().requires_grad_(True)
            z = F.max_pool2d(ar, op[1])
            (c,) = torch.autograd.grad(z, ar, (rel / (z + 1e-9 * _sign0(z))).detach())
            rel = a * c
        elif op[0] == "gate":
            st, g, name = gates[op[1]], gates[op[1]]["gate"], f"gates.{op[1]}"
            if product == "signal":
                continue  # R_h = R_p
            direct = rel * st["nw"][:, None]
            gl = (rel * acts[k + 1]).sum(1)  # d p / d log w = p, summed over channels
            gl = gl - st["w"] * gl.sum((1, 2), keepdim=True)  # log-softmax of the weights' logits
            gphi = gl - st["tau"] * gl.sum((1, 2), keepdim=True)  # log-softmax of the potentials
            fn, w = conv1(g.u)
            r = st["z_u"] * _signal(fn, w, st["z_u"], (gphi * g.scale)[:, None], rule[name + ".u"])
            for key, m in (("2", g.U2), ("1", g.U)):
                if m is None:
                    continue
                y = st["y" + key].detach().requires_grad_(True)
                (gy,) = torch.autograd.grad(F.normalize(y, dim=1, eps=g.eps), y, r * (st["n" + key] > 0))
                fn, w = conv1(m)
                sig = _signal(fn, w, st["in" + key], gy, rule[f"{name}.{'U' if key == '1' else 'U2'}"])
                r = st["in" + key] * sig if key == "2" else sig  # the first conv's signal meets h unmultiplied
            rel = st["v"] * (direct + r) if product == "captum" else direct + st["v"] * r
        # relu: relevance passes (it is zero wherever the activation is)
    return rel, logits


@pytest.fixture(scope="module")
def dual_case():
    model = _model("dual", shifts=True)
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return model, x, torch.tensor([0, 1])


def test_the_reference_is_the_model(dual_case):
    model, x, t = dual_case
    roles = _roles(model, x)
    assert [n for n in roles if n.startswith("gates.")] == [
        "gates.block3.U", "gates.block3.U2", "gates.block3.u", "gates.block4.U", "gates.block4.U2", "gates.block4.u"]
    _, logits = reference_lrp_dual(model, x, t, roles, product="captum")
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)


def test_ours_on_the_gated_model_is_the_reference_with_the_signal_take_all_rule(dual_case):
    model, x, t = dual_case
    roles = _roles(model, x)
    ours = lrp_attribution(model, x, target=t)
    ref, _ = reference_lrp_dual(model, x, t, roles, product="signal")
    assert _max_rel(ours, ref) < 1e-6
    for other in ("zennit", "captum"):  # the treatment of the product matters
        assert _max_rel(ours, reference_lrp_dual(model, x, t, roles, product=other)[0]) > 0.1


class _InlineProduct(nn.Module):
    """``h * N w`` as a plain op inside a module that is not a leaf (what the model computed before
    ``FeatureWeighting``): Captum hooks no module there, and relevance passes the product as a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Identity()  # a child: the module is not a leaf, so Captum does not hook it

    def forward(self, features, log_weights):  # noqa: ANN001, ANN201
        return weight_features(features, log_weights)


def _products_inline(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, FeatureWeighting)]
    for name in names:
        L.replace_module(model, name, _InlineProduct())
    return []


def test_with_the_product_a_plain_op_ours_was_the_reference_with_captums_product(dual_case, monkeypatch):
    """What LRP computed before the signal-take-all rule (the product a plain op) is the reference's "captum"
    treatment: the comparison behind docs/evaluation.md's numbers of how much the maps moved."""
    model, x, t = dual_case
    monkeypatch.setattr(L, "hold_maps_constant", _products_inline)
    roles = _roles(model, x)  # with the product a plain op, every layer's output reaches the logits
    old = lrp_attribution(model, x, target=t)
    ref, _ = reference_lrp_dual(model, x, t, roles, product="captum")
    assert _max_rel(old, ref) < 1e-6


def test_zennit_on_the_gated_model_is_the_reference_with_its_product(zennit):
    model = _model("dual", shifts=False)  # no bias in the gamma layers: the libraries' gamma rules agree
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1])
    roles = _roles(model, x)
    rel = _zennit_lrp(zennit, model, x, t, roles, gamma_on_weights_only=False)
    ref, _ = reference_lrp_dual(model, x, t, roles, product="zennit")
    assert _max_rel(rel, ref) < 1e-10
    assert _max_rel(lrp_attribution(model, x, target=t), ref) > 0.1


def test_only_the_constant_weighting_conserves_relevance_through_the_gates():
    """Bias-free and epsilons ~0 (gamma in the lower third): conservation holds exactly when the map is treated
    as a constant weighting (the reference's and ours, which agree); passing relevance through the gates as
    gradients (either library) does not."""
    model = _model("dual", shifts=False)
    x = torch.randn(2, 4, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 1])
    roles = _roles(model, x)
    zero, gamma = LRPRule("zero"), LRPRule("gamma", 0.25)
    conserving = {"input": zero, "lower": gamma, "middle": zero, "upper": zero}
    for product in ("signal", "captum", "zennit"):
        rel, logits = reference_lrp_dual(model, x, t, roles, product=product, rules=conserving)
        ratio = rel.flatten(1).sum(1) / logits[torch.arange(2), t]
        if product == "signal":
            torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=1e-6, atol=0)
            ours = lrp_attribution(model, x, target=t, rules=conserving)
            assert _max_rel(ours, rel) < 1e-6
            ours_ratio = ours.double().flatten(1).sum(1) / logits[torch.arange(2), t]
            torch.testing.assert_close(ours_ratio, torch.ones_like(ratio), rtol=1e-6, atol=0)
        else:
            assert float((ratio - 1).abs().min()) > 1.0, (product, ratio)
