"""Attention read from the graph: whole heads are units (q, k, v columns, the attention map,
the output projection's rows, per-head constants), in hand-built graphs and in both torch
exporters' forms of a fused and a separate-projection ViT block; the oracle on each."""
import numpy as np
import pytest

from onnxprune.analysis.flow import param_key, tensor_key
from onnxprune.analysis.rules.reshape import best_axis
from onnxprune.api import analyze, prune, random_plan
from onnxprune.config import AttentionUnits, PruneConfig, Target, TargetKind
from onnxprune.plan.planner import chunk_shape, reachable_minimum
from onnxprune.report.record import analysis_text
from onnxprune.rewrite.surgery import apply_plan
from onnxprune.verify.oracle import verify
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


# ------------------------------------------------------------------ head dims (--attention dims)

def _dims(model):
    return analyze(model, attention=AttentionUnits.DIMS)


def _prunes_dims_exactly(model, plans: int = 6) -> set[str]:
    """Random plans in head-dim mode, each through the oracle; the roles of their slices."""
    analysis, rng, roles = _dims(model), np.random.default_rng(0), set()
    for _ in range(plans):
        pruned, slices = apply_plan(analysis.channels, random_plan(analysis, rng))
        verify(analysis.model, pruned, slices, runs=1)
        roles |= {s.role.value for s in slices}
    return roles


def test_head_dim_j_of_a_fused_projection_is_masked_at_its_producers():
    """Channel j of every head: q, k and v columns j (fused: one Reshape axis ties them), the
    proj rows h*Dh + j; q @ kT sums it, so its qkv columns and bias are role mask."""
    heads, head_dim = 3, 4
    model = attention(heads, head_dim)
    channels = _dims(model).channels
    q = channels.labels[channels.nodes(tensor_key("q"))]
    assert len(np.unique(q)) == head_dim and channels.masked[q].all()
    assert not channels.blocked[q].any()
    qkv = channels.labels[channels.nodes(param_key("qkv_w", 1))]
    proj = channels.labels[channels.nodes(param_key("proj_w", 0))]
    for j in range(head_dim):
        cols = [s * heads * head_dim + h * head_dim + j for s in range(3) for h in range(heads)]
        assert (qkv[cols] == q[j]).all()
        assert (proj[np.arange(heads) * head_dim + j] == q[j]).all()
    assert {"mask", "sink"} <= _prunes_dims_exactly(model)


def test_separate_projections_give_v_its_own_head_dims():
    """q and k share index j (masked); v's head dims are plain units with sinks."""
    channels = _dims(attention(3, 4, fused=False)).channels
    q, k, v = (channels.labels[channels.nodes(tensor_key(t))] for t in "qkv")
    assert np.array_equal(q, k) and channels.masked[q].all()
    assert not set(v) & set(q) and not channels.masked[v].any() and not channels.blocked[v].any()
    assert {"mask", "sink", "producer"} <= _prunes_dims_exactly(attention(3, 4, fused=False))


def test_a_masked_unit_through_an_op_that_breaks_zero_is_blocked():
    """Sigmoid(0) = 0.5: zeroing q's producers would not remove its term from q @ kT."""
    model = attention(1, 8)
    for n in model.graph.node:
        if n.op_type == "Mul" and n.input[0] == "q":
            n.input[0] = "q_gate"
    model.graph.node.insert(0, node("Sigmoid", ["q"], ["q_gate"]))
    order = [n.output[0] for n in model.graph.node]
    model.graph.node.sort(key=lambda n: order.index("q_gate") + 0.5 if n.op_type == "Sigmoid"
                          else order.index(n.output[0]))
    channels = _dims(model).channels
    labels = channels.labels[channels.nodes(tensor_key("q"))]
    assert channels.blocked[labels].all()
    reasons = {r for c in np.unique(labels) for r in channels.reasons.get(int(c), [])}
    assert any("does not map zero to zero" in r for r in reasons)


def test_fisher_masks_the_product_operands_of_a_masked_unit():
    from calibrate.sites import mask_sites

    channels = _dims(attention(3, 4, fused=False)).channels
    names = {s.tensor for s in mask_sites(channels)}
    product = next(n for n in channels.model.graph.node if n.output[0] == "scores")
    assert set(product.input) <= names


def test_cli_head_dims_report_recomputes_the_oracle(tmp_path):
    """`--attention dims` end to end: the report's sink and mask slices zeroed in the original
    give the pruned model's outputs."""
    import json

    import onnx
    import onnxruntime as ort

    from onnxprune.cli.main import main
    from tiny import zero_sinks

    src, out, report = tmp_path / "a.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    onnx.save(attention(2, 8, tokens=6), src)
    assert main([str(src), "--target-mem", "0.6", "--attention", "dims", "--round-to", "1",
                 "-o", str(out), "--report", str(report)]) == 0
    record = json.loads(report.read_text())
    assert "mask" in {s["role"] for s in record["slices"]}
    reference = zero_sinks(onnx.load(src), record["slices"])
    x = {"x": np.random.default_rng(3).standard_normal((1, 16, 6)).astype(np.float32)}
    want = ort.InferenceSession(reference.SerializeToString()).run(None, x)[0]
    got = ort.InferenceSession(str(out)).run(None, x)[0]
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert record["options"]["attention"] == "dims"


def test_fisher_scores_the_masked_head_dims_of_an_exported_vit(tmp_path):
    """Separate q / k projections: their head dims have no sink, only the product's operands,
    and still get a Fisher score (a unit with no site would score 0 and go first)."""
    torch = pytest.importorskip("torch")
    from calibrate.data import open_data
    from calibrate.scoring import data_scores
    from onnxprune.config import CalibrationConfig, Criterion
    from onnxprune.model.graph import input_specs
    from onnxprune.models.fashion_vit import ViT

    torch.manual_seed(0)
    model = ViT(image=12, patch=4, dim=16, depth=1, heads=2, mlp=32, fused=False).eval()
    path = tmp_path / "vit.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 12, 12),), None, dynamo=True).save(str(path))
    analysis = _dims(str(path))
    masked = np.flatnonzero(analysis.channels.masked & ~analysis.channels.blocked)
    assert len(masked) == 8  # head dims of q and k
    rng = np.random.default_rng(0)
    chunks = [({"x": rng.standard_normal((1, 1, 12, 12)).astype(np.float32)},
               rng.integers(0, 10, 1)) for _ in range(8)]
    data = open_data(chunks, input_specs(analysis.model))
    result = data_scores(analysis.channels, Criterion.FISHER, data,
                         CalibrationConfig(batch_size=1, max_batches=None), 0)
    assert (result.scores[masked] > 0).all()


def test_an_analysis_is_reused_only_with_the_same_attention_units():
    from onnxprune.errors import UserError

    analysis = analyze(attention(2, 8))
    config = PruneConfig(target=Target(TargetKind.MEM, 0.8), attention=AttentionUnits.DIMS)
    with pytest.raises(UserError, match="attention units of heads"):
        prune(analysis, config)
