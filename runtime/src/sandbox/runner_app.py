"""WIT glue of the pre-initialised test runner (world `test-runner` of `agentrt:sandbox`).

componentize-py imports this module at build time and snapshots the interpreter. The component
has no standard library on a file system at run time, so every module generated code may import
is imported here, once, into the snapshot: every top-level module of the standard library that
loads under WASI, and the submodules tests commonly use. A module missing from the snapshot
fails its import at run time; the host then reruns the request in the full interpreter
(python.wasm), so the snapshot only has to cover the common case.
"""

import importlib
import json
import sys

import runner
import wit_world

# Modules with side effects on import (printing, opening browsers) or with nothing to offer
# under WASI; importing them would only add noise or size to the snapshot.
_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv",
    "lib2to3", "pydoc", "pydoc_data", "webbrowser", "msilib", "winreg", "winsound", "_winapi",
    "nt", "msvcrt", "_msi", "_overlapped", "ctypes", "curses", "readline", "sqlite3", "ssl",
    "multiprocessing", "concurrent", "asyncio", "tomllib", "xmlrpc", "http", "wsgiref",
}
_SUBMODULES = (
    "collections.abc", "os.path", "unittest.mock", "xml.etree.ElementTree", "xml.dom.minidom",
    "json.decoder", "urllib.parse", "email.message", "email.utils", "importlib.util",
    "importlib.resources", "logging.handlers", "encodings.idna", "encodings.utf_16",
    "encodings.latin_1", "encodings.ascii",
)


def _preload():
    for name in sorted(sys.stdlib_module_names) + list(_SUBMODULES):
        if name.split(".")[0] in _SKIP or name.startswith("_"):
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - not available under WASI; leave it out
            pass


_preload()


class WitWorld(wit_world.WitWorld):
    """The exported function of the `test-runner` world."""

    def run(self, request: str, nonce: str) -> None:
        runner.agentrt_run(json.loads(request), nonce)
