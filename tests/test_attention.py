"""Attention read from the graph: whole heads are units (q, k, v columns, the attention map,
the output projection's rows, per-head constants), in hand-built graphs and in both torch
exporters' forms of a fused and a separate-projection ViT block; the oracle on each."""
import numpy as np
import pytest

from onnxprune.analysis.rules.reshape import best_axis
from onnxprune.api import analyze, prune
from onnxprune.config import PruneConfig, Target, TargetKind
from onnxprune.plan.planner import chunk_shape, reachable_minimum
from onnxprune.report.record import analysis_text
from tiny import Units, attention, make, node, prunes_exactly


def _head_columns(heads: int, head_dim: int, h: int, parts: int) -> np.ndarray:
    """Columns of a [C, parts*C] projection that belong to head h (q, k, v blocks)."""
    c = heads * head_dim
    return np.concatenate([s * c + h * head_dim + np.arange(head_dim) for s in range(parts)])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads,head_dim", [(4, 4), (3, 4), (2, 8), (6, 2)])
def test_a_unit_is_a_whole_head(fused, heads, head_dim):
    """H = 3 ties the q / k / v axis of the fused reshape in unit count; H = Dh ties the head
    dim; H > Dh makes the heads the finest axis: every case gives one unit per head."""
    u = Units(attention(heads, head_dim, fused=fused))
    q = u.of("q")
    assert len(np.unique(q)) == heads and not u.blocked("q").any()
    for t in ("k", "v", "scores", "attn", "ctx"):
        assert np.array_equal(u.of(t), q), t
    proj = u.of_param("proj_w", 0)
    for h in range(heads):
        rows = h * head_dim + np.arange(head_dim)
        assert (proj[rows] == q[h]).all()
        if fused:
            assert (u.of_param("qkv_w", 1)[_head_columns(heads, head_dim, h, 3)] == q[h]).all()
            assert (u.of_param("qkv_b", 0)[_head_columns(heads, head_dim, h, 3)] == q[h]).all()
        else:
            for t in "qkv":
                assert (u.of_param(f"{t}_w", 1)[rows] == q[h]).all()
    heads_groups = [g for g in u.analysis.groups if g.heads]
    assert len(heads_groups) == 1 and len(heads_groups[0].units) == heads
    assert prunes_exactly(attention(heads, head_dim, fused=fused)) > 0


@pytest.mark.parametrize("fused", [True, False])
def test_a_per_head_bias_table_is_sliced_with_its_head(fused):
    """Swin's relative position bias, LeViT's attention biases: one [H, N, N] slice per head."""
    u = Units(attention(4, 4, fused=fused, bias_table=True))
    assert np.array_equal(u.of_param("table", 1), u.of("q"))
    assert prunes_exactly(attention(4, 4, fused=fused, bias_table=True)) > 0


def test_a_single_head_is_blocked_with_its_reason():
    """One head of 8: no other axis to map, and q @ kT sums over the head dim, which has no
    weight to slice (head-dim units are not built yet)."""
    u = Units(attention(1, 8))
    assert u.blocked("q").all() and u.blocked("k").all()
    assert any(r.endswith("MatMul sums over the channels of both operands")
               for r in u.reasons("q"))


def test_heads_ignore_round_to_and_the_attention_maps_count_in_m():
    analysis = analyze(attention(4, 8, tokens=6))
    group = next(g for g in analysis.groups if g.heads)
    assert chunk_shape(group, 8, 0.9) == (1, 1)
    assert chunk_shape(group, 8, 0.5) == (1, 2)
    before = analysis.costs.costs().mem
    minimum = reachable_minimum(analysis.channels, analysis.groups, analysis.costs, 8, 0.9)
    # three of four heads go: their qkv columns (3 x 6 x 8 each) and maps (6 x 6) and ctx
    per_head = 3 * 6 * 8 + 6 * 6 + 6 * 8
    assert before - minimum.mem == 3 * per_head
    assert " hd " in analysis_text(analysis, minimum)


def test_best_axis_skip_walks_the_other_axes_inner_first():
    in_shape, out_shape = (1, 5, 36), (1, 5, 3, 3, 4)  # [B,N,3C] -> [B,N,3,H,Dh], H = 3
    assert best_axis(in_shape, 2, out_shape)[0] == 4          # the head dim: 4 units
    assert best_axis(in_shape, 2, out_shape, skip=1)[0] == 3  # heads before q / k / v
    assert best_axis(in_shape, 2, out_shape, skip=2)[0] == 2
    assert best_axis(in_shape, 2, out_shape, skip=3)[0] == 4  # past the others: the finest


@pytest.mark.parametrize("indices,axis,passes", [(0, 0, True), ([0, 2], 2, True), (1, 1, False)])
def test_gather_passes_channels_on_another_axis(indices, axis, passes):
    """x[:, 0] (a class token) and qkv[0] pass channels; picking channels by index blocks."""
    c1 = node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1])
    gather = node("Gather", ["a", "i"], ["g"], axis=axis)
    shape = [1, 4, 3, 3]
    m = make([c1, gather], {"x": shape}, ["g"], {"w1": (4, 2, 1, 1),
                                                "i": np.array(indices, np.int64)})
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2
    u = Units(m)
    reasons = " ".join(u.reasons("a"))
    assert ("picks channels by index" not in reasons) == passes


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("fused", [True, False])
def test_exported_vit_prunes_heads_exactly(tmp_path, exporter, fused):
    """A two-block ViT as torch exports it: every block's heads are one group and a prune to
    M 0.5 (below what the MLP alone reaches) passes the oracle."""
    torch = pytest.importorskip("torch")
    from onnxprune.models.fashion_vit import ViT

    torch.manual_seed(0)
    model = ViT(image=12, patch=4, dim=16, depth=2, heads=4, mlp=32, fused=fused).eval()
    path = tmp_path / "vit.onnx"
    x = torch.randn(1, 1, 12, 12)
    if exporter == "torchscript":  # a dynamic batch: the reshapes' shapes come from Shape ops
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    else:
        torch.onnx.export(model, (x,), None, dynamo=True).save(str(path))
    analysis = analyze(str(path))
    heads = [g for g in analysis.groups if g.heads]
    assert len(heads) == 2 and all(len(g.units) == 4 and not g.blocked for g in heads)
    config = PruneConfig(target=Target(TargetKind.MEM, 0.5), round_to=1)
    result = prune(str(path), config)  # raises if the oracle fails
    assert result.plan.after.mem <= 0.5 * result.plan.before.mem
    assert result.error <= 1e-4
    assert any(result.plan.removed[g.units].any() for g in heads)
