"""bundle.yaml text -> its value, with PyYAML's SafeLoader: every mapping knows its line, and the limits that keep a
hostile spec from costing more than its text (alias expansion, [ ] / { } nesting) hold before anything is built."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ParamInvalid

MAX_SPEC_NODES = 100_000  # YAML nodes after alias expansion (a "billion laughs" spec is refused, not expanded)
MAX_SPEC_NESTING = 100  # [ and { levels: PyYAML's scanner is quadratic in them (50k levels: minutes)


def parse(text: str, where: str) -> Any:
    """The YAML document's value; ParamInvalid naming ``where`` (and the line) when it is no valid or bounded YAML."""
    try:
        return _parse_yaml(text, where)
    except RecursionError:
        raise ParamInvalid("the YAML nests too deeply to be a bundle spec", where) from None
    except _TooDeep as err:
        raise ParamInvalid(str(err), where) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ParamInvalid(f"not valid YAML: {getattr(err, 'problem', err)}", f"{where}{line}") from None


class _TooDeep(Exception):
    """The YAML nests [ ] / { } deeper than MAX_SPEC_NESTING."""


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of every mapping so errors can point at it, and refuses deep [ ] / { }
    nesting as it scans (PyYAML's scanner is quadratic in the flow level: 50k levels take minutes)."""

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_SPEC_NESTING:
            raise _TooDeep(f"the YAML nests more than {MAX_SPEC_NESTING} levels of [ ] / {{ }} (line "
                           f"{self.get_mark().line + 1})")
        super().fetch_flow_collection_start(token_class)


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, where: str) -> Any:
    """Compose the YAML node graph, refuse it if aliases would expand it past MAX_SPEC_NODES (or into a cycle),
    then construct it: an alias bomb costs its text, never its expansion."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    sizes: dict[int, int] = {}  # id(node) -> nodes it expands to; aliases share the node object
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_SPEC_NODES:
                raise ParamInvalid(f"the YAML expands to more than {MAX_SPEC_NODES} values through aliases "
                                   f"(&anchor / *alias); write the values out", where)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ParamInvalid("the YAML has a recursive alias (a value that contains itself)", where)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
