"""Forward hooks on a site's activation: the one primitive that statistics, importance and interventions share.

A site's neurons live on a module's input or output (``SiteLayout.io``). A hook function ``fn`` gets that
activation tensor; if it returns a tensor, that tensor replaces the activation (an intervention), and if it
returns ``None`` the activation passes unchanged (an observer). The context managers resolve every module
before registering anything and remove every hook in ``finally``, so an exception never leaves one behind.

>>> with site_hooks(layout, [(0, "q", observe)]):      # doctest: +SKIP
...     model(**batch)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from safeneurons.models.adapters import IO
from safeneurons.models.layout import ModelLayout

HookFn = Callable[[torch.Tensor], torch.Tensor | None]


def add_activation_hook(module: nn.Module, io: IO, fn: HookFn) -> RemovableHandle:
    """Hook ``fn`` on ``module``'s first input (``io="input"``) or its output; returns the handle.

    Prefer :func:`module_hooks` / :func:`site_hooks`, which remove the hook again."""
    if io == "input":
        def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = fn(args[0])
            return None if x is None else (x, *args[1:])

        return module.register_forward_pre_hook(pre_hook)
    if io == "output":
        return module.register_forward_hook(lambda mod, args, out: fn(out))
    raise ValueError(f"io must be 'input' or 'output', not {io!r}")


@contextmanager
def hook_handles() -> Iterator[list[Any]]:
    """A list to append hook handles to; every handle in it is removed (last first) on leaving the block."""
    handles: list[Any] = []
    try:
        yield handles
    finally:
        for h in reversed(handles):
            h.remove()


@contextmanager
def module_hooks(hooks: Iterable[tuple[nn.Module, IO, HookFn]]) -> Iterator[None]:
    """Hook each ``(module, io, fn)`` inside the ``with`` block (see :func:`add_activation_hook`)."""
    with hook_handles() as handles:
        for module, io, fn in hooks:
            handles.append(add_activation_hook(module, io, fn))
        yield


@contextmanager
def site_hooks(layout: ModelLayout, hooks: Iterable[tuple[int, str, HookFn]]) -> Iterator[None]:
    """Hook each ``(layer, site, fn)`` on that site's module activation inside the ``with`` block.

    ``fn`` sees the whole module activation (``SiteLayout.offset``/``width`` locate the site's neurons in
    it, for fused projections). Every site is resolved before any hook is registered."""
    resolved = [(layout.module(layer, site), layout.site(site).io, fn) for layer, site, fn in hooks]
    with module_hooks(resolved):
        yield
