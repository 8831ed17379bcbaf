"""The private PyTorch APIs fastaevb relies on live in ``fastaevb/_torch_private.py`` alone, and
each still does what that module says (a torch upgrade that moves one fails here first)."""

from __future__ import annotations

import pathlib
import re

import torch

from fastaevb import _torch_private as private

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_other_module_reaches_into_torch_internals():
    pattern = re.compile(r"\btorch\._[A-Za-z]|\bfrom torch\._|\btorch\.nn\._reduction|super\(torch\.autograd\.Function")
    offenders = []
    for path in [*(ROOT / "fastaevb").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]:
        if path.name == "_torch_private.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "``" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "private torch APIs outside fastaevb/_torch_private.py:\n" + "\n".join(offenders)


def test_autocast_and_functorch_probes():
    assert not private.autocast_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert private.autocast_enabled()
    assert not private.functorch_active()
    seen = []
    torch.vmap(lambda t: seen.append(private.functorch_active()) or t)(torch.zeros(2, 3))
    assert seen == [True]


def test_graph_kept_follows_retain_graph():
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            seen.append(private.graph_kept())
            return g

    t = torch.ones(2, requires_grad=True)
    Probe.apply(t).sum().backward(retain_graph=True)
    Probe.apply(t).sum().backward()
    assert seen == [True, False]


def test_foreach_multiplies_and_fast_apply_runs_a_function():
    a, b = torch.ones(3), torch.full((2,), 2.0)
    assert [t.tolist() for t in private.foreach_mul([a, b], torch.tensor(3.0))] == [[3.0] * 3, [6.0] * 2]
    private.foreach_mul_([a], torch.tensor(0.5))
    assert a.tolist() == [0.5] * 3

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return 2 * t

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    t = torch.ones(2, requires_grad=True)
    private.fast_apply(Double, t).sum().backward()
    assert t.grad.tolist() == [2.0, 2.0]


def test_legacy_reduction_and_functional_tracing_probe():
    assert private.legacy_get_string(True, True) == "mean" and private.legacy_get_string(False, True) == "sum"
    assert private.legacy_get_string(None, False) == "none"
    assert not private.is_functional_tracing()
