"""A tabular proc of the user's own, outside what ``ptserve convert`` represents (needs fastai;
the conversion's child process imports it by name, as it would a notebook's module)."""

from typing import Any

from fastai.tabular.core import TabularProc


class Squash(TabularProc):
    """Clip continuous columns to [-3, 3]."""

    def encodes(self, to: Any) -> Any:
        to.conts = to.conts.clip(-3, 3)
        return to
