"""YAML for option files: PyYAML's safe loader, except that a key given twice in one block is an error.

PyYAML keeps the last of two equal keys silently, so a block pasted twice or an ablation key added above
an existing one changes a run without a word. :func:`load_yaml` refuses that, naming both lines.
"""
from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that has the same key twice; ``first_line``/``second_line`` are 1-based."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        self.key, self.first_line, self.second_line = key, first_line, second_line
        super().__init__(f"key '{key}' is given twice in one block (lines {first_line} and {second_line}); "
                         'YAML would keep only the second: delete one of them')


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` for a key repeated within one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<: *anchor` may be repeated by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: PyYAML itself refuses it below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, first, line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text_or_stream) -> Any:
    """Parse YAML like ``yaml.safe_load`` but refuse duplicate keys (:class:`DuplicateKeyError`)."""
    return yaml.load(text_or_stream, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


__all__ = ['DuplicateKeyError', 'UniqueKeyLoader', 'load_yaml']
