"""gnreg: regulate neural-network training through the gradient norm, in JAX.

Every technique is a pure ``optax.GradientTransformation`` that composes with
``optax.chain``. The public names are re-exported here.
"""

__version__ = "0.1.0"
