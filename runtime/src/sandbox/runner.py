# The test runner agentrt runs inside sandboxed CPython: either imported into the pre-initialised
# runner component (runner_app.py, `run(request, nonce)`), or started as a script by python.wasm
# (WASI preview 1), where it reads the request from stdin and the nonce from argv[1].
#
# The request is {"code": ..., "tests": ..., "only": [names] | null, "code_file": name,
# "tests_file": name}; it runs the solution, then every top-level test_* function of the tests
# (or only those named), and reports on stdout,
# one line per event, each prefixed by the record separator and the nonce the host passed as
# argv[1], so output the code under test prints cannot pass for a result:
#   collected {"tests": [...]}, setup {"stage": "code"|"tests", "message": ...},
#   start {"test": name}, result {"test": name, "outcome": "passed"|"failed"|"error", "message": ...}
# What the code and tests print goes to an in-memory buffer, not to the host.
#
# The file names (default solution.py and test_solution.py) are what tracebacks show; the tests
# may import the code as `solution` or as its file's own name (`from sol import f` for sol.py),
# as they would under pytest beside the file.
import io
import json
import linecache
import sys
import traceback
import types


def agentrt_run(payload, nonce):
    import os
    try:
        os.chdir("/tmp")  # the run's own scratch folder; nothing else is there
    except OSError:
        pass
    real_out = sys.stdout
    code_file = payload.get("code_file") or "solution.py"
    tests_file = payload.get("tests_file") or "test_solution.py"
    module_names = ["solution"]
    stem = code_file[:-3] if code_file.endswith(".py") else ""
    # Never in place of a module already there (the standard library, the runner's own, __main__).
    if (stem.isidentifier() and not stem.startswith("__") and stem not in module_names
            and stem not in sys.stdlib_module_names and stem not in sys.modules):
        module_names.append(stem)

    def emit(kind, **fields):
        real_out.write("\x1e" + nonce + " " + kind + " " + json.dumps(fields) + "\n")
        real_out.flush()

    for name, source in ((code_file, payload["code"]), (tests_file, payload["tests"])):
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)

    def describe(error):
        # The failing line of the tests (or of the solution), as pytest shows it.
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if f.filename in (tests_file, code_file)]
        where = ""
        if frames:
            f = frames[-1]
            where = " at %s:%d: %s" % (f.filename, f.lineno, (f.line or "").strip())
        text = str(error)
        head = type(error).__name__ + (": " + text if text else "")
        return (head + where)[:2000]

    sys.stdout = sys.stderr = io.StringIO()
    namespace = {"__name__": module_names[-1], "__builtins__": __builtins__}
    try:
        exec(compile(payload["code"], code_file, "exec"), namespace)
    except BaseException as error:  # noqa: BLE001 - any failure is the code's
        emit("setup", stage="code", message=describe(error))
        return
    module = types.ModuleType(module_names[-1])
    module.__dict__.update(namespace)
    for name in module_names:
        sys.modules[name] = module
    test_namespace = dict(namespace)
    test_namespace["__name__"] = tests_file[:-3] if tests_file.endswith(".py") else "test_solution"
    # Tests may also be plain top-level asserts: the module itself is then one test.
    module_test = "<module>"
    try:
        exec(compile(payload["tests"], tests_file, "exec"), test_namespace)
    except AssertionError as error:
        emit("collected", tests=[module_test])
        emit("result", test=module_test, outcome="failed", message=describe(error))
        return
    except BaseException as error:  # noqa: BLE001
        emit("setup", stage="tests", message=describe(error))
        return
    tests = [name for name, value in list(test_namespace.items())
             if name.startswith("test") and callable(value)
             and getattr(getattr(value, "__code__", None), "co_filename", "") == tests_file]
    if not tests:
        emit("collected", tests=[module_test])
        emit("result", test=module_test, outcome="passed", message="")
        return
    emit("collected", tests=tests)
    only = payload.get("only")
    for name in tests:
        if only is not None and name not in only:
            continue
        emit("start", test=name)
        sys.stdout = sys.stderr = io.StringIO()
        try:
            test_namespace[name]()
            emit("result", test=name, outcome="passed", message="")
        except AssertionError as error:
            emit("result", test=name, outcome="failed", message=describe(error))
        except BaseException as error:  # noqa: BLE001 - MemoryError, RecursionError, SystemExit...
            emit("result", test=name, outcome="error", message=describe(error))


if __name__ == "__main__":
    _nonce = sys.argv[1] if len(sys.argv) > 1 else ""
    del sys.argv[1:]
    agentrt_run(json.loads(sys.stdin.read()), _nonce)
