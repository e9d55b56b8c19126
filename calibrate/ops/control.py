"""Control flow: If runs the chosen branch with its outer-scope values (Loop and Scan are
rejected by the executor)."""
from __future__ import annotations

from calibrate.ops.registry import Spec, op, wants_run


@op("If")
def if_(spec: Spec):
    then_branch = spec.compile(spec.attrs["then_branch"])
    else_branch = spec.compile(spec.attrs["else_branch"])
    outer = list(spec.extra.get("outer", []))

    @wants_run
    def run(ctx, cond, *values):
        env = dict(zip(outer, values))
        branch = then_branch if bool(cond) else else_branch
        return branch.run(ctx, [env[name] for name in branch.input_names])
    return run
