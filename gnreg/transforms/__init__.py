"""The gradient-norm transforms, one module per technique."""
