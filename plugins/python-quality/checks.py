"""Static checks of Python source, built on CPython's own `ast` module.

This module is the whole analysis of the `python-quality` plugin and knows nothing of WIT: it
returns plain `Issue` tuples so that it can be unit-tested with any CPython on the host
(`python3 -m unittest plugins/python-quality/test_app.py`). `app.py` turns them into WIT findings.

Rules:

- `syntax-error` (error): the source does not parse; line and column are the ones CPython reports.
  When the code does not parse, no other rule runs on it.
- `syntax-warning` (warning): CPython warned while parsing (e.g. an invalid escape sequence).
- `missing-docstring` (warning): a function or class defined at module level or directly in a
  class body has no docstring. Dunder methods, `@overload` stubs and property setters/deleters
  are exempt. A module docstring is *not* required: generated code is usually a short snippet
  where one adds nothing.
- `missing-type-hints` (warning): such a function lacks a return annotation (not required on
  `__init__`) or an annotation on a parameter (`self`/`cls` of methods exempt).
- `dangerous-call` (error, warning for deserialisation): calls of `eval`, `exec`, `compile`,
  `__import__`, `os.system`, `os.popen`, `os.exec*`, `os.spawn*`, anything in `subprocess`
  (error); `pickle.load(s)`, `marshal.load(s)` (warning). Imports and aliases are followed
  (`import subprocess as sp`, `from subprocess import run as r`, `from os import *`).
- `bare-except` (warning): `except:` without an exception type.
- `mutable-default-argument` (warning): a list, dict or set (literal, comprehension or
  `list()`/`dict()`/`set()` call) as a parameter default.

Everything here is iterative (`ast.walk`, explicit stacks) so that a deeply nested but valid
tree cannot exhaust the interpreter's recursion limit, and only modules imported at the top are
used: inside the component the interpreter was initialised at build time and has no file system
to import further modules from.
"""

import ast
import re
import warnings
from typing import Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

SYNTAX_ERROR = "syntax-error"
SYNTAX_WARNING = "syntax-warning"
MISSING_DOCSTRING = "missing-docstring"
MISSING_TYPE_HINTS = "missing-type-hints"
DANGEROUS_CALL = "dangerous-call"
BARE_EXCEPT = "bare-except"
MUTABLE_DEFAULT_ARGUMENT = "mutable-default-argument"

#: Every rule this check may report, in the order `describe()` lists them.
RULES = [
    SYNTAX_ERROR,
    SYNTAX_WARNING,
    MISSING_DOCSTRING,
    MISSING_TYPE_HINTS,
    DANGEROUS_CALL,
    BARE_EXCEPT,
    MUTABLE_DEFAULT_ARGUMENT,
]

#: Language names (lower-cased, trimmed) this check understands.
LANGUAGES = ("python", "python3", "py")

INFO = "info"
WARNING = "warning"
ERROR = "error"


class Issue(NamedTuple):
    """One finding, independent of the WIT bindings. `line`/`column` are 1-based, 0 = unknown."""

    rule_id: str
    severity: str
    message: str
    line: int
    column: int
    suggestion: Optional[str] = None


class ParseFailure(NamedTuple):
    """Why `ast.parse` rejected a source, as CPython reports it."""

    message: str
    line: int
    column: int


# --- parsing -------------------------------------------------------------------------------------


def parse(source: str) -> Tuple[Optional[ast.Module], Optional[ParseFailure], List[Issue]]:
    """Parse `source` with `ast.parse`.

    Returns the tree (or None), the failure (or None) and the warnings CPython emitted while
    parsing, as `syntax-warning` issues. Any exception of `ast.parse` counts as a failure: a
    `SyntaxError` (with its `IndentationError`/`TabError` subclasses) gives CPython's message,
    line and offset; `ValueError` (null bytes on older versions), `RecursionError` ("maximum
    recursion depth exceeded during ast construction") and `MemoryError` ("Parser stack
    overflowed", pathological nesting) have no position. A bare `MemoryError` (the memory limit)
    is raised to the caller: it says nothing about the source.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tree = ast.parse(source)
            failure = None
        except SyntaxError as err:
            tree = None
            failure = ParseFailure(
                message=str(err.msg) if err.msg else type(err).__name__,
                line=_non_negative(err.lineno),
                column=_non_negative(err.offset),
            )
        except MemoryError as err:
            if not str(err):
                # Out of memory (the sandbox's limit), not a property of the source: let the
                # caller report a failed check rather than a syntax error.
                raise
            # "Parser stack overflowed - Python source too complex to parse": CPython rejects it.
            tree = None
            failure = ParseFailure(message="%s: %s" % (type(err).__name__, err), line=0, column=0)
        except (ValueError, RecursionError) as err:
            tree = None
            failure = ParseFailure(message="%s: %s" % (type(err).__name__, err), line=0, column=0)
    syntax_warnings = []
    if tree is not None:
        for item in caught:
            if not issubclass(item.category, (SyntaxWarning, DeprecationWarning)):
                continue
            syntax_warnings.append(
                Issue(
                    SYNTAX_WARNING,
                    WARNING,
                    str(item.message),
                    _non_negative(item.lineno),
                    0,
                    None,
                )
            )
    return tree, failure, syntax_warnings


def _non_negative(value: Optional[int]) -> int:
    """CPython positions may be None or (rarely) negative; the WIT fields are u32."""
    if value is None or value < 0:
        return 0
    return int(value)


# --- entry point ---------------------------------------------------------------------------------


def is_python(language: str) -> bool:
    """Whether `language` names Python."""
    return language.strip().lower() in LANGUAGES


def check_artifact(language: str, code: str, tests: str) -> List[Issue]:
    """All findings for one code artifact; empty when the language is not Python.

    The tests are only checked for syntax; their syntax errors carry a `tests: ` message prefix.
    """
    if not is_python(language):
        return []
    issues = check_code(code)
    if tests.strip():
        _tree, failure, _warnings = parse(tests)
        if failure is not None:
            issues.append(
                Issue(SYNTAX_ERROR, ERROR, "tests: " + failure.message, failure.line, failure.column)
            )
    return issues


def check_code(code: str) -> List[Issue]:
    """Findings for the solution source, sorted by position."""
    tree, failure, issues = parse(code)
    if failure is not None:
        return [Issue(SYNTAX_ERROR, ERROR, failure.message, failure.line, failure.column)]
    assert tree is not None
    columns = _ColumnMap(code)
    nodes = list(ast.walk(tree))  # one walk, shared by the rules below
    issues = list(issues)
    issues.extend(_definition_issues(tree, columns))
    issues.extend(_dangerous_calls(nodes, columns))
    issues.extend(_bare_excepts(nodes, columns))
    issues.extend(_mutable_defaults(nodes, columns))
    issues.sort(key=lambda issue: (issue.line, issue.column, issue.rule_id))
    return issues


# --- positions -----------------------------------------------------------------------------------


class _ColumnMap:
    """Turns `ast` positions (UTF-8 byte offsets, 0-based) into 1-based character columns."""

    def __init__(self, source: str) -> None:
        # CPython's tokenizer treats \r\n, \r and \n as line ends (str.splitlines knows more).
        self._lines = re.split(r"\r\n|\r|\n", source)

    def column(self, node: ast.AST) -> int:
        """1-based character column of `node`, 0 when it has no position."""
        lineno = getattr(node, "lineno", None)
        offset = getattr(node, "col_offset", None)
        if lineno is None or offset is None:
            return 0
        if 1 <= lineno <= len(self._lines):
            prefix = self._lines[lineno - 1].encode("utf-8")[:offset]
            return len(prefix.decode("utf-8", errors="replace")) + 1
        return offset + 1


def _line(node: ast.AST) -> int:
    return _non_negative(getattr(node, "lineno", None))


# --- missing-docstring, missing-type-hints -------------------------------------------------------

_FunctionDef = (ast.FunctionDef, ast.AsyncFunctionDef)


def _definitions(tree: ast.Module) -> Iterable[Tuple[ast.AST, bool]]:
    """Functions and classes at module level or directly in a class body, with `in_class`."""
    stack = [(node, False) for node in reversed(tree.body)]
    while stack:
        node, in_class = stack.pop()
        if isinstance(node, _FunctionDef):
            yield node, in_class
        elif isinstance(node, ast.ClassDef):
            yield node, in_class
            stack.extend((child, True) for child in reversed(node.body))


def _decorator_names(node: ast.AST) -> List[str]:
    names = []
    for decorator in getattr(node, "decorator_list", []):
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        names.append(_dotted_name(target) or "")
    return names


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _definition_issues(tree: ast.Module, columns: _ColumnMap) -> List[Issue]:
    issues = []
    for node, in_class in _definitions(tree):
        decorators = _decorator_names(node)
        is_overload = any(name == "overload" or name.endswith(".overload") for name in decorators)
        is_accessor = any(name.endswith(".setter") or name.endswith(".deleter") for name in decorators)
        kind = "class" if isinstance(node, ast.ClassDef) else ("method" if in_class else "function")
        name = node.name  # type: ignore[attr-defined]
        position = (_line(node), columns.column(node))
        if (
            ast.get_docstring(node) is None
            and not _is_dunder(name)
            and not is_overload
            and not is_accessor
        ):
            issues.append(
                Issue(
                    MISSING_DOCSTRING,
                    WARNING,
                    "%s `%s` has no docstring" % (kind, name),
                    position[0],
                    position[1],
                    'add a docstring as the first statement: """What `%s` does."""' % name,
                )
            )
        if isinstance(node, _FunctionDef):
            missing = _missing_annotations(node, in_class, decorators)
            if missing:
                issues.append(
                    Issue(
                        MISSING_TYPE_HINTS,
                        WARNING,
                        "%s `%s` lacks type hints: %s" % (kind, name, "; ".join(missing)),
                        position[0],
                        position[1],
                        "annotate every parameter and the return type, e.g. `def %s(x: int) -> str:`"
                        % name,
                    )
                )
    return issues


def _missing_annotations(node: ast.AST, in_class: bool, decorators: List[str]) -> List[str]:
    args = node.args  # type: ignore[attr-defined]
    positional = list(args.posonlyargs) + list(args.args)
    is_static = "staticmethod" in decorators
    if in_class and not is_static and positional:
        # The implicit receiver, whatever it is called.
        positional = positional[1:]
    # In signature order: positional, *args, keyword-only, **kwargs.
    params = [(arg, "") for arg in positional]
    if args.vararg is not None:
        params.append((args.vararg, "*"))
    params.extend((arg, "") for arg in args.kwonlyargs)
    if args.kwarg is not None:
        params.append((args.kwarg, "**"))
    unannotated = [
        star + arg.arg
        for arg, star in params
        if arg.annotation is None and arg.arg not in ("self", "cls")
    ]
    missing = []
    if unannotated:
        missing.append("no annotation on parameter(s) " + ", ".join(unannotated))
    if node.returns is None and node.name != "__init__":  # type: ignore[attr-defined]
        missing.append("no return annotation")
    return missing


# --- dangerous-call ------------------------------------------------------------------------------

_BUILTIN_DANGERS = {
    "eval": "evaluates arbitrary code; use ast.literal_eval for literals or parse the input explicitly",
    "exec": "executes arbitrary code; call the code you mean directly instead",
    "compile": "compiles arbitrary code; call the code you mean directly instead",
    "__import__": "imports modules by computed name; import what you need explicitly, or use "
    "importlib.import_module with an allow-list",
}

_PROCESS_HINT = (
    "generated code must not start processes or run shell commands; do the work in Python "
    "(e.g. shutil, pathlib) instead"
)

_DESERIALISE_HINT = "unpickling untrusted data runs arbitrary code; use json for data exchange"

#: Names a star import of these modules brings in that we flag.
_STAR_EXPORTS = {
    "os": ("system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
           "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
           "spawnlpe", "posix_spawn", "posix_spawnp"),
    "subprocess": ("run", "Popen", "call", "check_call", "check_output", "getoutput",
                   "getstatusoutput"),
    "pickle": ("load", "loads", "Unpickler"),
    "marshal": ("load", "loads"),
}


def _classify(qualified: str) -> Optional[Tuple[str, str]]:
    """(severity, suggestion) when the fully qualified callee is dangerous, else None."""
    if qualified.startswith("builtins."):
        qualified = qualified[len("builtins."):]
        if qualified in _BUILTIN_DANGERS:
            return ERROR, _BUILTIN_DANGERS[qualified]
        return None
    module, _, attr = qualified.rpartition(".")
    if module == "subprocess" or qualified.startswith("subprocess."):
        return ERROR, _PROCESS_HINT
    if module == "os" and (
        attr in ("system", "popen", "posix_spawn", "posix_spawnp")
        or attr.startswith("exec")
        or attr.startswith("spawn")
    ):
        return ERROR, _PROCESS_HINT
    if module in ("pickle", "cPickle", "_pickle") and attr in ("load", "loads", "Unpickler"):
        return WARNING, _DESERIALISE_HINT
    if module == "marshal" and attr in ("load", "loads"):
        return WARNING, "marshal is not safe for untrusted data; use json for data exchange"
    return None


def _dotted_name(node: ast.AST) -> Optional[str]:
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _import_aliases(nodes: List[ast.AST]) -> Tuple[Dict[str, str], Set[str]]:
    """Local name -> qualified name for every import in the module (any scope), and the names
    the module binds itself (definitions, assignments, parameters) which shadow builtins."""
    aliases: Dict[str, str] = {}
    bound: Set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if alias.name == "*":
                    for name in _STAR_EXPORTS.get(node.module, ()):
                        aliases.setdefault(name, node.module + "." + name)
                else:
                    aliases[alias.asname or alias.name] = node.module + "." + alias.name
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return aliases, bound


def _qualify(func: ast.AST, aliases: Dict[str, str], bound: Set[str]) -> Optional[str]:
    dotted = _dotted_name(func)
    if dotted is None:
        return None
    head, _, rest = dotted.partition(".")
    if head in aliases:
        qualified = aliases[head]
    elif head in bound:
        return None
    elif head in _BUILTIN_DANGERS:
        qualified = "builtins." + head
    else:
        qualified = head
    return qualified + ("." + rest if rest else "")


def _dangerous_calls(nodes: List[ast.AST], columns: _ColumnMap) -> List[Issue]:
    aliases, bound = _import_aliases(nodes)
    issues = []
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        qualified = _qualify(node.func, aliases, bound)
        if qualified is None:
            continue
        verdict = _classify(qualified)
        if verdict is None:
            continue
        severity, suggestion = verdict
        shown = qualified[len("builtins."):] if qualified.startswith("builtins.") else qualified
        written = _dotted_name(node.func) or shown
        message = "call of `%s`" % shown
        if written != shown:
            message += " (as `%s`)" % written
        issues.append(Issue(DANGEROUS_CALL, severity, message, _line(node), columns.column(node), suggestion))
    return issues


# --- bare-except ---------------------------------------------------------------------------------


def _bare_excepts(nodes: List[ast.AST], columns: _ColumnMap) -> List[Issue]:
    return [
        Issue(
            BARE_EXCEPT,
            WARNING,
            "bare `except:` also catches KeyboardInterrupt and SystemExit",
            _line(node),
            columns.column(node),
            "catch `Exception` or, better, the specific exceptions you expect",
        )
        for node in nodes
        if isinstance(node, ast.ExceptHandler) and node.type is None
    ]


# --- mutable-default-argument --------------------------------------------------------------------

_MUTABLE_LITERALS = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
_MUTABLE_FACTORIES = ("list", "dict", "set", "bytearray", "collections.defaultdict",
                      "collections.OrderedDict", "collections.deque", "defaultdict",
                      "OrderedDict", "deque")


def _is_mutable(node: ast.AST) -> bool:
    if isinstance(node, _MUTABLE_LITERALS):
        return True
    if isinstance(node, ast.Call):
        return _dotted_name(node.func) in _MUTABLE_FACTORIES
    return False


def _mutable_defaults(nodes: List[ast.AST], columns: _ColumnMap) -> List[Issue]:
    issues = []
    for node in nodes:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        args = node.args
        positional = list(args.posonlyargs) + list(args.args)
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
        pairs += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults) if default is not None]
        name = getattr(node, "name", "<lambda>")
        for arg, default in pairs:
            if _is_mutable(default):
                issues.append(
                    Issue(
                        MUTABLE_DEFAULT_ARGUMENT,
                        WARNING,
                        "parameter `%s` of `%s` has a mutable default, shared between calls"
                        % (arg.arg, name),
                        _line(default),
                        columns.column(default),
                        "default to None and create the value inside: `%s=None` ... "
                        "`if %s is None: %s = ...`" % (arg.arg, arg.arg, arg.arg),
                    )
                )
    return issues
