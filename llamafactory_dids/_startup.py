"""Start-up hook: `llamafactory_dids.pth` runs one line of stdlib code in every interpreter.

That line (torchrun workers run it too) costs microseconds: unless `LLAMAFACTORY_DIDS_DISABLE=1`, it puts
a finder named `LlamaFactoryDIDSHook` at the front of `sys.meta_path` whose `find_spec` returns None for
every module but the two in `TARGETS`. It imports nothing, not even this module: a file import at
start-up would list site-packages and cost milliseconds. Only when one of them is imported does it call
`find_host_spec` below, which lets the normal machinery load the module and then patches:
`llamafactory.launcher` (the process of `llamafactory-cli`, which under torchrun never imports the
tuner) gets `apply_launcher()`, `llamafactory.train.tuner` gets the whole `apply()` and removes the finder.
"""

import sys

LAUNCHER = "llamafactory.launcher"
TUNER = "llamafactory.train.tuner"
TARGETS = (TUNER, LAUNCHER)
HOOK_NAME = "LlamaFactoryDIDSHook"


def find_host_spec(name, path=None, target=None):
    """Find the spec of `name` with the other finders and make its loader patch the host afterwards."""
    if name == TUNER:  # the last target: one shot
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != HOOK_NAME]
    spec = None
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is not None and type(finder).__name__ != HOOK_NAME:
            spec = find(name, path, target)
            if spec is not None:
                break
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return spec
    exec_module = spec.loader.exec_module

    def exec_then_apply(module):
        exec_module(module)
        from llamafactory_dids.integration import patch

        if name == TUNER:
            patch.apply()
        else:
            patch.apply_launcher()

    spec.loader.exec_module = exec_then_apply
    return spec


# The name that `llamafactory_dids.pth` files installed before the launcher hook call (for the tuner only).
find_tuner_spec = find_host_spec
