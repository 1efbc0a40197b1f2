"""What every backend shares: the model's composition, written once over an ops namespace.

* :mod:`~backends.common.physics` - illumination, far field, translation, patch reassembly and
  extraction, the overlap constraint, the losses;
* :mod:`~backends.common.network` - the CNN and the object patches from its heads;
* :mod:`~backends.common.adam` - Adam in the Keras 3 form;
* :mod:`~backends.common.model` - the model object (weights, predict, forward, losses,
  gradients, the training step);
* :mod:`~backends.common.backend` - the backend object (numpy-in/numpy-out physics);
* :mod:`~backends.common.overrides` - how a backend replaces a composite with a faster one.

A backend is a subpackage with an ``ops`` module (the primitives, see ``docs/backends.md``)
and a ``get_backend()`` returning ``Backend(name, ops)``. Nothing here imports a framework.
"""
