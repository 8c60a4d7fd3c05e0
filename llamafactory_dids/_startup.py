"""Start-up hook, run from `llamafactory_dids.pth` in every interpreter (torchrun workers included).

It must stay cheap: stdlib only, no torch/llamafactory import, no importlib.abc. It puts a one-shot
finder at the front of `sys.meta_path`; when `llamafactory.train.tuner` is imported, the finder lets
the normal machinery load it and then calls `llamafactory_dids.integration.patch.apply()`.
Set `LLAMAFACTORY_DIDS_DISABLE=1` to switch it off.
"""

import os
import sys

_TARGET = "llamafactory.train.tuner"


class _TunerImportHook:
    """Meta-path finder that only reacts to `llamafactory.train.tuner`, once."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
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


def install() -> None:
    if os.environ.get("LLAMAFACTORY_DIDS_DISABLE", "").lower() in ("1", "true", "yes"):
        return
    if _TARGET in sys.modules:  # imported before us (unusual): patch right away
        from llamafactory_dids.integration.patch import apply

        apply()
        return
    if not any(isinstance(f, _TunerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TunerImportHook())


install()
