"""Unit tests of the python-quality analysis (`checks.py`), runnable with the host's CPython.

    python3 -m unittest plugins/python-quality/test_app.py

They avoid Python-3.12-only syntax in the analysed sources so that any CPython >= 3.8 runs them;
3.12 syntax is covered by the corpus in tests/fixtures/python-syntax/ and the e2e tests, which
run the built component.
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks  # noqa: E402


def rules(issues):
    return [issue.rule_id for issue in issues]


def only(issues, rule_id):
    return [issue for issue in issues if issue.rule_id == rule_id]


GOOD = '''\
"""A well-behaved module."""

import json


def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


class Box:
    """Holds a value."""

    def __init__(self, value: int):
        self.value = value

    def get(self) -> int:
        """Return the value."""
        return self.value

    @staticmethod
    def make(value: int) -> "Box":
        """Build a box."""
        return Box(value)


def load(text: str) -> dict:
    """Parse JSON."""
    return json.loads(text)
'''


class SyntaxErrorTests(unittest.TestCase):
    def test_valid_code_has_no_findings(self):
        self.assertEqual(checks.check_code(GOOD), [])

    def test_syntax_error_position_is_cpythons(self):
        issues = checks.check_code("x = 1\ndef f(:\n    pass\n")
        self.assertEqual(rules(issues), ["syntax-error"])
        issue = issues[0]
        self.assertEqual(issue.severity, checks.ERROR)
        self.assertEqual((issue.line, issue.column), (2, 7))
        self.assertTrue(issue.message)

    def test_syntax_error_suppresses_other_rules(self):
        issues = checks.check_code("def f(x, y=[]):\n    eval(x)\n  return 1\n")
        self.assertEqual(rules(issues), ["syntax-error"])
        self.assertIn("indent", issues[0].message)

    def test_unclosed_bracket(self):
        (issue,) = checks.check_code("values = [1, 2,\n")
        self.assertEqual(issue.rule_id, "syntax-error")
        self.assertIn("never closed", issue.message)
        self.assertEqual((issue.line, issue.column), (1, 10))

    def test_tab_error(self):
        (issue,) = checks.check_code("if True:\n        x = 1\n\ty = 2\n")
        self.assertEqual(issue.rule_id, "syntax-error")
        self.assertIn("tabs", issue.message)
        self.assertEqual(issue.line, 3)

    def test_null_byte_is_a_syntax_error(self):
        (issue,) = checks.check_code("x = 1\x00\n")
        self.assertEqual(issue.rule_id, "syntax-error")

    def test_column_counts_characters(self):
        # 'é' is two UTF-8 bytes; CPython reports character columns for syntax errors.
        (issue,) = checks.check_code("s = 'é' +\n")
        self.assertEqual(issue.line, 1)
        self.assertEqual(issue.column, 10)

    def test_tests_syntax_error_is_prefixed(self):
        issues = checks.check_artifact("python", GOOD, "def test_x(:\n    pass\n")
        self.assertEqual(rules(issues), ["syntax-error"])
        self.assertTrue(issues[0].message.startswith("tests: "))
        self.assertEqual((issues[0].line, issues[0].column), (1, 12))

    def test_tests_only_checked_for_syntax(self):
        tests = "import subprocess\ndef test_x():\n    subprocess.run(['true'])\n"
        self.assertEqual(checks.check_artifact("python", GOOD, tests), [])

    def test_both_syntax_errors_reported(self):
        issues = checks.check_artifact("python", "def f(:\n", "def g(:\n")
        self.assertEqual([i.message.startswith("tests: ") for i in issues], [False, True])

    def test_other_language_is_ignored(self):
        self.assertEqual(checks.check_artifact("rust", "fn main( {", "def f(:"), [])

    def test_language_name_is_case_insensitive(self):
        self.assertEqual(rules(checks.check_artifact(" Python ", "def f(:", "")), ["syntax-error"])

    def test_syntax_warning(self):
        issues = checks.check_code('"""Doc."""\nPATTERN = "\\d+"\n')
        self.assertEqual(rules(issues), ["syntax-warning"])
        self.assertEqual(issues[0].line, 2)


class DocstringAndHintTests(unittest.TestCase):
    def test_missing_docstrings(self):
        code = (
            "def f() -> None:\n    pass\n"
            "class C:\n"
            "    def m(self) -> None:\n        pass\n"
            "    def __repr__(self) -> str:\n        return ''\n"
            "    class Inner:\n        pass\n"
        )
        issues = only(checks.check_code(code), "missing-docstring")
        self.assertEqual([(i.line, i.column) for i in issues], [(1, 1), (3, 1), (4, 5), (8, 5)])
        self.assertIn("`f`", issues[0].message)
        self.assertIn("class `C`", issues[1].message)
        self.assertIn("method `m`", issues[2].message)

    def test_nested_functions_are_not_required_to_have_docstrings(self):
        code = 'def f() -> None:\n    """Doc."""\n    def g():\n        pass\n'
        self.assertEqual(checks.check_code(code), [])

    def test_module_docstring_not_required(self):
        self.assertEqual(checks.check_code("x = 1\n"), [])

    def test_overload_and_setter_exempt(self):
        code = (
            "from typing import overload\n"
            "class C:\n"
            '    """Doc."""\n'
            "    @overload\n    def f(self, x: int) -> int: ...\n"
            "    @property\n    def v(self) -> int:\n        '''V.'''\n        return 1\n"
            "    @v.setter\n    def v(self, value: int) -> None:\n        pass\n"
        )
        self.assertEqual(only(checks.check_code(code), "missing-docstring"), [])

    def test_missing_type_hints(self):
        code = (
            "def f(a, b: int, *args, c, **kw):\n    '''D.'''\n"
            "class C:\n    '''D.'''\n"
            "    def m(self, x: int):\n        '''D.'''\n"
            "    @classmethod\n    def k(cls) -> int:\n        '''D.'''\n        return 1\n"
            "    @staticmethod\n    def s(x) -> int:\n        '''D.'''\n        return x\n"
            "    def __init__(self, x: int):\n        self.x = x\n"
        )
        issues = only(checks.check_code(code), "missing-type-hints")
        self.assertEqual([i.line for i in issues], [1, 5, 12])
        self.assertIn("a, *args, c, **kw", issues[0].message)
        self.assertIn("no return annotation", issues[0].message)
        self.assertNotIn("self", issues[1].message)
        self.assertIn("parameter(s) x", issues[2].message)

    def test_async_function(self):
        code = "async def f(x):\n    '''D.'''\n    return x\n"
        self.assertEqual(rules(checks.check_code(code)), ["missing-type-hints"])


class DangerousCallTests(unittest.TestCase):
    def calls(self, code):
        return only(checks.check_code(code), "dangerous-call")

    def test_builtins(self):
        code = "eval('1')\nexec('x = 1')\ncompile('1', 'f', 'eval')\n__import__('os')\n"
        issues = self.calls(code)
        self.assertEqual([(i.line, i.column) for i in issues], [(1, 1), (2, 1), (3, 1), (4, 1)])
        self.assertTrue(all(i.severity == checks.ERROR for i in issues))
        self.assertTrue(all(i.suggestion for i in issues))

    def test_shadowed_builtin_is_not_flagged(self):
        code = "def compile(pattern):\n    return pattern\ncompile('x')\n"
        self.assertEqual(self.calls(code), [])

    def test_attribute_compile_is_not_flagged(self):
        self.assertEqual(self.calls("import re\nre.compile('x')\n"), [])

    def test_os(self):
        code = "import os\nos.system('ls')\nos.popen('ls')\nos.execv('/bin/ls', [])\nos.path.join('a')\n"
        self.assertEqual([i.line for i in self.calls(code)], [2, 3, 4])

    def test_from_os_import(self):
        self.assertEqual(len(self.calls("from os import system as s\ns('ls')\n")), 1)

    def test_subprocess_any_attribute(self):
        code = (
            "import subprocess\n"
            "subprocess.run(['ls'])\n"
            "subprocess.Popen(['ls']).wait()\n"
            "subprocess.check_output('ls')\n"
        )
        self.assertEqual([i.line for i in self.calls(code)], [2, 3, 4])

    def test_subprocess_aliases(self):
        code = (
            "import subprocess as sp\n"
            "from subprocess import run, Popen as P\n"
            "from subprocess import *\n"
            "sp.call('x')\nrun('x')\nP('x')\ncheck_call('x')\n"
        )
        issues = self.calls(code)
        self.assertEqual([i.line for i in issues], [4, 5, 6, 7])
        self.assertIn("subprocess.call", issues[0].message)
        self.assertIn("(as `sp.call`)", issues[0].message)
        self.assertIn("subprocess.Popen", issues[2].message)

    def test_import_inside_function(self):
        code = "def f() -> None:\n    '''D.'''\n    import subprocess\n    subprocess.run('x')\n"
        self.assertEqual([i.line for i in self.calls(code)], [4])

    def test_pickle_is_a_warning(self):
        code = "import pickle\npickle.loads(b'')\nimport json\njson.loads('1')\n"
        (issue,) = self.calls(code)
        self.assertEqual((issue.line, issue.severity), (2, checks.WARNING))

    def test_column_is_character_based(self):
        (issue,) = self.calls("s = 'ééé'; eval(s)\n")
        self.assertEqual(issue.column, 12)

    def test_builtins_module(self):
        self.assertEqual(len(self.calls("import builtins\nbuiltins.eval('1')\n")), 1)


class OtherRuleTests(unittest.TestCase):
    def test_bare_except(self):
        code = "try:\n    pass\nexcept:\n    pass\ntry:\n    pass\nexcept Exception:\n    pass\n"
        issues = checks.check_code(code)
        self.assertEqual([(i.rule_id, i.line, i.column) for i in issues], [("bare-except", 3, 1)])

    def test_mutable_defaults(self):
        code = (
            "def f(a: list = [], b: dict = {}, c: set = set(), d: int = 0, *, e: list = list(),"
            " g: tuple = ()) -> None:\n    '''D.'''\n"
            "h = lambda x={1}: x\n"
        )
        issues = only(checks.check_code(code), "mutable-default-argument")
        self.assertEqual([i.message.split("`")[1] for i in issues], ["a", "b", "c", "e", "x"])
        self.assertEqual((issues[0].line, issues[0].column), (1, 17))

    def test_findings_sorted_by_position(self):
        code = "def f(x=[]):\n    try:\n        eval(x)\n    except:\n        pass\n"
        issues = checks.check_code(code)
        positions = [(i.line, i.column) for i in issues]
        self.assertEqual(positions, sorted(positions))

    def test_deep_nesting_does_not_crash(self):
        code = "x = " + "+".join(["1"] * 5000) + "\n"
        checks.check_code(code)  # either parses or reports a syntax error; never raises

    def test_rules_are_listed(self):
        for rule in ("syntax-error", "missing-docstring", "missing-type-hints", "dangerous-call",
                     "bare-except", "mutable-default-argument", "syntax-warning"):
            self.assertIn(rule, checks.RULES)


if __name__ == "__main__":
    unittest.main()
