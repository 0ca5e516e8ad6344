"""What secret-scanner looks for, in plain Python (no WIT), so it can be tested anywhere.

Credentials are errors: once generated code with a key in it is committed, the key is leaked.
Copyleft licence headers are warnings: code under (A)GPL cannot be pasted into most code bases.
Both the code and the tests are scanned; findings in the tests say so in their message.
"""

import ast
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional

PREFIX = "secret-scanner/"
AWS_KEY = PREFIX + "aws-access-key"
GITHUB_TOKEN = PREFIX + "github-token"
PRIVATE_KEY = PREFIX + "private-key"
CREDENTIAL = PREFIX + "hardcoded-credential"
COPYLEFT = PREFIX + "copyleft-licence"
RULES = (AWS_KEY, GITHUB_TOKEN, PRIVATE_KEY, CREDENTIAL, COPYLEFT)

# (rule, pattern, message) for secrets recognisable by their shape alone.
_SHAPES = (
    (AWS_KEY, re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (GITHUB_TOKEN, re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
    (PRIVATE_KEY, re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
     "a private key"),
)
_COPYLEFT = re.compile(
    r"GNU (?:Affero |Lesser )?General Public License|SPDX-License-Identifier:\s*(?:A|L)?GPL",
    re.IGNORECASE,
)
_SECRET_NAME = re.compile(r"(?:^|_)(?:password|passwd|pwd|secret|api_?key|access_?key|token|auth)(?:_|$)",
                          re.IGNORECASE)
# Values that are obviously not real secrets.
_PLACEHOLDER = re.compile(r"^(?:|x+|\*+|changeme|change-me|example|dummy|test|secret|password|"
                          r"your[-_ ].*|<.*>|\$\{.*\}|\{.*\})$", re.IGNORECASE)
# A name that says its value is a pattern (`TOKEN_REGEX`, `password_re`), not a credential.
# (Not `pat`: that is a personal access token.)
_PATTERN_NAME = re.compile(r"(?:^|_)(?:re|rx|regex|regexp|pattern)(?:_|$)", re.IGNORECASE)
# Regex syntax that real credentials (random letters, digits, `+/=-_.`) do not contain: a
# character class with a range or a quantifier, escapes such as `\d`, groups, anchors around
# the whole value.
_REGEX_SYNTAX = re.compile(r"\[[^\]]*\w-\w[^\]]*\]|\[[^\]]+\][+*?{]|\\[dDwWsSbB]|\(\?[:=!P<]"
                           r"|^\^.*\$$")


@dataclass
class Problem:
    rule_id: str
    severity: str  # "info", "warning" or "error"
    message: str
    line: int
    column: int
    suggestion: Optional[str] = None


def _shapes(text: str, where: str) -> Iterator[Problem]:
    for number, line in enumerate(text.splitlines(), start=1):
        for rule, pattern, what in _SHAPES:
            for match in pattern.finditer(line):
                yield Problem(rule, "error", f"{what} in the {where}", number, match.start() + 1,
                              "load it from the environment or a secret store, and revoke this one")
        match = _COPYLEFT.search(line)
        if match:
            yield Problem(COPYLEFT, "warning", f"copyleft licence text in the {where}: "
                          f"{match.group(0)}", number, match.start() + 1,
                          "generated code should not carry another project's licence")


def _assigned_name(target: ast.AST) -> Optional[str]:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def _credentials(text: str, where: str) -> Iterator[Problem]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.Assign):
            pairs = [(_assigned_name(t), node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(_assigned_name(node.target), node.value)]
        elif isinstance(node, ast.keyword):
            pairs = [(node.arg, node.value)]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value if isinstance(k, ast.Constant) and isinstance(k.value, str) else None, v)
                     for k, v in zip(node.keys, node.values)]
        for name, value in pairs:
            if not name or not _SECRET_NAME.search(name):
                continue
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                continue
            if not _looks_like_secret(name, value.value):
                continue
            yield Problem(CREDENTIAL, "error", f"{name} is set to a literal string in the {where}",
                          value.lineno, value.col_offset + 1,
                          f"read {name} from the environment (os.environ) instead")


def _looks_like_secret(name: str, value: str) -> bool:
    """Whether a string assigned to a secret-sounding `name` may be a real credential.

    Short values and placeholders are not; nor are patterns (`TOKEN_REGEX = r"[A-Za-z_]+"`):
    code that parses tokens names its regexes after them, and flagging those as leaked
    credentials would teach people to ignore the rule.
    """
    if len(value) < 8 or _PLACEHOLDER.match(value.strip()):
        return False
    if any(pattern.search(value) for _, pattern, _ in _SHAPES):
        # A shape rule reports this secret already, one column further on (inside the quotes);
        # a second finding for the same leak would only be noise.
        return False
    return not (_PATTERN_NAME.search(name) or _REGEX_SYNTAX.search(value))


def find_problems(code: str, tests: str = "") -> List[Problem]:
    problems = []
    for text, where in ((code, "code"), (tests, "tests")):
        problems.extend(_shapes(text, where))
        problems.extend(_credentials(text, where))
    # One finding per place: `token = password = "…"` is reported once.
    seen, unique = set(), []
    for p in sorted(problems, key=lambda p: (p.message.endswith("tests"), p.line, p.column, p.rule_id)):
        if (p.line, p.column, p.message.endswith("tests")) not in seen:
            seen.add((p.line, p.column, p.message.endswith("tests")))
            unique.append(p)
    return unique
