"""Layer views built once, for a pass over many batches during which the model's modules stay put."""
from __future__ import annotations

from kprune.adapters import EncoderAdapter, LayerView


class FixedViews:
    """An :class:`~kprune.adapters.EncoderAdapter` whose :meth:`layer` views are built on first use and
    then reused (building one walks the layer's module paths, each batch of each sublayer over again).
    Valid while no module of the model is replaced: not across surgery."""

    def __init__(self, adapter: EncoderAdapter):
        self.adapter = adapter
        self._views: dict[int, LayerView] = {}

    def layer(self, index: int) -> LayerView:
        view = self._views.get(index)
        if view is None:
            view = self._views[index] = self.adapter.layer(index)
        return view

    def __getattr__(self, name: str):
        if name == "adapter":   # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.adapter, name)
