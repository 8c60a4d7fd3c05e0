"""Start-up hook: `llamafactory_dids.pth` runs one line of stdlib code in every interpreter.

That line (torchrun workers run it too) costs microseconds: unless `LLAMAFACTORY_DIDS_DISABLE=1`, it puts
a finder named `LlamaFactoryDIDSHook` at the front of `sys.meta_path` whose `find_spec` returns None for
every module but `llamafactory.train.tuner`. It imports nothing, not even this module: a file import at
start-up would list site-packages and cost milliseconds. Only when the tuner is imported does it call
`find_tuner_spec` below, which lets the normal machinery load the tuner and then calls
`llamafactory_dids.integration.patch.apply()`.
"""

import sys

TARGET = "llamafactory.train.tuner"
HOOK_NAME = "LlamaFactoryDIDSHook"


def find_tuner_spec(name, path=None, target=None):
    """Find the tuner's spec with the other finders and make its loader apply the patch afterwards."""
    sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != HOOK_NAME]  # one shot
    spec = None
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is not None:
            spec = find(name, path, target)
            if spec is not None:
                break
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return spec
    exec_module = spec.loader.exec_module

    def exec_then_apply(module):
        exec_module(module)
        from llamafactory_dids.integration.patch import apply

        apply()

    spec.loader.exec_module = exec_then_apply
    return spec
