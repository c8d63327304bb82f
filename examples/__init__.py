"""Tasks written the way a user writes one: each in a single file that imports only ``tasks.base`` and
``trainer.blend`` from ReflectNet, named on the command line as ``examples.<file>:<class>`` (the repository root on
``PYTHONPATH``) or copied anywhere else on it. A folder of examples, not a package of ReflectNet's: nothing imports it.
"""
