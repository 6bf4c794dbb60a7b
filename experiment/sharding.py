"""Where arrays live: one mesh axis, `data`, over every device of every process.
Batches are split over it; the train state (parameters, optimizer state, method
variables) is either replicated (`config.sharding="data"`, data parallel) or
split over the same axis (`"fsdp"`: each array along its largest dimension that
the device count divides; arrays with no such dimension, or smaller than
`MIN_SHARDED`, stay replicated). The rule depends only on shapes, so the jitted
step re-derives it when a shrink or an N:M frame change retraces it.
`initialize` joins the processes of a multi-process run first: given, or those
a cluster manager started (SLURM, Open MPI, Cloud TPU).
"""

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiment.config import ConfigError

KINDS = ("data", "fsdp")
MIN_SHARDED = 1024  # Elements; smaller arrays are cheaper to replicate than to gather.


def initialize(config) -> None:
  """Joins the other processes of a multi-process run (before JAX touches a device), as the first of these says:
  config.distributed if its coordinator is set ("auto": JAX finds the cluster itself); JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID if the first is set; a cluster manager that started this command as several
  processes (`cluster_processes`). Otherwise this is the only process."""
  d = config.distributed
  if d.coordinator == "auto":
    args = ()
  elif d.coordinator:
    args = _checked(d.coordinator, d.num_processes, d.process_id, "config.distributed")
  elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
    try:
      count, index = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers "
                        f"({e!r})") from None
    args = _checked(os.environ["JAX_COORDINATOR_ADDRESS"], count, index, "JAX_NUM_PROCESSES / JAX_PROCESS_ID")
  elif cluster_processes(os.environ) > 1:
    args = ()  # JAX reads the same variables for the coordinator, the process count and this process's index.
  else:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # How CPU processes talk; GPUs and TPUs ignore it.
  try:
    jax.distributed.initialize(*args)
  except ValueError as e:
    if d.coordinator != "auto":
      raise
    raise ConfigError(f"config.distributed.coordinator=auto: JAX found no cluster to join ({e})") from None


def _checked(address: str, count, index, source: str) -> tuple[str, int, int]:
  if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
    raise ConfigError(f"{source}: process {index} of {count}: need 0 <= process_id < num_processes")
  return address, count, index


def cluster_processes(environ: Mapping[str, str]) -> int:
  """How many processes a cluster manager started as one job with this one (1 if none did), read from `environ`
  the way `jax.distributed.initialize()` with no arguments reads it (jax/_src/clusters/): the first cluster present,
  in JAX's order, gives the count. Mirrored from the variables rather than through JAX's private modules:
  - Open MPI (`mpirun -np N`): OMPI_MCA_orte_hnp_uri is set; N is OMPI_COMM_WORLD_SIZE.
  - SLURM (`srun`, a process per task): SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and
    SLURM_LOCALID are set; N is SLURM_NTASKS. Only an `srun` step sets SLURM_STEP_NODELIST, so `python train.py`
    in a batch script's own shell is one process whatever its --ntasks.
  - Cloud TPU on GKE (which sets these on TPU hosts only): TPU_PROCESS_ADDRESSES, else TPU_WORKER_HOSTNAMES, lists
    the slice's hosts; N is their number times MEGASCALE_NUM_SLICES (default 1). A TPU VM slice on Compute Engine
    lists its hosts only on the metadata server, which JAX queries: there, set --config.distributed.coordinator=auto."""
  if "OMPI_MCA_orte_hnp_uri" in environ:
    return int(environ.get("OMPI_COMM_WORLD_SIZE", 1))
  if all(k in environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                                 "SLURM_LOCALID")):
    return int(environ["SLURM_NTASKS"])
  hosts = environ.get("TPU_PROCESS_ADDRESSES", environ.get("TPU_WORKER_HOSTNAMES"))
  if hosts is not None:
    return len(hosts.split(",")) * int(environ.get("MEGASCALE_NUM_SLICES") or 1)
  return 1


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
