"""The gradient engine: what methods ask for, computed once per step, and the update.

Per step the engine offers (lazily, cached): the task losses; per-task gradients w.r.t. the
shared representation Z (T backward passes through the heads only, differentiable on
request); per-task gradients w.r.t. the shared parameters as a [T, P] Jacobian (a loop of T
backward passes, or one batched backward with ``is_grads_batched``, chunked). Then it turns
the method's answer into the gradients the optimizer applies:

- weighting: backpropagate Σ w_t L_t (+ penalties) once; if the method already asked for
  the Jacobian, the shared parameters get Jᵀw instead of another backward pass;
- aggregator: the shared parameters (or Z, for "rep" aggregators) get the aggregated
  direction; every head gets the gradient of its own task's loss (times the factor the
  aggregator gives it, if any: Nash-MTL, DB-MTL);
- regularizers: their penalty's gradient is added to everything it reaches.

Read in this order:

- ``buffers.py``: flat gradient buffers whose slices are the parameters' ``.grad``;
- ``precision.py`` and ``parallel.py``: fp16 loss scaling and data parallelism, each one
  object whose operations do nothing when it is off;
- ``passes.py``: ``GradientEngine``, the parameters, the Jacobian passes and the writing of
  a direction into the buffers;
- ``context.py``: ``TrainStepContext``, what a method asks for during one step (the
  representation passes included), cached;
- ``update.py``: ``apply_update``, one short path per kind of method;
- ``stats.py``: the sums over an epoch's steps.

With fp16 loss scaling (engine/core/amp.py) every backward pass here starts from scaled losses
and what a method sees is unscaled at once; ``.grad`` stays scaled until the trainer's
optimizer step.
"""
