"""perturbation_mask of gnp, looksam and exact_gnp (gsam's is in test_gsam.py): which leaves the
ascent step moves and by how much, the update every leaf receives, the mask's three forms, and
the trainer's gnp.perturbation_exclude."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _runs import smoke_config

import gnreg
from gnreg import configuration, optimizers


# A separable loss with a closed-form gradient, for the NumPy references.
def _loss(p):
  return sum(jnp.sum(jnp.sin(x) + 0.25 * x**4) for x in jax.tree.leaves(p))


_grad = jax.grad(_loss)


def _np_grad(p):
  return jax.tree.map(lambda x: np.cos(x) + x**3, p)


# A conv layer, a BatchNorm and a head; the masks leave the BatchNorm and the head's bias out.
PARAMS = {
  "conv": {"kernel": jnp.asarray([[0.3, -1.2], [0.7, 0.1]]), "bias": jnp.asarray([0.2, -0.3])},
  "bn": {"scale": jnp.asarray([1.1, 0.9]), "bias": jnp.asarray([0.05, -0.4])},
  "head": {"kernel": jnp.asarray([[0.5, -0.1, 0.4], [1.1, 0.2, -0.6]]), "bias": jnp.zeros(3)},
}
MARKED = {"conv/kernel", "conv/bias", "head/kernel"}
# The same mask in optax's three forms: a full tree, a prefix, a callable.
FULL = {
  "conv": {"kernel": True, "bias": True},
  "bn": {"scale": False, "bias": False},
  "head": {"kernel": True, "bias": False},
}
PREFIX = {"conv": True, "bn": False, "head": {"kernel": True, "bias": False}}


def CALLABLE(params):
  return jax.tree_util.tree_map_with_path(
    lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/") in MARKED, params
  )


FORMS = {"full": FULL, "prefix": PREFIX, "callable": CALLABLE}


def _flat(tree):
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(x, np.float64)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
  }


def _np_step(g, params, r, *, adaptive=False, eta=0.01, eps=1e-12):
  """The ascent step over the marked leaves, in float64 NumPy: gnp's (ASAM's when adaptive)."""
  g_m = {k: g[k] if k in MARKED else 0 * g[k] for k in g}
  t = {k: np.abs(params[k]) + eta if adaptive else 1.0 for k in g}
  norm = np.sqrt(sum(np.sum((t[k] * g_m[k]) ** 2) for k in g))
  return {k: r * t[k] ** 2 * g_m[k] / (norm + eps) for k in g}


class _Recorder:
  """A grad_fn that keeps every point it is evaluated at (traced or not: looksam's lax.cond)."""

  def __init__(self):
    self.points = []

  def __call__(self, p):
    jax.debug.callback(lambda q: self.points.append(_flat(q)), p)
    return _grad(p)


def _unflat(flat):
  return jax.tree_util.tree_unflatten(
    jax.tree.structure(PARAMS), [jnp.asarray(flat[k], jnp.float32) for k in _flat(PARAMS)]
  )


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("normalize_base_grad", [False, True], ids=["g", "unit_g"])
def test_gnp_moves_the_marked_leaves_only_and_mixes_every_leaf(form, adaptive, normalize_base_grad):
  r, alpha = 0.3, 0.6
  grads = _grad(PARAMS)
  recorder = _Recorder()
  opt = gnreg.gnp(r, alpha, adaptive=adaptive, normalize_base_grad=normalize_base_grad,
                  perturbation_mask=FORMS[form])  # fmt: skip
  updates, _ = opt.update(grads, opt.init(PARAMS), PARAMS, grad_fn=recorder)
  w, g = _flat(PARAMS), _flat(grads)
  step = _np_step(g, w, r, adaptive=adaptive)
  (point,) = recorder.points
  for k in w:
    if k in MARKED:
      np.testing.assert_allclose(point[k] - w[k], step[k], rtol=1e-5, atol=1e-7)
    else:
      np.testing.assert_array_equal(point[k], w[k])  # Not moved, bit for bit.
  if not adaptive:  # The move is r long, all of it on the marked leaves.
    np.testing.assert_allclose(np.sqrt(sum(np.sum((point[k] - w[k]) ** 2) for k in w)), r, 1e-6)
  # Every leaf gets (1 - alpha) b + alpha g2, g2 at the partly perturbed point; b normalised
  # by the whole gradient's norm.
  g2 = _np_grad({k: w[k] + step[k] for k in w})
  norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
  base = {k: g[k] / norm for k in g} if normalize_base_grad else g
  for k, u in _flat(updates).items():
    np.testing.assert_allclose(u, (1 - alpha) * base[k] + alpha * g2[k], rtol=1e-5, atol=1e-6)


def test_a_mask_that_marks_every_leaf_is_no_mask():
  everything = jax.tree.map(lambda _: True, PARAMS)
  grads = _grad(PARAMS)
  for make in (
    lambda m: gnreg.gnp(0.3, 0.6, normalize_base_grad=True, perturbation_mask=m),
    lambda m: gnreg.looksam(0.3, 0.6, k=1, perturbation_mask=m),
    lambda m: gnreg.exact_gnp(0.2, perturbation_mask=m),
  ):
    outs = []
    for mask in (None, everything):
      opt = make(mask)
      outs.append(opt.update(grads, opt.init(PARAMS), PARAMS, grad_fn=_grad)[0])
    jax.tree.map(np.testing.assert_array_equal, *outs)


def test_looksam_perturbs_the_marked_leaves_and_reuses_over_all():
  r, alpha, w_reuse = 0.3, 1.0, 0.7
  recorder = _Recorder()
  opt = gnreg.looksam(r, alpha, k=2, reuse_weight=w_reuse, perturbation_mask=PREFIX)
  state = opt.init(PARAMS)
  w = _flat(PARAMS)
  g = _flat(_grad(PARAMS))
  second = {k: 0.5 * v + 0.1 for k, v in g.items()}  # Another gradient for the reuse step.
  out0, state = opt.update(_unflat(g), state, PARAMS, grad_fn=recorder)
  out1, state = opt.update(_unflat(second), state, PARAMS, grad_fn=recorder)
  assert len(recorder.points) == 1  # The reuse step evaluates nothing.
  step = _np_step(g, w, r)
  for k in w:
    if k in MARKED:
      np.testing.assert_allclose(recorder.points[0][k] - w[k], step[k], rtol=1e-5, atol=1e-7)
    else:
      np.testing.assert_array_equal(recorder.points[0][k], w[k])
  g_s = _np_grad({k: w[k] + step[k] for k in w})
  dot = lambda a, b: sum(float(np.sum(a[k] * b[k])) for k in a)
  g_v = {k: g_s[k] - dot(g, g_s) / dot(g, g) * g[k] for k in g}  # Over every leaf.
  scale = alpha * w_reuse * np.sqrt(dot(second, second)) / np.sqrt(dot(g_v, g_v))
  for k in w:
    np.testing.assert_allclose(_flat(out0)[k], g_s[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_flat(out1)[k], second[k] + scale * g_v[k], rtol=1e-5, atol=1e-6)


def test_exact_gnp_with_a_mask_is_the_gradient_of_the_marked_norm_penalty():
  # On a quadratic the finite difference is exact: gnp with a mask equals exact_gnp with the
  # same mask at lam = alpha * r, and both equal g + lam H g_M / ||g_M|| from the dense H.
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    curvature = jnp.asarray(a @ a.T + np.eye(6))
    params = {"x": jnp.asarray(rng.normal(size=4)), "y": jnp.asarray(rng.normal(size=2))}
    flat = lambda p: jnp.concatenate([p["x"], p["y"]])
    loss = lambda p: 0.5 * flat(p) @ curvature @ flat(p) + jnp.sum(flat(p) ** 1)
    grad_fn = jax.grad(loss)
    mask = {"x": True, "y": False}
    g = grad_fn(params)
    exact = gnreg.exact_gnp(0.12, perturbation_mask=mask)
    fd = gnreg.gnp(0.4, 0.3, perturbation_mask=mask)
    outs = [t.update(g, t.init(params), params, grad_fn=grad_fn)[0] for t in (exact, fd)]
    g_m = np.concatenate([np.asarray(g["x"]), np.zeros(2)])
    want = np.asarray(flat(g)) + 0.12 * np.asarray(curvature) @ g_m / np.linalg.norm(g_m)
    for out in outs:
      np.testing.assert_allclose(np.asarray(flat(out)), want, rtol=1e-10)
    assert not np.allclose(want[4:], np.asarray(g["y"]))  # The unmarked leaves change too.


@pytest.mark.parametrize("name", ["gnp", "looksam", "exact_gnp"])
def test_a_mask_that_does_not_fit_is_refused_in_one_line(name):
  make = {
    "gnp": lambda m: gnreg.gnp(0.1, 0.5, perturbation_mask=m),
    "looksam": lambda m: gnreg.looksam(0.1, 0.5, k=2, perturbation_mask=m),
    "exact_gnp": lambda m: gnreg.exact_gnp(0.1, perturbation_mask=m),
  }[name]
  with pytest.raises(ValueError) as error:
    make({"conv": True, "bn": False}).init(PARAMS)
  assert str(error.value).startswith(f"{name}: perturbation_mask must be a pytree of bools")
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match=rf"^{name}: perturbation_mask .* got the leaf 'yes'$"):
    make({**PREFIX, "conv": "yes"}).init(PARAMS)


def test_the_trainer_excludes_the_perturbation_exclude_globs():
  config = smoke_config(**{"gnp.perturbation_exclude": ("bn/*", "head/bias")})
  configuration.validate(config, num_devices=1)
  tx = optimizers.create(config, steps_per_epoch=10)
  recorder = _Recorder()
  tx.update(_grad(PARAMS), tx.init(PARAMS), PARAMS, grad_fn=recorder)
  (point,) = recorder.points
  w = _flat(PARAMS)
  assert {k for k in w if not np.array_equal(point[k], w[k])} == MARKED
  config.gnp.perturbation_exclude = ("head/*", "bn/scal")  # The second matches nothing.
  tx = optimizers.create(config, steps_per_epoch=10)
  with pytest.raises(ValueError) as error:
    tx.init(PARAMS)
  assert str(error.value).startswith(
    "gnp.perturbation_exclude: pattern 'bn/scal' matches no parameter path; the paths are "
  )
  config.gnp.perturbation_exclude = ("head/*", 3)
  with pytest.raises(configuration.ConfigError) as error:
    configuration.validate(config, num_devices=1)
  assert str(error.value) == (
    "gnp.perturbation_exclude: must be a tuple of glob strings over parameter paths "
    "(as clip.exclude), got ('head/*', 3)"
  )
