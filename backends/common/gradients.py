"""Gradients of a batch split into shards (one per thread where the backend wants them)."""

from __future__ import annotations


def sharded_value_and_grad(ops, loss_fn, variables: list, args, batched: tuple[int, ...]):
    """``loss_fn(*args)``'s terms and d terms["total"] / d variables, the batch split into
    ``ops.shards`` (the arguments at positions ``batched`` are cut along their first axis)
    whose terms and gradients add up: ``loss_fn`` must divide its sums by whole-batch counts.
    """
    shards = ops.shards(args[0])
    if len(shards) == 1:
        return ops.value_and_grad(lambda: loss_fn(*args), variables)

    def one(shard):
        sub = [a[shard] if i in batched else a for i, a in enumerate(args)]
        return ops.value_and_grad(lambda: loss_fn(*sub), variables)

    results = ops.run_sharded(one, shards)
    terms = {k: sum(r[0][k] for r in results) for k in results[0][0]}
    return terms, ops.add_lists([r[1] for r in results])
