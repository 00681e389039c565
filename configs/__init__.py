"""The experiment configs, installed with gnreg as the package ``gnreg.configs``.

Each module is a big_vision-style config file with ``get_config(arg)``. The
command-line tools select one by its module name (``--config=default``,
``--config=cifar10_vit:variant=zero``) or by its path (``--config=configs/default.py``).
"""
