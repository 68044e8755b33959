"""Scale-out with ``jax.sharding``: a 1-D data mesh, sharded batches, per-sample sweeps over the
mesh, data-parallel training steps and multi-host initialisation.

Rules (one per kind of work):

* **Training** is data parallel: the batch's leading axis is sharded over the mesh axis
  ``"data"``; parameters, optimiser state and keys are replicated. :func:`data_parallel` jits the
  step ONCE with these ``in_shardings``/``out_shardings`` and XLA's partitioner inserts the
  gradient all-reduce, so the step computes exactly the single-device mathematics (same key ->
  same ``t``/``eps`` draws, because ``jax_threefry_partitionable`` makes random bits independent
  of the sharding). A batch that does not divide the device count is an error
  (:func:`shard_batch`): padding would change the batch mean.
* **Per-sample work** (Jacobians, probe estimates, loop integrals, likelihoods, samples) goes
  through :func:`shard_over_samples`: ``jax.shard_map`` runs the function on each device's slice
  of the samples, so each sample sees the same computation as on one device. Here a count that
  does not divide the device count is padded (by repeating the last sample, always a valid
  input) and the padding is cut from the result, which therefore matches the unsharded call.
* **Checkpoints** are the ordinary orbax checkpoints of :class:`wgfm.checkpoint.Checkpointer`:
  orbax restores into the sharding of the ``like`` tree, so a checkpoint written on any mesh
  restores on one device (a plain ``like``) or on a mesh (``like = replicate(state, mesh)``).

Multi-host launch (one process per host, the same command everywhere; every process sees
the same data and computes the same global batch indices)::

    WGFM_COORDINATOR=host0:1234 WGFM_NUM_PROCESSES=4 WGFM_PROCESS_ID=$RANK wgfm train ...

(add ``--devices N`` to use N of the devices), or from Python ``distributed_init("host0:1234",
4, rank)`` before any other JAX call; on SLURM/TPU pods
``WGFM_DISTRIBUTED=1`` lets ``jax.distributed.initialize()`` detect the cluster. The mesh then
spans ``jax.devices()`` of all hosts; :func:`shard_batch` places the global batch (or, with
``process_local=True``, each host's own slice) over it.
"""

from .hosts import distributed_init, setup_devices
from .mesh import (
    DATA_AXIS,
    data_sharding,
    make_mesh,
    pad_batch,
    replicate,
    replicated_sharding,
    shard_batch,
)
from .samples import shard_over_samples, sweep_over_mesh
from .training import data_parallel

__all__ = [
    "DATA_AXIS",
    "data_parallel",
    "data_sharding",
    "distributed_init",
    "make_mesh",
    "pad_batch",
    "replicate",
    "replicated_sharding",
    "setup_devices",
    "shard_batch",
    "shard_over_samples",
    "sweep_over_mesh",
]
