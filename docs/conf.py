"""Sphinx configuration for the rmqtwist documentation.

Build:   python -m sphinx -W --keep-going -b html docs docs/_build/html
Doctest: python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import doctest
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(DOCS / "_ext"))

import rmqtwist  # noqa: E402

project = "rmqtwist"
author = "rmqtwist developers"
copyright = "rmqtwist developers"
release = rmqtwist.__version__.public()  # e.g. "0.1.0.dev0"
version = f"{rmqtwist.__version__.major}.{rmqtwist.__version__.minor}"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "zopeinterface",  # docs/_ext: ``.. autointerface::`` for rmqtwist.interfaces
]

# No intersphinx: the build must not fetch anything over the network.
nitpicky = False
exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []

# -- autodoc -------------------------------------------------------------------------
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_type_aliases = {
    "JavaInt": "rmqtwist.headers.base.JavaInt",
    "JavaLong": "rmqtwist.headers.base.JavaLong",
}
# The Twisted methods LengthPrefixed overrides (dataReceived, connectionLost, ...) have
# no docstrings of their own; inheriting Twisted's would drag epytext into these pages.
autodoc_inherit_docstrings = False
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
# The wire core is pure Python; Twisted and zope.interface are installed with it, so
# nothing needs mocking.

# -- napoleon ------------------------------------------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# -- doctest -------------------------------------------------------------------------
# Every ``>>>`` block in the narrative pages (and in docstrings pulled in by autodoc)
# is run by ``-b doctest``, in this process: src is already on sys.path. The programs
# under docs/examples are run as scripts (see docs/examples/run_all.py); doctests may
# also import them (``from acl_hooks import acl_signature``), which runs no ``main()``.
doctest_path = [str(DOCS / "examples")]
# Sphinx's default flags include IGNORE_EXCEPTION_DETAIL, which would let the message of
# an expected exception go stale unnoticed; check it like any other output.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1

# -- HTML ----------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"rmqtwist {release}"
html_theme_options = {
    "description": "The RocketMQ remoting protocol on Twisted",
    "fixed_sidebar": True,
}


# -- napoleon, attributes ------------------------------------------------------------
# rmqtwist's one-line attribute docstrings ("Bit 1 of ``flag``: the request is oneway")
# are prose, but napoleon reads "X: Y" on the first line of an attribute or property
# docstring as "type: description" and renders it as "Type: X". Only functions and
# classes go through napoleon here; attribute and property docstrings stay as written.


def _napoleon_except_attributes(handler):
    def process(app, what, name, obj, options, lines):
        if what in ("attribute", "data", "property"):
            return None
        return handler(app, what, name, obj, options, lines)

    return process


# -- exceptions ----------------------------------------------------------------------
# With autodoc_typehints = "description", Sphinx drops the "Return type: None" of a
# class's __init__ but not of an exception's; drop it there too.


def _drop_exception_rtype(app, domain, objtype, contentnode):
    from docutils import nodes

    if domain != "py" or objtype != "exception":
        return
    for field_list in contentnode.findall(nodes.field_list):
        for field in list(field_list):
            if field[0].astext() in ("rtype", "Return type"):
                field_list.remove(field)
        if not len(field_list):
            field_list.parent.remove(field_list)


# -- type aliases in unions, zope interfaces ----------------------------------------------
# Sphinx 9 records "JavaInt | None" as "TypeAliasForwardRef('...JavaInt') | None", and a
# parameter annotated with a zope interface (processor: IRequestProcessor) as
# "<InterfaceClass rmqtwist.interfaces.IRequestProcessor>"; put the names back before the
# types are merged into the description (priority 500).
_ALIAS_FORWARD_REF = re.compile(r"TypeAliasForwardRef\('([^']*)'\)")
_INTERFACE_REPR = re.compile(r"<InterfaceClass ([\w.]+)>")


def _clean_alias_forward_refs(app, domain, objtype, contentnode):
    document = getattr(app.env, "current_document", None)
    annotations = getattr(document, "autodoc_annotations", None) or {}
    for hints in annotations.values():
        for key, value in hints.items():
            if "TypeAliasForwardRef(" in value:
                value = hints[key] = _ALIAS_FORWARD_REF.sub(r"\1", value)
            if "<InterfaceClass " in value:
                hints[key] = _INTERFACE_REPR.sub(r"\1", value)


def _clean_interface_signatures(app, doctree):
    # The same where autodoc puts the type into the signature itself, as for a property
    # (RemotingServer.ports: list[IListeningPort]).
    from docutils import nodes
    from sphinx import addnodes

    for signature in doctree.findall(addnodes.desc_signature):
        for text in list(signature.findall(nodes.Text)):
            if "<InterfaceClass " in text:
                parent = text.parent
                parent.replace(text, nodes.Text(_INTERFACE_REPR.sub(r"\1", str(text))))
                if isinstance(parent, addnodes.pending_xref):
                    parent["reftarget"] = _INTERFACE_REPR.sub(r"\1", parent["reftarget"])


# -- private bases -------------------------------------------------------------------
# A class split over private modules (RemotingProtocol over rmqtwist.protocol._outgoing
# and ._incoming) has private mixin bases; they are no API: keep them out of "Bases:".


def _drop_private_bases(app, name, obj, options, bases):
    bases[:] = [base for base in bases if not base.__name__.startswith("_")]


def setup(app):
    from sphinx.ext import napoleon

    app.connect("autodoc-process-bases", _drop_private_bases)

    app.connect("doctree-read", _clean_interface_signatures)

    app.connect("object-description-transform", _clean_alias_forward_refs, priority=400)

    # After sphinx.ext.autodoc.typehints' merge_typehints (default priority 500).
    app.connect("object-description-transform", _drop_exception_rtype, priority=900)

    for listener in list(app.events.listeners.get("autodoc-process-docstring", ())):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
            app.connect(
                "autodoc-process-docstring",
                _napoleon_except_attributes(listener.handler),
                priority=listener.priority,
            )
    return {"parallel_read_safe": True}
