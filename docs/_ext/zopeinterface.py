"""``.. autointerface:: package.module.IName``: document a zope.interface interface.

Sphinx's autodoc skips zope interfaces: they are instances of ``InterfaceClass``, not
classes. This directive writes them out as ``py:class`` entries instead, so that
``:class:`~rmqtwist.interfaces.IChannel``` links to them: the interface's docstring, then
its attributes and methods in source order, each with its own docstring. Method
signatures (with their annotations) come from the source, since zope.interface does not
keep annotations.
"""

from __future__ import annotations

import ast
import importlib
import inspect

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles
from zope.interface import Attribute
from zope.interface.interface import InterfaceClass, Method


def _members(interface: InterfaceClass) -> list[tuple[str, str | None]]:
    """``(name, signature or None for an attribute)`` in source order."""
    module = importlib.import_module(interface.__module__)
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == interface.__name__:
            break
    else:
        raise ValueError(f"no class {interface.__name__} in {module.__name__}'s source")
    members: list[tuple[str, str | None]] = []
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            signature = f"{item.name}({ast.unparse(item.args)})"
            if item.returns is not None:
                signature += f" -> {ast.unparse(item.returns)}"
            members.append((item.name, signature))
        elif (
            isinstance(item, ast.Assign)
            and len(item.targets) == 1
            and isinstance(item.targets[0], ast.Name)
        ):
            members.append((item.targets[0].id, None))
    return members


def _doc(text: str | None) -> list[str]:
    return inspect.cleandoc(text or "").splitlines()


class AutoInterface(SphinxDirective):
    """Document the zope interface named by the one argument."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name, _, name = self.arguments[0].rpartition(".")
        interface = getattr(importlib.import_module(module_name), name)
        if not isinstance(interface, InterfaceClass):
            raise self.error(f"{self.arguments[0]} is not a zope interface")
        bases = ", ".join(
            f":py:class:`{base.__module__}.{base.__name__}`" for base in interface.__bases__
        )
        lines = [
            f".. py:class:: {name}",
            f"   :module: {module_name}",
            "",
            f"   Bases: {bases}",
            "",
            *("   " + line for line in _doc(interface.__doc__)),
        ]
        for member, signature in _members(interface):
            described = interface[member]
            if signature is not None and isinstance(described, Method):
                lines += ["", f"   .. py:method:: {signature}", ""]
            elif isinstance(described, Attribute):
                lines += ["", f"   .. py:attribute:: {member}", ""]
            else:
                continue
            lines += ["      " + line for line in _doc(described.getDoc())]
        content = StringList(lines, source=self.get_source_info()[0])
        node = nodes.section()
        nested_parse_with_titles(self.state, content, node)
        return node.children


def setup(app):
    app.add_directive("autointerface", AutoInterface)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
