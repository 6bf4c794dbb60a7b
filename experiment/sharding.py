"""Where arrays live: one mesh axis, `data`, over every device of every process.
Batches are split over it; the train state (parameters, optimizer state, method
variables) is either replicated (`config.sharding="data"`, data parallel) or
split over the same axis (`"fsdp"`: each array along its largest dimension that
the device count divides; arrays with no such dimension, or smaller than
`MIN_SHARDED`, stay replicated). The rule depends only on shapes, so the jitted
step re-derives it when a shrink or an N:M frame change retraces it.
`initialize` joins the processes of a multi-process run first.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiment.config import ConfigError

KINDS = ("data", "fsdp")
MIN_SHARDED = 1024  # Elements; smaller arrays are cheaper to replicate than to gather.


def initialize(config) -> None:
  """Joins the other processes of a multi-process run (before JAX touches a device): from config.distributed if
  its coordinator is set, else from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID if the first is
  set; otherwise this is the only process."""
  d = config.distributed
  if d.coordinator:
    address, count, index, source = d.coordinator, d.num_processes, d.process_id, "config.distributed"
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    try:
      address, count, index = (os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
    except (KeyError, ValueError) as e:
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers "
                        f"({e!r})") from None
    source = "JAX_NUM_PROCESSES / JAX_PROCESS_ID"
  else:
    return
  if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
    raise ConfigError(f"{source}: process {index} of {count}: need 0 <= process_id < num_processes")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # How CPU processes talk; GPUs and TPUs ignore it.
  jax.distributed.initialize(address, count, index)


def mesh() -> Mesh:
  # Auto axes: XLA propagates shardings (Explicit axes would need one on every reshape).
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def batch_placer(mesh: Mesh, *, whole: bool = False):
  """Turns a numpy batch into a global array split over `data`. The batch is this process's share of the global
  batch (the train iterator's), or, with `whole`, the whole global batch (evaluation's), of which it keeps its share."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  index, count = jax.process_index(), jax.process_count()
  share = lambda v: v[index * len(v) // count:(index + 1) * len(v) // count] if whole else v
  return lambda batch: {k: jax.make_array_from_process_local_data(sharding, share(np.asarray(v))) for k, v in batch.items()}


def spec(shape: tuple[int, ...], kind: str, devices: int) -> PartitionSpec:
  """The PartitionSpec of an array of `shape` in the train state."""
  if kind == "data" or devices == 1 or int(np.prod(shape)) < MIN_SHARDED:
    return PartitionSpec()
  divisible = [axis for axis, size in enumerate(shape) if size % devices == 0]
  if not divisible:
    return PartitionSpec()
  axis = max(divisible, key=lambda a: (shape[a], -a))
  return PartitionSpec(*[None] * axis, "data")  # No trailing Nones: the form XLA's outputs carry.


def shardings(tree, mesh: Mesh, kind: str):
  """The NamedSharding of every array of `tree`, by `spec`."""
  return jax.tree.map(lambda x: NamedSharding(mesh, spec(x.shape, kind, mesh.size)), tree)


def place(tree, mesh: Mesh, kind: str):
  """`tree` on the devices, laid out by `spec`."""
  return jax.device_put(tree, shardings(tree, mesh, kind))


def constrain(tree, mesh: Mesh, kind: str):
  """Inside jit: `tree`'s arrays laid out by `spec` (the layout the step's outputs keep)."""
  return jax.lax.with_sharding_constraint(tree, shardings(tree, mesh, kind))
