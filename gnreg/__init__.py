"""gnreg: regulate neural-network training through the gradient norm, in JAX.

Every technique is a pure ``optax.GradientTransformation`` that composes with
``optax.chain``. The public names are re-exported here.
"""

from gnreg import schedules as schedules
from gnreg.transforms.agc import agc as agc
from gnreg.transforms.exact_gnp import exact_gnp as exact_gnp
from gnreg.transforms.gnp import GNPState as GNPState
from gnreg.transforms.gnp import gnp as gnp
from gnreg.transforms.gnp import next_update_penalised as next_update_penalised
from gnreg.transforms.gsam import GSAMState as GSAMState
from gnreg.transforms.gsam import gsam as gsam
from gnreg.transforms.looksam import LookSAMState as LookSAMState
from gnreg.transforms.looksam import looksam as looksam
from gnreg.transforms.monitoring import ClipMonitorState as ClipMonitorState
from gnreg.transforms.monitoring import metrics as metrics
from gnreg.transforms.monitoring import monitor_clipping as monitor_clipping
from gnreg.transforms.monitoring import monitor_updates as monitor_updates
from gnreg.transforms.pid import PIDState as PIDState
from gnreg.transforms.pid import pid_lr as pid_lr

__all__ = [
  "schedules",
  "agc",
  "exact_gnp",
  "GNPState",
  "gnp",
  "next_update_penalised",
  "GSAMState",
  "gsam",
  "LookSAMState",
  "looksam",
  "ClipMonitorState",
  "metrics",
  "monitor_clipping",
  "monitor_updates",
  "PIDState",
  "pid_lr",
]

__version__ = "0.1.0"
